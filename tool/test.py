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
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from model import is_classification  # noqa: E402
from util.checkpoint import CheckpointError, model_from_checkpoint  # noqa: E402
from util.classification_test import test_classifier  # noqa: E402
from util.config import ConfigError, load_config, repo_path  # noqa: E402
from util.distributed import close_processes, init_processes  # noqa: E402
from util.evaluate import evaluate  # noqa: E402

logger = logging.getLogger("test")


def setup_logging(folder: Path, rank: int) -> Path | None:
    """Log to the terminal, and on rank 0 also to ``folder/test-<time>.log``."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    log_path = None
    if rank == 0:
        log_path = folder / f"test-{time.strftime('%Y%m%d-%H%M%S')}.log"
        folder.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_path, encoding="utf-8"))
    prefix = f"[rank {rank}] " if rank else ""
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s %(levelname)s {prefix}%(message)s",
        datefmt="%H:%M:%S",
        handlers=handlers,
        force=True,
    )
    return log_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="the experiment's YAML file")
    parser.add_argument(
        "--device", default="auto", choices=("auto", "cpu", "cuda"), help="default: CUDA when available"
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="'key value' pairs that override the config")
    args = parser.parse_args(argv)
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
        log_path = setup_logging(repo_path(cfg.save_folder), rank)
        logger.info("config %s, device %s, %d process(es); log %s", cfg.source, device, world, log_path)
        model = None
        if not cfg.has_prediction:
            model_path = cfg.model_path or str(Path(cfg.save_path) / "final.pth")
            logger.info("checkpoint %s", model_path)
            model = model_from_checkpoint(repo_path(model_path), cfg, map_location=device)
        if is_classification(cfg):  # CIFAR-10: accuracy on the test batch
            if model is None:
                raise ConfigError(f"{cfg.source}: has_prediction applies to segmentation, not to arch {cfg.arch}")
            summary = test_classifier(cfg, model, device)
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
