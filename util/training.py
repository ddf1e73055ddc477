"""The pieces of a training run that tool/train.py wires together: data, seeding, one epoch, checkpoints.

Randomness follows ``manual_seed``: the sample order and dropout are seeded per epoch, each
sample's augmentation from (seed, epoch, index) (``util/sampling.py``). So an epoch's result
depends only on the state at its start, and a run resumed from the checkpoint of epoch e continues
exactly as the uninterrupted run did.
"""

from __future__ import annotations

import math
import random
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from acosp.inject import unwrap
from model import is_classification
from util import transform
from util.distributed import Processes, all_reduce_sum, any_rank
from util.optimizer import learning_rate, set_learning_rate
from util.sampling import EpochSampler, SeededSamples


class TrainingError(RuntimeError):
    """Training cannot go on (a NaN loss, an unwritable folder); the message says where and what is kept."""


def seed_epoch(seed: int | None, epoch: int) -> None:
    """Seed torch, numpy, Python and the augmentation from (seed, epoch); no-op when unseeded."""
    if seed is None:
        return
    value = seed * 100_003 + epoch
    torch.manual_seed(value)
    random.seed(value)
    np.random.seed(value % 2**32)
    transform.seed(value)


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any] | None) -> None:
    """Torch's generators as they were; the per-epoch seeding makes the rest exact for seeded runs."""
    if not state:
        return
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def segmentation_transforms(cfg: Any, train: bool) -> transform.Compose:
    """semseg's recipe: scale, rotate, blur, flip, crop for training; a centre crop for validation."""
    pad = [float(value) for value in cfg.mean]
    crop = [cfg.train_h, cfg.train_w]
    steps = []
    if train:
        steps += [
            transform.RandScale([cfg.scale_min, cfg.scale_max]),
            transform.RandRotate([cfg.rotate_min, cfg.rotate_max], padding=pad, ignore_label=cfg.ignore_label),
            transform.RandomGaussianBlur(),
            transform.RandomHorizontalFlip(),
        ]
    steps += [
        transform.Crop(crop, crop_type="rand" if train else "center", padding=pad, ignore_label=cfg.ignore_label),
        transform.ToTensor(),
        transform.Normalize(cfg.mean, cfg.std),
    ]
    return transform.Compose(steps)


def cifar_transforms(cfg: Any, train: bool) -> transform.Compose:
    """A random 32x32 crop of the image padded by 4 black pixels, and a horizontal flip, for training."""
    steps = []
    if train:
        steps += [
            transform.Crop([40, 40], padding=0.0),  # pads 4 on every side
            transform.Crop([32, 32], crop_type="rand"),
            transform.RandomHorizontalFlip(),
        ]
    return transform.Compose([*steps, transform.ToTensor(), transform.Normalize(cfg.mean, cfg.std)])


def build_datasets(cfg: Any) -> tuple[Dataset, Dataset | None]:
    """The training set, and the validation set when ``evaluate`` asks for one; list errors surface here."""
    from util.dataset import Cifar10, SemData

    if is_classification(cfg):
        root = cfg.path("data_root")
        train = Cifar10(root, train=True, transform=cifar_transforms(cfg, True))
        val = Cifar10(root, train=False, transform=cifar_transforms(cfg, False)) if cfg.evaluate else None
        return train, val
    train = SemData.from_config(cfg, "train_list", segmentation_transforms(cfg, True))
    val = None
    if cfg.evaluate:
        if cfg.val_list is None:
            raise ValueError(f"{cfg.source}: evaluate is true but val_list is not set")
        val = SemData.from_config(cfg, "val_list", segmentation_transforms(cfg, False))
    for dataset in (train, val):
        if dataset is not None and len(dataset):
            dataset[0]  # a first sample through reading and augmentation: label or size errors show now
    return train, val


def per_process_batch(batch_size: int, processes: Processes, key: str) -> int:
    if batch_size % processes.world_size:
        raise ValueError(
            f"{key} {batch_size} is the global batch and must divide evenly over {processes.world_size} processes"
        )
    return batch_size // processes.world_size


def make_loader(
    dataset: Dataset, batch_size: int, workers: int, processes: Processes, train: bool, seed: int
) -> tuple[DataLoader, EpochSampler]:
    """This process's share of ``dataset``, shuffled and augmented as ``seed`` and the epoch decide."""
    sampler = EpochSampler(dataset, processes.world_size, processes.rank, shuffle=train, seed=seed, drop_last=train)
    loader = DataLoader(
        SeededSamples(dataset, seed),
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=processes.device.type == "cuda",
        drop_last=train,
        persistent_workers=workers > 0,
    )
    return loader, sampler


