"""Conv2d subclasses with a forward of their own, as the standard convs they compute in eval mode.

timm's weight-standardised convs (NFNets) compute their filters from their weights on every call;
its ``Conv2dSame`` (the ``tf_`` EfficientNets) pads its input as TensorFlow's 'same' does, by an
amount that depends on the input's size. In eval mode each is one convolution of its input: a plain
``nn.Conv2d`` holding the filters it computes, or a ``SamePaddedConv2d``. Mask coupling and
compression treat them as those convs, so that they narrow like any other.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from acosp.compression.layers import SamePaddedConv2d
from acosp.compression.trace import random_probe
from acosp.inject import MaskedConv


class _Conv2dCalls(TorchFunctionMode):
    """Records the arguments of every 2-D convolution called inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.nn.functional.conv2d, torch.conv2d):
            self.calls.append((args, kwargs))
        return func(*args, **kwargs)


def frozen_conv(conv: nn.Conv2d) -> nn.Conv2d | None:
    """A Conv2d with the filters ``conv`` computes in its own forward (weight standardisation, a gain),
    in eval mode: a plain one, or a ``SamePaddedConv2d`` where that forward pads its input first as
    TensorFlow's 'same' does (timm's ``Conv2dSame``); None when its forward does anything else, or
    fails on a small random input (it is then traced as it is)."""
    reach = [(size - 1) * dilation + 1 for size, dilation in zip(conv.kernel_size, conv.dilation)]
    x = random_probe((2, conv.in_channels, 2 * reach[0] + 3, 2 * reach[1] + 3), conv.weight)
    recorder = _Conv2dCalls()
    try:
        with torch.no_grad(), recorder:
            expected = conv(x)
    except Exception:  # noqa: BLE001 - a forward that needs other input: not a conv to freeze
        return None
    if len(recorder.calls) != 1:
        return None
    call_args, call_kwargs = recorder.calls[0]
    names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
    bound = {**dict(zip(names, call_args)), **call_kwargs}
    if not isinstance(bound.get("weight"), torch.Tensor) or not isinstance(bound.get("input"), torch.Tensor):
        return None
    padded_first = bound["input"] is not x  # padding of its own, perhaps TensorFlow's 'same'
    if padded_first and _pair(bound.get("padding", 0)) != (0, 0):
        return None
    weight, bias = bound["weight"].detach(), bound.get("bias")
    layer_type = SamePaddedConv2d if padded_first else nn.Conv2d
    frozen = (
        layer_type(
            conv.in_channels,
            conv.out_channels,
            tuple(weight.shape[2:]),
            stride=bound.get("stride", 1),
            padding=bound.get("padding", 0),
            dilation=bound.get("dilation", 1),
            groups=bound.get("groups", 1),
            bias=bias is not None,
            device="meta",  # no initialisation drawn from the random stream: the values are copied in below
        )
        .to_empty(device=weight.device)
        .to(dtype=weight.dtype)
    )
    with torch.no_grad():
        frozen.weight.copy_(weight)
        if bias is not None:
            frozen.bias.copy_(bias.detach())
        # The padding may depend on the size (on its parity, for a strided conv): odd and even sizes, tall
        # and wide, and every remainder of the stride.
        sizes = [(x.shape[2] + i, x.shape[3] + i + 1) for i in range(max(frozen.stride) + 1)] if padded_first else []
        for number, size in enumerate([tuple(x.shape[2:]), *sizes]):
            probe = x if number == 0 else random_probe((*x.shape[:2], *size), x, seed=number)
            wanted = expected if probe is x else conv(probe)
            result = frozen(probe)
            if result.shape != wanted.shape or not torch.allclose(result, wanted, rtol=1e-4, atol=1e-5):
                return None
    if getattr(conv, "unprunable", False):
        frozen.unprunable = True
    return frozen


def _pair(value) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def with_frozen_filters(network: nn.Module) -> nn.Module:
    """``network``, or a copy of it in which every masked Conv2d subclass that computes its filters in its
    own forward (timm's weight-standardised ``StdConv2d``) is a plain Conv2d holding those filters, and
    every one that pads as TensorFlow does (timm's ``Conv2dSame``) a ``SamePaddedConv2d``.

    Compression can then narrow them like any conv. In eval mode the filters are fixed, so the
    function is the same; the compressed network stores them as computed.
    """
    frozen = {}
    for module in network.modules():
        if isinstance(module, MaskedConv):
            conv = module.conv
            if isinstance(conv, nn.Conv2d) and type(conv).forward is not nn.Conv2d.forward:
                plain = frozen_conv(conv)
                if plain is not None:
                    frozen[id(conv)] = plain
    return copy.deepcopy(network, memo=dict(frozen)) if frozen else network


def has_conv_forward(conv: nn.Module) -> bool:
    """Whether ``conv`` is a Conv2d subclass with a forward of its own that computes one convolution of its
    input (``frozen_conv``); such convs are traced as one layer."""
    return isinstance(conv, nn.Conv2d) and type(conv).forward is not nn.Conv2d.forward and frozen_conv(conv) is not None
