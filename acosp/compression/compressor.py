"""A network with hard masks -> a dense network that computes the same function with fewer channels.

``compress(model, example_input)`` runs the masked network once on the example input, recording
what flows where (``trace``), works out which channels every tensor must keep
(``channels``), and rebuilds each conv, BatchNorm and linear layer narrower, in a copy of the
network whose own ``forward`` stays as it is. Pruned channels are constants after BatchNorm; the
layers that read them fold them into their bias (exactly, with a border correction for zero
padding). Where a residual sum keeps channels that one branch pruned, that branch computes its
channels narrow and writes them into the wider sum. A BatchNorm that only reads a conv is folded
into it (``fold_batchnorm``).

The result is described by plain data (``spec``), so a checkpoint needs no pickled modules.
"""

from __future__ import annotations

import contextlib
import copy
import math
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from acosp.compression.channels import UNPOOLING, ChannelFlow, is_channelwise_norm, is_step
from acosp.compression.channelwise import channel_count, channelwise_layers, narrowed_channelwise_copy, narrowed_copy
from acosp.compression.frozen import with_frozen_filters
from acosp.compression.layers import RemovedLayer, SamePaddedConv2d, to_memory_format
from acosp.compression.spec import SPEC_FORMAT, SPEC_VERSION, build_layer
from acosp.compression.trace import Graph, Node, Value, tensors_in, trace
from acosp.inject import MaskedConv, is_depthwise, output_channel_weight, unwrap

# Spread (max - min) allowed in a channel treated as a constant, relative to its magnitude.
_CONSTANT_TOLERANCE = 1e-4


def compress(
    model: nn.Module,
    example_input: torch.Tensor | tuple,
    strict: bool = True,
    check: bool = True,
    tolerance: float = 1e-4,
    fold_batchnorm: bool = True,
    channels_last: bool | None = None,
) -> nn.Module:
    """A smaller copy of ``model`` (hard masks) that computes the same function in eval mode.

    ``example_input`` is what ``model`` is called with (a tensor or a tuple of arguments), at the
    size it will be used at; a batch of two or more random images also checks that constants do
    not depend on the image. Layers the eval forward pass does not call are removed. With
    ``strict`` an operation whose channel semantics are unknown raises ``UnsupportedOperation``
    naming it when it receives pruned channels; with ``strict=False`` those tensors keep full
    width. A DataParallel or DistributedDataParallel wrapper is taken off: the result is the bare
    network. With ``check`` the copy is run on the example input and must match the masked network
    within ``tolerance`` (max |difference| / max |output|). With ``fold_batchnorm`` a BatchNorm
    that only reads a conv's output is folded into that conv (its place gets an ``nn.Identity``):
    the same function with one pass less over every tensor; ``False`` keeps the BatchNorm layers,
    to fine-tune the compressed network, say. With ``channels_last`` its conv filters are stored in
    ``torch.channels_last`` memory format, so its convs compute, and hand on, channels-last tensors:
    narrow convs run much faster that way on the CPU (``docs/compression.md``); the outputs then come
    in that memory format too. By default that is done on the CPU where the network's ``forward``
    runs so (one that calls ``.view`` on a permuted tensor does not: it stays contiguous, with a
    warning). The model itself is left unchanged.
    """
    network = unwrap(model)
    args = example_input if isinstance(example_input, tuple) else (example_input,)
    training = network.training
    network.eval()
    network = with_frozen_filters(network)  # a copy where convs compute their own filters
    channelwise = channelwise_layers(network)  # layer scales: one layer each, narrowed like BatchNorm
    try:
        with full_float32_precision():
            graph = trace(
                network, args, lambda layer: is_step(layer) or id(layer) in channelwise, snapshot_functions=UNPOOLING
            )
        flow = ChannelFlow(graph, strict=strict)
        compressed, spec = _rebuild(network, graph, flow, fold_batchnorm)
    finally:
        network.train(training)
    compressed.eval()
    try_channels_last = channels_last is None and all(p.device.type == "cpu" for p in compressed.parameters())
    output = None
    channels_last = bool(channels_last or try_channels_last)
    if channels_last:
        to_memory_format(compressed, torch.channels_last)
    if try_channels_last or check:
        output, channels_last = _first_run(compressed, args, channels_last, fall_back=try_channels_last)
    spec["channels_last"] = bool(channels_last)
    spec["input_shape"] = [list(tensor.shape) for tensor in args if isinstance(tensor, torch.Tensor)]
    if check:
        error = relative_error(graph.output, output)
        spec["relative_error"] = error
        if not error <= tolerance:
            # The convs of the compressed network sum fewer terms in another order. Where the function
            # is discontinuous (max-unpooling puts a value wherever the max of its window was), a rounding
            # difference at a near-tie moves values. The same construction in float64 shows whether that
            # is all: its rounding is 1e-16, too small to move anything.
            precise_network = copy.deepcopy(network).double().eval()
            precise_args = _double(args)
            precise_copy = compress(precise_network, precise_args, strict, False, fold_batchnorm=fold_batchnorm)
            precise = relative_error(_run(precise_network, precise_args), _run(precise_copy, precise_args))
            if not precise <= tolerance:
                raise RuntimeError(
                    f"the compressed network differs from the masked one by {error:.3g} (relative; {precise:.3g} in "
                    f"float64), more than {tolerance:g}: this is a bug in acosp.compress, please report it"
                )
            spec["relative_error_float64"] = precise
            warnings.warn(
                f"the compressed network differs from the masked one by {error:.3g} (relative) as computed, but "
                f"the same compression in float64 by only {precise:.2g}: rounding moved a value where the network "
                "is discontinuous (a near-tie in max-pooling whose indices unpool), as any change in the order of "
                "summation can",
                stacklevel=2,
            )
    compressed._acosp_compression_spec = spec
    return compressed


