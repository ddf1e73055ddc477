"""Draw the ACoSP selection scheme: the soft top-k mask over sorted logits at falling temperatures.

The threshold x0 and the k channels above it, which the hard mask keeps, are marked.

    python figures/plot_soft_mask.py [--output figures/acosp.png] [--channels 64] [--keep 16]

Drawn with OpenCV alone, so it needs nothing beyond the repository's dependencies.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import torch

from acosp.masks import normalize_logits, sigmoid_soft_top_k
from semseg.atomic import atomic_path

TEMPERATURES = (1.0, 0.1, 0.01, 0.001)
COLOURS = ((200, 120, 40), (40, 160, 60), (30, 110, 230), (60, 40, 200))  # BGR
WIDTH, HEIGHT, MARGIN = 900, 520, 70


def draw(channels: int, keep: int, seed: int = 0) -> np.ndarray:
    logits = torch.randn(channels, generator=torch.Generator().manual_seed(seed))
    z = normalize_logits(logits).sort().values
    image = np.full((HEIGHT, WIDTH, 3), 255, np.uint8)
    left, right, top, bottom = MARGIN, WIDTH - 30, 50, HEIGHT - MARGIN
    z_min, z_max = float(z.min()), float(z.max())

    def to_pixel(x: float, y: float) -> tuple[int, int]:
        return int(left + (x - z_min) / (z_max - z_min) * (right - left)), int(bottom - y * (bottom - top))

    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.rectangle(image, (left, top), (right, bottom), (0, 0, 0), 1)
    for y in (0.0, 0.5, 1.0):
        _, py = to_pixel(z_min, y)
        cv2.line(image, (left - 5, py), (left, py), (0, 0, 0), 1)
        cv2.putText(image, f"{y:.1f}", (left - 45, py + 5), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    _, x0 = sigmoid_soft_top_k(logits, keep, 1.0)
    px, _ = to_pixel(float(x0), 0)
    # The k kept channels lie above x0: shade their side of the threshold and ring their dots below.
    shade = image.copy()
    cv2.rectangle(shade, (px, top + 1), (right - 1, bottom - 1), (235, 245, 235), -1)
    image[:] = cv2.addWeighted(shade, 0.8, image, 0.2, 0)
    cv2.line(image, (px, top), (px, bottom), (120, 120, 120), 1, cv2.LINE_AA)
    cv2.putText(image, "x0 = quantile(z, 1 - k/C)", (px + 8, bottom - 30), font, 0.5, (80, 80, 80), 1, cv2.LINE_AA)
    cv2.putText(image, f"k = {keep} kept", (px + 150, bottom - 120), font, 0.55, (40, 120, 40), 1, cv2.LINE_AA)
    removed = f"C - k = {channels - keep} removed"
    width = cv2.getTextSize(removed, font, 0.55, 1)[0][0]
    cv2.putText(image, removed, (px - width - 45, bottom - 30), font, 0.55, (60, 60, 160), 1, cv2.LINE_AA)

    dense = torch.linspace(z_min, z_max, 600)
    for temperature, colour in zip(TEMPERATURES, COLOURS):
        curve = torch.sigmoid((dense - x0) / temperature)
        points = np.array([to_pixel(float(x), float(y)) for x, y in zip(dense, curve)], np.int32)
        cv2.polylines(image, [points], False, colour, 2, cv2.LINE_AA)
        mask = torch.sigmoid((z - x0) / temperature)
        for x, y in zip(z, mask):
            cv2.circle(image, to_pixel(float(x), float(y)), 3, colour, -1, cv2.LINE_AA)
    for x in z:  # the channels themselves, on the axis: kept (ringed) or removed
        point = to_pixel(float(x), 0.0)
        point = (point[0], bottom + 14)
        kept = bool(x > x0)
        cv2.circle(image, point, 4, (40, 140, 40) if kept else (150, 150, 150), -1 if kept else 1, cv2.LINE_AA)
    for row, (temperature, colour) in enumerate(zip(TEMPERATURES, COLOURS)):
        y = top + 25 + 22 * row
        cv2.line(image, (left + 15, y - 5), (left + 45, y - 5), colour, 2, cv2.LINE_AA)
        cv2.putText(image, f"T = {temperature:g}", (left + 55, y), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    title = f"soft top-k mask: keep k={keep} of C={channels} channels, mask = sigmoid((z - x0) / T)"
    cv2.putText(image, title, (left, 30), font, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    label = "normalised logit z (dots: the channels of one layer; filled: kept)"
    cv2.putText(image, label, (left + 150, HEIGHT - 20), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return image


def save_png(image: np.ndarray, path: Path) -> None:
    with atomic_path(path) as temporary:
        if not cv2.imwrite(str(temporary), image):
            raise OSError(f"OpenCV could not write {path}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=Path("figures/acosp.png"))
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--keep", type=int, default=16)
    args = parser.parse_args(argv)
    if not 1 <= args.keep < args.channels:
        parser.error(f"--keep must lie in [1, --channels), got --keep {args.keep} --channels {args.channels}")
    save_png(draw(args.channels, args.keep), args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
