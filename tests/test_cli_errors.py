"""The CLI on bad input: one ``autotune: error:`` line, non-zero exit, no traceback (unless
--debug), and an existing database left exactly as it was. No trial is ever run here."""

from __future__ import annotations

import contextlib
import io
import shutil
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from autotune import study as study_module
from autotune.cli import main
from autotune.exceptions import (
    SpaceError,
    SpaceMismatchError,
    StorageError,
    StudyError,
    StudyExistsError,
    StudyNotFoundError,
)

SPACES_DIR = Path(__file__).resolve().parents[1] / "search_spaces"
QUICKSTART = SPACES_DIR / "quickstart.yaml"
CPU_TRAINING = SPACES_DIR / "cpu_training.yaml"


# -- helpers ----------------------------------------------------------------------------------


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    """Run ``autotune argv`` in-process: (exit code, stdout, stderr)."""
    capsys.readouterr()  # drop anything printed before
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # argparse usage errors and --help
        code = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *needles: str) -> str:
    """A non-zero exit and exactly one non-empty stderr line holding every needle."""
    assert code != 0, f"exit code 0, stderr {err!r}"
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one error line, got {err!r}"
    line = lines[0]
    assert line.startswith("autotune: error: "), line
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    return line


def dump(path: Path) -> str:
    """The full SQL content of a SQLite file (opened read-only: never creates one)."""
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        return "\n".join(conn.iterdump())


def url_of(path: Path) -> str:
    return f"sqlite:///{path}"


BASE_SPACE: dict[str, Any] = yaml.safe_load(QUICKSTART.read_text(encoding="utf-8"))


def write_space(directory: Path, name: str, data: dict[str, Any] | str) -> Path:
    path = directory / name
    text = data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False)
    path.write_text(text, encoding="utf-8")
    return path


def space_with(**changes: Any) -> dict[str, Any]:
    """The quickstart space with top-level keys replaced (``None`` removes a key)."""
    data = yaml.safe_load(QUICKSTART.read_text(encoding="utf-8"))
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return data


def params_with(**changes: Any) -> dict[str, Any]:
    return space_with(params={**BASE_SPACE["params"], **changes})


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _no_trials_and_no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A safety net: nothing here may run a real trial or use $AUTOTUNE_STORAGE."""
    def refuse(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("a test in test_cli_errors.py tried to run trials")

    monkeypatch.setattr(study_module.Study, "optimize", refuse)
    monkeypatch.delenv("AUTOTUNE_STORAGE", raising=False)


@pytest.fixture(scope="module")
def template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A database holding study 's1' created from quickstart.yaml (made once per module)."""
    path = tmp_path_factory.mktemp("template") / "a.db"
    code = main(["study", "create", "s1", "--space", str(QUICKSTART), "--storage",
                 url_of(path)])
    assert code == 0
    return path