def _first_run(compressed: nn.Module, args: tuple, channels_last: bool, fall_back: bool) -> tuple[Any, bool]:
    """The output of ``compressed`` on ``args`` (in full float32), and whether it runs in channels-last format.

    With ``fall_back`` a ``forward`` that fails on channels-last tensors (``x.view(n, -1)`` after
    pooling, say) gets the network back in contiguous format, with a warning, rather than fail later.
    """
    with full_float32_precision():
        try:
            return _run(compressed, args), channels_last
        except RuntimeError as error:
            if not (fall_back and channels_last):
                raise
            to_memory_format(compressed, torch.contiguous_format)
            warnings.warn(
                f"the compressed network stays in contiguous memory format: its forward fails on channels-last "
                f"tensors ({str(error).splitlines()[0]}); compress(..., channels_last=False) says so without trying",
                stacklevel=3,
            )
            return _run(compressed, args), False


@contextlib.contextmanager
def full_float32_precision() -> Iterator[None]:
    """Float32 convs and matrix products in full precision on CUDA, within the block.

    PyTorch lets cuDNN convs use TF32 on recent GPUs by default: a 10-bit mantissa, relative
    errors near 1e-3, far above the 1e-4 that ``compress`` checks and nothing to do with the
    construction. The trace and the check therefore run in IEEE float32; the settings are
    restored afterwards (on the CPU they change nothing).
    """
    cudnn_conv = getattr(torch.backends.cudnn, "conv", None)
    matmul = torch.backends.cuda.matmul
    if cudnn_conv is not None and hasattr(cudnn_conv, "fp32_precision"):  # the per-operator settings
        settings = [(cudnn_conv, "fp32_precision", "ieee"), (matmul, "fp32_precision", "ieee")]
    else:
        settings = [(torch.backends.cudnn, "allow_tf32", False), (matmul, "allow_tf32", False)]
    saved = [getattr(owner, name) for owner, name, _ in settings]
    for owner, name, value in settings:
        setattr(owner, name, value)
    try:
        yield
    finally:
        for (owner, name, _), value in zip(settings, saved):
            setattr(owner, name, value)


# --- building ---------------------------------------------------------------------------------------------


def _run(model: nn.Module, args: tuple) -> Any:
    with torch.no_grad():
        return model(*args)


def _double(args: tuple) -> tuple:
    return tuple(arg.double() if isinstance(arg, torch.Tensor) and arg.is_floating_point() else arg for arg in args)


