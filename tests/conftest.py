"""Suite-wide isolation: no test reads or writes the user's cache or default storage."""

from __future__ import annotations

from collections.abc import Iterator

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
