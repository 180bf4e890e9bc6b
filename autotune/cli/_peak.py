"""``autotune peak``: the machine's measured GEMM peak per precision and thread count."""

from __future__ import annotations

import argparse
import json
from typing import Any

from autotune.cli._render import _fmt, _say


def _cmd_peak(args: argparse.Namespace, console: Any) -> int:
    import re

    from autotune.exceptions import AutotuneError
    from autotune.profiling.peak import PRECISIONS, measure_peak, peak_cache_path

    if not re.fullmatch(r"cpu|cuda:\d+", args.device):
        raise AutotuneError(f"--device: got {args.device!r}; allowed: cpu or cuda:N (the "
                            "peak of TPUs and NPUs is not measured)")
    precisions = tuple(dict.fromkeys(args.precision or PRECISIONS))
    if not args.json:
        _say(console, f"measuring {', '.join(precisions)} on {args.device} (cached figures "
                      f"are reused{'' if not args.refresh else ': --refresh, none'}) ...")
    table = measure_peak(args.device, precisions, args.threads, refresh=args.refresh)
    entries = sorted(table.entries, key=lambda e: (e.threads, PRECISIONS.index(e.precision)))
    if args.json:
        print(json.dumps({"cache": str(peak_cache_path()),
                          "entries": [e.to_dict() for e in entries]}, indent=2))
        return 0
    from rich.table import Table

    out = Table(title=f"Measured peak of {args.device}", title_justify="left")
    for col in ("precision", "threads", "GFLOP/s", "spread", "bandwidth GB/s", "method"):
        out.add_column(col, justify="right" if col in ("threads", "GFLOP/s", "spread",
                                                       "bandwidth GB/s") else "left")
    for e in entries:
        rate = "-" if e.flops_per_s is None else _fmt(e.flops_per_s / 1e9)
        unit = " (int ops)" if e.op_kind == "int" and e.flops_per_s is not None else ""
        bandwidth = None if e.bandwidth_bytes_per_s is None else e.bandwidth_bytes_per_s / 1e9
        out.add_row(e.precision, str(e.threads), rate + unit, _fmt(e.spread),
                    _fmt(bandwidth), e.method if e.flops_per_s is not None else
                    f"not measured: {e.reason}")
    console.print(out)
    _say(console, f"cached in {peak_cache_path()}")
    return 0