def relative_error(reference: Any, result: Any) -> float:
    """max |result - reference| / max |reference| over the tensors of two outputs: the measure ``compress`` checks."""

    expected, actual = list(tensors_in(reference)), list(tensors_in(result))
    if len(expected) != len(actual) or any(a.shape != b.shape for a, b in zip(expected, actual)):
        return float("inf")
    worst = 0.0
    for a, b in zip(expected, actual):
        a, b = a.detach(), b.detach()
        if not a.is_floating_point():
            worst = max(worst, 0.0 if torch.equal(a, b) else float("inf"))
            continue
        scale = float(a.abs().max()) if a.numel() else 0.0
        difference = float((a - b).abs().max()) if a.numel() else 0.0
        worst = max(worst, difference / scale if scale > 0 else difference)
    return worst


def _rebuild(
    network: nn.Module, graph: Graph, flow: ChannelFlow, fold_batchnorm: bool
) -> tuple[nn.Module, dict[str, Any]]:
    names: dict[int, list[str]] = {}
    for name, module in network.named_modules(remove_duplicate=False):
        names.setdefault(id(module), []).append(name)
    layers: dict[str, dict[str, Any]] = {}
    replacements: dict[int, nn.Module] = {}  # id of a layer -> what the copy gets in its place
    kept: dict[str, list[int]] = {}
    norms = _batch_norms_after_convs(graph) if fold_batchnorm else {}
    folded = {id(norm) for norm in norms.values()}
    for calls in graph.module_calls().values():
        module = calls[0].target
        name = names[id(module)][0]
        if isinstance(module, MaskedConv):
            mask = module.mask_layer.mask
            kept[name] = [int((mask > 0.5).sum()), mask.numel()]
        if id(module) in folded:
            built = nn.Identity(), {"type": "Identity"}
        else:
            built = _narrowed(module, calls[0], flow, norms.get(id(module)))
        if built is None:
            continue
        new, entry = built
        replacements[id(module)] = new
        for alias in names[id(module)]:
            layers[alias] = entry
    for name, module in _unused_subtrees(network, graph):
        replacements[id(module)] = RemovedLayer(name)
        for alias in names[id(module)]:
            layers[alias] = {"type": "Removed"}
    # deepcopy takes what its memo holds for an object as that object's copy: the replaced layers are
    # not copied at all, and every place that shares one gets the same replacement.
    compressed = copy.deepcopy(network, memo=dict(replacements))
    spec = {
        "format": SPEC_FORMAT,
        "version": SPEC_VERSION,
        "layers": layers,
        "kept_channels": kept,
        "full_width": list(dict.fromkeys(flow.full_reasons)),
    }
    return compressed, spec


def _narrowed(
    module: nn.Module, call: Node, flow: ChannelFlow, norm: nn.Module | None = None
) -> tuple[nn.Module, dict[str, Any]] | None:
    """The narrowed replacement of one layer (with ``norm`` folded in) and its spec entry; None: it stays."""
    source, output = flow.input_of(call), call.outputs[0]
    if isinstance(module, MaskedConv) and isinstance(module.conv, nn.Linear):
        return _narrowed_linear(module.conv, call, flow, module.mask_layer.kept)
    if isinstance(module, MaskedConv):
        return _narrowed_conv(module.conv, module.mask_layer.kept, call, flow, norm)
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        kept = torch.ones(module.out_channels, dtype=torch.bool)
        if flow.required[source.index].all() and flow.required[output.index].all() and norm is None:
            return None
        return _narrowed_conv(module, kept, call, flow, norm)
    if isinstance(module, nn.Linear):
        if flow.required[source.index].all():
            return None
        return _narrowed_linear(module, call, flow)
    if flow.required[source.index].all():
        return None
    if not isinstance(module, nn.modules.batchnorm._BatchNorm):  # a layer scale (channelwise.py)
        return narrowed_channelwise_copy(module, flow.layout(source)), {
            "type": "NarrowedChannelwise",
            "channels": len(flow.layout(source)),
            "original_channels": channel_count(module),
            "class": f"{type(module).__module__}.{type(module).__qualname__}",
        }
    if is_channelwise_norm(module):
        return narrowed_norm_copy(module, flow.layout(source)), {
            "type": "NarrowedNorm",
            "num_features": len(flow.layout(source)),
            "original_num_features": module.num_features,
            "class": f"{type(module).__module__}.{type(module).__qualname__}",
        }
    return _narrowed_batch_norm(module, flow.layout(source))


