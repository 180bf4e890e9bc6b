"""Suite-wide isolation: no test reads or writes the user's cache or default storage."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Workers inherit the environment: point their cache (prepared data, trained base
    models) at a directory of this test session."""
    mp = pytest.MonkeyPatch()
    mp.setenv("AUTOTUNE_CACHE_DIR", str(tmp_path_factory.mktemp("autotune-cache")))
    mp.delenv("AUTOTUNE_STORAGE", raising=False)
    yield
    mp.undo()


@pytest.fixture(scope="session")
def framework_workers(_isolated_cache: None) -> Iterator[Any]:
    """Warm workers shared by the tests that run real framework trials but do not test the
    workers themselves (``WarmLauncher`` has tests of its own): each framework is imported
    once per thread count for the session, not once per trial (TensorFlow 4-5 s and
    MindSpore 5-8 s here). A worker whose trial fails is replaced, as in a study."""
    from autotune.launch import WarmLauncher

    with WarmLauncher(max_workers=8) as launcher:
        yield launcher