@pytest.fixture
def db(template_db: Path, tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A private copy of the template database, checked unchanged after the test."""
    path = tmp_path / "a.db"
    shutil.copyfile(template_db, path)
    yield path, url_of(path)


@pytest.fixture
def snapshot(db: tuple[Path, str]) -> Iterator[None]:
    """Asserts, after the test, that the database content did not change."""
    path, _ = db
    before = dump(path)
    assert "autotune_studies" in before
    assert "'s1'" in before
    yield
    assert dump(path) == before, "a failing command modified the database"
    # no journal of a half-done write; a WAL database's -wal/-shm files (the read-only
    # dump above leaves them: it may not checkpoint) and the schema lock file are its own
    assert sorted(p.name for p in path.parent.glob("a.db*")
                  if not p.name.endswith(("-wal", "-shm", ".lock"))) == ["a.db"]


# -- bad space files ------------------------------------------------------------------------

# (id, space content, substrings of the error line)
BAD_SPACES: list[tuple[str, dict[str, Any] | str, tuple[str, ...]]] = [
    ("malformed-yaml", "workload: digits_mlp\nmode: [train\n", ("malformed YAML", "line")),
    ("not-a-mapping", "- workload\n", ("must be a YAML mapping",)),
    ("unknown-top-level-key", space_with(colour="blue"), ("colour", "unknown key")),
    ("unknown-knob", params_with(colour=["red"]), ("params.colour", "unknown parameter")),
    ("low-above-high", params_with(batch_size={"low": 256, "high": 16}),
     ("params.batch_size", "low (256) must be <= high (16)")),
    ("batch-size-zero-in-list", params_with(batch_size=[0, 16]),
     ("params.batch_size", "got 0", "positive integer")),
    ("batch-size-range-low-zero", params_with(batch_size={"low": 0, "high": 16}),
     ("params.batch_size", "got 0", "positive integer")),
    ("batch-size-negative", params_with(batch_size=-8),
     ("params.batch_size", "got -8", "positive integer")),
    ("batch-size-negative-in-list", params_with(batch_size=[-8, 16]),
     ("params.batch_size", "got -8", "positive integer")),
    ("batch-size-range-low-negative", params_with(batch_size={"low": -8, "high": 4}),
     ("params.batch_size", "got -8", "positive integer")),
    ("unknown-backend", params_with(backend=["caffe"]), ("params.backend", "'caffe'")),
    ("unknown-device", params_with(device=["gpu"]), ("params.device", "'gpu'")),
    ("unknown-precision", params_with(precision=["fp8"]), ("params.precision", "'fp8'")),
    ("unknown-optimizer", params_with(optimizer=["lbfgs"]), ("params.optimizer", "'lbfgs'")),
    ("unknown-workload", space_with(workload="resnet9000"), ("workload", "'resnet9000'")),
    ("unknown-mode", space_with(mode="serve"), ("mode", "'serve'")),
    ("unknown-metric", space_with(objectives={"speed": "maximize"}),
     ("objectives.speed", "unknown metric")),
    ("unknown-direction", space_with(objectives={"accuracy": "up"}),
     ("objectives.accuracy", "'up'", "maximize, minimize")),
    ("no-objectives", space_with(objectives={}), ("objectives", "1 to 4")),
    ("constraint-does-not-parse", space_with(constraints={"accuracy": "about 0.9"}),
     ("constraints.accuracy", "'about 0.9'", "does not parse")),
    ("train-knob-in-infer-mode", space_with(mode="infer"),
     ("params.optimizer", "training knob")),
    ("unknown-budget-key", space_with(budget={"trials": 3}), ("budget.trials", "unknown key")),
    ("non-positive-budget", space_with(budget={"trial_seconds": 0}),
     ("budget.trial_seconds", "positive")),
    ("budget-too-small", space_with(budget={"trial_seconds": 5}),
     ("budget", "trial_seconds must exceed")),
]

BAD_SPACE_PARAMS = [pytest.param(content, needles, id=i) for i, content, needles in BAD_SPACES]


@pytest.mark.usefixtures("snapshot")
@pytest.mark.parametrize(("content", "needles"), BAD_SPACE_PARAMS)
def test_create_with_bad_space(capsys: pytest.CaptureFixture[str], db: tuple[Path, str],
                               tmp_path: Path, content: dict[str, Any] | str,
                               needles: tuple[str, ...]) -> None:
    space = write_space(tmp_path, "bad.yaml", content)
    code, out, err = run_cli(capsys, "study", "create", "s2", "--space", space,
                             "--storage", db[1])
    line = assert_one_line_error(code, err, str(space), *needles)
    assert code == 1
    assert line.startswith(f"autotune: error: {space}: ")
    assert out == ""


@pytest.mark.usefixtures("snapshot")
@pytest.mark.parametrize(("content", "needles"), BAD_SPACE_PARAMS[:8])
def test_run_with_bad_space(capsys: pytest.CaptureFixture[str], db: tuple[Path, str],
                            tmp_path: Path, content: dict[str, Any] | str,
                            needles: tuple[str, ...]) -> None:
    space = write_space(tmp_path, "bad.yaml", content)
    code, _, err = run_cli(capsys, "study", "run", "s1", "--space", space, "--storage", db[1])
    assert_one_line_error(code, err, str(space), *needles)


def test_create_with_bad_space_writes_no_database(capsys: pytest.CaptureFixture[str],
                                                  tmp_path: Path) -> None:
    space = write_space(tmp_path, "bad.yaml", params_with(batch_size=[0]))
    target = tmp_path / "sub" / "new.db"
    code, _, err = run_cli(capsys, "study", "create", "s2", "--space", space,
                           "--storage", url_of(target))
    assert_one_line_error(code, err, "params.batch_size")
    assert not target.parent.exists()


@pytest.mark.usefixtures("snapshot")
@pytest.mark.parametrize("action", ["create", "run"])
def test_missing_space_file(capsys: pytest.CaptureFixture[str], db: tuple[Path, str],
                            tmp_path: Path, action: str) -> None:
    missing = tmp_path / "nope.yaml"
    name = "s2" if action == "create" else "s1"
    code, _, err = run_cli(capsys, "study", action, name, "--space", missing,
                           "--storage", db[1])
    assert_one_line_error(code, err, str(missing), "space file not found")


@pytest.mark.usefixtures("snapshot")
def test_create_without_space_is_a_usage_error(capsys: pytest.CaptureFixture[str],
                                               db: tuple[Path, str]) -> None:
    code, _, err = run_cli(capsys, "study", "create", "s2", "--storage", db[1])
    assert code == 2
    assert_one_line_error(code, err, "--space")


# -- devices and backends that are not here ----------------------------------------------------


@pytest.mark.usefixtures("snapshot")
@pytest.mark.parametrize("device", [["cpu", "cuda:0"], "cuda:0"], ids=["list", "fixed"])
def test_create_with_a_device_that_does_not_exist(capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  db: tuple[Path, str], tmp_path: Path,
                                                  device: Any) -> None:
    from autotune.devices import BackendDevices, Device

    def discover(backends: Any = None) -> list[BackendDevices]:  # a CPU-only machine
        return [BackendDevices("torch", True, "", "2.13", devices=(Device("cpu", "cpu"),))]

    monkeypatch.setattr("autotune.devices.discover", discover)
    space = write_space(tmp_path, "gpu.yaml", params_with(device=device))
    code, out, err = run_cli(capsys, "study", "create", "s2", "--space", space,
                             "--storage", db[1])
    line = assert_one_line_error(code, err, "devices found by torch: cpu")
    # named like every other space error: the file, the key, the value
    assert line.startswith(f"autotune: error: {space}: params.device: device 'cuda:0' "
                           "does not exist here;"), line
    assert out == ""


def hide_backends(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    """Make ``names`` look uninstalled, the way autotune checks (find_spec, no import)."""
    import importlib.util

    original = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in names else original(name, *a))


@pytest.mark.usefixtures("snapshot")
def test_create_with_a_backend_that_is_not_installed(capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     db: tuple[Path, str],
                                                     tmp_path: Path) -> None:
    hide_backends(monkeypatch, "mindspore")
    space = write_space(tmp_path, "ms.yaml", params_with(backend=["torch", "mindspore"]))
    code, _, err = run_cli(capsys, "study", "create", "s2", "--space", space,
                           "--storage", db[1])
    line = assert_one_line_error(code, err, "pip install 'autotune[mindspore]'")
    assert line.startswith(f"autotune: error: {space}: params.backend: backend 'mindspore' "
                           "named in the space is not installed"), line


@pytest.mark.usefixtures("snapshot")
def test_run_refused_when_the_study_backend_is_not_installed_here(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        db: tuple[Path, str]) -> None:
    # s1 was created where torch is installed; it is run where it is not. The autouse
    # fixture fails the test if a trial is started.
    hide_backends(monkeypatch, "torch")
    for extra in ([], ["--json"], ["--quiet"]):
        code, out, err = run_cli(capsys, "study", "run", "s1", "--n-trials", "1", *extra,
                                 "--storage", db[1])
        assert_one_line_error(code, err, "backend 'torch' of study 's1' is not installed "
                                         "here; install it with: pip install 'autotune[torch]'")
        assert out == ""


def test_run_refused_when_no_backend_of_the_study_is_installed_here(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    space = write_space(tmp_path, "two.yaml", params_with(backend=["tensorflow", "mindspore"]))
    path = tmp_path / "two.db"
    code, _, err = run_cli(capsys, "study", "create", "two", "--space", space,
                           "--storage", url_of(path))
    assert code == 0, err
    before = dump(path)
    hide_backends(monkeypatch, "tensorflow", "mindspore")
    code, _, err = run_cli(capsys, "study", "run", "two", "--storage", url_of(path))
    assert_one_line_error(code, err, "backends 'tensorflow', 'mindspore' of study 'two' are "
                                     "not installed here; install them with: "
                                     "pip install 'autotune[tensorflow,mindspore]'")
    assert dump(path) == before


# -- study names ------------------------------------------------------------------------------


@pytest.mark.usefixtures("snapshot")
def test_create_existing_study(capsys: pytest.CaptureFixture[str],
                               db: tuple[Path, str]) -> None:
    code, _, err = run_cli(capsys, "study", "create", "s1", "--space", QUICKSTART,
                           "--storage", db[1])
    assert_one_line_error(code, err, "'s1'", "already exists")


@pytest.mark.usefixtures("snapshot")
@pytest.mark.parametrize("argv", [["run", "nope"], ["run", "nope", "--space", str(QUICKSTART)],
                                  ["show", "nope"], ["show", "nope", "--all"],
                                  ["delete", "nope"], ["delete", "nope", "--yes"]],
                         ids=["run", "run-space", "show", "show-all", "delete", "delete-yes"])
def test_missing_study(capsys: pytest.CaptureFixture[str], db: tuple[Path, str],
                       argv: list[str]) -> None:
    code, out, err = run_cli(capsys, "study", *argv, "--storage", db[1])
    # The hint lists the studies that do exist.
    assert_one_line_error(code, err, "no study named 'nope'", "s1")
    assert out == ""


@pytest.mark.parametrize("action", ["run", "show", "delete"])
def test_missing_study_in_missing_database(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                           action: str) -> None:
    target = tmp_path / "none.db"
    code, _, err = run_cli(capsys, "study", action, "nope", "--storage", url_of(target))
    assert_one_line_error(code, err, "no study named 'nope'")
    assert not target.exists()


@pytest.mark.usefixtures("snapshot")
def test_json_errors_are_one_line_on_stderr(capsys: pytest.CaptureFixture[str],
                                            db: tuple[Path, str]) -> None:
    code, out, err = run_cli(capsys, "study", "show", "nope", "--json", "--storage", db[1])
    assert_one_line_error(code, err, "no study named 'nope'")
    assert out == ""


# -- storage ----------------------------------------------------------------------------------


def test_unwritable_storage(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    # Tests run as root, so permissions do not stop writes: the parent is a regular file.
    parent = tmp_path / "afile"
    parent.write_text("not a directory\n", encoding="utf-8")
    url = url_of(parent / "x.db")
    code, _, err = run_cli(capsys, "study", "create", "s2", "--space", QUICKSTART,
                           "--storage", url)
    assert_one_line_error(code, err, "storage", url)
    assert parent.read_text(encoding="utf-8") == "not a directory\n"


def test_storage_that_is_not_a_database(capsys: pytest.CaptureFixture[str],
                                        tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_text("hello\n", encoding="utf-8")
    for argv in (["create", "s2", "--space", str(QUICKSTART)], ["list"], ["show", "s1"]):
        code, _, err = run_cli(capsys, "study", *argv, "--storage", url_of(path))
        assert_one_line_error(code, err, "storage", str(path))
    assert path.read_text(encoding="utf-8") == "hello\n"


MALFORMED_URLS = [
    pytest.param("not a url://", ("malformed storage URL", "'not a url://'"), id="malformed"),
    pytest.param("nosuchdb://x", ("'nosuchdb://x'", "driver"), id="unknown-dialect"),
]


@pytest.mark.parametrize(("url", "needles"), MALFORMED_URLS)
@pytest.mark.parametrize("argv", [["create", "s2", "--space", str(QUICKSTART)], ["run", "s1"],
                                  ["list"], ["show", "s1"], ["delete", "s1", "--yes"]],
                         ids=lambda a: a[0])
def test_malformed_storage_url(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                               tmp_path: Path, url: str, needles: tuple[str, ...],
                               argv: list[str]) -> None:
    monkeypatch.chdir(tmp_path)  # nothing may appear in the working directory either
    code, _, err = run_cli(capsys, "study", *argv, "--storage", url)
    assert_one_line_error(code, err, *needles)
    assert list(tmp_path.iterdir()) == []


# -- --debug ------------------------------------------------------------------------------------


@pytest.mark.usefixtures("snapshot")
@pytest.mark.parametrize("debug_first", [True, False], ids=["global", "subcommand"])
def test_debug_raises_instead_of_one_line(capsys: pytest.CaptureFixture[str],
                                          db: tuple[Path, str], tmp_path: Path,
                                          debug_first: bool) -> None:
    def argv(*rest: str | Path) -> list[str]:
        parts = [str(a) for a in rest]
        return ["--debug", "study", *parts] if debug_first else ["study", *parts, "--debug"]

    bad = write_space(tmp_path, "bad.yaml", params_with(batch_size=[0]))
    cases: list[tuple[type[Exception], list[str]]] = [
        (StudyExistsError, argv("create", "s1", "--space", QUICKSTART, "--storage", db[1])),
        (StudyNotFoundError, argv("show", "nope", "--storage", db[1])),
        (SpaceError, argv("create", "s2", "--space", bad, "--storage", db[1])),
        (StorageError, argv("list", "--storage", "nosuchdb://x")),
        (SpaceMismatchError, argv("run", "s1", "--space", CPU_TRAINING, "--storage", db[1])),
    ]
    for error, args in cases:
        with pytest.raises(error):
            main(args)
    assert "autotune: error" not in capsys.readouterr().err


# -- delete without --yes ---------------------------------------------------------------------


@pytest.mark.usefixtures("snapshot")
def test_delete_without_yes_off_a_terminal(capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch,
                                           db: tuple[Path, str]) -> None:
    # Even a "y" waiting on a non-terminal stdin must not delete anything.
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n"))
    code, out, err = run_cli(capsys, "study", "delete", "s1", "--storage", db[1])
    assert_one_line_error(code, err, "refusing to delete 's1'", "--yes")
    assert "Delete study" not in out
    code, out, _ = run_cli(capsys, "study", "show", "s1", "--storage", db[1])
    assert code == 0
    assert "'s1'" in out


@pytest.mark.usefixtures("snapshot")
def test_delete_with_debug_raises_study_error(monkeypatch: pytest.MonkeyPatch,
                                              db: tuple[Path, str]) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    with pytest.raises(StudyError, match="without --yes"):
        main(["--debug", "study", "delete", "s1", "--storage", db[1]])


# -- space mismatch and --exist-ok ------------------------------------------------------------


@pytest.mark.usefixtures("snapshot")
@pytest.mark.parametrize("kind", ["other-file", "range-changed"])
def test_run_with_different_space(capsys: pytest.CaptureFixture[str], db: tuple[Path, str],
                                  tmp_path: Path, kind: str) -> None:
    if kind == "other-file":
        space = CPU_TRAINING
    else:
        space = write_space(tmp_path, "other.yaml",
                            params_with(batch_size={"low": 16, "high": 512, "log": True}))
    code, out, err = run_cli(capsys, "study", "run", "s1", "--space", space, "--n-trials", "1",
                             "--storage", db[1])
    assert_one_line_error(code, err, "'s1'", "different search space")
    assert "trial" not in out


@pytest.mark.usefixtures("snapshot")
def test_exist_ok_with_same_space(capsys: pytest.CaptureFixture[str], db: tuple[Path, str],
                                  tmp_path: Path) -> None:
    # Same knobs, different comments and description: the same space.
    text = QUICKSTART.read_text(encoding="utf-8")
    reworded = "# reworded\n" + text.replace("description: ", "description: (v2) ")
    space = write_space(tmp_path, "same.yaml", reworded)
    for path in (QUICKSTART, space):
        code, out, err = run_cli(capsys, "study", "create", "s1", "--exist-ok", "--space", path,
                                 "--storage", db[1])
        assert code == 0, err
        assert err == ""
        assert "'s1'" in out


@pytest.mark.usefixtures("snapshot")
@pytest.mark.parametrize("kind", ["other-file", "range-changed"])
def test_exist_ok_with_different_space(capsys: pytest.CaptureFixture[str],
                                       db: tuple[Path, str], tmp_path: Path, kind: str) -> None:
    if kind == "other-file":
        space = CPU_TRAINING
    else:
        space = write_space(tmp_path, "other.yaml",
                            params_with(learning_rate={"low": 1e-4, "high": 0.1, "log": True}))
    code, _, err = run_cli(capsys, "study", "create", "s1", "--exist-ok", "--space", space,
                           "--storage", db[1])
    assert_one_line_error(code, err, "'s1'", "different search space")


# -- usage errors -----------------------------------------------------------------------------


@pytest.mark.usefixtures("snapshot")
@pytest.mark.parametrize(
    ("option", "value"),
    [("--n-trials", "0"), ("--n-trials", "-3"), ("--n-trials", "abc"), ("--n-trials", "1.5"),
     ("--timeout", "-5"), ("--timeout", "abc"), ("--timeout", "0"), ("--timeout", "nan"),
     ("--timeout", "inf"), ("--timeout", "5x")],
)
def test_bad_run_options_are_usage_errors(capsys: pytest.CaptureFixture[str],
                                          db: tuple[Path, str], option: str,
                                          value: str) -> None:
    code, _, err = run_cli(capsys, "study", "run", "s1", f"{option}={value}",
                           "--storage", db[1])
    assert code == 2
    assert_one_line_error(code, err, option, repr(value), "--help")


@pytest.mark.parametrize("argv", [["study", "frobnicate"], ["frobnicate"],
                                  ["study", "create", "s2", "--sampler", "grid"],
                                  ["study", "list", "--bogus"]],
                         ids=["action", "command", "sampler", "option"])
def test_unknown_commands_and_options(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                      argv: list[str]) -> None:
    code, _, err = run_cli(capsys, *argv, "--storage", url_of(tmp_path / "a.db"))
    assert code == 2
    assert_one_line_error(code, err)
    assert list(tmp_path.iterdir()) == []


# -- help -------------------------------------------------------------------------------------


HELP_CASES = [
    ([], ("study", "--version", "--debug", "--storage")),
    (["study"], ("create", "run", "list", "show", "delete")),
    (["study", "create"], ("--space", "--sampler", "--seed", "--exist-ok", "--storage",
                           "--json", "--debug")),
    (["study", "run"], ("--n-trials", "--timeout", "--space", "--sampler", "--quiet",
                        "--storage", "--json", "--debug")),
    (["study", "list"], ("--storage", "--json", "--debug")),
    (["study", "show"], ("--all", "--storage", "--json", "--debug")),
    (["study", "delete"], ("--yes", "--storage", "--json", "--debug")),
]


@pytest.mark.parametrize(("prefix", "options"), HELP_CASES,
                         ids=[" ".join(p) or "autotune" for p, _ in HELP_CASES])
def test_help(capsys: pytest.CaptureFixture[str], prefix: list[str],
              options: tuple[str, ...]) -> None:
    with pytest.raises(SystemExit) as info:
        main([*prefix, "--help"])
    assert info.value.code in (0, None)
    out, err = capsys.readouterr()
    assert err == ""
    assert out.startswith("usage: autotune")
    for option in options:
        assert option in out, f"{option!r} missing from `autotune {' '.join(prefix)} --help`"


# -- list on a missing database -----------------------------------------------------------------


@pytest.mark.parametrize("as_json", [False, True], ids=["table", "json"])
def test_list_on_missing_database_creates_nothing(capsys: pytest.CaptureFixture[str],
                                                  tmp_path: Path, as_json: bool) -> None:
    target = tmp_path / "sub" / "none.db"
    code, out, err = run_cli(capsys, "study", "list", "--storage", url_of(target),
                             *(["--json"] if as_json else []))
    assert code == 0
    assert err == ""
    if as_json:
        assert out.strip() == "[]"
    else:
        assert "no studies" in out
    assert not target.exists()
    assert not target.parent.exists()


def test_list_shows_the_template_study(capsys: pytest.CaptureFixture[str],
                                       db: tuple[Path, str]) -> None:
    code, out, _ = run_cli(capsys, "study", "list", "--storage", db[1])
    assert code == 0
    assert "s1" in out


# -- regressions: user-controlled keys and values -------------------------------------


@pytest.mark.usefixtures("snapshot")
def test_unhashable_backend_choice(capsys: pytest.CaptureFixture[str], db: tuple[Path, str],
                                   tmp_path: Path) -> None:
    space = write_space(tmp_path, "bad.yaml", params_with(backend=[["torch"]]))
    code, _, err = run_cli(capsys, "study", "create", "s2", "--space", space,
                           "--storage", db[1])
    assert_one_line_error(code, err, "params.backend")


@pytest.mark.usefixtures("snapshot")
def test_key_with_newline(capsys: pytest.CaptureFixture[str], db: tuple[Path, str],
                          tmp_path: Path) -> None:
    space = write_space(tmp_path, "bad.yaml", params_with(**{"batch\nsize": [8]}))
    code, _, err = run_cli(capsys, "study", "create", "s2", "--space", space,
                           "--storage", db[1])
    assert_one_line_error(code, err, "unknown parameter")
