"""Testing a segmentation network on a list file: class-id and colour PNGs, and a per-class CSV.

What ``tool/test.py`` does, kept here so that tests reach it. Results go to
``<save_folder>/<split>/ss|ms/`` (``ms`` with several scales): ``gray/<name>.png`` holds class ids,
``color/<name>.png`` the dataset's colours, ``metrics.csv`` IoU and accuracy per class and the
means. One bad image does not stop a run: it is reported with its path, the rest are scored, and
the caller learns the count of failures. Under torchrun every process takes every n-th image and
the counts are summed before scoring, so the numbers do not depend on the number of processes.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from semseg.atomic import atomic_path
from semseg.config import repo_path
from semseg.data.dataset import ListEntry, config_list_path, read_list
from semseg.data.images import DatasetError, read_image, read_label
from semseg.data.palette import colorize, read_colors, read_names
from semseg.evaluation.inference import SlidingWindowPredictor
from semseg.evaluation.metrics import SegmentationMetrics, scores, void_as_last_class_areas
from semseg.training.distributed import all_reduce_sum, rank_and_world

logger = logging.getLogger(__name__)

VOID_AS_LAST_CLASS_CSV = "metrics_void_as_last_class.csv"


@dataclass
class EvaluationResult:
    """The scores (None for split 'test'), where the results are, and every failed image with its reason."""

    summary: dict[str, Any] | None
    folder: Path
    evaluated: int
    failures: list[str] = field(default_factory=list)
    failed: int = 0  # over all processes


def read_entries(split: str, data_root: str | os.PathLike, list_path: str | os.PathLike) -> list[ListEntry]:
    """The list's entries for testing: files are not checked (a missing one fails alone), names must differ."""
    entries = read_list(split, data_root, list_path, check_files=False)
    lines: dict[str, int] = {}
    for entry in entries:
        if entry.name in lines:
            raise DatasetError(
                f"{list_path}, lines {lines[entry.name]} and {entry.line}: two images are named {entry.name!r}; "
                "their predictions would overwrite each other"
            )
        lines[entry.name] = entry.line
    return entries


def select(entries: Sequence[ListEntry], index_start: int = 0, index_step: int = 0) -> list[ListEntry]:
    """``index_step`` entries from ``index_start`` (all the rest when ``index_step`` is 0)."""
    if not 0 <= index_start < len(entries):
        raise ValueError(f"index_start {index_start} is outside the list's {len(entries)} entries")
    end = index_start + index_step if index_step > 0 else len(entries)
    return list(entries[index_start:end])


def result_folder(cfg: Any) -> Path:
    """``<save_folder>/<split>/ss`` for one scale, ``.../ms`` for several."""
    return repo_path(cfg.save_folder) / cfg.split / ("ms" if len(cfg.scales) > 1 else "ss")


def write_png(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write a PNG atomically (a class-id map, or an RGB picture)."""
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    with atomic_path(path) as temporary:
        if not cv2.imwrite(str(temporary), array):
            raise OSError(f"{path}: cannot write the PNG")


def read_prediction(path: str | os.PathLike) -> np.ndarray:
    """A gray PNG of class ids written by an earlier run."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: prediction not found (has_prediction is true)")
    gray = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if gray is None or gray.ndim != 2:
        raise ValueError(f"{path}: not a single-channel PNG of class ids")
    return gray


def format_table(names: Sequence[str], summary: dict[str, Any]) -> str:
    """The per-class table and the means, as the log and the terminal show them."""
    width = max(12, *(len(name) for name in names)) + 2

    def number(value: float) -> str:
        return f"{value:8.4f}" if not math.isnan(value) else "     nan"

    lines = [f"{'class':<{width}}{'IoU':>8}  {'Acc':>8}"]
    lines += [f"{name:<{width}}{number(i)}  {number(a)}" for name, i, a in zip(names, summary["iou"], summary["acc"])]
    lines.append(f"{'mIoU':<{width}}{number(summary['miou'])}")
    lines.append(f"{'mAcc':<{width}}{'':8}  {number(summary['macc'])}")
    lines.append(f"{'allAcc':<{width}}{'':8}  {number(summary['allacc'])}")
    if summary["absent"] == "exclude" and (summary["excluded_iou"] or summary["excluded_acc"]):
        lines.append(
            f"mIoU leaves out {summary['excluded_iou']} of {len(names)} classes (absent from prediction and ground "
            f"truth), mAcc {summary['excluded_acc']} (no labelled pixel); absent_classes zero counts them as 0"
        )
    return "\n".join(lines)


def write_metrics_csv(path: str | os.PathLike, names: Sequence[str], summary: dict[str, Any]) -> Path:
    """``name,IoU,Acc`` per class, then ``mIoU`` (IoU column), ``mAcc`` and ``allAcc`` (Acc column); atomic."""
    path = Path(path)
    with atomic_path(path) as temporary, open(temporary, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["name", "IoU", "Acc"])
        for name, iou, acc in zip(names, summary["iou"], summary["acc"]):
            writer.writerow([name, f"{iou:.6f}", f"{acc:.6f}"])
        writer.writerow(["mIoU", f"{summary['miou']:.6f}", ""])
        writer.writerow(["mAcc", "", f"{summary['macc']:.6f}"])
        writer.writerow(["allAcc", "", f"{summary['allacc']:.6f}"])
    return path


