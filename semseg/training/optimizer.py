"""The optimizer and its learning rate: backbone and head groups, poly or cosine, mask logits dropped cleanly.

The learning rate is a function of the iteration alone, so a resumed run needs no scheduler
state: ``learning_rate(...)`` at the same iteration gives the same value.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from acosp.inject import unwrap

SCHEDULES = ("poly", "cosine")
OPTIMIZERS = ("sgd", "adam")


def parameter_groups(model: nn.Module, head_lr_factor: float) -> list[dict[str, Any]]:
    """The backbone's parameters at factor 1, the heads' (the network's ``heads`` attribute) at ``head_lr_factor``.

    A mask's logits go with the layer they mask.
    """
    network = unwrap(model)
    heads = [getattr(network, name) for name in getattr(network, "heads", ())]
    in_heads = {id(p) for head in heads for p in head.parameters()}
    backbone = [p for p in network.parameters() if id(p) not in in_heads]
    head = [p for p in network.parameters() if id(p) in in_heads]
    groups = [{"params": backbone, "lr_factor": 1.0}]
    if head:
        groups.append({"params": head, "lr_factor": float(head_lr_factor)})
    return groups


def build_optimizer(model: nn.Module, cfg: Any) -> torch.optim.Optimizer:
    """SGD with momentum (the segmentation recipes) or Adam (CIFAR-10), over ``parameter_groups``."""
    groups = parameter_groups(model, cfg.head_lr_factor)
    name = getattr(cfg, "optimizer", "sgd")
    if name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.base_lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if name == "adam":
        return torch.optim.Adam(groups, lr=cfg.base_lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {name!r}")


def learning_rate(schedule: str, base_lr: float, iteration: int, max_iterations: int, power: float = 0.9) -> float:
    """``base_lr`` at ``iteration`` of ``max_iterations``: poly ``(1 - t) ** power``, cosine ``(1 + cos(pi t)) / 2``."""
    progress = min(max(iteration / max(max_iterations, 1), 0.0), 1.0)
    if schedule == "poly":
        return base_lr * (1.0 - progress) ** power
    if schedule == "cosine":
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"lr_schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_factor", 1.0)


def drop_stale_parameters(optimizer: torch.optim.Optimizer, model: nn.Module) -> int:
    """Remove the parameters ``model`` no longer has (the logits after ``soft_to_hard_k``), with their state.

    Returns how many were dropped. The remaining parameters keep their order and their momentum,
    so the optimizer equals one built afresh for the hardened model (and its state dict loads there).
    """
    alive = {id(p) for p in unwrap(model).parameters()}
    dropped = 0
    for group in optimizer.param_groups:
        kept = [p for p in group["params"] if id(p) in alive]
        for p in group["params"]:
            if id(p) not in alive:
                optimizer.state.pop(p, None)
                dropped += 1
        group["params"] = kept
    return dropped
