"""Segmentation scores from one confusion matrix accumulated over a whole split.

Per-image means would weight a small image like a large one; semseg (and this module) instead sum
per-class intersection, union and target areas over every pixel of the split and divide once. The
counts are integers, so they are the same on CPU and GPU, and summing them over processes
(``reduce``) gives exactly the single-process result.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from semseg.models import is_classification

ABSENT = ("exclude", "zero")
"""What a class absent from both prediction and ground truth scores: NaN, left out of the means
(``exclude``), or 0 and counted (``zero``, semseg's convention)."""


def _as_tensor(values: Any, device: torch.device | None = None) -> torch.Tensor:
    if isinstance(values, np.ndarray):
        values = torch.from_numpy(np.ascontiguousarray(values))
    elif not isinstance(values, torch.Tensor):
        values = torch.as_tensor(values)
    return values.to(device) if device is not None else values


def confusion_matrix(pred: Any, target: Any, classes: int, ignore_index: int = 255) -> torch.Tensor:
    """``classes x classes`` int64 counts, rows = ground truth, columns = prediction.

    ``pred`` and ``target`` hold class ids of the same shape (tensors of any device, or numpy
    arrays); pixels whose target is ``ignore_index`` are not counted. Any other value outside
    ``0..classes-1`` is an error, since it would silently drop pixels from the scores.
    """
    pred, target = _as_tensor(pred), _as_tensor(target)
    target = target.to(pred.device)
    if pred.is_floating_point() or target.is_floating_point():
        raise ValueError("prediction and target must hold integer class ids (take the argmax of the scores first)")
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} differs from target shape {tuple(target.shape)}")
    pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
    valid = target != ignore_index
    pred, target = pred[valid], target[valid]
    if target.numel():
        for what, values in (("target", target), ("prediction", pred)):
            low, high = int(values.min()), int(values.max())
            if low < 0 or high >= classes:
                bad = low if low < 0 else high
                raise ValueError(
                    f"{what} holds the value {bad}, which is neither a class id (0..{classes - 1}) "
                    f"nor the ignore index {ignore_index}"
                )
    counts = torch.bincount(target * classes + pred, minlength=classes * classes)
    return counts.reshape(classes, classes)


