"""The public surface: a sorted __all__, documented names, and no framework imports."""

from __future__ import annotations

import subprocess
import sys

import autotune

FRAMEWORKS = ("torch", "tensorflow", "mindspore", "keras", "jax")


def test_all_is_sorted_and_resolves() -> None:
    assert list(autotune.__all__) == sorted(autotune.__all__)
    for name in autotune.__all__:
        assert hasattr(autotune, name), name


def test_public_names_have_docstrings() -> None:
    for name in autotune.__all__:
        obj = getattr(autotune, name)
        if callable(obj):
            assert obj.__doc__ and obj.__doc__.strip(), name


def _modules_after(code: str) -> set[str]:
    probe = f"{code}\nimport sys\nprint(' '.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True).stdout
    return set(out.split())


def test_import_autotune_imports_no_framework() -> None:
    loaded = _modules_after("import autotune")
    assert not [f for f in FRAMEWORKS if f in loaded]


def test_help_imports_no_framework() -> None:
    code = ("import contextlib, io\nfrom autotune.cli import main\n"
            "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
            "    main(['--help'])\n"
            "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
            "    main(['study', 'run', '--help'])")
    loaded = _modules_after(code)
    assert not [f for f in FRAMEWORKS if f in loaded]


def test_console_script_help_runs() -> None:
    result = subprocess.run([sys.executable, "-m", "autotune", "--help"], capture_output=True,
                            text=True)
    assert result.returncode == 0
    assert "study" in result.stdout and "--storage" in result.stdout
