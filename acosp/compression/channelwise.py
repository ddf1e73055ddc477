"""Layers that map each channel on its own with a value per channel: layer scales, PReLU.

A layer scale (FastViT's and timm's ``LayerScale2d``: ``x * gamma``) multiplies every channel by a
parameter of its own. Traced as functions, that parameter is a per-channel tensor no rebuilt layer
narrows, so the tensor it multiplies would keep its full width. Recognised as one layer, it narrows
like a BatchNorm: a copy of the layer keeps the values of the channels that stay.

Such a layer is recognised by what it computes, not by its type: a layer without sub-layers whose
parameters and buffers all hold one value per channel, and whose output channel c, on a random
input, changes with input channel c alone. Normalisations over groups of channels (GroupNorm)
fail that test; ``compress`` checks the whole network on the example input in any case.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from acosp.compression.trace import random_probe
from acosp.inject import MaskedConv
from acosp.masks import ChannelMask, GatheredMask, SigmoidSoftTopK

_PER_CHANNEL_DIMENSION = {1: 0, 3: 0, 4: 1}  # where the channels are in (C,), (C, 1, 1) and (1, C, 1, 1)
# Layers compression knows already, and acosp's own mask layers (inside the masked convs it traces whole).
_KNOWN_LAYERS = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._BatchNorm, MaskedConv)
_KNOWN_LAYERS += (ChannelMask, GatheredMask, SigmoidSoftTopK)


def per_channel_tensors(layer: nn.Module) -> dict[str, int] | None:
    """``{name: dimension of the channels}`` of a layer's own parameters and buffers when each holds one
    value per channel (all of one count, more than one); None otherwise."""
    tensors = [*layer.named_parameters(recurse=False), *layer.named_buffers(recurse=False)]
    if not tensors:
        return None
    counts, dimensions = set(), {}
    for name, tensor in tensors:
        dimension = _PER_CHANNEL_DIMENSION.get(tensor.dim()) if tensor is not None else None
        if dimension is None or tensor.numel() != tensor.shape[dimension]:
            return None
        counts.add(tensor.numel())
        dimensions[name] = dimension
    return dimensions if len(counts) == 1 and counts.pop() > 1 else None


@torch.no_grad()
def is_channelwise_layer(layer: nn.Module) -> bool:
    """Whether ``layer`` maps each channel on its own with its per-channel tensors (module docstring)."""
    if isinstance(layer, _KNOWN_LAYERS) or next(layer.children(), None) is not None:
        return False
    dimensions = per_channel_tensors(layer)
    if dimensions is None:
        return False
    reference = getattr(layer, next(iter(dimensions)))
    channels = reference.numel()
    training = layer.training
    layer.eval()
    try:
        x = random_probe((2, channels, 5, 5), reference)
        y = layer(x.clone())  # a copy: the layer may scale its input in place
        if not isinstance(y, torch.Tensor) or y.shape != x.shape:
            return False
        for channel in sorted({0, channels // 2, channels - 1}):
            moved = x.clone()
            moved[:, channel] += 1.0
            changed = (layer(moved) - y).abs().amax((0, 2, 3)) > 0
            changed[channel] = False
            if changed.any():
                return False
        return True
    except Exception:  # noqa: BLE001 - a layer that needs other input is no channel-wise layer
        return False
    finally:
        layer.train(training)


def channelwise_layers(network: nn.Module) -> set[int]:
    """The ids of the channel-wise layers of ``network``: traced as one layer each."""
    return {id(module) for module in network.modules() if is_channelwise_layer(module)}


def narrowed_channelwise_copy(layer: nn.Module, layout: torch.Tensor) -> nn.Module:
    """A copy of a channel-wise layer (its own class and forward) keeping the channels ``layout`` lists."""
    return narrowed_copy(layer, layout, per_channel_tensors(layer) or {}, channel_count(layer), _WIDTH_ATTRIBUTES)


# What a layer may check its input against (InstanceNorm's num_features, PReLU's num_parameters).
_WIDTH_ATTRIBUTES = ("num_features", "num_parameters", "num_channels", "channels", "dim")


def narrowed_copy(
    layer: nn.Module, layout: torch.Tensor, dimensions: dict[str, int], channels: int, widths: tuple[str, ...]
) -> nn.Module:
    """A copy of ``layer`` (its own class and forward) whose tensors named in ``dimensions`` keep, along the
    dimension given, the channels ``layout`` lists; its integer attributes named in ``widths`` that equal
    ``channels`` become the narrower width."""
    new = copy.deepcopy(layer)
    index = torch.as_tensor(layout, dtype=torch.long)
    for name, dimension in dimensions.items():
        tensor = getattr(new, name)
        narrowed = tensor.detach().index_select(dimension, index.to(tensor.device)).clone()
        if isinstance(tensor, nn.Parameter):
            setattr(new, name, nn.Parameter(narrowed, requires_grad=tensor.requires_grad))
        else:
            new._buffers[name] = narrowed
    for name in widths:
        if isinstance(getattr(new, name, None), int) and getattr(new, name) == channels:
            setattr(new, name, len(index))
    return new


def channel_count(layer: nn.Module) -> int:
    """How many channels a channel-wise layer has values for."""
    name, dimension = next(iter((per_channel_tensors(layer) or {}).items()))
    return getattr(layer, name).shape[dimension]