def narrowed_norm_copy(norm: nn.Module, layout: torch.Tensor) -> nn.Module:
    """A copy of a BatchNorm subclass (its own class and forward) keeping the channels ``layout`` lists."""
    width = norm.num_features
    tensors = [*norm.named_parameters(recurse=False), *norm.named_buffers(recurse=False)]
    per_channel = {name: 0 for name, tensor in tensors if tensor is not None and tensor.shape[:1] == (width,)}
    return narrowed_copy(norm, layout, per_channel, width, ("num_features",))


def _constants(call: Node, value: Value, dropped: torch.Tensor) -> torch.Tensor:
    """The values of the dropped (constant) channels of a layer's input, checked to be constant."""
    if dropped.numel() == 0:
        return torch.zeros(0, dtype=torch.float64)
    shot = call.snapshots.get(value.index)
    if shot is None:
        raise ValueError(f"{call.where()} reads pruned channels of a tensor that is not floating point")
    shot = shot.along(1 if value.channel_dim == 1 else len(value.shape) - 1)
    first, spread = shot.first[dropped], shot.spread[dropped]
    bad = spread > _CONSTANT_TOLERANCE * (1 + first.abs())
    if bad.any():
        raise RuntimeError(
            f"internal error: channels {dropped[bad][:5].tolist()} of the input of {call.where()} should be "
            f"constant but vary by up to {float(spread.max()):.3g}"
        )
    return first


def _dropped_inputs(flow: ChannelFlow, value: Value):
    """The dropped constant channels of a layer's input, and (representative, factors) of dropped multiples."""
    dropped = ~flow.required[value.index]
    multiples = flow.proportional.get(value.index)
    if multiples is not None:
        representative, factors = multiples
        factors = torch.where(dropped, factors, torch.zeros_like(factors))
        dropped = dropped & (factors == 0)
        multiples = (representative, factors) if factors.any() else None
    return torch.nonzero(dropped).flatten(), multiples


def _batch_norms_after_convs(graph: Graph) -> dict[int, nn.Module]:
    """``{id(conv layer): BatchNorm}`` where a BatchNorm (with running statistics) is all that reads a conv's output."""
    readers: dict[int, list[Node]] = {}
    for node in graph.nodes:
        for value in node.inputs:
            readers.setdefault(value.index, []).append(node)
    calls = graph.module_calls()
    outputs = {value.index for value in graph.outputs}
    pairs = {}
    for node in graph.nodes:
        if node.kind != "module" or len(calls[id(node.target)]) != 1:
            continue
        conv = node.target.conv if isinstance(node.target, MaskedConv) else node.target
        if not isinstance(conv, (nn.Conv2d, nn.ConvTranspose2d)) or not _folds_batchnorm(conv):
            continue
        value = node.outputs[0]
        users = readers.get(value.index, [])
        if value.index in outputs or len(users) != 1 or users[0].kind != "module":
            continue
        norm = users[0].target
        if (
            isinstance(norm, nn.BatchNorm2d)
            and not is_channelwise_norm(norm)  # its activation cannot go into the conv
            and norm.running_mean is not None
            and norm.num_features == conv.out_channels
            and len(calls[id(norm)]) == 1
        ):
            pairs[id(node.target)] = norm
    return pairs


def _folds_batchnorm(conv: nn.Module) -> bool:
    """Plain, grouped and depthwise convs take a BatchNorm into their filters; grouped transposed ones not."""
    return conv.groups == 1 or isinstance(conv, nn.Conv2d)


