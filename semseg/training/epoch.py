"""One epoch of training and one pass of validation.

The data (``semseg.data.dataset``, ``semseg.data.sampling``, ``semseg.data.transform``) and the checkpoints
(``semseg.training.checkpoint``) live beside; tool/train.py wires them together.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from semseg.models import is_classification
from semseg.training.checkpoint import restore_rng_state
from semseg.training.distributed import Processes, all_reduce_sum, any_rank
from semseg.training.optimizer import learning_rate, set_learning_rate
from semseg.training.stop_signals import StopRequested, agreed_signal


class TrainingError(RuntimeError):
    """Training cannot go on (a loss that is not finite, masks that differ); the message says what is kept."""


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
    stop: Callable[[], str | None] = lambda: None  # the stop signal received, if any (semseg.training.stop_signals)


def _autocast(cfg: Any, device: torch.device):
    return torch.autocast(device.type, dtype=torch.float16, enabled=bool(cfg.amp) and device.type == "cuda")


def _to_device(x: torch.Tensor, y: torch.Tensor, device: torch.device, channels_last: bool):
    x = x.to(device, non_blocking=True)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(device, non_blocking=True)


def train_epoch(
    model: nn.Module,
    loader: DataLoader,
    epoch: int,
    context: StepContext,
    metrics,
    skip: int = 0,
    rng: dict | None = None,
) -> EpochResult:
    """One pass over the training data; stops with a TrainingError on a loss that is not finite.

    Before each iteration it raises StopRequested (on every process alike) once a stop signal has
    arrived. ``skip`` and ``rng`` continue an epoch that such a stop cut short: the first ``skip``
    batches are loaded and passed over, so the rest come exactly as they would have, and the random
    state is then set to the one saved at the stop.
    """
    cfg, processes, optimizer, scaler = context.cfg, context.processes, context.optimizer, context.scaler
    device = processes.device
    channels_last = device.type == "cuda" and bool(cfg.amp)
    model.train()
    iterations = len(loader)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    bar = progress_bar(loader, processes, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False)
    for i, (x, y) in enumerate(bar):
        if i < skip:
            continue
        if i == skip and rng is not None:
            restore_rng_state(rng)
        received = agreed_signal(context.stop(), device)  # the same on every process
        if received is not None:
            raise StopRequested(received, i)
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
