"""Counting what a forward pass costs, layer by layer: parameters and multiply-accumulates (MACs).

The network runs once on an example input with hooks on every layer that holds weights, so the
count follows whatever path its ``forward`` takes at that input size. MACs are those of convs,
transposed convs and linear layers (what dominates a CNN), per sample of the batch.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from acosp.compression.layers import CompressedConv2d, CompressedConvTranspose2d
from acosp.inject import MaskedConv, unwrap

# Layers that hold their conv as ``.conv``: counted as one layer, by that conv.
WRAPPED = (MaskedConv, CompressedConv2d, CompressedConvTranspose2d)


def _macs(module: nn.Module, inputs: tuple, output: Any) -> int:
    """Multiply-accumulates of one call, for the whole batch."""
    if isinstance(module, WRAPPED):
        module = module.conv
    if not isinstance(output, torch.Tensor) or not inputs or not isinstance(inputs[0], torch.Tensor):
        return 0
    x = inputs[0]
    if isinstance(module, nn.ConvTranspose2d):
        # every input position sends in_channels / groups * kh * kw products to each output channel
        per_position = module.out_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
        return x.numel() * per_position
    if isinstance(module, nn.Conv2d):
        # out_channels of the conv itself: a compressed conv may write into a wider output
        positions = output.shape[0] * output.shape[-2] * output.shape[-1]
        per_position = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
        return positions * module.out_channels * per_position
    if isinstance(module, nn.Linear):
        return x.numel() // module.in_features * module.in_features * module.out_features
    return 0


def _own_parameters(module: nn.Module) -> int:
    if isinstance(module, WRAPPED):  # the conv's weights; a mask's logits go away with compression
        return sum(p.numel() for p in module.conv.parameters())
    return sum(p.numel() for p in module.parameters(recurse=False))


def count_layers(model: nn.Module, example_input: torch.Tensor | tuple) -> dict[str, dict[str, Any]]:
    """``{layer name: {"type", "parameters", "macs", "calls"}}`` for every layer with weights that ran.

    ``macs`` is per sample (the batch's total divided by the batch size of the first input);
    layers never called (PSPNet's auxiliary head in eval mode) are not listed.
    """
    network = unwrap(model)
    args = example_input if isinstance(example_input, tuple) else (example_input,)
    batch = next((arg.shape[0] for arg in args if isinstance(arg, torch.Tensor) and arg.dim() > 0), 1)
    counted: dict[str, dict[str, Any]] = {}
    inside_wrapper: list[nn.Module] = []
    handles = []

    def record(name: str):
        def hook(module, inputs, output):
            if inside_wrapper and module is not inside_wrapper[-1]:
                return  # the conv inside a wrapper: counted with it
            row = counted.setdefault(
                name, {"type": type(module).__name__, "parameters": _own_parameters(module), "macs": 0, "calls": 0}
            )
            row["macs"] += _macs(module, inputs, output)
            row["calls"] += 1

        return hook

    def enter(module, args) -> None:
        inside_wrapper.append(module)

    def leave(module, args, output) -> None:
        inside_wrapper.pop()

    for name, module in network.named_modules():
        if isinstance(module, WRAPPED):
            handles.append(module.register_forward_pre_hook(enter))
            handles.append(module.register_forward_hook(record(name)))
            handles.append(module.register_forward_hook(leave))
        elif _own_parameters(module):
            handles.append(module.register_forward_hook(record(name)))
    training = network.training
    network.eval()
    try:
        with torch.no_grad():
            network(*args)
    finally:
        network.train(training)
        for handle in handles:
            handle.remove()
    for row in counted.values():
        row["macs"] //= batch
    return counted
