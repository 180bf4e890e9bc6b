"""The ``autotune`` command: a thin layer over the Python API.

Every command takes ``--storage URL`` (default ``$AUTOTUNE_STORAGE`` or
``sqlite:///studies/autotune.db``) and ``--json`` for scripts. Errors print one line
(``autotune: error: ...``) and exit non-zero; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from autotune.cli._dashboard import _cmd_dashboard
from autotune.cli._devices import _cmd_devices
from autotune.cli._exitcodes import (
    EXIT_BROKEN_PIPE,
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_NOT_HELD,
    EXIT_USAGE,
)
from autotune.cli._measure import _cmd_measure
from autotune.cli._parser import build_parser
from autotune.cli._peak import _cmd_peak
from autotune.cli._prelaunch import _cmd_gate, _cmd_recommend, _cmd_verify
from autotune.cli._render import _fmt, _make_console, _print_error
from autotune.cli._study import (
    _cmd_create,
    _cmd_delete,
    _cmd_export,
    _cmd_import,
    _cmd_list,
    _cmd_report,
    _cmd_run,
    _cmd_show,
    _cmd_worker,
)

__all__ = ["EXIT_BROKEN_PIPE", "EXIT_ERROR", "EXIT_INTERRUPTED", "EXIT_NOT_HELD", "EXIT_USAGE",
           "_fmt", "build_parser", "main"]


#: Command (``devices``, ``measure``) or action (``study run``, ``verify`` ...) -> handler.
_COMMANDS: dict[str, Callable[[Any, Any], int]] = {
    "devices": _cmd_devices, "peak": _cmd_peak, "measure": _cmd_measure, "create": _cmd_create,
    "run": _cmd_run, "list": _cmd_list, "show": _cmd_show, "delete": _cmd_delete,
    "verify": _cmd_verify, "export": _cmd_export, "import": _cmd_import,
    "report": _cmd_report, "recommend": _cmd_recommend, "gate": _cmd_gate,
    "dashboard": _cmd_dashboard, "worker": _cmd_worker,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``autotune`` console script. Returns the exit code.

    A reader that stops early (``autotune study show NAME --json | head``) ends the
    command quietly with :data:`EXIT_BROKEN_PIPE`, like a program killed by SIGPIPE.
    """
    try:
        code = _main(argv)
        # Flush here: a closed pipe must surface now, not as a message at interpreter exit.
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        _discard_stdout()
        return EXIT_BROKEN_PIPE


def _discard_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's final flush of what is still
    buffered does not fail again (the Python docs' note on SIGPIPE)."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # no file descriptor (captured, replaced)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    if args.command == "study" and args.action is None:
        parser.error("study needs an action: create, run, list, show, delete, export, "
                     "import or report")
    # Logs and pipes get a wide console so tables and trial lines do not wrap mid-word.
    to_stderr = bool(getattr(args, "json", False))
    stream = sys.stderr if to_stderr else sys.stdout
    console = _make_console(stderr=to_stderr, width=None if stream.isatty() else 160)
    _quiet_libraries()
    from autotune.exceptions import AutotuneError

    action = args.command if args.command in ("devices", "peak", "measure", "worker") \
        else args.action
    from autotune.space import one_line

    _terminate_as_interrupt()
    try:
        return _COMMANDS[action](args, console)
    except AutotuneError as e:
        if args.debug:
            raise
        _print_error(one_line(str(e)))
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("autotune: interrupted; finished trials are stored", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader of stdout went away: no error to report
        raise
    except Exception as e:  # a bug or a library error: still one line unless --debug
        if args.debug:
            raise
        _print_error(f"{type(e).__name__}: {one_line(str(e))} "
                     "(run with --debug for the traceback)")
        return EXIT_ERROR


def _terminate_as_interrupt() -> None:
    """SIGTERM/SIGHUP (a CI job cancelled, a closed terminal) unwind like Ctrl-C, so the
    running trial's worker is killed and the trial recorded, not orphaned."""
    import signal

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)


def _quiet_libraries() -> None:
    """Optuna logs every trial at INFO; autotune prints its own lines instead."""
    import logging

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("autotune").addHandler(logging.NullHandler())
    if os.environ.get("AUTOTUNE_LOG"):
        logging.basicConfig(level=os.environ["AUTOTUNE_LOG"].upper())
