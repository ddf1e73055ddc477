"""Class names and colours of a dataset (``dataset/<name>/<name>_names.txt``, ``_colors.txt``).

Predictions are stored as gray PNGs of class ids; the colour files turn them into pictures.
"""

from __future__ import annotations

import os

import numpy as np


def read_names(path: str | os.PathLike) -> list[str]:
    """One class name per non-empty line."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: class names file not found")
    with open(path, encoding="utf-8") as handle:
        return [line.strip() for line in handle if line.strip()]


def read_colors(path: str | os.PathLike) -> np.ndarray:
    """A ``classes x 3`` uint8 array of RGB colours, one 'R G B' line per class."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: class colours file not found")
    colors = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            fields = line.split()
            try:
                values = [int(field) for field in fields]
            except ValueError:
                values = []
            if len(values) != 3 or not all(0 <= value <= 255 for value in values):
                raise ValueError(f"{path}, line {number}: expected 'R G B' with values in 0..255, got {line.strip()!r}")
            colors.append(values)
    if not colors:
        raise ValueError(f"{path}: the colours file is empty")
    return np.asarray(colors, dtype=np.uint8)


def colorize(gray: np.ndarray, palette) -> np.ndarray:
    """The RGB picture (HxWx3 uint8) of a map of class ids.

    ``palette`` is a ``classes x 3`` array, or semseg's flat list ``[r0, g0, b0, r1, ...]``. Ids
    without a colour (the ignore label 255, say) are black.
    """
    colors = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    table = np.zeros((256, 3), dtype=np.uint8)
    table[: min(len(colors), 256)] = colors[:256]
    gray = np.asarray(gray)
    if gray.min(initial=0) < 0 or gray.max(initial=0) > 255:
        raise ValueError(f"class ids must lie in 0..255 to colorize, got {gray.min()}..{gray.max()}")
    return table[gray.astype(np.intp)]


def overlay(image: np.ndarray, color: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """``color`` blended over ``image`` (both HxWx3, same channel order): ``alpha`` of the colour."""
    if image.shape[:2] != color.shape[:2]:
        raise ValueError(f"image {image.shape[:2]} and colour map {color.shape[:2]} differ in size")
    blended = (1 - alpha) * image.astype(np.float32) + alpha * color.astype(np.float32)
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)
