"""The 8x8 handwritten digits (UCI, as shipped by scikit-learn), split into training and validation.

`digits.csv.gz` is scikit-learn's copy of the UCI test set (1797 images, 64 pixels in 0..16, then
the label), shipped here so the example needs no download. Every fifth image is held out.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

DATA_FILE = Path(__file__).with_name("digits.csv.gz")
PIXELS = 64
CLASSES = 10


def load() -> tuple[np.ndarray, np.ndarray]:
    """All images as float32 in [0, 1] and their labels as int64."""
    table = np.loadtxt(DATA_FILE, delimiter=",", dtype=np.float64)
    images = (table[:, :PIXELS] / 16.0).astype(np.float32)
    labels = table[:, PIXELS].astype(np.int64)
    return images, labels


def training() -> tuple[np.ndarray, np.ndarray]:
    images, labels = load()
    keep = np.arange(len(labels)) % 5 != 0
    return images[keep], labels[keep]


def validation() -> tuple[np.ndarray, np.ndarray]:
    images, labels = load()
    held_out = np.arange(len(labels)) % 5 == 0
    return images[held_out], labels[held_out]
