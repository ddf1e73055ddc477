"""The plain-data description of a compressed network, and rebuilding the network from it.

``compress`` records every layer it narrows as an entry of lists, numbers and strings; a
checkpoint saves that beside the state dict, and ``apply_compression_spec`` turns a freshly built
network back into the compressed one, so no pickled modules are needed.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from acosp.compression.layers import (
    CompressedConv2d,
    CompressedConvTranspose2d,
    RemovedLayer,
    SamePaddedConv2d,
    to_memory_format,
)
from acosp.inject import MaskedConv, unwrap

SPEC_FORMAT = "acosp.compression"
SPEC_VERSION = 1


def compression_spec(compressed: nn.Module) -> dict[str, Any]:
    """The plain-data description of a compressed network (only lists, dicts, numbers, strings).

    Save it beside ``compressed.state_dict()``; ``apply_compression_spec`` turns the network as
    built back into the compressed one.
    """
    spec = unwrap(compressed).__dict__.get("_acosp_compression_spec")
    if spec is None:
        raise ValueError("this network was not made by acosp.compress.compress (it has no compression spec)")
    return copy.deepcopy(spec)


def apply_compression_spec(model: nn.Module, spec: dict[str, Any]) -> nn.Module:
    """Turn a freshly built network (with or without masks) into the compressed one; returns it.

    The layers get the compressed shapes but not their values: load the compressed state dict
    afterwards (``model.load_state_dict(state_dict)``, strict).
    """
    if not isinstance(spec, dict) or spec.get("format") != SPEC_FORMAT:
        raise ValueError(f"not an acosp compression spec (expected format '{SPEC_FORMAT}')")
    if spec.get("version") != SPEC_VERSION:
        raise ValueError(f"compression spec version {spec.get('version')} is not supported (expected {SPEC_VERSION})")
    network = unwrap(model)
    modules = dict(network.named_modules(remove_duplicate=False))
    for name, entry in spec["layers"].items():
        if name not in modules:
            raise ValueError(f"the compression spec names layer '{name}', which this network does not have")
        base = modules[name]
        if isinstance(base, MaskedConv):
            base = base.conv
        expected = BASE_TYPES.get(entry["type"])
        if expected is not None and not isinstance(base, expected):
            raise ValueError(
                f"the compression spec has a {entry['type']} at '{name}', but this network has a {type(base).__name__}"
            )
        if entry["type"] == "NarrowedNorm":  # the network's own layer, narrowed: values come with the state dict
            from acosp.compression.compressor import narrowed_norm_copy

            layer = narrowed_norm_copy(base, torch.arange(entry["num_features"]))
        elif entry["type"] == "NarrowedChannelwise":
            from acosp.compression.channelwise import narrowed_channelwise_copy

            layer = narrowed_channelwise_copy(base, torch.arange(entry["channels"]))
        else:
            layer = build_layer(entry, name)
        reference = next(iter([*base.parameters(), *base.buffers()]), None)
        if reference is not None:  # where the layer it replaces lives
            layer.to(device=reference.device, dtype=reference.dtype if reference.is_floating_point() else None)
        set_module(network, name, layer)
    if spec.get("channels_last"):
        to_memory_format(network, torch.channels_last)
    network._acosp_compression_spec = copy.deepcopy(spec)
    return model


def compression_report(compressed: nn.Module) -> str:
    """Which layers write into wider tensors or read only some of theirs, and which tensors kept full width
    and why."""
    spec = compression_spec(compressed)
    lines = []
    for name, entry in spec["layers"].items():
        if entry.get("out_width") is not None:
            lines.append(
                f"{name}: computes {entry['out_channels']} of {entry['original_out_channels']} channels, written "
                f"into {entry['out_width']} (what it feeds keeps channels that other layers compute, or constants)"
            )
        elif entry.get("padded_channels"):  # networks compressed when a few extra channels were zero filters
            lines.append(
                f"{name}: computes {entry['out_channels'] - entry['padded_channels']} of "
                f"{entry['original_out_channels']} channels, and {entry['padded_channels']} more as constants "
                "(zero filters) for what it feeds"
            )
        if entry.get("in_width") is not None:
            lines.append(
                f"{name}: reads {entry['in_channels']} of the {entry['in_width']} channels it receives (the others "
                "are constants a tensor kept at full width holds; folded into its bias)"
            )
    lines += [f"full width: {reason}" for reason in spec["full_width"]]
    return "\n".join(lines) if lines else "every layer keeps only its own channels"


BASE_TYPES = {
    "Conv2d": nn.Conv2d,
    "CompressedConv2d": nn.Conv2d,
    "ConvTranspose2d": nn.ConvTranspose2d,
    "CompressedConvTranspose2d": nn.ConvTranspose2d,
    "Linear": nn.Linear,
    "BatchNorm1d": nn.BatchNorm1d,
    "BatchNorm2d": nn.BatchNorm2d,
    "BatchNorm3d": nn.BatchNorm3d,
    "Identity": nn.modules.batchnorm._BatchNorm,  # a BatchNorm folded into the conv before it
    "NarrowedNorm": nn.modules.batchnorm._BatchNorm,  # a BatchNorm subclass of its own, narrowed in place
    "NarrowedChannelwise": nn.Module,  # a layer scale, narrowed in place
}


def build_layer(entry: dict[str, Any], name: str) -> nn.Module:
    """An (uninitialised) layer of the shape a spec entry describes."""
    kind = entry["type"]
    if kind == "Removed":
        return RemovedLayer(name)
    if kind == "Identity":
        return nn.Identity()
    if kind == "Linear":
        return nn.Linear(entry["in_features"], entry["out_features"], bias=entry["bias"])
    if kind in ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d"):
        return getattr(nn, kind)(
            entry["num_features"],
            eps=entry["eps"],
            momentum=entry["momentum"],
            affine=entry["affine"],
            track_running_stats=entry["track_running_stats"],
        )
    arguments = {
        "in_channels": entry["in_channels"],
        "out_channels": entry["out_channels"],
        "kernel_size": tuple(entry["kernel_size"]),
        "stride": tuple(entry["stride"]),
        "padding": entry["padding"] if isinstance(entry["padding"], str) else tuple(entry["padding"]),
        "dilation": tuple(entry["dilation"]),
        "groups": entry["groups"],
        "bias": entry["bias"],
        "padding_mode": entry["padding_mode"],
    }
    if "output_padding" in entry:
        arguments["output_padding"] = tuple(entry["output_padding"])
    special = {
        "out_width": entry.get("out_width"),
        "constant_input": entry.get("constant_input", False),
        "filled": entry.get("filled", False),
        "in_width": entry.get("in_width"),
    }
    same_padding = bool(entry.get("same_padding", False))  # TensorFlow's, from each input's size
    if same_padding and kind not in ("Conv2d", "CompressedConv2d"):
        raise ValueError(f"layer '{name}' of type '{kind}' cannot have 'same_padding' in the compression spec")
    if kind in ("Conv2d", "ConvTranspose2d"):
        layer_type = SamePaddedConv2d if same_padding else getattr(nn, kind)
        layer = layer_type(**arguments)  # the standard type where it can be, so that other tools count it
        if entry["unprunable"]:
            layer.unprunable = True
    elif kind == "CompressedConv2d":
        layer = CompressedConv2d(**arguments, **special, same_padding=same_padding)
    elif kind == "CompressedConvTranspose2d":
        layer = CompressedConvTranspose2d(**arguments, **special)
    else:
        raise ValueError(f"unknown layer type '{kind}' in the compression spec")
    return layer


def set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    parent = root
    *path, last = name.split(".")
    for part in path:
        parent = parent._modules[part]
    parent._modules[last] = module
