"""Walking a model: wrap its convs with masks, harden the masks, fold them back into plain convs.

A masked conv is a ``MaskedConv`` container whose child ``0`` is the original conv and child ``1``
the mask layer, so state dict keys read ``<conv>.0.weight``, ``<conv>.1.weight`` (logits) and
``<conv>.1.mask``, the layout of the original publication's checkpoints.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence

import torch
from torch import nn

from acosp import mask_bank
from acosp.masks import ChannelMask, GatheredMask, SigmoidSoftTopK, check_round_to, is_hard, num_kept_channels

PRUNABLE_TYPES = (nn.Conv2d, nn.ConvTranspose2d)
# Linear layers are masked only where named (``maskable_linears`` finds those whose features can leave):
# the output features of most (a classifier's, an attention's) cannot.

SELECTIONS = ("logits", "l1")
"""How hard masks choose their channels: the learned logits (ACoSP), or the filters' L1 norms
(Li et al., "Pruning Filters for Efficient ConvNets": the network trains dense until pruning ends)."""


class UnprunableConv2d(nn.Conv2d):
    """A conv that must keep its width (a classifier, say); ``configure_model`` leaves it alone."""

    unprunable = True


def unprunable(module: nn.Module) -> nn.Module:
    """``module`` marked to keep its width; returns it. Unlike ``UnprunableConv2d`` its type stays
    the standard one, which tools that recognise layers by exact type (MAC counters) count."""
    module.unprunable = True
    return module


def unprunable_outputs(model: nn.Module, example_input: torch.Tensor | tuple) -> list[str]:
    """Mark the convs that compute the network's output channels (its classes) unprunable; their names.

    Those are the convs whose output reaches the network's output through no other conv or linear
    layer (``acosp.compress.output_convs``): a segmentation network's classifier, SqueezeNet's. Call
    it on the unmasked network, before ``configure_model``, with an input the network accepts.
    """
    from acosp.compression.coupling import output_convs  # the compression layer traces the network

    names = output_convs(model, example_input)
    network = unwrap(model)
    for name in names:
        unprunable(network.get_submodule(name))
    return names


class MaskedConv(nn.Sequential):
    """A conv followed by the mask of its output channels (before any BatchNorm), or a linear layer
    followed by the mask of its output features (the last dimension of what it computes).

    ``conv(x) * mask`` costs passes over whichever tensor the mask multiplies, forward and
    backward. So each call multiplies the smaller one: the filters and bias (large feature maps,
    the usual case) or the conv's output (small feature maps under wide filters, like PSPNet's
    head at small crops). Both compute the same function. Convs with their own ``forward``, hooks
    or extra arguments take the literal route, ``mask_layer(conv(x))``.
    """

    # (mask, scaled filters, scaled bias) that acosp.mask_bank computed for all layers together
    # while the network trains (filters None where the last call multiplied the output); None otherwise.
    prepared: tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None] | None = None
    scales_filters = True  # whether the last call scaled the filters rather than the output

    def __init__(self, conv: nn.Module, mask: nn.Module):
        super().__init__(conv, mask)

    def takes_prepared_filters(self) -> bool:
        """Whether a plain conv or linear layer whose filters acosp.mask_bank can scale (output channels first)."""
        conv = self[0]
        plain = type(conv).forward in (nn.Conv2d.forward, nn.Linear.forward)
        return plain and not (conv._forward_hooks or conv._forward_pre_hooks)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        conv, mask_layer = self[0], self[1]
        if isinstance(conv, nn.Linear):
            return self._linear_forward(x, *args, **kwargs)
        if args or kwargs or conv._forward_hooks or conv._forward_pre_hooks:
            return mask_layer(conv(x, *args, **kwargs))
        forward = type(conv).forward
        transposed = forward is nn.ConvTranspose2d.forward and conv.padding_mode == "zeros"
        if forward is not nn.Conv2d.forward and not transposed:
            return mask_layer(conv(x))
        scale = self._mask_scale()
        scaled = self._scaled_filters(conv, x, scale)
        if scaled is None:
            return conv(x) * scale.to(x.dtype).reshape(1, -1, *([1] * (x.dim() - 2)))
        weight, bias = scaled
        if transposed:
            return nn.functional.conv_transpose2d(
                x, weight, bias, conv.stride, conv.padding, conv.output_padding, conv.groups, conv.dilation
            )
        return conv._conv_forward(x, weight, bias)

    def _linear_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        linear = self[0]
        scale = self._mask_scale()
        plain = not (args or kwargs or linear._forward_hooks or linear._forward_pre_hooks)
        if plain and type(linear).forward is nn.Linear.forward:
            scaled = self._scaled_filters(linear, x, scale)
            if scaled is not None:
                return nn.functional.linear(x, *scaled)
        y = linear(x, *args, **kwargs)
        return y * scale.to(y.dtype)

    def _mask_scale(self) -> torch.Tensor:
        """The mask's channel scale, as ``acosp.mask_bank`` prepared it or computed now."""
        return self[1].channel_scale() if self.prepared is None else self.prepared[0]

    def _scaled_filters(self, layer: nn.Module, x: torch.Tensor, scale: torch.Tensor) -> tuple | None:
        """``layer``'s filters and bias times ``scale`` (as the mask bank prepared them, or computed now),
        or None where multiplying the layer's smaller output is cheaper. Remembers the route in
        ``scales_filters``, which tells the mask bank what to prepare for the next call."""
        scales_filters = not _output_is_smaller_than_weight(layer, x)
        if scales_filters != self.scales_filters:
            self.scales_filters = scales_filters
        if not scales_filters:
            return None
        prepared = self.prepared
        return _scaled_parameters(layer, scale) if prepared is None or prepared[1] is None else prepared[1:]

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name not in _CONV_ATTRIBUTES:
                raise
        # No 'weight' of its own, so that module walks count each conv once (hasattr stays False).
        raise AttributeError(
            f"'MaskedConv' object has no attribute '{name}': a masked conv keeps its conv in '.conv' "
            f"(read '.conv.{name}'); where a network reads '{name}' of one of its convs, mark that conv "
            "with acosp.unprunable(conv) before configure_model"
        )

    @property
    def conv(self) -> nn.Module:
        return self[0]

    @property
    def mask_layer(self) -> nn.Module:
        return self[1]


