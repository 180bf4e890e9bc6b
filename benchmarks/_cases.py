"""A benchmark configuration, shared by the fidelity and repeatability benchmarks."""

from __future__ import annotations

import argparse
from dataclasses import dataclass


@dataclass(frozen=True)
class Case:
    """One configuration: what a trial would be given as knobs."""

    mode: str
    precision: str
    batch_size: int
    threads: int
    workload: str = "mlp"

    @classmethod
    def parse(cls, text: str) -> Case:
        """``mode:precision:batch:threads[:workload]``, e.g. ``infer:bf16:1024:2``."""
        parts = text.split(":")
        if len(parts) not in (4, 5) or parts[0] not in ("train", "infer"):
            raise argparse.ArgumentTypeError(
                f"{text!r}: expected mode:precision:batch:threads[:workload]")
        workload = parts[4] if len(parts) == 5 else "mlp"
        return cls(parts[0], parts[1], int(parts[2]), int(parts[3]), workload)

    @property
    def label(self) -> str:
        """Short name used in the table."""
        return (f"{self.workload} {self.mode} {self.precision} b{self.batch_size} "
                f"t{self.threads}")
