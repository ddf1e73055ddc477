"""Pictures of a network's predictions: colour maps and overlays of single images or folders."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from util.dataset import read_image
from util.evaluate import write_png
from util.inference import SlidingWindowPredictor
from util.palette import colorize, overlay

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def image_paths(path: str | os.PathLike) -> list[Path]:
    """``path`` itself, or the images in the folder ``path`` (sorted, each once, not recursive)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such image or folder")
    images = sorted(child for child in path.iterdir() if child.is_file() and child.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise FileNotFoundError(f"{path}: the folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return images


def output_names(paths: Sequence[Path]) -> list[str]:
    """The file stem of each image; ``stem_suffix`` where two images share a stem (a.jpg, a.png)."""
    stems = [path.stem for path in paths]
    return [f"{path.stem}_{path.suffix.lstrip('.')}" if stems.count(path.stem) > 1 else path.stem for path in paths]


def predict_images(
    predictor: SlidingWindowPredictor,
    paths: Sequence[Path],
    output: str | os.PathLike,
    colors: np.ndarray,
    alpha: float = 0.5,
) -> tuple[list[Path], list[str]]:
    """Write ``<name>_color.png`` and ``<name>_overlay.png`` per image; (files written, failures)."""
    written, failures = [], []
    output = Path(output)
    for path, name in zip(paths, output_names(paths)):
        try:
            image = read_image(str(path))
            color = colorize(predictor.predict(image), colors)
            for suffix, picture in (("color", color), ("overlay", overlay(image, color, alpha))):
                target = output / f"{name}_{suffix}.png"
                write_png(target, picture)
                written.append(target)
        except (OSError, ValueError) as error:
            message = str(error) if str(path) in str(error) else f"{path}: {error}"
            failures.append(message)
            logger.error("%s", message)
    return written, failures
