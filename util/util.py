"""semseg's helper names (``from util.util import intersectionAndUnionGPU``), so its code ports unchanged.

The counting itself lives in ``util/metrics.py`` and the colours in ``util/palette.py``.
"""

from __future__ import annotations

import numpy as np
import torch

from util.metrics import areas, confusion_matrix
from util.palette import colorize

__all__ = ["AverageMeter", "colorize", "intersectionAndUnion", "intersectionAndUnionGPU", "poly_learning_rate"]


class AverageMeter:
    """The latest value and the running average of a quantity (a loss, a batch time)."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.val, self.avg, self.sum, self.count = 0.0, 0.0, 0.0, 0

    def update(self, val, n: int = 1) -> None:
        self.val = val
        self.sum += val * n
        self.count += n
        self.avg = self.sum / self.count


def poly_learning_rate(base_lr: float, curr_iter: int, max_iter: int, power: float = 0.9) -> float:
    """``base_lr * (1 - curr_iter / max_iter) ** power``: semseg's schedule, 0 at ``max_iter``."""
    if max_iter <= 0:
        raise ValueError(f"max_iter must be positive, got {max_iter}")
    return base_lr * max(0.0, 1 - float(curr_iter) / max_iter) ** power


def intersectionAndUnionGPU(output: torch.Tensor, target: torch.Tensor, K: int, ignore_index: int = 255):
    """Per-class (intersection, union, target) areas as int64 tensors on ``output``'s device (CPU too)."""
    return areas(confusion_matrix(output, target, K, ignore_index))


def intersectionAndUnion(output: np.ndarray, target: np.ndarray, K: int, ignore_index: int = 255):
    """Per-class (intersection, union, target) areas as int64 numpy arrays."""
    confusion = confusion_matrix(np.asarray(output), np.asarray(target), K, ignore_index)
    return tuple(area.numpy() for area in areas(confusion))