def check_free_space(folder: Path, model: nn.Module, checkpoints_in_flight: int = 2) -> None:
    """An unwritable folder or a disk too small for two checkpoints is an error before training, not after."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{time.time_ns()}"
        probe.write_bytes(b"0")
        probe.unlink()
    except OSError as error:
        raise TrainingError(f"cannot write to the experiment folder {folder}: {error}") from error
    # Weights plus optimizer state (momentum or Adam's two moments): at most three copies of the parameters.
    needed = 3 * sum(p.numel() * p.element_size() for p in model.parameters()) * checkpoints_in_flight
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise TrainingError(
            f"{folder} has {free / 2**30:.2f} GiB free, but checkpoints of this network need about "
            f"{needed / 2**30:.2f} GiB"
        )


@dataclass
class EpochResult:
    loss: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)
    samples: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = field(default_factory=list)


def progress_bar(iterable, processes: Processes, **kwargs):
    """tqdm on the main process when it writes to a terminal; the bare iterable otherwise."""
    return tqdm(iterable, disable=not (processes.is_main and sys.stderr.isatty()), dynamic_ncols=True, **kwargs)


@dataclass
class StepContext:
    """What one epoch of training needs besides the model and the data."""

    cfg: Any
    processes: Processes
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    max_iterations: int
    writer: Any = None
    log: Callable[[str], None] = print


def _autocast(cfg: Any, device: torch.device):
    return torch.autocast(device.type, dtype=torch.float16, enabled=bool(cfg.amp) and device.type == "cuda")


def _to_device(x: torch.Tensor, y: torch.Tensor, device: torch.device, channels_last: bool):
    x = x.to(device, non_blocking=True)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(device, non_blocking=True)


def train_epoch(model: nn.Module, loader: DataLoader, epoch: int, context: StepContext, metrics) -> EpochResult:
    """One pass over the training data; stops with a TrainingError on a loss that is not finite."""
    cfg, processes, optimizer, scaler = context.cfg, context.processes, context.optimizer, context.scaler
    device = processes.device
    channels_last = device.type == "cuda" and bool(cfg.amp)
    model.train()
    iterations = len(loader)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    bar = progress_bar(loader, processes, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False)
    for i, (x, y) in enumerate(bar):
        iteration = epoch * iterations + i
        if cfg.lr_update == "epoch":
            lr = learning_rate(cfg.lr_schedule, cfg.base_lr, epoch, cfg.epochs, cfg.power)
        else:
            lr = learning_rate(cfg.lr_schedule, cfg.base_lr, iteration, context.max_iterations, cfg.power)
        set_learning_rate(optimizer, lr)
        x, y = _to_device(x, y, device, channels_last)
        with _autocast(cfg, device):
            prediction, main_loss, aux_loss = model(x, y)
            loss = main_loss + cfg.aux_weight * aux_loss
        value = float(loss.detach())
        if any_rank(not math.isfinite(value), device):
            raise TrainingError(
                f"the training loss is not finite ({value}) at epoch {epoch + 1}, iteration {i + 1}; "
                "stopping without saving: the last checkpoint written is still the last good one. "
                "Try a lower base_lr, or amp false."
            )
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        metrics.update(prediction.detach(), y)
        loss_sum += value * x.shape[0]
        count += x.shape[0]
        if context.writer is not None:
            context.writer.add_scalar("train/loss_iter", value, iteration + 1)
            context.writer.add_scalar("train/lr", lr, iteration + 1)
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{value:.4f}", lr=f"{lr:.2e}")
        if processes.is_main and (i + 1) % cfg.print_freq == 0:
            context.log(f"epoch {epoch + 1}/{cfg.epochs} iteration {i + 1}/{iterations} loss {value:.4f} lr {lr:.3e}")
    totals = all_reduce_sum(torch.stack([loss_sum, torch.tensor(float(count), dtype=torch.float64, device=device)]))
    return EpochResult(loss=float(totals[0] / totals[1].clamp_min(1)), metrics=metrics.reduce())


@torch.no_grad()
def validate(
    model: nn.Module, loader: DataLoader, cfg: Any, processes: Processes, metrics, keep: int = 4
) -> EpochResult:
    """Loss and metrics on the validation loader; ``keep`` (image, label, prediction) samples for tensorboard."""
    device = processes.device
    model.eval()
    criterion = nn.CrossEntropyLoss(ignore_index=cfg.ignore_label if not is_classification(cfg) else -100)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    samples = []
    for x, y in progress_bar(loader, processes, desc="validation", leave=False):
        x, y = _to_device(x, y, device, False)
        with _autocast(cfg, device):
            logits = model(x)
        if not is_classification(cfg) and logits.shape[-2:] != y.shape[-2:]:
            logits = nn.functional.interpolate(logits, size=y.shape[-2:], mode="bilinear", align_corners=True)
        logits = logits.float()
        loss = criterion(logits, y)
        if torch.isfinite(loss):
            loss_sum += float(loss) * x.shape[0]
            count += x.shape[0]
        prediction = logits.argmax(1)
        metrics.update(prediction, y)
        if len(samples) < keep and not is_classification(cfg):
            samples += [(x[j].cpu(), y[j].cpu(), prediction[j].cpu()) for j in range(min(keep - len(samples), len(x)))]
    totals = all_reduce_sum(torch.stack([loss_sum, torch.tensor(float(count), dtype=torch.float64, device=device)]))
    return EpochResult(loss=float(totals[0] / totals[1].clamp_min(1)), metrics=metrics.reduce(), samples=samples)


def network_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The network's state dict without DDP's ``module.`` prefix, on the CPU."""
    return {key: value.detach().cpu() for key, value in unwrap(model).state_dict().items()}
