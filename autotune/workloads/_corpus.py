"""Real text with nothing to download: the Python standard library's own source files.

Every Python installation ships them, so a byte-level language model (vocabulary 256, no
tokenizer) has a deterministic corpus of several megabytes on any machine. The split is by
file (every :data:`HELD_OUT_EVERY`-th file of the sorted list is held out), so held-out
perplexity measures text the model never saw, not a neighbouring window of a file it did.
The bytes differ between Python versions; the corpus records which one it read.
"""

from __future__ import annotations

import functools
import hashlib
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: Every n-th source file (sorted by name) is held out.
HELD_OUT_EVERY = 10
#: At most this many bytes are read (the top-level modules are about 4.7 MB on 3.11).
MAX_BYTES = 8 * 2**20


@dataclass(frozen=True)
class Corpus:
    """Train and held-out bytes (``uint8`` arrays) and where they came from."""

    train: np.ndarray
    held_out: np.ndarray
    source: str
    files_train: int
    files_held_out: int
    digest: str

    def windows(self, split: str, n: int, length: int) -> np.ndarray:
        """``n`` evenly spaced, non-overlapping windows of ``length`` bytes of ``split``
        (deterministic: the held-out perplexity is always taken on the same text)."""
        data = self.held_out if split == "held_out" else self.train
        if len(data) < length:
            raise ValueError(f"the {split} corpus has {len(data)} bytes, fewer than {length}")
        starts = np.linspace(0, len(data) - length, num=n).astype(np.int64)
        return np.stack([data[s:s + length] for s in starts])


@functools.cache
def stdlib_corpus() -> Corpus:
    """The standard library's top-level ``*.py`` files, split by file."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(root.glob("*.py"))
    if len(files) < HELD_OUT_EVERY:
        raise RuntimeError(f"{root}: fewer than {HELD_OUT_EVERY} standard library sources")
    train: list[bytes] = []
    held: list[bytes] = []
    total = 0
    for i, path in enumerate(files):
        blob = path.read_bytes()
        total += len(blob)
        if total > MAX_BYTES:
            break
        (held if i % HELD_OUT_EVERY == HELD_OUT_EVERY - 1 else train).append(blob)
    train_bytes, held_bytes = b"".join(train), b"".join(held)
    digest = hashlib.sha256(train_bytes + b"\0" + held_bytes).hexdigest()[:16]
    return Corpus(np.frombuffer(train_bytes, dtype=np.uint8),
                  np.frombuffer(held_bytes, dtype=np.uint8),
                  f"Python {sys.version.split()[0]} standard library ({root})",
                  len(train), len(held), digest)