_CONV_ATTRIBUTES = frozenset(
    ("weight", "bias", "in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups")
    + ("padding_mode", "output_padding", "transposed", "in_features", "out_features")
)


def _output_is_smaller_than_weight(conv: nn.Module, x: torch.Tensor) -> bool:
    """Whether the conv's output has fewer elements than its filters (strides taken into account)."""
    if isinstance(x, torch.fx.Proxy):
        return False  # symbolic tracing sees no sizes: keep the filter route
    if isinstance(conv, nn.Linear):  # as many output rows as input rows
        return x.numel() // max(conv.in_features, 1) < conv.in_features
    if x.dim() != 4:
        return False
    positions = x.shape[0] * x.shape[2] * x.shape[3]
    stride = conv.stride[0] * conv.stride[1]
    positions = positions * stride if isinstance(conv, nn.ConvTranspose2d) else positions // stride
    return positions * conv.out_channels < conv.weight.numel()


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside ``DataParallel`` / ``DistributedDataParallel``, or the model itself."""
    while isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        model = model.module
    return model


def is_prunable(module: nn.Module) -> bool:
    return isinstance(module, PRUNABLE_TYPES) and not getattr(module, "unprunable", False)


def inject_soft_masks(
    model: nn.Module,
    sparsity: float,
    min_remaining_elements: int = 8,
    learnable_weights: bool = True,
    temperature: float = 1.0,
    groups: Iterable[Iterable[str]] = (),
    channel_groups: Mapping[str, int] | None = None,
    gathered: Mapping[str, tuple[str, Sequence[int]]] | None = None,
    linears: Iterable[str] = (),
) -> nn.Module:
    """Wrap every prunable conv of ``model`` (in place) with a ``SigmoidSoftTopK`` mask; returns the model.

    Convs that are already masked are skipped, so calling this twice changes nothing; a conv
    shared by several parents gets one mask. The convs named in one of ``groups`` (see
    ``acosp.compress.coupled_groups``) share one mask: one set of logits, the same kept channels.
    ``channel_groups`` maps a conv's name to the number of equal groups its output channels form
    for a grouped conv (``acosp.compress.balanced_groups``): its mask keeps the same number in
    each, k rounded up to a multiple of them (unless that keeps more than ``MAX_BALANCED_GROWTH``
    times the channels: then it ignores the groups). ``gathered`` maps a conv's name to ``(source conv,
    index)`` (``acosp.compress.gathered_masks``): its mask is a ``GatheredMask``, the source's mask
    at ``index``. ``linears`` names linear layers to mask too, each over its output features
    (``acosp.compress.maskable_linears``: the hidden features of MLPs). A DistributedDataParallel
    model comes back in a new wrapper, so that it synchronises the logits too.
    """
    network = unwrap(model)
    masked_linears = {id(_named_linear(network, name)) for name in linears}
    group_of = _group_of_conv(network, groups)
    balance = _channel_groups_of_conv(network, channel_groups or {}, group_of)
    gather = _gathered_of_conv(network, gathered or {}, group_of, balance)
    shared: dict[tuple, SigmoidSoftTopK] = {}
    wrapped: dict[int, MaskedConv] = {}

    def mask_for(conv: nn.Module) -> nn.Module:
        if id(conv) in gather:
            source, index = gather[id(conv)]
            return GatheredMask(mask_for(source), index)
        group = group_of.get(id(conv))
        key = ("group", group) if group is not None else ("conv", id(conv))  # a source conv's mask serves others
        if key in shared:
            return shared[key]
        channels = conv.out_features if isinstance(conv, nn.Linear) else conv.out_channels
        kept = num_kept_channels(channels, sparsity, min_remaining_elements)
        split = balance.get(id(conv), 1)
        k = math.ceil(kept / split) * split
        if k > kept * MAX_BALANCED_GROWTH:  # many small groups: whole groups go instead (compress stays exact)
            split, k = 1, kept
        mask = SigmoidSoftTopK(channels, k, learnable_weights, temperature, groups=split)
        shared[key] = mask = mask.to(conv.weight.device)
        return mask

    def visit(parent: nn.Module) -> None:
        # Not named_children(): it hides a module's second appearance under the same parent.
        for name, child in list(parent._modules.items()):
            if child is None or isinstance(child, MaskedConv):
                continue
            if is_prunable(child) or id(child) in masked_linears:
                if id(child) not in wrapped:
                    wrapped[id(child)] = MaskedConv(child, mask_for(child))
                setattr(parent, name, wrapped[id(child)])
            else:
                visit(child)

    visit(network)
    if wrapped:
        mask_bank.attach(network)
    return _rewrapped_if_changed(model, bool(wrapped))


def _named_linear(network: nn.Module, name: str) -> nn.Module:
    """The linear layer ``name`` of ``network`` that ``inject_soft_masks(linears=...)`` may mask."""
    try:
        linear = network.get_submodule(name)
    except AttributeError:
        raise ValueError(f"linears: the network has no layer '{name}'") from None
    if isinstance(linear, MaskedConv):
        return linear.conv
    if not isinstance(linear, nn.Linear) or linear.weight.dim() != 2:
        raise ValueError(f"linears: '{name}' is not a linear layer ({type(linear).__name__})")
    if getattr(linear, "unprunable", False):
        raise ValueError(f"linears: '{name}' is marked unprunable")
    return linear


def _prunable_conv(network: nn.Module, name: str, where: str) -> nn.Module:
    """The prunable conv ``name`` of ``network``; a ValueError that says ``where`` it was named otherwise."""
    try:
        conv = network.get_submodule(name)
    except AttributeError:
        raise ValueError(f"{where}: the network has no layer '{name}'") from None
    if not is_prunable(conv):
        raise ValueError(f"{where}: '{name}' is not a prunable conv ({type(conv).__name__})")
    return conv


def _group_of_conv(network: nn.Module, groups: Iterable[Iterable[str]]) -> dict[int, int]:
    """``id(conv) -> group number``, after checking that each group names prunable convs of one width."""
    group_of: dict[int, int] = {}
    for number, names in enumerate(groups):
        widths = {}
        for name in names:
            conv = _prunable_conv(network, name, f"mask group {number}")
            if id(conv) in group_of and group_of[id(conv)] != number:
                raise ValueError(f"'{name}' is in mask groups {group_of[id(conv)]} and {number}")
            group_of[id(conv)] = number
            widths[name] = conv.out_channels
        if len(set(widths.values())) > 1:
            raise ValueError(f"mask group {number} mixes output widths, so one mask cannot serve it: {widths}")
    return group_of


# A mask kept even over G channel groups keeps a multiple of G channels. Where rounding up to that keeps
# more than this many times the channels the sparsity asks for (FastViT's downsampling conv has 48 groups
# of 2 channels: 48 of 96 at sparsity 0.75, and its whole stage with it), the mask ignores the groups:
# ``compress`` then keeps a few extra channels in that one grouped conv instead.
MAX_BALANCED_GROWTH = 1.5


def _gathered_of_conv(
    network: nn.Module,
    gathered: Mapping[str, tuple[str, Sequence[int]]],
    group_of: Mapping[int, int],
    balance: Mapping[int, int],
) -> dict[int, tuple[nn.Module, list[int]]]:
    """``id(conv) -> (source conv, index)``, after checking that every index fits both convs."""
    where = "gathered masks"
    result = {}
    for name, (source_name, index) in gathered.items():
        conv = _prunable_conv(network, name, where)
        source = _prunable_conv(network, source_name, where)
        index = [int(i) for i in index]
        if len(index) != conv.out_channels or not all(0 <= i < source.out_channels for i in index):
            raise ValueError(
                f"{where}: '{name}' needs {conv.out_channels} indices into the {source.out_channels} channels of "
                f"'{source_name}'"
            )
        if id(conv) in group_of or id(conv) in balance:
            raise ValueError(f"{where}: '{name}' is in a mask group or has channel groups; its mask cannot be gathered")
        result[id(conv)] = (source, index)
    for name, (source_name, _) in gathered.items():
        if id(network.get_submodule(source_name)) in result:
            raise ValueError(f"{where}: the source of '{name}', '{source_name}', has a gathered mask itself")
    return result


def _channel_groups_of_conv(
    network: nn.Module, channel_groups: Mapping[str, int], group_of: Mapping[int, int]
) -> dict[int, int]:
    """``id(conv) -> channel groups``; convs that share a mask take the least common multiple of theirs."""
    by_conv: dict[int, int] = {}
    for name, count in channel_groups.items():
        conv = _prunable_conv(network, name, "channel groups")
        if int(count) != count or count < 1 or conv.out_channels % count:
            raise ValueError(f"channel groups: '{name}' has {conv.out_channels} channels, not {count} equal groups")
        by_conv[id(conv)] = math.lcm(by_conv.get(id(conv), 1), int(count))
    by_group: dict[int, int] = {}
    for conv_id, count in by_conv.items():
        if conv_id in group_of:
            by_group[group_of[conv_id]] = math.lcm(by_group.get(group_of[conv_id], 1), count)
    for conv_id, group in group_of.items():
        if group in by_group:
            by_conv[conv_id] = by_group[group]
    for name, module in network.named_modules():
        if id(module) in by_conv and module.out_channels % by_conv[id(module)]:
            raise ValueError(
                f"channel groups: '{name}' shares its mask with convs whose groups need {by_conv[id(module)]} "
                f"equal groups, which its {module.out_channels} channels do not form"
            )
    return by_conv


def grouped_conv_groups(model: nn.Module) -> dict[str, int]:
    """``{name: groups}`` of the prunable grouped convs that are not depthwise: the groups their own masks keep even."""
    return {
        name: module.groups
        for name, module in unwrap(model).named_modules()
        if is_prunable(module) and isinstance(module, nn.Conv2d) and 1 < module.groups < module.out_channels
    }


def is_depthwise(conv: nn.Module) -> bool:
    """Channel c from channel c alone: a conv with as many groups as input and output channels."""
    return 1 < conv.groups == conv.in_channels == conv.out_channels


def shared_mask_groups(model: nn.Module) -> list[list[str]]:
    """Names of the masked convs that share one mask layer, one list per shared mask (as configured)."""
    by_mask: dict[int, list[str]] = {}
    for name, mask in named_mask_layers(model):
        by_mask.setdefault(id(mask), []).append(name)
    return [names for names in by_mask.values() if len(names) > 1]


def named_mask_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """``(name of the masked conv, mask layer)`` for every soft or hard mask, without wrapper prefixes."""
    for name, module in unwrap(model).named_modules():
        if isinstance(module, MaskedConv):
            yield name, module.mask_layer


def soft_masks(model: nn.Module) -> list[SigmoidSoftTopK]:
    return [mask for _, mask in named_mask_layers(model) if isinstance(mask, SigmoidSoftTopK)]


def _replace_modules(model: nn.Module, replacement) -> nn.Module:
    """Set each child ``c`` of every module in ``model`` to ``replacement(c)`` when that is not None.

    A child shared by several parents (one mask serving a group of convs) is replaced once, so they
    keep sharing. Returns the model, or a new DistributedDataParallel wrapper if the model was one
    and changed.
    """
    changed = False
    replaced: dict[int, tuple[nn.Module, nn.Module | None]] = {}  # holding the old child keeps its id unique
    for parent in list(unwrap(model).modules()):
        for name, child in list(parent._modules.items()):
            if child is not None and id(child) not in replaced:
                replaced[id(child)] = (child, replacement(child))
            new = None if child is None else replaced[id(child)][1]
            if new is not None:
                setattr(parent, name, new)
                changed = True
    return _rewrapped_if_changed(model, changed)


def _rewrapped_if_changed(model: nn.Module, changed: bool) -> nn.Module:
    """The model, or a new wrapper for a DistributedDataParallel model whose network acosp changed."""
    if changed and isinstance(model, nn.parallel.DistributedDataParallel):
        return _rewrap_ddp(model)
    return model


def _rewrap_ddp(ddp: nn.parallel.DistributedDataParallel) -> nn.parallel.DistributedDataParallel:
    """A new DDP wrapper, with the old one's settings, around the same (changed) module.

    DDP's reducer records the parameters at construction: after masks are added it would not
    synchronise the logits, after they are hardened it would wait forever for their gradients.
    The old wrapper refuses to run from then on.
    """
    settings = {
        "device_ids": ddp.device_ids,
        "output_device": ddp.output_device,
        "dim": ddp.dim,
        "broadcast_buffers": ddp.broadcast_buffers,
        "process_group": ddp.process_group,
        "find_unused_parameters": ddp.find_unused_parameters,
        "gradient_as_bucket_view": ddp.gradient_as_bucket_view,
        "static_graph": getattr(ddp, "static_graph", False),
    }
    if getattr(ddp, "bucket_bytes_cap", None):
        settings["bucket_cap_mb"] = ddp.bucket_bytes_cap / (1024 * 1024)
    ddp.register_forward_pre_hook(_refuse_stale_wrapper)
    return nn.parallel.DistributedDataParallel(ddp.module, **settings)


def _refuse_stale_wrapper(module: nn.Module, args) -> None:
    raise RuntimeError(
        "this DistributedDataParallel wrapper was built before acosp changed the network inside it (masks added, "
        "hardened or folded) and would synchronise the wrong parameters; use the wrapper that call returned, "
        "e.g. model = acosp.inject.soft_to_hard_k(model) or model = pruner.configure_model(model)"
    )


def soft_to_hard_k(model: nn.Module, round_to: int = 1, selection: str = "logits") -> nn.Module:
    """Replace every soft mask by the hard mask of its top-k channels; returns the model.

    ``selection`` ranks the channels: ``"logits"`` by the mask's logits (ACoSP), ``"l1"`` by the L1
    norm of each output channel's filter (summed over the convs that share the mask). ``round_to``
    > 1 rounds each layer's k up to a multiple of it (at most the layer's width), for
    hardware-friendly widths after ``acosp.compress``. Works before any training step. For a
    ``DistributedDataParallel`` model a new wrapper is returned (all ranks must call this
    together): use ``model = soft_to_hard_k(model)``.
    """
    check_round_to(round_to)
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be {' or '.join(SELECTIONS)}, got {selection!r}")
    scores = filter_l1_norms(model) if selection == "l1" else {}

    def harden(child: nn.Module) -> nn.Module | None:
        if not isinstance(child, SigmoidSoftTopK):
            return None
        return ChannelMask.from_soft(child, round_to, scores.get(id(child)))

    return _replace_modules(model, harden)


@torch.no_grad()
def filter_l1_norms(model: nn.Module) -> dict[int, torch.Tensor]:
    """``id(soft mask) -> [channels]`` L1 norms of the filters behind each output channel of its conv(s)."""
    norms: dict[int, torch.Tensor] = {}
    for _, module in unwrap(model).named_modules():
        mask = module.mask_layer if isinstance(module, MaskedConv) else None
        if isinstance(mask, GatheredMask):  # its filters count for the source's channels it reads
            mask = mask.source
        if isinstance(mask, SigmoidSoftTopK):
            conv = module.conv
            weight = conv.weight.detach().float().abs()
            if isinstance(conv, nn.ConvTranspose2d):  # [in, out / groups, kh, kw]
                per_group = weight.reshape(conv.groups, conv.in_channels // conv.groups, *weight.shape[1:])
                norm = per_group.sum(dim=(1, *range(3, per_group.dim()))).reshape(-1)
            else:
                norm = weight.reshape(weight.shape[0], -1).sum(1)
            if isinstance(module.mask_layer, GatheredMask):
                norm = torch.zeros_like(mask.weight, dtype=norm.dtype).index_add_(0, module.mask_layer.index, norm)
            key = id(mask)
            norms[key] = norms[key] + norm if key in norms else norm
    return norms


def output_channel_weight(conv: nn.Module, per_channel: torch.Tensor) -> torch.Tensor:
    """Broadcast a [out_channels] vector to the shape of ``conv.weight``.

    Shapes come from the conv's attributes rather than from ``conv.weight``, so that torch.fx can
    trace a masked network.
    """
    if isinstance(conv, nn.Linear):  # weight: [out, in]
        return per_channel.reshape(-1, 1).expand(conv.out_features, conv.in_features)
    groups, kernel = conv.groups, tuple(conv.kernel_size)
    spatial = [1] * len(kernel)
    in_per_group, out_per_group = conv.in_channels // groups, conv.out_channels // groups
    if isinstance(conv, nn.ConvTranspose2d):
        # weight: [in, out / groups, kh, kw]; output channel g * (out / groups) + j sits in group g, column j.
        per_group = per_channel.reshape(groups, 1, out_per_group, *spatial)
        shape = (groups, in_per_group, out_per_group, *kernel)
        return per_group.expand(shape).reshape(conv.in_channels, out_per_group, *kernel)
    return per_channel.reshape(-1, 1, *spatial).expand(conv.out_channels, in_per_group, *kernel)


def _scaled_parameters(conv: nn.Module, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The conv's weight and bias with every output channel multiplied by ``mask``."""
    mask = mask.to(conv.weight.dtype)
    weight = conv.weight * output_channel_weight(conv, mask)
    return weight, None if conv.bias is None else conv.bias * mask


