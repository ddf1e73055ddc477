"""What the masks have decided (kept channels, pruning statistics for logging) and what a network costs.

``model_statistics`` counts parameters and multiply-accumulates per layer (``acosp.counting``),
of a masked network as if compressed, so that the numbers are those a user gets.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

from acosp.compress import compress, compression_spec
from acosp.counting import count_layers
from acosp.inject import MaskedConv, is_prunable, named_mask_layers, soft_masks, soft_to_hard_k, unwrap
from acosp.masks import SigmoidSoftTopK

# A mask value within this distance of 1 counts as chosen, within it of 0 as pruned.
DECIDED_TOLERANCE = 0.01


@torch.no_grad()
def current_mask(mask_layer: nn.Module) -> tuple[torch.Tensor, float | None, float | None]:
    """``(mask, x0, temperature)`` of a mask layer now; x0 and temperature are None for a hard mask."""
    if isinstance(mask_layer, SigmoidSoftTopK):
        mask, x0 = mask_layer.compute_mask()
        return mask.float(), float(x0), float(mask_layer.temperature)
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


def model_statistics(
    model: nn.Module, example_input: torch.Tensor | tuple, as_compressed: bool = True
) -> dict[str, Any]:
    """Parameters, MACs and kept channels of a network at the size of ``example_input``, per layer and in total.

    A network with masks is counted as if compressed (``acosp.compress``; soft masks as their
    top-k), or as it runs with ``as_compressed=False``; a compressed or plain network as it is.
    Returns ``{"parameters", "macs", "kept_channels", "channels", "layers": {name: {"type",
    "parameters", "macs", "kept", "channels"}}}``: parameters of the layers the forward pass uses,
    MACs of its convs and linear layers per sample, and each conv's output channels kept out of
    its original width (totals over the masked convs; for a plain network over the prunable ones).
    """
    network = unwrap(model)
    original_widths: dict[str, tuple[int, int]] = {}
    if as_compressed and any(isinstance(module, MaskedConv) for module in network.modules()):
        if soft_masks(network):
            network = soft_to_hard_k(copy.deepcopy(network))
        network = compress(network, example_input, strict=False)
    spec = network.__dict__.get("_acosp_compression_spec")
    if spec is not None:
        original_widths = {name: tuple(pair) for name, pair in compression_spec(network)["kept_channels"].items()}
    else:
        original_widths = kept_channels(network)  # masked, counted as it runs
    layers = count_layers(network, example_input)
    modules = dict(network.named_modules())
    kept_total = channels_total = 0
    for name, row in layers.items():
        module = modules[name]
        kept = channels = getattr(module, "out_channels", None)
        if name in original_widths:
            kept, channels = original_widths[name]
        row["kept"], row["channels"] = kept, channels
        counts = name in original_widths if original_widths else is_prunable(module)
        if kept is not None and counts:
            kept_total += kept
            channels_total += channels
    return {
        "parameters": sum(row["parameters"] for row in layers.values()),
        "macs": sum(row["macs"] for row in layers.values()),
        "kept_channels": kept_total,
        "channels": channels_total,
        "layers": layers,
    }


def _human(number: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(number) >= scale:
            return f"{number / scale:.2f}{unit}"
    return f"{number:.0f}"


def format_model_statistics(statistics: dict[str, Any]) -> str:
    """A plain-text table of ``model_statistics``: one row per layer and a total."""
    rows = [("layer", "type", "kept/all", "params", "MACs")]
    for name, row in statistics["layers"].items():
        width = "" if row["kept"] is None else f"{row['kept']}/{row['channels']}"
        rows.append((name, row["type"], width, _human(row["parameters"]), _human(row["macs"])))
    total = f"{statistics['kept_channels']}/{statistics['channels']}"
    rows.append(("total", "", total, _human(statistics["parameters"]), _human(statistics["macs"])))
    return _table(rows, left=2)


def format_comparison(columns: dict[str, dict[str, Any]]) -> str:
    """Totals of several ``model_statistics`` side by side, with each one's ratio to the first.

    Entries may carry a ``latency`` (seconds) too, which is then shown as well.
    """
    names = list(columns)
    first = columns[names[0]]
    quantities = [("parameters", "parameters"), ("MACs", "macs")]
    if all("latency" in column for column in columns.values()):
        quantities.append(("latency (ms)", "latency"))
    header = ["", *names]
    rows = [header]
    for label, key in quantities:
        cells = [label]
        for name in names:
            value = columns[name][key]
            text = f"{value * 1000:.1f}" if key == "latency" else _human(value)
            if name != names[0]:
                text += f" ({first[key] / value:.2f}x)" if value else ""
            cells.append(text)
        rows.append(cells)
    return _table(rows, left=1)


def _table(rows: list, left: int) -> str:
    """Columns padded to their widest cell; the first ``left`` columns aligned left, the rest right."""
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [
            cell.ljust(width) if column < left else cell.rjust(width)
            for column, (cell, width) in enumerate(zip(row, widths))
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)
