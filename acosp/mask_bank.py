"""All of a network's masks in a few batched operations per training step, instead of some twenty each.

On a GPU a training step of PSPNet50 is short enough that the Python and dispatch cost of the
masks decides its speed: every soft mask normalises its logits, sorts them, finds its threshold
and applies a sigmoid, and every masked conv scales its filters, about twenty small operations per
layer forward and as many backward. Measured on an H200 (AMP, batch 8, 473x473), that made a
soft-masked step 2.1 times as long as a dense one although the GPU work barely grew.

So, while a network with soft masks trains, a forward pre-hook on the network computes the soft
masks of all layers at once (their logits padded into one matrix, one row per mask; a gathered
mask takes its source's row at its index) and scales the filters of their convs and linear layers
with one ``torch._foreach_mul`` (only of those whose last call scaled filters rather than
multiplied a smaller output); each ``MaskedConv`` then finds its mask and filters ready. A forward
hook that runs even when the forward pass fails removes them again. The rows compute what
``acosp.masks.sigmoid_soft_top_k`` computes per layer, up to float rounding.

Hard masks, evaluation, tracing, scripting, compiling and layers called on their own take the
per-layer path: a hard mask computes nothing, and scaling its filters together measured no faster.
"""

from __future__ import annotations

import torch
from torch import nn

from acosp.masks import MIN_STD, GatheredMask, SigmoidSoftTopK

_HOOKED = "_acosp_mask_bank"
_PREPARED = "_acosp_prepared_convs"
# Autograd through the foreach operations arrived in torch 2.1; older releases keep the per-layer path.
_SUPPORTED = tuple(int(part) for part in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 1)


def attach(network: nn.Module) -> None:
    """Let ``network`` prepare its masks batched while it trains (once; a no-op when attached already)."""
    if not _SUPPORTED or getattr(network, _HOOKED, False):
        return
    network.register_forward_pre_hook(_prepare)
    network.register_forward_hook(_release, always_call=True)
    setattr(network, _HOOKED, True)


def _in_use(network: nn.Module) -> bool:
    if not (network.training and torch.is_grad_enabled()):
        return False
    if torch.jit.is_scripting() or torch.jit.is_tracing():
        return False
    compiler = getattr(torch, "compiler", None)
    return not (compiler is not None and compiler.is_compiling())


def _masked_convs(network: nn.Module) -> list[nn.Module]:
    from acosp.inject import MaskedConv  # inject attaches this module: import late

    return [module for module in network.modules() if isinstance(module, MaskedConv)]


def _prepare(network: nn.Module, args) -> None:
    if not _in_use(network):
        return
    convs = [conv for conv in _masked_convs(network) if _soft_source(conv.mask_layer) and conv.takes_prepared_filters()]
    if not convs:
        return
    sources = [_soft_source(conv.mask_layer) for conv in convs]
    soft = list({id(mask): mask for mask in sources}.values())  # a shared mask once
    values = soft_top_k_rows(soft)
    with torch.no_grad():
        torch._foreach_copy_([mask.mask for mask in soft], [value.detach() for value in values])
    scales = {id(mask): value for mask, value in zip(soft, values)}
    by_conv = [
        scales[id(source)] if source is conv.mask_layer else scales[id(source)][conv.mask_layer.index]
        for conv, source in zip(convs, sources)
    ]
    # Filters only for the convs whose last call scaled them: the others multiply their (smaller) output.
    filtered = [index for index, conv in enumerate(convs) if conv.scales_filters]
    weights, biases = [None] * len(convs), [None] * len(convs)
    if filtered:
        _scale_filters([convs[i].conv for i in filtered], [by_conv[i] for i in filtered], filtered, weights, biases)
    for conv, scale, weight, bias in zip(convs, by_conv, weights, biases):
        conv.prepared = (scale, weight, bias)
    network.__dict__[_PREPARED] = convs  # what _release clears, without walking the network again


def _soft_source(mask_layer: nn.Module) -> SigmoidSoftTopK | None:
    """The soft mask a mask layer computes from: itself, or a ``GatheredMask``'s source; None for hard ones."""
    if isinstance(mask_layer, GatheredMask):
        mask_layer = mask_layer.source
    return mask_layer if isinstance(mask_layer, SigmoidSoftTopK) else None


