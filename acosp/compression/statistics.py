"""What a network costs: parameters and multiply-accumulates per layer, of a masked network as if compressed.

Counting a masked network as the compressed network it becomes (``counting`` on the result of
``compress``) gives the numbers a user gets, not those of the zeros the masks multiply by.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from acosp.compression.compressor import compress
from acosp.compression.counting import count_layers
from acosp.compression.spec import compression_spec
from acosp.inject import MaskedConv, is_prunable, soft_masks, soft_to_hard_k, unwrap
from acosp.stats import kept_channels


def model_statistics(
    model: nn.Module, example_input: torch.Tensor | tuple, as_compressed: bool = True
) -> dict[str, Any]:
    """Parameters, MACs and kept channels of a network at the size of ``example_input``, per layer and in total.

    A network with masks is counted as if compressed (``compress``; soft masks as their
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
