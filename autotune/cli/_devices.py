"""``autotune devices``: backends, whether they are installed, and their devices."""

from __future__ import annotations

import argparse
import json
from typing import Any

from autotune.cli._render import _fmt, _say


def _cmd_devices(args: argparse.Namespace, console: Any) -> int:
    from autotune.devices import discover

    reports = discover(args.backend)
    if args.json:
        print(json.dumps([r.to_dict() for r in reports], indent=2))
        return 0
    from rich.table import Table

    table = Table(title="Backends and devices", title_justify="left")
    for col in ("backend", "version", "device", "name", "memory MB", "driver", "detail"):
        table.add_column(col)
    for r in reports:
        if not r.installed:
            table.add_row(r.backend, "not installed", "-", f"install: {r.install_hint}",
                          "", "", "")
        elif r.error:
            table.add_row(r.backend, r.version or "?", "-", f"error: {r.error}", "", "", "")
        for d in r.devices:
            table.add_row(r.backend, r.version or "", d.id, d.name, _fmt(d.memory_mb),
                          d.driver or "-", d.detail)
    console.print(table)
    for r in reports:  # what a probe could not list, and why
        for note in getattr(r, "notes", ()):
            _say(console, f"note: {r.backend}: {note}")
    return 0
