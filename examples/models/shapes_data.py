"""Generated data shared by the example models: 16x16 grey images of four shapes
(square, cross, disc, bar) at random places and sizes, with noise. Nothing is downloaded."""

from __future__ import annotations

import numpy as np

SIZE = 16


def make_shapes(batch_size: int, rng: np.random.Generator,
                channels_last: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(images, labels)``: float32 ``(N, 1, 16, 16)`` (or ``(N, 16, 16, 1)``), int64."""
    labels = rng.integers(0, 4, batch_size)
    images = rng.normal(0, 0.3, (batch_size, SIZE, SIZE)).astype(np.float32)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    for i, label in enumerate(labels):
        r = int(rng.integers(3, 6))
        cy, cx = rng.integers(r, SIZE - r, 2)
        if label == 0:
            mask = (abs(yy - cy) <= r) & (abs(xx - cx) <= r)
        elif label == 1:
            mask = ((abs(yy - cy) <= 1) & (abs(xx - cx) <= r)) | \
                   ((abs(xx - cx) <= 1) & (abs(yy - cy) <= r))
        elif label == 2:
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        else:
            mask = (abs(yy - cy) <= 1) & (abs(xx - cx) <= r + 2)
        images[i][mask] += 1.0
    images = images[:, None] if not channels_last else images[..., None]
    return np.ascontiguousarray(images), labels.astype(np.int64)
