"""Running one experiment as the README does and reading back what it produced.

``benchmarks/results_table.py`` and ``tool/study.py`` both run ``sh tool/train.sh DATASET EXP``
(training, then the test) into a folder of their own, record its wall time beside it, and read the
run's scores and sizes from the files it wrote; this module is that one way.
"""

from __future__ import annotations

import math
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

import acosp.compress
import acosp.stats
from semseg.atomic import atomic_path
from semseg.config import ROOT, load_config
from semseg.reporting.run_summary import RunFiles, example_input
from semseg.training.checkpoint import model_from_checkpoint

LOG = "run.log"
SECONDS = "run_seconds.txt"


def config_path(dataset: str, experiment: str) -> Path:
    """``config/DATASET/DATASET_EXPERIMENT.yaml``, the file ``sh tool/train.sh DATASET EXPERIMENT`` reads."""
    return ROOT / "config" / dataset / f"{dataset}_{experiment}.yaml"


def run_options(folder: Path, opts: Sequence[str] = ()) -> list[str]:
    """The overrides of one run: the caller's, and its model and result folders under ``folder``."""
    return [*opts, "save_path", str(folder / "model"), "save_folder", str(folder / "result")]


def run_config(dataset: str, experiment: str, folder: Path, opts: Sequence[str] = ()):
    """The config a run in ``folder`` trains and tests with."""
    return load_config(config_path(dataset, experiment), run_options(folder, opts))


def train_and_test(dataset: str, experiment: str, folder: Path, opts: Sequence[str] = (), env=None) -> float:
    """``sh tool/train.sh DATASET EXPERIMENT``, its output in FOLDER/run.log; returns the seconds it took.

    The time is recorded in FOLDER/run_seconds.txt only when training and test both succeed, so a
    recorded time marks a finished run (a resumed run records the time of its last attempt).
    """
    folder.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHON": sys.executable, "DEVICE": os.environ.get("DEVICE", "cpu"), **(env or {})}
    start = time.perf_counter()
    with open(folder / LOG, "a", encoding="utf-8") as handle:
        result = subprocess.run(
            ["sh", "tool/train.sh", dataset, experiment, *run_options(folder, opts)],
            cwd=ROOT,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    if result.returncode != 0:
        raise RuntimeError(
            f"sh tool/train.sh {dataset} {experiment} failed with exit code {result.returncode}; see {folder / LOG}"
        )
    seconds = time.perf_counter() - start
    with atomic_path(folder / SECONDS) as temporary:
        temporary.write_text(f"{seconds:.1f}\n", encoding="utf-8")
    return seconds


def recorded_seconds(folder: Path) -> float:
    """The wall time ``train_and_test`` recorded for the run in ``folder``; NaN if it never finished."""
    for name in (SECONDS, "table_seconds.txt"):  # the second: runs of earlier versions of results_table.py
        path = folder / name
        if path.is_file():
            return float(path.read_text(encoding="utf-8"))
    return float("nan")


def is_finished(cfg: Any, folder: Path) -> bool:
    """Whether the run in ``folder`` was trained and tested (its metrics and its recorded time exist)."""
    return RunFiles.of(cfg).metrics.is_file() and not math.isnan(recorded_seconds(folder))


def compressed_macs(cfg: Any) -> tuple[torch.nn.Module, torch.Tensor, int]:
    """The run's network as compressed (dense: as trained), its example input, and its MACs per image."""
    model = model_from_checkpoint(RunFiles.of(cfg).checkpoint, cfg).eval()
    x = example_input(cfg)
    with torch.no_grad():
        network = acosp.compress.compress(model, x) if acosp.stats.kept_channels(model) else model
        macs = acosp.compress.model_statistics(network, x)["macs"]
    return network, x, int(macs)


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}-table:start -->", f"<!-- {name}-table:end -->"


def write_table(name: str, document: Path, table: str) -> None:
    """Put ``table`` between the ``name`` markers of ``document``, atomically."""
    start, end = markers(name)
    text = document.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        raise ValueError(f"{document}: the markers {start} and {end} are missing")
    with atomic_path(document) as temporary:
        temporary.write_text(pattern.sub(lambda _: f"{start}\n{table}\n{end}", text), encoding="utf-8")


def machine() -> str:
    """The machine in a few words, for the tables' captions."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{platform.machine()} CPU, {cores} cores, {platform.system()}"
