"""Test a segmentation network on a config's test_list: predictions as PNGs, scores as a CSV.

A CIFAR-10 classifier (arch resnet18) is scored on the test batch instead: accuracy per class and overall.

    sh tool/test.sh cityscapes pspnet50 [key value ...]
    python tool/test.py --config config/cityscapes/cityscapes_pspnet50.yaml [key value ...]
    torchrun --nproc_per_node 4 tool/test.py --config ...      # each process takes a share

Results go to ``<save_folder>/<split>/ss|ms/`` (gray/, color/, metrics.csv), the log to
``<save_folder>/test-<time>.log``. The exit status is 1 when any image failed (each is logged
with its path), 2 when the config or the checkpoint cannot be used.
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from semseg.atomic import atomic_path
from semseg.command_line import parse_with_overrides, setup_logging
from semseg.config import ConfigError, load_config, repo_path
from semseg.data.dataset import Cifar10
from semseg.data.palette import read_names
from semseg.data.transform import cifar_transforms
from semseg.evaluation.evaluate import evaluate
from semseg.models import is_classification
from semseg.training.checkpoint import CheckpointError, model_from_checkpoint
from semseg.training.distributed import all_reduce_sum, close_processes, init_processes, rank_and_world

logger = logging.getLogger("test")


@torch.no_grad()
def score_classifier(cfg: Any, model: nn.Module, device: torch.device) -> dict[str, Any]:
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="the experiment's YAML file")
    parser.add_argument(
        "--device", default="auto", choices=("auto", "cpu", "cuda"), help="default: CUDA when available"
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="'key value' pairs that override the config")
    args = parse_with_overrides(parser, argv)
    try:
        cfg = load_config(args.config, args.opts)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    processes = init_processes(args.device)
    device, rank, world = processes.device, processes.rank, processes.world_size
    if device.type == "cuda" and world == 1 and cfg.test_gpu:
        device = torch.device("cuda", cfg.test_gpu[0])  # one process: the config's GPU
    try:
        log_path = setup_logging(repo_path(cfg.save_folder), "test", rank)
        logger.info("config %s, device %s, %d process(es); log %s", cfg.source, device, world, log_path)
        model = None
        if not cfg.has_prediction:
            model_path = cfg.model_path or str(Path(cfg.save_path) / "final.pth")
            logger.info("checkpoint %s", model_path)
            model = model_from_checkpoint(repo_path(model_path), cfg, map_location=device)
        if is_classification(cfg):  # CIFAR-10: accuracy on the test batch
            if model is None:
                raise ConfigError(f"{cfg.source}: has_prediction applies to segmentation, not to arch {cfg.arch}")
            summary = score_classifier(cfg, model, device)
            logger.info(
                "done: accuracy %.4f on %d images, table in %s", summary["accuracy"], summary["images"], summary["csv"]
            )
            return 0
        result = evaluate(cfg, model, device)
    except (CheckpointError, ConfigError, OSError, ValueError) as error:  # nothing was tested
        logger.error("%s", error)
        return 2
    finally:
        close_processes()
    if result.failed:
        logger.error(
            "%d image(s) failed, %d evaluated; each failure is logged above with its path",
            result.failed,
            result.evaluated,
        )
        return 1
    logger.info("done: %d images, results in %s", result.evaluated, result.folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