def _batch_norm_affine(norm: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """BatchNorm in eval mode as ``x * scale + shift`` per channel (float64, on the CPU)."""
    scale = 1.0 / (norm.running_var.detach().cpu().double() + norm.eps).sqrt()
    if norm.weight is not None:
        scale = scale * norm.weight.detach().cpu().double()
    shift = -norm.running_mean.detach().cpu().double() * scale
    if norm.bias is not None:
        shift = shift + norm.bias.detach().cpu().double()
    return scale, shift


def _narrowed_conv(conv: nn.Module, kept: torch.Tensor, call: Node, flow: ChannelFlow, norm: nn.Module | None):
    source, output = flow.input_of(call), call.outputs[0]
    transposed = isinstance(conv, nn.ConvTranspose2d)
    weight = conv.weight.detach().cpu()  # narrowed on the CPU, where the channel indices live
    bias = None if conv.bias is None else conv.bias.detach().cpu()
    mask = kept.to(weight.dtype)
    if is_depthwise(conv):  # channel c from channel c
        layout = flow.layout(output)
        weight = weight[layout] * mask[layout].view(-1, 1, 1, 1)
        bias = None if bias is None else bias[layout] * mask[layout]
        if norm is not None:  # BatchNorm(y) = y * scale + shift, per channel: a pruned channel computes shift
            scale, shift = _batch_norm_affine(norm)
            weight = weight * scale[layout].to(weight.dtype).view(-1, 1, 1, 1)
            bias = ((0 if bias is None else bias.double()) * scale[layout] + shift[layout]).to(weight.dtype)
        entry = _conv_entry(conv, len(layout), len(layout), len(layout), bias is not None, None, False)
        return _make_conv(entry, conv, weight, bias, None, None), entry
    if conv.groups > 1 and transposed:  # whole width, masks folded in
        weight = weight * output_channel_weight(conv, mask)
        bias = None if bias is None else bias * mask
        entry = _conv_entry(conv, conv.in_channels, conv.out_channels, conv.groups, bias is not None, None, False)
        return _make_conv(entry, conv, weight, bias, None, None), entry
    in_layout = flow.layout(source)
    out_layout = flow.layout(output)
    dropped, multiples = _dropped_inputs(flow, source)
    in_index = None
    if conv.groups == 1 and multiples is None:
        in_index = _read_inputs(flow, call, conv, in_layout, int(kept.sum()))
    read = in_layout
    if in_index is not None:  # the constants it leaves out are folded like the pruned channels
        read = in_layout[in_index]
        dropped = torch.cat([dropped, in_layout[~torch.isin(in_layout, read)]]).sort().values
    constants = _constants(call, source, dropped)
    if conv.groups > 1:
        masked = weight * mask.view(-1, 1, 1, 1)
        narrow, group_filters, computed, groups = _grouped_filters(conv, masked, in_layout, out_layout)
        bias = None if bias is None else bias * mask
        inputs = torch.zeros(conv.in_channels, dtype=torch.float64)
        inputs[dropped] = constants  # each output folds the constants of its own group
        per_group = inputs.view(conv.groups, -1)[computed // (conv.out_channels // conv.groups)]
        folded = torch.einsum("oikl,oi->okl", group_filters.double(), per_group)
    else:
        computed, groups = torch.nonzero(kept).flatten(), 1
        # Filters by output channel then by input channel, whatever the layout of the weight.
        by_output = weight.transpose(0, 1) if transposed else weight
        by_output = by_output.index_select(0, computed)
        narrow = by_output.index_select(1, read)
        folded = torch.einsum("oikl,i->okl", by_output.index_select(1, dropped).double(), constants)
        if multiples is not None:  # channels that are multiples of a kept one: add their filters to its filter
            representative, factors = multiples
            position = int(torch.searchsorted(in_layout, representative))
            channels = torch.nonzero(factors).flatten()
            scale = factors[channels].to(weight.dtype)
            narrow[:, position] += torch.einsum("oikl,i->okl", by_output.index_select(1, channels), scale)
    has_constant = bool(dropped.numel()) and bool(folded.abs().max() > 0)
    new_bias = None if bias is None else bias[computed].double()
    constant_input = False
    if has_constant:
        padded = isinstance(conv, SamePaddedConv2d) or (
            conv.padding != "valid" and (isinstance(conv.padding, str) or any(conv.padding))
        )
        if transposed:
            constant_input = True  # a periodic map, added whole
        else:
            new_bias = (0 if new_bias is None else new_bias) + folded.sum((1, 2))
            constant_input = padded and conv.padding_mode == "zeros"
    fill = None
    if norm is not None:  # BatchNorm(y) = y * scale + shift, per channel: into the filters and the bias
        scale, shift = _batch_norm_affine(norm)
        narrow = narrow * scale[computed].to(narrow.dtype).view(-1, 1, 1, 1)
        new_bias = (0 if new_bias is None else new_bias) * scale[computed] + shift[computed]
        folded = folded * scale[computed].view(-1, 1, 1)
        fill = shift[out_layout]  # what BatchNorm makes of the channels this conv does not compute
    out_width = None
    out_index = None
    if not torch.equal(out_layout, computed):
        out_width = len(out_layout)
        out_index = torch.searchsorted(out_layout, computed)
    if transposed:
        narrow = narrow.transpose(0, 1)
    filled = out_width is not None and fill is not None and bool(fill.abs().max() > 0)
    has_bias = new_bias is not None
    in_width = None if in_index is None else len(in_layout)
    entry = _conv_entry(conv, len(read), len(computed), groups, has_bias, out_width, constant_input, filled, in_width)
    new_bias = None if new_bias is None else new_bias.to(weight.dtype)
    kernel = folded.to(weight.dtype) if constant_input else None
    fill = fill.to(weight.dtype) if filled else None
    return _make_conv(entry, conv, narrow, new_bias, out_index, kernel, fill, in_index), entry


# Gathering the channels a conv reads moves each value it keeps once, at about the cost of this many
# multiply-adds of the conv (a channels-last tensor on a 2-core x86 CPU, where a gather of half the
# channels before a 1x1 conv of 64 outputs costs about what it saves): a conv gathers its input only
# where the multiply-adds it saves exceed that.
GATHER_COST_IN_MACS = 64


def _read_inputs(flow: ChannelFlow, call: Node, conv: nn.Module, layout: torch.Tensor, outputs: int):
    """The positions in ``layout`` of the channels a plain conv reads, or None where it reads the
    tensor whole.

    A tensor keeps constant channels (pruned ones) where some other layer needs its full width: a
    split or a slice by sizes written in the code. A conv reading it folds those constants into its
    bias like the channels compression removed, where that saves more than the gather costs.
    """
    source, output = flow.input_of(call), call.outputs[0]
    constant = ~flow.live[source.index][layout] & flow.uniform[source.index][layout]
    skipped, read = int(constant.sum()), int((~constant).sum())
    macs_per_value = outputs * conv.weight[0, 0].numel()  # per input value left out
    if isinstance(conv, nn.Conv2d):  # over the output's positions rather than the input's
        macs_per_value *= math.prod(output.shape[2:]) / math.prod(source.shape[2:])
    if read == 0 or macs_per_value * skipped <= GATHER_COST_IN_MACS * read:
        return None
    return torch.nonzero(~constant).flatten()


def _grouped_filters(conv: nn.Conv2d, weight: torch.Tensor, in_layout: torch.Tensor, out_layout: torch.Tensor):
    """A grouped conv's filters narrowed to the groups that survive: ``(narrow, full, computed, groups)``.

    ``ChannelFlow`` made every surviving group read as many of ``in_layout`` and write as many of
    ``out_layout`` (computed whole: pruned ones have zero filters). ``narrow[o]`` reads the kept inputs
    of its group, ``full[o]`` all of them (for folding the dropped constants).
    """
    in_per_group, out_per_group = conv.in_channels // conv.groups, conv.out_channels // conv.groups
    surviving = torch.unique(torch.cat([in_layout // in_per_group, out_layout // out_per_group]))
    position = torch.full((conv.groups,), -1, dtype=torch.long)
    position[surviving] = torch.arange(len(surviving))
    columns = (in_layout % in_per_group).view(len(surviving), -1)  # each survivor's inputs, within its group
    full = weight.index_select(0, out_layout)
    rows = columns[position[out_layout // out_per_group]]
    narrow = full.gather(1, rows[:, :, None, None].expand(-1, -1, *full.shape[2:]))
    return narrow, full, out_layout, len(surviving)


def _conv_entry(
    conv, in_channels, out_channels, groups, bias, out_width, constant_input, filled=False, in_width=None
) -> dict:
    transposed = isinstance(conv, nn.ConvTranspose2d)
    special = out_width is not None or constant_input or in_width is not None
    if special:
        kind = "CompressedConvTranspose2d" if transposed else "CompressedConv2d"
    else:
        kind = "ConvTranspose2d" if transposed else "Conv2d"
    entry = {
        "type": kind,
        "in_channels": in_channels,
        "out_channels": out_channels,
        "kernel_size": list(conv.kernel_size),
        "stride": list(conv.stride),
        "padding": conv.padding if isinstance(conv.padding, str) else list(conv.padding),
        "dilation": list(conv.dilation),
        "groups": groups,
        "bias": bool(bias),
        "padding_mode": conv.padding_mode,
        "unprunable": bool(getattr(conv, "unprunable", False)),
        "original_in_channels": conv.in_channels,
        "original_out_channels": conv.out_channels,
    }
    if transposed:
        entry["output_padding"] = list(conv.output_padding)
    if isinstance(conv, SamePaddedConv2d):
        entry["same_padding"] = True
    if special:
        entry["out_width"] = out_width
        entry["constant_input"] = constant_input
        entry["filled"] = filled
        if in_width is not None:
            entry["in_width"] = in_width
    return entry


@torch.no_grad()
def _make_conv(entry, conv, weight, bias, out_index, kernel, fill=None, in_index=None) -> nn.Module:
    new = build_layer(entry, "")
    new.to(device=conv.weight.device, dtype=conv.weight.dtype)
    new.weight.copy_(weight)
    if bias is not None:
        new.bias.copy_(bias)
    if in_index is not None:
        new.in_index.copy_(in_index)
    if out_index is not None:
        new.out_index.copy_(out_index)
    if kernel is not None:
        new.constant_kernel.copy_(kernel)
    if fill is not None:
        new.out_fill.copy_(fill)
    new.train(conv.training)
    return new


@torch.no_grad()
def _narrowed_linear(linear: nn.Linear, call: Node, flow: ChannelFlow, kept: torch.Tensor | None = None):
    """A linear layer reading only the features its input keeps (the dropped constants folded into its bias)
    and computing only those its output keeps; a masked feature that must stay is computed as the 0 it is."""
    source, output = flow.input_of(call), call.outputs[0]
    layout = flow.layout(source)
    out_layout = flow.layout(output) if kept is not None else torch.arange(linear.out_features)
    dropped, multiples = _dropped_inputs(flow, source)
    if multiples is not None:
        raise RuntimeError(f"internal error: {call.where()} reads channels that are multiples of others")
    constants = _constants(call, source, dropped)
    weight = linear.weight.detach().cpu()
    bias = torch.zeros(linear.out_features, dtype=torch.float64)
    if linear.bias is not None:
        bias = linear.bias.detach().cpu().double()
    bias = bias + weight[:, dropped].double() @ constants
    if kept is not None:  # the mask multiplies every output feature: 1 for the kept, 0 for the pruned
        keep = kept.to(torch.float64)
        weight, bias = weight * keep.to(weight.dtype)[:, None], bias * keep
    entry = {
        "type": "Linear",
        "in_features": len(layout),
        "out_features": len(out_layout),
        "bias": True,
        "original_in_features": linear.in_features,
    }
    if kept is not None:
        entry["original_out_features"] = linear.out_features
    new = build_layer(entry, "").to(device=linear.weight.device, dtype=weight.dtype)
    new.weight.copy_(weight[out_layout][:, layout])
    new.bias.copy_(bias[out_layout].to(weight.dtype))
    new.train(linear.training)
    return new, entry


@torch.no_grad()
def _narrowed_batch_norm(norm: nn.modules.batchnorm._BatchNorm, layout: torch.Tensor):
    entry = {
        "type": type(norm).__name__,
        "num_features": len(layout),
        "eps": norm.eps,
        "momentum": norm.momentum,
        "affine": norm.affine,
        "track_running_stats": norm.track_running_stats,
        "original_num_features": norm.num_features,
    }
    new = build_layer(entry, "")
    for key, tensor in norm.state_dict().items():
        target = new.state_dict()[key]
        target.copy_(tensor if tensor.dim() == 0 else tensor.cpu()[layout])
    reference = norm.running_mean if norm.running_mean is not None else norm.weight
    if reference is not None:
        new.to(device=reference.device, dtype=reference.dtype)
    new.train(norm.training)
    return new, entry


def _unused_subtrees(network: nn.Module, graph: Graph) -> list[tuple[str, nn.Module]]:
    """The largest sub-modules (name, module) holding weights that the traced forward pass never used."""
    used = set(graph.called_modules)
    for module in network.modules():
        own = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
        if any(id(tensor) in graph.used_tensors for tensor in own):
            used.add(id(module))
    removed = []

    def visit(module: nn.Module, prefix: str) -> None:
        for child_name, child in module._modules.items():
            if child is None:
                continue
            name = f"{prefix}{child_name}"
            subtree = list(child.modules())
            holds = any(True for m in subtree for _ in [*m.parameters(recurse=False), *m.buffers(recurse=False)])
            if holds and not any(id(m) in used for m in subtree):
                removed.append((name, child))
            elif not is_step(child):
                visit(child, name + ".")

    visit(network, "")
    return removed
