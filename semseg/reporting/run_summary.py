"""What a finished experiment produced and how big its network is: paths, scores, parameters, channels.

``tool/report.py`` prints it after the quick start; ``benchmarks/results_table.py`` turns it into the
tables in docs/shapes.md and README.md. The scores come from the ``metrics.csv`` that ``tool/test.py``
wrote, the sizes from the final checkpoint: parameters counted as the network would have them once
compressed, and the output channels its masks keep.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

import acosp.stats
from acosp.compress import model_statistics
from acosp.inject import is_prunable
from semseg.config import repo_path
from semseg.evaluation.evaluate import VOID_AS_LAST_CLASS_CSV, result_folder
from semseg.models import is_classification
from semseg.training.checkpoint import model_from_checkpoint


@dataclass
class RunFiles:
    """Where a run's results lie (some may not exist yet)."""

    folder: Path
    checkpoint: Path
    predictions: Path
    metrics: Path

    @classmethod
    def of(cls, cfg: Any) -> RunFiles:
        model_dir = repo_path(cfg.save_path)
        checkpoint = repo_path(cfg.model_path) if cfg.model_path else model_dir / "final.pth"
        results = result_folder(cfg)
        return cls(model_dir.parent, checkpoint, results / "gray", results / "metrics.csv")

    def events(self) -> list[Path]:
        return sorted(self.folder.glob("events.out.tfevents.*"))


def read_metrics(path: str | Path) -> dict[str, float]:
    """``{"mIoU", "mAcc", "allAcc"}`` from a metrics.csv of tool/test.py."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics.csv (run the test first: sh tool/test.sh DATASET EXP)")
    scores = {}
    with open(path, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if row["name"] in ("mIoU", "mAcc", "allAcc"):
                value = row["IoU"] if row["name"] == "mIoU" else row["Acc"]
                scores[row["name"]] = float(value)
    missing = {"mIoU", "mAcc", "allAcc"} - set(scores)
    if missing:
        raise ValueError(f"{path}: the rows {sorted(missing)} are missing")
    return scores


def network_size(model: nn.Module, example: torch.Tensor) -> dict[str, int]:
    """Parameters (of a masked network as compressed), kept and all output channels of the prunable convs."""
    kept = acosp.stats.kept_channels(model)
    if kept:
        channels = sum(total for _, total in kept.values())
        kept_total = sum(count for count, _ in kept.values())
        parameters = int(model_statistics(model, example)["parameters"])
    else:  # a dense network: every prunable conv keeps its width
        widths = [m.out_channels for m in model.modules() if is_prunable(m) and hasattr(m, "out_channels")]
        channels = kept_total = sum(widths)
        parameters = sum(p.numel() for p in model.parameters())
    return {"parameters": parameters, "kept_channels": kept_total, "channels": channels}


def example_input(cfg: Any) -> torch.Tensor:
    """A seeded random image at the size the network is evaluated at (the test crop; 32x32 for CIFAR).

    Not zeros: a constant image gives pooling layers exact ties, which the compressed network may
    break elsewhere (MaxUnpool then differs)."""
    generator = torch.Generator().manual_seed(0)
    height, width = (32, 32) if is_classification(cfg) else (cfg.test_h, cfg.test_w)
    return torch.randn(1, 3, height, width, generator=generator)


def run_result(cfg: Any) -> dict[str, Any]:
    """Scores and sizes of the experiment ``cfg`` describes, after training and testing.

    ``void_mIoU`` and ``void_mAcc`` come too where the test also scored the publication's CamVid way.
    """
    files = RunFiles.of(cfg)
    if not files.checkpoint.is_file():
        raise FileNotFoundError(f"{files.checkpoint}: no checkpoint (train first: sh tool/train.sh DATASET EXP)")
    model = model_from_checkpoint(files.checkpoint, cfg)
    with torch.no_grad():
        size = network_size(model, example_input(cfg))
    result = {"sparsity": cfg.sparsity, **read_metrics(files.metrics), **size}
    void_scores = files.metrics.with_name(VOID_AS_LAST_CLASS_CSV)
    if void_scores.is_file():  # the publication's CamVid metric, on the same predictions
        void = read_metrics(void_scores)
        result["void_mIoU"], result["void_mAcc"] = void["mIoU"], void["mAcc"]
    return result


def paper_ratio(sparsity: float) -> float:
    """The publication's compression ratio of a sparsity: 1 / (1 - s), so 0.75 is ACoSP-4."""
    return 1.0 / (1.0 - sparsity)


def format_count(value: int | None) -> str:
    return "n/a" if value is None else f"{value:,}"


def format_run_comparison(rows: list[tuple[str, dict[str, Any]]]) -> str:
    """A plain-text table of (name, result) rows: mIoU, mAcc, parameters and kept channels."""
    width = max(len("network"), *(len(name) for name, _ in rows))
    lines = [f"{'network':<{width}}  {'mIoU':>7}  {'mAcc':>7}  {'parameters':>11}  kept channels"]
    for name, row in rows:
        scores = [row.get(key) for key in ("mIoU", "mAcc")]
        shown = ["    n/a" if value is None or math.isnan(value) else f"{value:7.4f}" for value in scores]
        kept, channels = row.get("kept_channels"), row.get("channels")
        channel_text = f"{kept} / {channels} ({kept / channels:.1%})" if kept is not None and channels else "n/a"
        lines.append(
            f"{name:<{width}}  {shown[0]}  {shown[1]}  {format_count(row.get('parameters')):>11}  {channel_text}"
        )
    return "\n".join(lines)
