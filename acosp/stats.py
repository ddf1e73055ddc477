"""What the masks have decided: kept channels and the pruning statistics a training loop logs.

What a network costs (parameters, MACs) is ``acosp.compress.model_statistics``: it counts a masked
network as if compressed, and so belongs to the compression layer.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from acosp.inject import named_mask_layers
from acosp.masks import GatheredMask, SigmoidSoftTopK

# A mask value within this distance of 1 counts as chosen, within it of 0 as pruned.
DECIDED_TOLERANCE = 0.01


@torch.no_grad()
def current_mask(mask_layer: nn.Module) -> tuple[torch.Tensor, float | None, float | None]:
    """``(mask, x0, temperature)`` of a mask layer now; x0 and temperature are None for a hard mask."""
    if isinstance(mask_layer, SigmoidSoftTopK):
        mask, x0 = mask_layer.compute_mask()
        return mask.float(), float(x0.float().mean()), float(mask_layer.temperature)  # over channel groups
    if isinstance(mask_layer, GatheredMask):
        mask, x0, temperature = current_mask(mask_layer.source)
        return mask[mask_layer.index], x0, temperature
    return mask_layer.mask.float(), None, None


def kept_channels(model: nn.Module) -> dict[str, tuple[int, int]]:
    """``{masked conv name: (kept channels, all channels)}``; kept means a mask value above 0.5."""
    result = {}
    for name, layer in named_mask_layers(model):
        mask = current_mask(layer)[0]
        result[name] = (int((mask > 0.5).sum()), mask.numel())
    return result


def _summary(prefix: str, values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    data = torch.tensor(values, dtype=torch.float64)
    variance = float(data.var(unbiased=False))
    return {
        f"{prefix}/mean": float(data.mean()),
        f"{prefix}/var": variance,
        f"{prefix}/min": float(data.min()),
        f"{prefix}/max": float(data.max()),
    }


def mask_statistics(model: nn.Module, prefix: str = "acosp") -> dict[str, float]:
    """Per mask layer and summarised over layers: chosen, pruned and undecided fractions, x0, temperature.

    Keys: ``{prefix}/layer/<conv name>/<statistic>`` per layer, ``{prefix}/<statistic>/{mean,var,min,max}``
    over layers, and the totals ``{prefix}/kept_channels``, ``{prefix}/total_channels``,
    ``{prefix}/kept_fraction``. x0 is left out where a layer keeps every channel (x0 = -inf).
    """
    logs: dict[str, float] = {}
    per_statistic: dict[str, list[float]] = {
        name: [] for name in ("chosen", "pruned", "undecided", "x0", "temperature")
    }
    kept_total = channels_total = 0
    for name, layer in named_mask_layers(model):
        mask, x0, temperature = current_mask(layer)
        chosen = float(((mask - 1).abs() < DECIDED_TOLERANCE).float().mean())
        pruned = float((mask.abs() < DECIDED_TOLERANCE).float().mean())
        values = {"chosen": chosen, "pruned": pruned, "undecided": 1.0 - chosen - pruned}
        if x0 is not None and math.isfinite(x0):
            values["x0"] = x0
        if temperature is not None:
            values["temperature"] = temperature
        kept = int((mask > 0.5).sum())
        values["kept_channels"] = kept
        kept_total += kept
        channels_total += mask.numel()
        for statistic, value in values.items():
            logs[f"{prefix}/layer/{name}/{statistic}"] = float(value)
            if statistic in per_statistic:
                per_statistic[statistic].append(float(value))
    for statistic, values in per_statistic.items():
        logs.update(_summary(f"{prefix}/{statistic}", values))
    if channels_total:
        logs[f"{prefix}/kept_channels"] = float(kept_total)
        logs[f"{prefix}/total_channels"] = float(channels_total)
        logs[f"{prefix}/kept_fraction"] = kept_total / channels_total
    return logs


def format_kept_channels(model: nn.Module) -> str:
    """A plain-text table of kept channels per masked conv and in total."""
    rows = kept_channels(model)
    if not rows:
        return "no masked layers"
    kept_sum = sum(kept for kept, _ in rows.values())
    total_sum = sum(total for _, total in rows.values())
    rows["total"] = (kept_sum, total_sum)
    width = max(len(name) for name in [*rows, "layer"])
    lines = [f"{'layer':<{width}}  {'kept':>6}  {'all':>6}  {'kept %':>6}"]
    lines += [f"{name:<{width}}  {kept:>6}  {total:>6}  {kept / total:>6.1%}" for name, (kept, total) in rows.items()]
    return "\n".join(lines)