@torch.no_grad()
def fold_mask_into_conv(conv: nn.Module, mask: torch.Tensor, reinitialize: bool = False) -> nn.Module:
    """Multiply the conv's filters and bias by a binary output-channel mask, in place.

    With ``reinitialize`` the pruned filters get fresh Xavier-normal weights and a zero bias instead.
    """
    mask = mask.to(conv.weight.device, conv.weight.dtype)
    keep = output_channel_weight(conv, mask)
    if reinitialize:
        fresh = nn.init.xavier_normal_(torch.empty_like(conv.weight))
        conv.weight.copy_(torch.where(keep > 0.5, conv.weight, fresh))
    else:
        conv.weight.mul_(keep)
    if conv.bias is not None:
        conv.bias.mul_(mask)
    return conv


def hard_to_conv(model: nn.Module, reinitialize: bool = False) -> nn.Module:
    """Fold every hard mask into its conv and drop the mask layers; returns the model.

    The convs stay trainable. Soft masks must be hardened first (``soft_to_hard_k``).
    """
    for name, mask in named_mask_layers(model):
        if not is_hard(mask):
            raise ValueError(f"layer '{name}' still has a soft mask: call acosp.inject.soft_to_hard_k(model) first")

    def fold(child: nn.Module) -> nn.Module | None:
        if isinstance(child, MaskedConv):
            return fold_mask_into_conv(child.conv, child.mask_layer.mask, reinitialize)
        return None

    return _replace_modules(model, fold)


def prepare_for_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
    """Harden the soft masks whose entries in ``state_dict`` come from a hard mask (no logits).

    So a checkpoint saved after ``soft_to_hard_k`` loads into a freshly configured model.
    Keys may carry the ``module.`` prefix of DataParallel / DDP.
    """
    keys = {key[len("module.") :] if key.startswith("module.") else key for key in state_dict}
    to_harden = {
        mask
        for name, mask in named_mask_layers(model)
        if isinstance(mask, SigmoidSoftTopK) and f"{name}.1.mask" in keys and f"{name}.1.weight" not in keys
    }
    return _replace_modules(model, lambda child: ChannelMask.from_soft(child) if child in to_harden else None)