def _total(count: int, device: torch.device) -> int:
    """``count`` summed over every process."""
    if rank_and_world()[1] > 1 and dist.get_backend() == "nccl" and device.type != "cuda":
        device = torch.device("cuda")
    return int(all_reduce_sum(torch.tensor([count], dtype=torch.int64, device=device)).item())


def _label_for(entry: ListEntry, cfg: Any, shape: tuple[int, ...]) -> np.ndarray:
    if not os.path.isfile(entry.label):
        raise FileNotFoundError(f"{entry.label}: label not found")
    label = read_label(entry.label)
    if label.shape != shape:
        raise ValueError(f"{entry.label}: the label is {label.shape} but the prediction is {shape}")
    unknown = (label >= cfg.classes) & (label != cfg.ignore_label)
    if unknown.any():
        if not cfg.ignore_unknown_labels:
            values = np.unique(label[unknown]).tolist()
            raise ValueError(
                f"{entry.label}: label values {values} are neither class ids (0..{cfg.classes - 1}) nor the "
                f"ignore label {cfg.ignore_label}; set ignore_unknown_labels to ignore them"
            )
        label = np.where(unknown, np.uint8(cfg.ignore_label), label)
    return label


def evaluate(
    cfg: Any,
    model: nn.Module | None = None,
    device: str | torch.device | None = None,
    progress: bool | None = None,
) -> EvaluationResult:
    """Predict (unless ``has_prediction``) and score this process's share of ``test_list``.

    ``progress`` shows a bar per image; by default only on a terminal, and only on rank 0.
    """
    rank, world = rank_and_world()
    labelled = cfg.split != "test"
    if cfg.has_prediction and not labelled:
        raise ValueError(f"{cfg.source}: has_prediction is true but split test has no labels to score against")
    if not cfg.has_prediction and model is None:
        raise ValueError("evaluate needs a model unless has_prediction is true")
    entries = select(
        read_entries(cfg.split, repo_path(cfg.data_root), config_list_path(cfg, "test_list")),
        cfg.index_start,
        cfg.index_step,
    )
    names, colors = read_names(repo_path(cfg.names_path)), read_colors(repo_path(cfg.colors_path))
    if len(names) != cfg.classes or len(colors) < cfg.classes:
        raise ValueError(
            f"{cfg.names_path} names {len(names)} classes and {cfg.colors_path} colours {len(colors)}; "
            f"the config has {cfg.classes}"
        )
    folder = result_folder(cfg)
    predictor = None if cfg.has_prediction else SlidingWindowPredictor.from_config(model, cfg, device)
    device = predictor.device if predictor is not None else torch.device(device or "cpu")
    metrics = SegmentationMetrics(cfg.classes, cfg.ignore_label)
    # The publication's CamVid metric, on the same predictions: void pixels as one more ground-truth row.
    void_metrics = SegmentationMetrics(cfg.classes + 1, -1) if getattr(cfg, "void_as_last_class", False) else None
    failures = []
    shard = entries[rank::world]
    show = progress if progress is not None else sys.stderr.isatty()
    for entry in tqdm(shard, desc=f"{cfg.split} {folder.name}", unit="image", disable=not show or rank != 0):
        try:
            gray_path = folder / "gray" / f"{entry.name}.png"
            if predictor is None:
                gray = read_prediction(gray_path)
            else:
                if not os.path.isfile(entry.image):
                    raise FileNotFoundError(f"{entry.image}: image not found")
                gray = predictor.predict(read_image(entry.image))
                write_png(gray_path, gray)
                write_png(folder / "color" / f"{entry.name}.png", colorize(gray, colors))
            if labelled:
                label = _label_for(entry, cfg, gray.shape)
                metrics.update(gray, label)
                if void_metrics is not None:
                    void_metrics.update(gray, np.where(label == cfg.ignore_label, cfg.classes, label.astype(np.int64)))
        except (OSError, ValueError) as error:
            failures.append(str(error))
            logger.error("line %d of %s failed: %s", entry.line, cfg.test_list, error)
    failed = _total(len(failures), device)
    evaluated = _total(len(shard), device) - failed
    absent = getattr(cfg, "absent_classes", "exclude")
    summary = metrics.reduce().summary(absent=absent) if labelled else None
    if rank == 0 and summary is not None:
        write_metrics_csv(folder / "metrics.csv", names, summary)
        logger.info("scores of %d images (%s):\n%s", evaluated, folder, format_table(names, summary))
    if labelled and void_metrics is not None:
        void_summary = scores(*void_as_last_class_areas(void_metrics.reduce().confusion), absent=absent)
        if rank == 0:
            write_metrics_csv(folder / VOID_AS_LAST_CLASS_CSV, names, void_summary)
            logger.info(
                "the publication's CamVid metric (void pixels count as %s, never right): mIoU %.4f mAcc %.4f "
                "allAcc %.4f, in %s",
                names[-1],
                void_summary["miou"],
                void_summary["macc"],
                void_summary["allacc"],
                VOID_AS_LAST_CLASS_CSV,
            )
    return EvaluationResult(summary, folder, evaluated, failures, failed)