def _scale_filters(convs: list[nn.Module], scales: list[torch.Tensor], slots: list[int], weights: list, biases: list):
    """Into ``weights[slot]`` and ``biases[slot]``: each conv's filters and bias times its mask, all at once.

    Filters of several dtypes are left to the convs themselves (their slots stay None).
    """
    filters = [conv.weight for conv in convs]
    if any(weight.dtype != filters[0].dtype for weight in filters):
        return
    joined = torch.cat(scales).to(filters[0].dtype)  # one concatenation, one split: for filters and biases
    flat = joined.split([len(scale) for scale in scales])
    # Output channels first: a conv's filters [out, in, kh, kw], a linear layer's [out, in].
    filter_scales = [scale.view(-1, *[1] * (weight.dim() - 1)) for scale, weight in zip(flat, filters)]
    for slot, weight in zip(slots, torch._foreach_mul(filters, filter_scales)):
        weights[slot] = weight
    with_bias = [index for index, conv in enumerate(convs) if conv.bias is not None]
    if with_bias:
        scaled = torch._foreach_mul([convs[i].bias for i in with_bias], [flat[i] for i in with_bias])
        for index, bias in zip(with_bias, scaled):
            biases[slots[index]] = bias


def _release(network: nn.Module, args, output) -> None:
    for conv in network.__dict__.pop(_PREPARED, ()):
        conv.prepared = None


def soft_top_k_rows(masks: list[SigmoidSoftTopK]) -> list[torch.Tensor]:
    """Each soft mask's current mask (with autograd), computed for all of them together.

    Row r holds layer r's logits padded to the widest layer: normalised to zero mean and unit
    standard deviation (at least ``MIN_STD``), sorted with the padding last, thresholded at the
    linear interpolation between the order statistics around the top k, kept strictly below the
    k-th largest, and sharpened by the row's temperature. A layer that keeps every channel gets
    ones (still computed from its logits, with zero gradient, so DDP sees them used). A mask over
    channel groups takes one row per group.
    """
    groups = [getattr(mask, "groups", 1) for mask in masks]
    logits = torch.cat([mask.weight.float() for mask in masks])  # the rows one after another
    sizes = [mask.num_channels // g for mask, g in zip(masks, groups) for _ in range(g)]
    table = _row_layout(sizes, [mask.k // g for mask, g in zip(masks, groups) for _ in range(g)], logits.device)
    # [rows, widest], zeros beyond each row: one indexed copy, whose backward is one gather. (Copying
    # row by row, as pad_sequence does, chains one in-place copy per row, and each copy's backward
    # clones the whole matrix: thousands of rows, for networks whose grouped convs have a row per
    # group, took gigabytes.)
    padded = logits.new_zeros(len(sizes) * max(sizes)).index_copy(0, table["flat"], logits).view(len(sizes), -1)
    valid, count = table["valid"], table["count"]
    centred = (padded - (padded.sum(1) / count)[:, None]) * valid
    # clamped before the root: a constant row would otherwise send inf * 0 = nan back to its logits
    std = (centred.square().sum(1) / (count - 1).clamp_min(1)).clamp_min(MIN_STD**2).sqrt()
    z = centred / std[:, None]
    ordered = torch.where(valid, z.detach(), float("inf")).sort(1).values
    below, above = ordered.gather(1, table["below"]), ordered.gather(1, table["above"])
    threshold = torch.minimum(torch.lerp(below, above, table["kept_share"]), torch.nextafter(above, below))
    threshold = torch.where(table["keeps_all"], float("-inf"), threshold)
    temperature = torch.stack([mask.temperature for mask, g in zip(masks, groups) for _ in range(g)])
    rows = torch.sigmoid((z - threshold) / temperature.to(z.dtype)[:, None])
    return list(rows.flatten()[table["flat"]].split([mask.num_channels for mask in masks]))


def _row_layout(sizes: list[int], ks: list[int], device: torch.device) -> dict[str, torch.Tensor]:
    """The index tensors of one set of rows: which entries are real, where each row's order statistics lie."""
    key = (tuple(sizes), tuple(ks), str(device))
    table = _LAYOUTS.get(key)
    if table is None:
        widest = max(sizes)
        size = torch.tensor(sizes)
        k = torch.tensor(ks)
        keeps_all = k == size
        positions = torch.arange(widest)
        table = {
            "valid": positions[None, :] < size[:, None],
            "count": size.float(),
            "below": (size - k - 1).clamp_min(0)[:, None],
            "above": (size - k).clamp_max(size - 1)[:, None],
            "kept_share": (k / size).float()[:, None],
            "keeps_all": keeps_all[:, None],
            "flat": torch.cat([row * widest + torch.arange(n) for row, n in enumerate(sizes)]),
        }
        table = {name: tensor.to(device) for name, tensor in table.items()}
        if len(_LAYOUTS) > 64:  # a few networks per process: never grows without bound
            _LAYOUTS.clear()
        _LAYOUTS[key] = table
    return table


_LAYOUTS: dict[tuple, dict[str, torch.Tensor]] = {}
