"""Testing a CIFAR-10 classifier: accuracy overall and per class on the test batch, written as a CSV."""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from util.atomic import atomic_path
from util.dataset import Cifar10
from util.distributed import all_reduce_sum, rank_and_world
from util.palette import read_names
from util.transform import cifar_transforms

logger = logging.getLogger(__name__)


@torch.no_grad()
def test_classifier(cfg: Any, model: nn.Module, device: torch.device) -> dict[str, Any]:
    """Accuracy of ``model`` on CIFAR-10's test batch; ``<save_folder>/test/metrics.csv`` holds the table.

    With several processes each takes every n-th image and the counts are summed.
    """
    rank, world = rank_and_world()
    dataset = Cifar10(cfg.path("data_root"), train=False, transform=cifar_transforms(cfg, train=False))
    shard = torch.utils.data.Subset(dataset, range(rank, len(dataset), world))
    loader = DataLoader(shard, batch_size=cfg.batch_size_val, num_workers=cfg.workers)
    correct = torch.zeros(cfg.classes, dtype=torch.int64, device=device)
    total = torch.zeros(cfg.classes, dtype=torch.int64, device=device)
    model.eval()
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        with torch.autocast(device.type, dtype=torch.float16, enabled=bool(cfg.amp) and device.type == "cuda"):
            predictions = model(images).argmax(1)
        total += torch.bincount(labels, minlength=cfg.classes)
        correct += torch.bincount(labels[predictions == labels], minlength=cfg.classes)
    all_reduce_sum(correct)
    all_reduce_sum(total)
    names = (
        read_names(cfg.path("names_path")) if cfg.path("names_path").is_file() else list(map(str, range(cfg.classes)))
    )
    per_class = [c / t if t else float("nan") for c, t in zip(correct.tolist(), total.tolist())]
    accuracy = correct.sum().item() / max(total.sum().item(), 1)
    rows = [(name, f"{value:.4f}") for name, value in zip(names, per_class)] + [("accuracy", f"{accuracy:.4f}")]
    folder = Path(cfg.path("save_folder")) / "test"
    path = folder / "metrics.csv"
    if rank == 0:
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as temporary, open(temporary, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["name", "Acc"])
            writer.writerows(rows)
        logger.info("accuracy of %d test images:\n%s", total.sum().item(), "\n".join(f"{n:<12}{v:>8}" for n, v in rows))
    return {"accuracy": accuracy, "per_class": per_class, "images": int(total.sum().item()), "csv": path}
