"""Which channels of every traced tensor carry information, and which channels each tensor must keep.

A channel is *live* when it depends on the input. A channel that does not is a constant (a pruned
conv output is exactly 0 before BatchNorm, a constant after it). A constant that is the same at
every position (*uniform*) can be dropped: the layers that consume it fold it into their bias.
Every other channel is *required*. Code that is not rewritten (the network's own ``forward``)
combines tensors channel by channel (residual additions, max-unpooling, concatenation), so the
tensors it combines must keep matching channels: requirements spread along those links until
nothing changes. A channel a tensor does not require is never materialised.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import nn

from acosp.compression.layers import SamePaddedConv2d
from acosp.compression.trace import Graph, Node, Ref, Value, leaves
from acosp.inject import MaskedConv, is_depthwise
from acosp.masks import is_hard

_BATCH_NORM_FORWARD = nn.modules.batchnorm._BatchNorm.forward
_CONV_FORWARDS = (nn.Conv2d.forward, nn.ConvTranspose2d.forward, SamePaddedConv2d.forward)
_STEP_FORWARDS = (*_CONV_FORWARDS, nn.Linear.forward, _BATCH_NORM_FORWARD)


def _names(text: str) -> set[str]:
    return set(text.split())


# Functions applied element by element (with broadcasting): channel c of the output comes from channel c
# of each operand. Dropout counts: the network is traced in eval mode.
ELEMENTWISE = _names(
    """
    relu relu6 leaky_relu hardtanh elu selu celu gelu silu mish sigmoid tanh hardsigmoid hardswish
    softplus softsign tanhshrink threshold logsigmoid
    dropout dropout1d dropout2d dropout3d alpha_dropout feature_alpha_dropout
    neg abs exp log log1p sqrt rsqrt square reciprocal clamp clip clamp_min clamp_max sign nan_to_num
    contiguous clone detach float half double bfloat16 to type
    add sub rsub mul div truediv floordiv true_divide floor_divide maximum minimum fmax fmin pow remainder fmod
    eq ne lt le gt ge where masked_fill lerp addcmul addcdiv logical_and logical_or logical_not
    """
)
# Spatial operations that treat every channel alone and keep a uniform channel uniform.
SPATIAL = _names(
    """
    interpolate upsample upsample_bilinear upsample_nearest
    max_pool1d max_pool2d max_pool3d max_pool1d_with_indices max_pool2d_with_indices max_pool3d_with_indices
    adaptive_avg_pool1d adaptive_avg_pool2d adaptive_avg_pool3d adaptive_max_pool1d adaptive_max_pool2d
    adaptive_max_pool3d adaptive_max_pool1d_with_indices adaptive_max_pool2d_with_indices
    adaptive_max_pool3d_with_indices
    """
)
AVG_POOL = {"avg_pool1d", "avg_pool2d", "avg_pool3d"}
REDUCTIONS = {"mean", "sum", "amax", "amin", "max", "min", "std", "var", "prod", "logsumexp", "nanmean", "nansum"}
REDUCTIONS |= {"norm", "vector_norm"}  # their dim comes after the order of the norm
RESHAPES = _names(
    "view reshape flatten squeeze unsqueeze permute transpose expand expand_as getitem narrow select movedim"
)
CONCATENATIONS = {"cat", "concat", "concatenate"}
SPLITS = {"split", "chunk", "split_with_sizes", "tensor_split", "unbind"}
UNPOOLING = {"max_unpool1d", "max_unpool2d", "max_unpool3d"}
CONSTANTS_LIKE = {"zeros_like", "ones_like", "full_like"}
CHANNEL_DIM_ARGUMENT = {"softmax": 1, "log_softmax": 1, "softmin": 1, "normalize": 2}
# Normalisations called as functions inside a module's own forward: their statistics and affine
# parameters are tensors of every channel that no rebuilt layer narrows (and group and layer norms mix
# the channels), so what they read keeps its full width.
FUNCTIONAL_NORMS = {"batch_norm", "instance_norm", "group_norm", "layer_norm", "local_response_norm"}
# Convolutions and linear maps called as functions in a layer's own forward (timm's Conv2dSame pads its
# input first; BlurPool blurs with a filter it holds): no rebuilt layer narrows their weights, so what
# they read keeps its full width and every channel they compute is live.
FUNCTIONAL_LAYERS = _names("conv1d conv2d conv3d conv_transpose1d conv_transpose2d conv_transpose3d linear bilinear")


def base_name(name: str) -> str:
    """``__iadd__``, ``__radd__``, ``add_`` and ``add`` are all ``add``."""
    if name.startswith("__") and name.endswith("__"):
        name = name[2:-2]
        if name[:1] in ("i", "r") and name[1:] in ELEMENTWISE:
            name = name[1:]
        return name
    return name.rstrip("_").lstrip("_")


def is_step(module: nn.Module) -> bool:
    """Layers recorded as one call and rebuilt narrower: masked convs, convs, linear layers, BatchNorm.

    BatchNorm subclasses with a forward of their own (timm's ``BatchNormAct2d``: BatchNorm, dropout
    and an activation) count too: in eval mode they map each channel on its own, which is all
    compression needs; so do Linear subclasses (timm's casts its weight to the input's dtype).
    ``compress``'s check on the example input verifies that for each network.
    """
    if isinstance(module, MaskedConv):
        return type(module.conv).forward in _CONV_FORWARDS or is_linear_step(module.conv)
    return is_linear_step(module) or type(module).forward in _STEP_FORWARDS or is_channelwise_norm(module)


def is_linear_step(module: nn.Module) -> bool:
    """A linear layer, or a subclass that only casts (timm's ``Linear``: its weight stays a matrix)."""
    return isinstance(module, nn.Linear) and module.weight.dim() == 2


def is_channelwise_norm(module: nn.Module) -> bool:
    """A BatchNorm subclass whose own forward adds channel-wise steps (an activation) to the normalisation."""
    return isinstance(module, nn.modules.batchnorm._BatchNorm) and type(module).forward is not _BATCH_NORM_FORWARD


@dataclasses.dataclass(eq=False)
class Link:
    """Channel ``b_index[i]`` of tensor ``b`` is channel ``a_index[i]`` of tensor ``a`` (or built from it)."""

    a: Value
    b: Value
    a_index: torch.Tensor
    b_index: torch.Tensor


class UnsupportedOperation(ValueError):
    """The network does something to pruned channels that compression does not know how to follow."""


class ChannelFlow:
    """Live and uniform channels of every traced tensor, and the channels each must keep."""

    def __init__(self, graph: Graph, strict: bool = True, pruned_layers: frozenset[int] = frozenset()):
        self.graph = graph
        self.strict = strict
        # ids of unmasked linear layers to take as keeping none of their outputs (``maskable_linears``
        # asks which outputs could then leave the network).
        self.pruned_layers = pruned_layers
        self.live: dict[int, torch.Tensor] = {}
        self.uniform: dict[int, torch.Tensor] = {}
        self.links: list[Link] = []
        self.full: dict[int, str] = {}  # value index -> why it keeps every channel
        self.full_reasons: list[str] = []
        # value index -> (representative channel, factor per channel): channel c is factor[c] times the
        # representative where factor[c] != 0 (constants unpooled to the same positions).
        self.proportional: dict[int, tuple[int, torch.Tensor]] = {}
        self.problems: list[str] = []
        # (input, output, groups) of every grouped conv that is not depthwise: each of its surviving groups
        # must read as many input channels, and compute as many output channels, as every other.
        self.grouped: list[tuple[Value, Value, int]] = []
        # Tensors split into that many equal parts along the channels (``chunk``): each part keeps as many.
        self.even: list[tuple[Value, int]] = []
        # value index -> (the tensor whose channel axis a view split into (groups, channels per group),
        # the source channel at each position of the split dimensions, groups): ShuffleNet's channel shuffle.
        self.split_views: dict[int, tuple[Value, torch.Tensor, int]] = {}
        # node index -> what a layer reads in place of its input, whose channels are not where the layer reads
        # them (a conv given channels-last data, a linear layer applied across positions): a stand-in at
        # full width with the channels in the layer's dimension (``input_of``).
        self.stand_ins: dict[int, Value] = {}
        for value in graph.inputs:
            self._set(value, live=True)
            self._keep_full(value, "a network input")
        for node in graph.nodes:
            self._visit(node)
        for value in graph.outputs:
            self._keep_full(value, "a network output")
        self._settle_proportional()
        if self.problems:
            raise UnsupportedOperation(
                "cannot compress this network: "
                + "; ".join(dict.fromkeys(self.problems))
                + ". Pass strict=False to keep those tensors at full width instead."
            )
        self.required = self._spread_requirements()

    # --- statuses -------------------------------------------------------------------------------------
    def _set(self, value: Value, live: bool | torch.Tensor = True, uniform: bool | torch.Tensor = True) -> None:
        channels = value.channels
        if channels is None:
            return
        self.live[value.index] = torch.as_tensor(live).expand(channels).clone()
        self.uniform[value.index] = torch.as_tensor(uniform).expand(channels).clone()

    def input_of(self, call: Node) -> Value:
        """What a layer call reads, with the channels where the layer reads them."""
        return self.stand_ins.get(call.index, call.inputs[0])

    def _read_whole(self, node: Node, dim: int, why: str) -> Value:
        """A layer reads dimension ``dim`` of an input whose channels lie elsewhere: it reads that input
        whole, through a stand-in at full width with the channels in ``dim``."""
        source = node.inputs[0]
        if self.has_pruned(source):
            self.full_reasons.append(f"{node.where()} {why}")
        self._keep_full(source, f"{why} in {node.where()}")
        stand_in = Value(index=-1 - node.index, shape=source.shape, producer=source.producer, channel_dim=dim)
        self._set(stand_in, live=True, uniform=False)
        self._keep_full(stand_in, f"{why} in {node.where()}")
        self.stand_ins[node.index] = stand_in
        return stand_in

    def has_pruned(self, value: Value) -> bool:
        return value.index in self.live and not bool(self.live[value.index].all())

    def _keep_full(self, value: Value, reason: str) -> None:
        if value.channels is not None and value.index not in self.full:
            self.full[value.index] = reason

    def _link(self, a: Value, b: Value, a_index: torch.Tensor | None = None, b_index: torch.Tensor | None = None):
        if a.channels is None or b.channels is None:
            return
        if a_index is None:
            if a.channels != b.channels:
                raise RuntimeError(f"internal error: linking {a.shape} and {b.shape} channel by channel")
            a_index = b_index = torch.arange(a.channels)
        self.links.append(Link(a, b, a_index, b_index))

    def _same_channels(self, node: Node, source: Value, outputs: list[Value] | None = None, uniform_kept=True):
        """Outputs whose channels are the source's channels, one by one."""
        for output in node.outputs if outputs is None else outputs:
            if output.channels != source.channels:
                self._unknown(node, f"changes the channel count ({source.shape} -> {output.shape})")
                return
        for output in node.outputs if outputs is None else outputs:
            live = self.live.get(source.index, torch.tensor(True))
            uniform = self.uniform.get(source.index, torch.tensor(True))
            self._set(output, live, uniform & torch.as_tensor(uniform_kept))
            self._link(source, output)

    def _all_live(self, node: Node) -> None:
        for output in node.outputs:
            # An output shaped like an input whose channels a permute moved has them where that input does.
            output.channel_dim = next(
                (value.channel_dim for value in node.inputs if value.channel_dim != 1 and value.shape == output.shape),
                1,
            )
            self._set(output, live=True)
            self._keep_full(output, f"computed by {node.where()}")

    def _needs_full(self, node: Node, why: str) -> None:
        """An operation that is exact only on complete tensors: its inputs keep every channel."""
        for value in node.inputs:
            if self.has_pruned(value):
                self.full_reasons.append(f"{node.where()} {why}")
            self._keep_full(value, f"{why} in {node.where()}")
        self._all_live(node)

    def _unknown(self, node: Node, why: str = "is not an operation compression knows") -> None:
        if any(self.has_pruned(value) for value in node.inputs):
            if self.strict:
                self.problems.append(f"{node.where()} {why} and receives pruned channels")
            else:
                self.full_reasons.append(f"{node.where()} {why}")
        for value in node.inputs:
            self._keep_full(value, f"{node.where()} {why}")
        self._all_live(node)

    # --- the operations -----------------------------------------------------------------------------
    def _visit(self, node: Node) -> None:
        if node.kind == "module":
            self._visit_module(node)
            return
        name = base_name(node.name)
        first = node.inputs[0]
        if any(value.index in self.split_views for value in node.inputs):
            self._follow_split_view(node, name)
        elif any(value.channel_dim != 1 for value in node.inputs):
            self._visit_moved(node, name)
        elif name in ELEMENTWISE:
            self._elementwise(node)
        elif name in SPATIAL:
            self._same_channels(node, self._first_tensor_argument(node))
        elif name in AVG_POOL:
            padding = node.argument(3, "padding", 0)
            count_include_pad = node.argument(5, "count_include_pad", True)
            divisor = node.argument(6, "divisor_override", None)
            padded = any(p != 0 for p in (padding if isinstance(padding, (tuple, list)) else [padding]))
            self._same_channels(node, first, uniform_kept=not ((padded and count_include_pad) or divisor))
        elif name in REDUCTIONS:
            self._reduction(node, name)
        elif name in RESHAPES:
            self._reshape(node, name)
        elif name in CONCATENATIONS:
            self._concatenation(node)
        elif name in SPLITS:
            dim = node.argument(2, "dim", 0) if name != "unbind" else node.argument(1, "dim", 0)
            self._split(node, dim)
        elif name in UNPOOLING:
            self._unpooling(node)
        elif name in CONSTANTS_LIKE:
            for output in node.outputs:
                self._set(output, live=False, uniform=True)
                self._link(first, output)
        elif name == "pad":
            self._pad(node)
        elif name in FUNCTIONAL_NORMS:
            self._needs_full(node, "normalises with statistics or parameters of every channel")
        elif name in FUNCTIONAL_LAYERS:
            self._needs_full(node, "computes with weights of every channel")
        elif name == "stack":
            if _normalized(node.argument(1, "dim", 0), len(node.outputs[0].shape)) >= 2:
                self._concatenation(node)  # the channels stay in dimension 1: side by side along another
            else:
                self._needs_full(node, "stacks tensors in a new dimension before the channels")
        elif name in CHANNEL_DIM_ARGUMENT:
            dim = node.argument(CHANNEL_DIM_ARGUMENT[name], "dim", None)
            if dim is not None and _normalized(dim, len(first.shape)) >= 2:
                self._same_channels(node, first)
            else:
                self._unknown(node, "mixes channels")
        else:
            self._unknown(node)

    def _visit_moved(self, node: Node, name: str) -> None:
        """An operation on a tensor whose channels are not in dimension 1 (a channels-last block between
        two permutes, the features of a linear layer): element-wise steps and permutes follow them,
        anything else keeps what it reads whole."""
        if name in ELEMENTWISE:
            self._elementwise(node)
        elif name in ("permute", "transpose", "movedim"):
            self._move_channels(node, name)
        elif name in FUNCTIONAL_NORMS:
            self._needs_full(node, "normalises with statistics or parameters of every channel")
        elif name in FUNCTIONAL_LAYERS:
            self._needs_full(node, "computes with weights of every channel")
        else:
            dims = sorted({value.channel_dim for value in node.inputs if value.channel_dim != 1})
            self._needs_full(node, f"is applied to channels in dimension {', '.join(map(str, dims))}")

    def _move_channels(self, node: Node, name: str) -> None:
        """A permute, transpose or movedim: the channels go wherever it puts their dimension."""
        source, output = node.inputs[0], node.outputs[0]
        order = _permutation(node, name, len(source.shape))
        if order is None or len(node.outputs) != 1 or order[0] != 0:
            self._needs_full(node, f"reshapes {source.shape} to {output.shape}")
            return
        output.channel_dim = order.index(source.channel_dim)
        self._same_channels(node, source)

    def _first_tensor_argument(self, node: Node) -> Value:
        for item in (*node.args, *node.kwargs.values()):
            if isinstance(item, Ref):
                return item.value
        return node.inputs[0]

    def _elementwise(self, node: Node) -> None:
        output = node.outputs[0]
        if len(output.shape) < 2 or len(node.outputs) != 1:
            self._unknown(node)
            return
        ndim = len(output.shape)
        # The channels are where the operands of the output's rank have them (dimension 1 unless moved).
        operand_dims = {value.channel_dim for value in node.inputs if len(value.shape) == ndim}
        output.channel_dim = dim = max(operand_dims, default=1)
        channels = output.channels
        live = torch.zeros(channels, dtype=torch.bool)
        uniform = torch.ones(channels, dtype=torch.bool)
        linked = []
        for item in leaves((node.args, node.kwargs)):
            if isinstance(item, Ref):
                shape, value = item.value.shape, item.value
            elif isinstance(item, torch.Tensor):
                shape, value = tuple(item.shape), None
            else:
                continue
            size = _size_along(shape, ndim, dim)
            spatial = any(_size_along(shape, ndim, other) > 1 for other in range(1, ndim) if other != dim)
            moved = value is not None and (value.channel_dim != 1 or dim != 1) and (size > 1 or value.channels != 1)
            if moved and value.channel_dim + ndim - len(shape) != dim:  # its channels are not the output's
                if size > 1:
                    self._needs_full(node, "combines tensors whose channels lie in different dimensions")
                    return
                live |= True  # the same value for every channel of a position: it may vary by position
                uniform &= False
                continue
            if value is None:  # a parameter or a tensor made in forward
                if size > 1:
                    self._needs_full(node, "combines channels with a per-channel tensor it does not compute")
                    return
                uniform &= not spatial
            elif size == channels and value.index in self.live:
                live |= self.live[value.index]
                uniform &= self.uniform[value.index]
                linked.append(value)
            elif size == 1:  # broadcast over channels
                operand_live = bool(self.live[value.index].any()) if value.index in self.live else True
                live |= operand_live
                if value.index in self.uniform:
                    uniform &= bool(self.uniform[value.index].all())
                else:
                    uniform &= not spatial
            else:
                self._unknown(node, "broadcasts channels in a way compression does not follow")
                return
        self._set(output, live, uniform)
        for value in linked:
            self._link(value, output)

    def _reduction(self, node: Node, name: str) -> None:
        source = node.inputs[0]
        ndim = len(source.shape)
        dim = node.argument(2 if name in ("norm", "vector_norm") else 1, "dim", None)
        if isinstance(dim, (Ref, torch.Tensor)):  # max(a, b): elementwise
            self._elementwise(node)
            return
        if ndim < 2:
            self._unknown(node, "reduces a tensor without channels")
            return
        dims = set(range(ndim)) if dim is None else dim if isinstance(dim, (tuple, list)) else [dim]
        if {_normalized(d, ndim) for d in dims} & {0, 1}:
            # Channels summed into one another (GRN's mean over channels): exact over all of them.
            self._needs_full(node, "reduces over channels or samples")
            return
        self._same_channels(node, source)

    def _reshape(self, node: Node, name: str) -> None:
        source, output = node.inputs[0], node.outputs[0]
        before, after = source.shape, output.shape
        if len(before) < 2 or len(node.outputs) != 1:
            self._unknown(node)
            return
        if name in ("view", "reshape") and _splits_channels(before, after) and source.index in self.live:
            self.split_views[output.index] = (source, torch.arange(before[1]).view(after[1], after[2]), after[1])
            return
        keeps = len(after) >= 2 and after[:2] == before[:2]
        if name == "expand_as" and keeps:  # the tensor it takes its shape from must keep the same channels
            self._same_channels(node, source)
            self._link(node.inputs[-1], output)
            return
        if name == "getitem":
            kind, channels = _indexing_kind(node.args[1], len(before))
            # A slice that takes every channel (GhostNet's ``out[:, :self.out_chs]`` where the concatenation
            # has exactly ``out_chs``) takes every channel of a narrower tensor too: a step, not a cut.
            if kind == "channels" or (kind == "slice" and channels.indices(before[1]) == (0, before[1], 1)):
                self._same_channels(node, source)
            elif kind == "slice":
                self._fixed_parts(node, source, [torch.arange(before[1])[channels]], "slices channels")
            else:
                self._unknown(node, "indexes channels or samples")
            return
        if name in ("permute", "transpose", "movedim", "narrow", "select", "squeeze", "unsqueeze"):
            keeps = keeps and _keeps_leading_dims(node, name, before, after)
            if not keeps and name in ("permute", "transpose", "movedim"):
                self._move_channels(node, name)  # to channels-last and back (ConvNeXt's blocks)
                return
            if not keeps and name == "narrow" and _normalized(node.argument(1, "dim"), len(before)) == 1:
                self._needs_full(node, "slices channels")
                return
        if keeps:
            self._same_channels(node, source)
        elif len(after) == 2 and after[0] == before[0] and after[1] == math.prod(before[1:]):
            self._flatten(node, source, output)
        else:  # data moved, not computed: exact on the complete tensor
            self._needs_full(node, f"reshapes {before} to {after}")

    def _flatten(self, node: Node, source: Value, output: Value) -> None:
        per_channel = math.prod(source.shape[2:])
        channel_of = torch.arange(output.channels) // per_channel
        live = self.live.get(source.index, torch.ones(source.channels, dtype=torch.bool))
        self._set(output, live[channel_of], True)  # no positions left: every constant is uniform
        self._link(source, output, channel_of, torch.arange(output.channels))

    def _concatenation(self, node: Node) -> None:
        output = node.outputs[0]
        tensors = node.argument(0, "tensors")
        dim = _normalized(node.argument(1, "dim", 0), len(output.shape))
        if dim != 1:
            operands = [item.value for item in tensors if isinstance(item, Ref)]
            if any(not isinstance(item, Ref) and _size_along(tuple(item.shape), 4, 1) > 1 for item in tensors):
                self._needs_full(node, "concatenates a tensor it does not compute")
                return
            live = torch.zeros(output.channels, dtype=torch.bool)
            for value in operands:
                live |= self.live.get(value.index, torch.ones(output.channels, dtype=torch.bool))
            self._set(output, live, False)  # constants placed side by side need not be uniform
            for value in operands:
                self._link(value, output)
            return
        live, uniform, offset = [], [], 0
        for item in tensors:
            if isinstance(item, Ref):
                value = item.value
                live.append(self.live[value.index])
                uniform.append(self.uniform[value.index])
                index = torch.arange(value.channels)
                self._link(value, output, index, index + offset)
                offset += value.channels
            else:
                channels = item.shape[1]
                live.append(torch.ones(channels, dtype=torch.bool))  # kept as they are
                uniform.append(torch.ones(channels, dtype=torch.bool))
                offset += channels
        self._set(output, torch.cat(live), torch.cat(uniform))

    def _split(self, node: Node, dim: int) -> None:
        source = node.inputs[0]
        dim = _normalized(dim, len(source.shape))
        parts = [value.channels for value in node.outputs]
        name = base_name(node.name)
        equal = len(set(parts)) == 1 and sum(parts) == source.channels and len(parts) > 1
        if dim == 1 and name == "chunk" and equal and source.index in self.live:
            # Equal parts of whatever width the tensor has (split's sizes are numbers in the code: they
            # do not follow): each part keeps as many channels.
            width = parts[0]
            for number, output in enumerate(node.outputs):
                channels = torch.arange(number * width, (number + 1) * width)
                self._set(output, self.live[source.index][channels], self.uniform[source.index][channels])
                self._link(source, output, channels, torch.arange(width))
            self.even.append((source, len(parts)))
        elif dim == 1 and name != "unbind" and sum(parts) == source.channels:
            starts = [sum(parts[:number]) for number in range(len(parts))]
            ranges = [torch.arange(start, start + part) for start, part in zip(starts, parts)]
            self._fixed_parts(node, source, ranges, "splits channels")
        elif dim in (0, 1):
            self._needs_full(node, "splits channels")
        else:
            self._same_channels(node, source)

    def _fixed_parts(self, node: Node, source: Value, parts: list[torch.Tensor], why: str) -> None:
        """Parts of a tensor at channel positions written in the code (a split by sizes, a slice): they
        do not follow a narrower tensor, so the tensor and its parts keep their full width. Each part
        keeps the liveness of its channels, so that a conv reading it leaves its constants out."""
        if source.index not in self.live or len(parts) != len(node.outputs):
            self._needs_full(node, why)
            return
        if self.has_pruned(source):
            self.full_reasons.append(f"{node.where()} {why}")
        self._keep_full(source, f"{why} in {node.where()}")
        for output, channels in zip(node.outputs, parts):
            if output.channels != len(channels):
                raise RuntimeError(f"internal error: {node.where()} made {output.shape} of channels {channels}")
            self._set(output, self.live[source.index][channels], self.uniform[source.index][channels])
            self._keep_full(output, f"a part of what {node.where()} {why}")

    def _follow_split_view(self, node: Node, name: str) -> None:
        """Steps on a tensor whose channel axis a view split in two: copy, swap the two, merge them back."""
        value = next(value for value in node.inputs if value.index in self.split_views)
        source, order, groups = self.split_views[value.index]
        output = node.outputs[0] if len(node.outputs) == 1 else None
        if output is None or len(node.inputs) != 1:
            self._split_view_unknown(node)
        elif name in ("contiguous", "clone", "detach") and output.shape == value.shape:
            self.split_views[output.index] = (source, order, groups)
        elif name in ("transpose", "permute") and _swaps_split_dims(node, name, len(value.shape)):
            self.split_views[output.index] = (source, order.t(), groups)
        elif name in ("view", "reshape", "flatten") and output.shape == source.shape:
            self._merge_split_view(source, output, order.flatten(), groups)
        else:
            self._split_view_unknown(node)

    def _merge_split_view(self, source: Value, output: Value, order: torch.Tensor, groups: int) -> None:
        """Channel j of ``output`` is channel ``order[j]`` of ``source``: a permutation of its channels.

        The compressed tensor is split into the same number of equal groups, so every group must keep
        the same positions within it: each output channel is linked to its source channel's position in
        every group.
        """
        self._set(output, self.live[source.index][order], self.uniform[source.index][order])
        per_group = source.channels // groups
        positions = torch.arange(source.channels)
        for group in range(groups):
            self._link(source, output, group * per_group + order % per_group, positions)

    def _split_view_unknown(self, node: Node) -> None:
        """Any other use of a split view: it and every other input keep their full width (exact: a view
        of the complete tensor holds what the network computed)."""
        why = "uses channels split into groups"
        for value in node.inputs:
            value = self.split_views[value.index][0] if value.index in self.split_views else value
            if self.has_pruned(value):
                self.full_reasons.append(f"{node.where()} {why}")
            self._keep_full(value, f"{why} in {node.where()}")
        self._all_live(node)

    def _unpooling(self, node: Node) -> None:
        source, output = node.inputs[0], node.outputs[0]
        indices = node.argument(1, "indices")
        if not isinstance(indices, Ref) or source.index not in self.live:
            self._unknown(node, "unpools with indices it did not compute")
            return
        indices = indices.value
        shot = node.snapshots.get(source.index)
        if shot is None or indices.index not in self.live:
            self._unknown(node, "unpools a tensor that is not floating point")
            return
        live = self.live[source.index] | self.live[indices.index]
        constant = shot.first
        uniform = self.uniform[source.index]
        # A constant c unpooled lands on the pooling positions: uniform only when c == 0. Where the indices
        # come from pooling a uniform constant too, they are the same for every such channel (the first
        # position of each window), so those channels are multiples of one another: one of them is kept
        # and the consuming conv takes the others as multiples of it.
        pattern = ~live & uniform & self.uniform[indices.index] & (constant != 0)
        uniform = uniform & ((constant == 0) | pattern)
        if pattern.any():
            representative = int(torch.nonzero(pattern)[0])
            uniform[representative] = False
            factors = torch.where(pattern, constant / constant[representative], torch.zeros_like(constant))
            factors[representative] = 0.0
            self.proportional[output.index] = (representative, factors)
        self._set(output, live, uniform)
        self._link(source, output)
        self._link(indices, output)

    def _settle_proportional(self) -> None:
        """Channels kept as multiples of another hold only where convs or linear layers read them directly."""
        readers: dict[int, list[Node]] = {}
        for node in self.graph.nodes:
            for value in node.inputs:
                readers.setdefault(value.index, []).append(node)
        outputs = {value.index for value in self.graph.outputs}
        for index, (_, factors) in list(self.proportional.items()):
            direct = index not in outputs and all(
                node.kind == "module" and _folds_input(node.target, node.inputs[0]) for node in readers.get(index, [])
            )
            if not direct:
                self.uniform[index] &= factors == 0
                del self.proportional[index]

    def _pad(self, node: Node) -> None:
        source = node.inputs[0]
        pad = node.argument(1, "pad")
        mode = node.argument(2, "mode", "constant")
        if len(source.shape) - len(pad) // 2 < 2:
            self._unknown(node, "pads channels or samples")
        else:
            self._same_channels(node, source, uniform_kept=mode != "constant")

    def _visit_module(self, node: Node) -> None:
        module = node.target
        if len(node.outputs) != 1 or len(node.inputs) != 1:
            self._unknown(node, "takes or returns more than one tensor")
            return
        source = node.inputs[0]
        layer, kept = module, None
        if isinstance(module, MaskedConv):
            mask = module.mask_layer
            if not is_hard(mask):
                raise ValueError(
                    f"layer '{node.name}' has a soft mask: call acosp.inject.soft_to_hard_k(model) before compressing"
                )
            if not mask.kept.any():
                raise ValueError(
                    f"layer '{node.name}' keeps none of its {mask.num_channels} channels (its mask is all zeros): "
                    "compression needs at least one channel of every masked conv"
                )
            layer, kept = module.conv, mask.kept
        if isinstance(layer, nn.Linear):
            self._linear(node, layer, kept)
            return
        if source.channel_dim != 1:
            source = self._read_whole(node, 1, f"reads dimension 1 as channels (they are in {source.channel_dim})")
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
            self._conv(node, source, layer, torch.ones(layer.out_channels, dtype=torch.bool) if kept is None else kept)
        else:  # BatchNorm in eval mode: one affine map per channel
            self._same_channels(node, source)

    def _linear(self, node: Node, linear: nn.Linear, kept: torch.Tensor | None) -> None:
        """A linear layer maps the last dimension: its features are the channels of what it reads when they
        are there (a flattened vector, a channels-last block), and the channels of what it computes."""
        source, output = node.inputs[0], node.outputs[0]
        last = len(source.shape) - 1
        if source.channel_dim != last:  # it reads positions or samples as features: whole, as they are
            self._read_whole(node, last, f"reads dimension {last} as features (channels: {source.channel_dim})")
        if id(linear) in self.pruned_layers:
            kept = torch.zeros(linear.out_features, dtype=torch.bool)
        output.channel_dim = len(output.shape) - 1
        self._set(output, live=True if kept is None else kept, uniform=True)  # a pruned feature is exactly 0

    def _conv(self, node: Node, source: Value, conv: nn.Module, kept: torch.Tensor) -> None:
        output = node.outputs[0]
        if conv.groups == 1:
            self._set(output, live=kept, uniform=True)  # a pruned output is exactly 0
        elif is_depthwise(conv):  # channel c from channel c
            self._set(output, live=kept, uniform=True)
            self._link(source, output)
        elif isinstance(conv, nn.Conv2d):  # grouped: each group narrows alike (see _balance_groups)
            self._set(output, live=kept, uniform=True)
            self.grouped.append((source, output, conv.groups))
        else:
            self._needs_full(node, f"is a grouped transposed conv (groups={conv.groups})")
            self._set(output, live=True)

    # --- requirements -----------------------------------------------------------------------------------
    def _spread_requirements(self) -> dict[int, torch.Tensor]:
        required = {index: live | ~self.uniform[index] for index, live in self.live.items()}
        for index in self.full:
            if index in required:
                required[index][:] = True
        # A layer called more than once is rebuilt once: its calls must agree on their channels, and a
        # conv or linear layer would need one folded bias for all: it reads complete inputs.
        for calls in self.graph.module_calls().values():
            if len(calls) < 2:
                continue
            folds = not isinstance(calls[0].target, nn.modules.batchnorm._BatchNorm)
            for call in calls:
                for value in call.inputs:
                    if folds and value.index in required:
                        required[value.index][:] = True
            for other in calls[1:]:
                for first_value, other_value in zip(calls[0].inputs + calls[0].outputs, other.inputs + other.outputs):
                    if first_value.channels == other_value.channels:
                        self._link(first_value, other_value)
        self._follow_links(required)
        while self._balance_groups(required):
            self._follow_links(required)
        return required

    def _follow_links(self, required: dict[int, torch.Tensor]) -> None:
        """Spread requirements along the links until nothing changes."""
        changed = True
        while changed:
            changed = False
            for link in self.links:
                a, b = required[link.a.index], required[link.b.index]
                from_b = (
                    torch.zeros(a.numel(), dtype=torch.long).index_add_(0, link.a_index, b[link.b_index].long()) > 0
                )
                new_a = a | from_b
                new_b = b.clone()
                new_b[link.b_index] |= new_a[link.a_index]
                if not torch.equal(new_a, a) or not torch.equal(new_b, b):
                    required[link.a.index], required[link.b.index] = new_a, new_b
                    changed = True

    def _balance_groups(self, required: dict[int, torch.Tensor]) -> bool:
        """Make the requirements of every grouped conv and chunked tensor even over its groups; whether
        anything changed.

        A compressed grouped conv splits its input into equal consecutive chunks, one per group, and
        computes as many channels in each; ``chunk`` splits the compressed width into equal parts. A
        group of a conv survives when it reads or writes a required channel (every part of a chunk
        does); each survivor keeps as many channels as the fullest one (at least one), the others of
        its group taken in order: extra inputs are constants or zeros it reads, extra outputs pruned
        channels it computes as the zeros the mask makes of them.
        """
        tables = []
        for source, output, groups in self.grouped:
            inputs = required[source.index].view(groups, -1)
            outputs = required[output.index].view(groups, -1)
            survivors = inputs.any(1) | outputs.any(1)
            tables += [(inputs, survivors), (outputs, survivors)]
        for source, parts in self.even:  # every part of a chunk survives
            tables.append((required[source.index].view(parts, -1), torch.ones(parts, dtype=torch.bool)))
        changed = False
        for table, survivors in tables:
            counts = table.sum(1)
            target = max(int(counts[survivors].max()), 1)
            for group in torch.nonzero(survivors & (counts < target)).flatten().tolist():
                missing = torch.nonzero(~table[group]).flatten()[: target - int(counts[group])]
                table[group, missing] = True
                changed = True
        return changed

    def layout(self, value: Value) -> torch.Tensor:
        """The channels of the full tensor that the compressed tensor holds, in order."""
        return torch.nonzero(self.required[value.index]).flatten()


def _folds_input(module: nn.Module, source: Value) -> bool:
    """A layer that is linear in the channels of ``source`` and reads each of them whole (no groups)."""
    conv = module.conv if isinstance(module, MaskedConv) else module
    if isinstance(conv, nn.Linear):
        return source.channel_dim == len(source.shape) - 1  # its features are the channels
    return source.channel_dim == 1 and isinstance(conv, (nn.Conv2d, nn.ConvTranspose2d)) and conv.groups == 1


def _normalized(dim: int, ndim: int) -> int:
    return dim + ndim if dim < 0 else dim


def _size_along(shape: tuple[int, ...], ndim: int, dim: int) -> int:
    """An operand's size along dimension ``dim`` of an ``ndim``-dimensional broadcast result."""
    position = dim - (ndim - len(shape))
    return shape[position] if position >= 0 else 1


def _indexing_kind(index: Any, ndim: int) -> tuple[str, slice | None]:
    """('channels', None) when an index leaves samples and channels alone, ('slice', the channel slice)
    when it slices channels, ('other', None) otherwise."""
    entries = list(index) if isinstance(index, tuple) else [index]
    if any(isinstance(entry, (Ref, torch.Tensor, list)) or entry is True or entry is False for entry in entries):
        return "other", None
    consuming = sum(1 for entry in entries if entry is not None and entry is not Ellipsis)
    expanded = []
    for entry in entries:
        if entry is Ellipsis:
            expanded += [slice(None)] * (ndim - consuming)
        else:
            expanded.append(entry)
    expanded += [slice(None)] * 2
    full = slice(None)
    if expanded[0] != full or expanded[1] is None:
        return "other", None
    if expanded[1] == full:
        return "channels", None
    return ("slice", expanded[1]) if isinstance(expanded[1], slice) else ("other", None)


def _splits_channels(before: tuple, after: tuple) -> bool:
    """``(n, C, *rest) -> (n, G, C / G, *rest)`` with 1 < G < C."""
    return (
        len(after) == len(before) + 1
        and after[0] == before[0]
        and after[1] * after[2] == before[1]
        and 1 < after[1] < before[1]
        and tuple(after[3:]) == tuple(before[2:])
    )


def _swaps_split_dims(node: Node, name: str, ndim: int) -> bool:
    """A transpose or permute that swaps dimensions 1 and 2 and leaves every other in place."""
    if name == "transpose":
        pair = {_normalized(node.argument(1, "dim0"), ndim), _normalized(node.argument(2, "dim1"), ndim)}
        return pair == {1, 2}
    dims = node.args[1:] if len(node.args) > 2 else node.argument(1, "dims")
    dims = [_normalized(d, ndim) for d in (dims if isinstance(dims, (tuple, list)) else [dims])]
    return dims == [0, 2, 1, *range(3, ndim)]


def _permutation(node: Node, name: str, ndim: int) -> list[int] | None:
    """Which input dimension each output dimension of a permute, transpose or movedim is; None if unclear."""
    probe = torch.empty([2 + dim for dim in range(ndim)], device="meta")  # sizes that name the dimensions
    arguments = list(node.args[1:])
    if any(isinstance(item, Ref) for item in leaves((arguments, node.kwargs))):
        return None
    try:
        moved = getattr(probe, name)(*arguments, **node.kwargs)
    except (TypeError, RuntimeError, IndexError):
        return None
    return [size - 2 for size in moved.shape]


def _keeps_leading_dims(node: Node, name: str, before: tuple, after: tuple) -> bool:
    ndim = len(before)
    if name == "permute":
        dims = node.args[1:] if len(node.args) > 2 else node.argument(1, "dims")
        dims = [_normalized(d, ndim) for d in (dims if isinstance(dims, (tuple, list)) else [dims])]
        return dims[:2] == [0, 1]
    if name in ("transpose", "movedim"):
        pair = (node.argument(1, "dim0" if name == "transpose" else "source"),)
        pair += (node.argument(2, "dim1" if name == "transpose" else "destination"),)
        flat = [d for item in pair for d in (item if isinstance(item, (tuple, list)) else [item])]
        return all(_normalized(d, ndim) >= 2 for d in flat)
    if name in ("narrow", "select"):
        return _normalized(node.argument(1, "dim"), ndim) >= 2
    if name == "squeeze":
        dim = node.argument(1, "dim", None)
        if dim is None:
            return before[0] != 1 and before[1] != 1
        dims = dim if isinstance(dim, (tuple, list)) else [dim]
        return all(_normalized(d, ndim) >= 2 for d in dims)
    if name == "unsqueeze":
        return _normalized(node.argument(1, "dim"), len(after)) >= 2
    return True