def areas(confusion: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-class (intersection, union, target) areas of a confusion matrix."""
    intersection = confusion.diagonal()
    target = confusion.sum(1)
    union = confusion.sum(0) + target - intersection
    return intersection, union, target


def void_as_last_class_areas(confusion: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(intersection, union, target) as the publication's CamVid test counted them.

    ``confusion`` is ``(C + 1) x (C + 1)``, its last row the void pixels (ignore_label). That test
    histogrammed labels into C bins whose last one is closed, so void pixels were ground truth of
    class C - 1 that no prediction matched, and predictions on them counted towards their class.
    """
    classes = confusion.shape[0] - 1
    intersection = confusion.diagonal()[:classes]
    target = confusion[:classes].sum(1)
    target[classes - 1] += confusion[classes].sum()
    union = confusion[:, :classes].sum(0) + target - intersection
    return intersection, union, target


def scores(intersection: Any, union: Any, target: Any, absent: str = "exclude") -> dict[str, float | int | list[float]]:
    """mIoU, mAcc and allAcc (as in semseg) from per-class areas summed over a split.

    With ``absent="exclude"`` a class whose union is 0 has IoU NaN and a class with no labelled
    pixel has Acc NaN; the means skip them, and ``excluded_iou`` / ``excluded_acc`` count them.
    With ``absent="zero"`` such classes score 0 and count in the means (semseg's numbers).
    """
    if absent not in ABSENT:
        raise ValueError(f"absent must be one of {', '.join(ABSENT)}, got {absent!r}")
    intersection, union, target = (
        np.asarray(_as_tensor(area).cpu(), dtype=np.float64) for area in (intersection, union, target)
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, intersection / union, np.nan)
        acc = np.where(target > 0, intersection / target, np.nan)
        allacc = intersection.sum() / target.sum() if target.sum() > 0 else math.nan
    if absent == "zero":
        iou, acc = np.nan_to_num(iou, nan=0.0), np.nan_to_num(acc, nan=0.0)
        allacc = 0.0 if math.isnan(allacc) else allacc

    def mean(values: np.ndarray) -> float:
        kept = values[~np.isnan(values)]
        return float(kept.mean()) if kept.size else math.nan

    return {
        "miou": mean(iou),
        "macc": mean(acc),
        "allacc": float(allacc),
        "iou": iou.tolist(),
        "acc": acc.tolist(),
        "excluded_iou": int(np.isnan(iou).sum()),
        "excluded_acc": int(np.isnan(acc).sum()),
        "absent": absent,
    }


def _all_reduce(counts: torch.Tensor) -> None:
    """Sum ``counts`` over every process, in place (NCCL needs them on the GPU for the moment)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        moved = counts.cuda() if dist.get_backend() == "nccl" and counts.device.type != "cuda" else counts
        dist.all_reduce(moved)
        if moved is not counts:
            counts.copy_(moved)


class SegmentationMetrics:
    """Accumulate a confusion matrix over a split; ``reduce`` sums it over processes.

    >>> metrics = SegmentationMetrics(classes=19, ignore_index=255)
    >>> metrics.update(logits.argmax(1), labels)    # every batch, any device
    >>> metrics.reduce().summary()["miou"]          # once, after the split
    """

    def __init__(self, classes: int, ignore_index: int = 255, device: str | torch.device | None = None):
        if classes < 1:
            raise ValueError(f"classes must be at least 1, got {classes}")
        self.classes, self.ignore_index = int(classes), int(ignore_index)
        self.confusion = torch.zeros(self.classes, self.classes, dtype=torch.int64, device=device)

    def reset(self) -> None:
        self.confusion.zero_()

    def update(self, pred: Any, target: Any) -> torch.Tensor:
        """Add one batch (class ids, same shape) and return its own confusion matrix."""
        counts = confusion_matrix(_as_tensor(pred, self.confusion.device), target, self.classes, self.ignore_index)
        self.confusion += counts
        return counts

    def reduce(self) -> SegmentationMetrics:
        """Sum the counts of every process (a no-op without an initialised process group)."""
        _all_reduce(self.confusion)
        return self

    @property
    def intersection(self) -> torch.Tensor:
        return areas(self.confusion)[0]

    @property
    def union(self) -> torch.Tensor:
        return areas(self.confusion)[1]

    @property
    def target(self) -> torch.Tensor:
        return areas(self.confusion)[2]

    def summary(self, absent: str = "exclude") -> dict[str, float | int | list[float]]:
        """``miou``, ``macc``, ``allacc``, per-class ``iou`` and ``acc`` lists, and the excluded counts."""
        return scores(*areas(self.confusion), absent=absent)


class ClassificationAccuracy:
    """Top-1 accuracy over a split (CIFAR-10): correct and total counts, summed over processes."""

    def __init__(self, device: str | torch.device | None = None):
        self.counts = torch.zeros(2, dtype=torch.int64, device=device)  # correct, total

    def update(self, pred: Any, target: Any) -> None:
        """Add a batch of predicted class ids (N) and labels (N)."""
        pred, target = _as_tensor(pred, self.counts.device), _as_tensor(target, self.counts.device)
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} differs from target shape {tuple(target.shape)}")
        self.counts += torch.stack([(pred == target).sum(), torch.tensor(target.numel(), device=target.device)])

    def reduce(self) -> dict[str, float]:
        """``{"accuracy": ...}`` over every process (NaN before any update)."""
        _all_reduce(self.counts)
        correct, total = self.counts.tolist()
        return {"accuracy": correct / total if total else math.nan}


class EpochSegmentationMetrics(SegmentationMetrics):
    """``SegmentationMetrics`` for a training loop: ``reduce()`` returns ``{"mIoU", "mAcc", "allAcc"}``.

    A label map larger than the prediction (PSPNet with ``zoom_factor`` < 8) is scored at the
    prediction's size, its labels picked by nearest neighbour.
    """

    def __init__(self, classes: int, ignore_index: int = 255, device=None, absent: str = "exclude"):
        super().__init__(classes, ignore_index, device)
        self.absent = absent

    def update(self, pred: Any, target: Any) -> torch.Tensor:
        pred, target = _as_tensor(pred), _as_tensor(target)
        if target.dim() == 3 and pred.dim() == 3 and target.shape[-2:] != pred.shape[-2:]:
            target = torch.nn.functional.interpolate(target[:, None].float(), size=pred.shape[-2:], mode="nearest")
            target = target[:, 0].long()
        return super().update(pred, target)

    def reduce(self) -> dict[str, float]:
        summary = super().reduce().summary(self.absent)
        return {"mIoU": summary["miou"], "mAcc": summary["macc"], "allAcc": summary["allacc"]}


def training_metrics(cfg: Any, device: str | torch.device | None = None):
    """A fresh per-epoch accumulator for a config: accuracy for a classifier, mIoU/mAcc/allAcc otherwise.

    Both have ``update(prediction, target)`` and ``reduce() -> dict[str, float]``.
    """
    if is_classification(cfg):
        return ClassificationAccuracy(device)
    absent = getattr(cfg, "absent_classes", "exclude")
    return EpochSegmentationMetrics(cfg.classes, cfg.ignore_label, device, absent)
