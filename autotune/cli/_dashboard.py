"""``autotune dashboard``: serve the read-only web dashboard."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def _cmd_dashboard(args: argparse.Namespace, console: Any) -> int:
    from autotune.exceptions import AutotuneError

    try:
        import plotly  # noqa: F401 (the dashboard extra)

        from autotune.dashboard.app import make_dashboard_server
    except ImportError as e:  # plotly is an extra: say how to get it, in one line
        raise AutotuneError(f"{e}; install it with: pip install 'autotune[dashboard]'") from e
    try:
        server = make_dashboard_server(args.storage, args.host, args.port)
    except OSError as e:
        raise AutotuneError(f"cannot listen on {args.host}:{args.port}: {e}") from None
    import logging

    # A page that fails shows one line; its traceback goes to this terminal.
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.WARNING)
    logging.getLogger("autotune.dashboard").addHandler(handler)
    try:
        print(f"autotune dashboard: http://{args.host}:{server.server_port}/", flush=True)
        server.serve_forever()
    except KeyboardInterrupt:  # Ctrl-C (or SIGTERM) is how a dashboard is meant to end
        print("autotune dashboard: stopped", file=sys.stderr)
    finally:
        server.server_close()
    return 0
