"""A study: a grid of experiments (config x overrides x seeds), its runs, and their summary.

``tool/study.py`` runs one. Each cell of the grid is one method at one setting (``acosp_0.875``,
``l1_0.875``, ...) run once per seed; each run gets its own experiment folder,
``<folder>/<cell>/seed<seed>/``, and is the command a user would type, ``sh tool/train.sh DATASET
EXPERIMENT`` with the cell's overrides (semseg/reporting/experiment.py). A finished run leaves a ``result.json``
there and a row in the study's results file, so a rerun skips it even where its folder is gone.
The summary gives each cell's mean, sample standard deviation and count over its finished seeds.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from semseg.atomic import atomic_path
from semseg.config import ROOT
from semseg.reporting.experiment import config_path, run_config

SCORES = ("mIoU", "mAcc", "allAcc", "void_mIoU", "void_mAcc")
SUMMARISED = (*SCORES, "parameters", "macs", "seconds")  # averaged per cell


@dataclass(frozen=True)
class Cell:
    """One method at one setting, run once per seed."""

    name: str  # the folder and the row of the summary, e.g. "l1_0.875"
    method: str  # in plain words, for the table
    experiment: str  # config/DATASET/DATASET_EXPERIMENT.yaml
    sparsity: float
    seeds: tuple[int, ...]
    overrides: tuple[str, ...] = ()  # 'key value' pairs on top of the config


@dataclass(frozen=True)
class Run:
    cell: Cell
    seed: int

    @property
    def name(self) -> str:
        return f"{self.cell.name}/seed{self.seed}"

    @property
    def options(self) -> list[str]:
        """The cell's overrides, the seed, and ``resume auto`` so that an interrupted run continues."""
        return [*self.cell.overrides, "manual_seed", str(self.seed), "resume", "auto"]


@dataclass
class Study:
    name: str
    dataset: str
    cells: list[Cell]
    description: str = ""
    notes: list[str] = field(default_factory=list)

    def runs(self) -> list[Run]:
        """Every (cell, seed), seeds first: with runs cut short, each cell has as many seeds as the others."""
        depth = max((len(cell.seeds) for cell in self.cells), default=0)
        return [Run(cell, cell.seeds[i]) for i in range(depth) for cell in self.cells if i < len(cell.seeds)]

    def check(self) -> None:
        """Every cell's config exists and takes its overrides (a typo fails before the first run)."""
        names = [cell.name for cell in self.cells]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"study {self.name}: cells {duplicates} appear twice")
        for cell in self.cells:
            path = config_path(self.dataset, cell.experiment)
            if not path.is_file():
                raise FileNotFoundError(f"study {self.name}, cell {cell.name}: no config {path.relative_to(ROOT)}")
            run_config(self.dataset, cell.experiment, Path("exp") / "check", Run(cell, cell.seeds[0]).options)


def run_folder(folder: Path, run: Run) -> Path:
    return folder / run.cell.name / f"seed{run.seed}"


def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (NaN for one value) and count of the finite values."""
    finite = [value for value in values if value is not None and math.isfinite(value)]
    if not finite:
        return math.nan, math.nan, 0
    spread = statistics.stdev(finite) if len(finite) > 1 else math.nan
    return statistics.fmean(finite), spread, len(finite)


def summarize(study: Study, records: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per cell: its settings, n, and mean / std of every score and size over its finished runs."""
    rows = []
    for cell in study.cells:
        runs = [records[f"{cell.name}/seed{seed}"] for seed in cell.seeds if f"{cell.name}/seed{seed}" in records]
        row: dict[str, Any] = {"cell": cell.name, "method": cell.method, "sparsity": cell.sparsity}
        row["seeds"] = sorted(run["seed"] for run in runs)
        row["n"] = len(runs)
        for key in SUMMARISED:
            mean, std, _ = mean_std([run.get(key) for run in runs])
            row[key], row[f"{key}_std"] = mean, std
        rows.append(row)
    return rows


def write_summary(path: Path, study: Study, records: dict[str, dict[str, Any]], extra: dict[str, Any]) -> list[dict]:
    """``path`` (JSON: the cells' summary and every run's record) and ``path`` with .csv (the summary)."""
    rows = summarize(study, records)
    document = {"study": study.name, "dataset": study.dataset, **extra, "cells": rows, "runs": records}
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(document, indent=1, sort_keys=False) + "\n", encoding="utf-8")
    columns = ["cell", "method", "sparsity", "n", "seeds"]
    columns += [f"{key}{suffix}" for key in SUMMARISED for suffix in ("", "_std")]
    with atomic_path(path.with_suffix(".csv")) as temporary, open(temporary, "w", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "seeds": " ".join(map(str, row["seeds"]))})
    return rows


def read_records(path: Path) -> dict[str, dict[str, Any]]:
    """The per-run records of an earlier summary at ``path`` (none if it does not exist)."""
    if not path.is_file():
        return {}
    try:
        return dict(json.loads(path.read_text(encoding="utf-8"))["runs"])
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path}: not a study summary ({error}); move it away to start the study afresh") from None


def parameter_count(cfg: Any) -> int:
    """Parameters of the config's network as ``acosp.compress`` leaves it after pruning (dense: all).

    Only each layer's k matters, not which channels stay, so random masks give the trained run's count.
    """
    from acosp import SoftTopKPruner
    from semseg.models import build_model
    from semseg.reporting.run_summary import example_input, network_size

    torch.manual_seed(0)
    model = build_model(cfg)
    if cfg.sparsity > 0:
        pruner = SoftTopKPruner(final_sparsity=cfg.sparsity, min_remaining_elements=cfg.min_remaining_elements)
        model = pruner.on_pruning_end(pruner.configure_model(model))
    with torch.no_grad():
        return network_size(model.eval(), example_input(cfg))["parameters"]


def matched_width(count: Callable[[float], int], target: int, low: float = 1e-3, high: float = 1.0) -> float:
    """The width whose dense network's parameter count ``count(width)`` is closest to ``target``.

    Counts grow with the width in steps (channels are rounded), so a bisection brackets the target
    and the closer of the two ends wins, written with as few digits as keep its count. Where the
    steps are coarse (very narrow networks) the closest may still be more than 5 % off: callers
    check and say so.
    """
    if count(high) <= target:
        return high
    for _ in range(40):
        middle = (low + high) / 2
        if count(middle) <= target:
            low = middle
        else:
            high = middle
    best = min((low, high), key=lambda width: abs(count(width) - target))
    for digits in range(4, 12):  # a width that reads well in a config and gives the same count
        short = float(f"{best:.{digits}g}")
        if count(short) == count(best):
            return short
    return best
