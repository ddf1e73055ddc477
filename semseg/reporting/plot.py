"""Line charts and labelled image grids drawn with OpenCV, so figures need nothing beyond the dependencies."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from semseg.atomic import atomic_path

FONT = cv2.FONT_HERSHEY_SIMPLEX
BLACK, GREY = (0, 0, 0), (120, 120, 120)


def text(image: np.ndarray, words: str, origin: tuple[int, int], scale: float = 0.5, colour=BLACK) -> None:
    cv2.putText(image, words, origin, FONT, scale, colour, 1, cv2.LINE_AA)


def text_width(words: str, scale: float = 0.5) -> int:
    return cv2.getTextSize(words, FONT, scale, 1)[0][0]


class Panel:
    """A chart area inside ``image`` with data ranges on x and y (y linear or logarithmic)."""

    def __init__(self, image, box: tuple[int, int, int, int], x_range, y_range, log_y: bool = False):
        self.image, (self.left, self.top, self.right, self.bottom) = image, box
        self.x_range, self.y_range, self.log_y = x_range, y_range, log_y

    def _y(self, y: float) -> float:
        return math.log10(y) if self.log_y else y

    def pixel(self, x: float, y: float) -> tuple[int, int]:
        (x0, x1), (y0, y1) = self.x_range, (self._y(v) for v in self.y_range)
        px = self.left + (x - x0) / (x1 - x0) * (self.right - self.left)
        py = self.bottom - (self._y(y) - y0) / (y1 - y0) * (self.bottom - self.top)
        return round(px), round(py)

    def frame(self, x_ticks: Sequence[float], y_ticks: Sequence[float], x_label: str, y_label: str, fmt="{:g}"):
        cv2.rectangle(self.image, (self.left, self.top), (self.right, self.bottom), BLACK, 1)
        for x in x_ticks:
            px, _ = self.pixel(x, self.y_range[0])
            cv2.line(self.image, (px, self.bottom), (px, self.bottom + 5), BLACK, 1)
            label = fmt.format(x)
            text(self.image, label, (px - text_width(label, 0.45) // 2, self.bottom + 20), 0.45)
        for y in y_ticks:
            _, py = self.pixel(self.x_range[0], y)
            cv2.line(self.image, (self.left - 5, py), (self.left, py), BLACK, 1)
            label = fmt.format(y)
            text(self.image, label, (self.left - 10 - text_width(label, 0.45), py + 5), 0.45)
        text(self.image, x_label, ((self.left + self.right - text_width(x_label)) // 2, self.bottom + 42))
        text(self.image, y_label, (self.left, self.top - 10))

    def line(self, xs: Sequence[float], ys: Sequence[float], colour, thickness: int = 2, dots: bool = False):
        points = np.array([self.pixel(x, y) for x, y in zip(xs, ys)], np.int32)
        cv2.polylines(self.image, [points], False, colour, thickness, cv2.LINE_AA)
        if dots:
            for point in points:
                cv2.circle(self.image, tuple(int(v) for v in point), 4, colour, -1, cv2.LINE_AA)

    def legend(self, entries: Sequence[tuple[str, tuple[int, int, int]]], corner: tuple[int, int]):
        x, y = corner
        for row, (label, colour) in enumerate(entries):
            cv2.line(self.image, (x, y + 22 * row - 5), (x + 30, y + 22 * row - 5), colour, 2, cv2.LINE_AA)
            text(self.image, label, (x + 40, y + 22 * row), 0.5)


def labelled_grid(columns: Sequence[str], rows: Sequence[Sequence[np.ndarray]], cell: int, gap: int = 6) -> np.ndarray:
    """RGB images in a grid under column titles; each image scaled (nearest) to ``cell`` pixels high."""
    header = 30
    resized = [
        [cv2.resize(im, (round(im.shape[1] * cell / im.shape[0]), cell), interpolation=cv2.INTER_NEAREST) for im in row]
        for row in rows
    ]
    widths = [max(row[c].shape[1] for row in resized) for c in range(len(columns))]
    height = header + len(rows) * (cell + gap)
    canvas = np.full((height, sum(widths) + gap * (len(columns) + 1), 3), 255, np.uint8)
    x = gap
    for c, title in enumerate(columns):
        scale = 0.5 if text_width(title, 0.5) <= widths[c] else 0.4
        text(canvas, title, (x + max(0, (widths[c] - text_width(title, scale)) // 2), 20), scale)
        for r, row in enumerate(resized):
            y = header + r * (cell + gap)
            canvas[y : y + cell, x : x + row[c].shape[1]] = row[c]
        x += widths[c] + gap
    return canvas


def save_png(image: np.ndarray, path: str | Path, rgb: bool = False) -> Path:
    """Write a PNG atomically; ``rgb`` images are converted to OpenCV's BGR first."""
    if rgb:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    with atomic_path(path) as temporary:
        if not cv2.imwrite(str(temporary), image):
            raise OSError(f"OpenCV could not write {path}")
    return Path(path)
