"""The embedded training example of `tensorforge train`: a small CNN learns which quadrant of a noisy 16x16 image
holds a bright blob. The data is generated deterministically from a seed; blob size, brightness and position
within the quadrant vary, and the background is noisy, so the network must learn a spatial feature detector."""

from __future__ import annotations

import numpy as np

from tensorforge.frontends import nn

SIZE = 16
CLASSES = 4


def quadrant_blobs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n images (n, 1, 16, 16) float32 and their labels (n,) int64: the quadrant (0..3, row-major) of the blob."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, n)
    half = SIZE // 2
    cy = (labels // 2) * half + rng.uniform(1.5, half - 1.5, n)
    cx = (labels % 2) * half + rng.uniform(1.5, half - 1.5, n)
    sigma = rng.uniform(0.8, 1.8, n)
    amp = rng.uniform(0.6, 1.4, n)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    d2 = (yy[None] - cy[:, None, None]) ** 2 + (xx[None] - cx[:, None, None]) ** 2
    images = amp[:, None, None] * np.exp(-d2 / (2 * sigma[:, None, None] ** 2))
    images += rng.normal(0.0, 0.35, images.shape)
    return images[:, None].astype(np.float32), labels.astype(np.int64)


def small_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(16 * 4 * 4, CLASSES))
