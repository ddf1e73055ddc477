"""Which convs have their output channels tied together, so that one mask can serve them all.

A residual block adds its branch into the stream (``out += shortcut``). A stream channel can
leave the compressed network only where every conv writing into that sum pruned it, so with one
mask per conv the stream keeps the union of their kept channels (68-86% of PSPNet50's streams at
sparsity 0.75 with independent masks). Convs whose outputs meet channel by channel (a sum or a
product, max-unpooling by another tensor's indices, a depthwise conv reading them) form a group.
Giving a group one mask makes its convs keep the same channels, so the stream narrows as much as
the layers do.

A grouped conv narrows only group by group: each group must keep as many channels as every other.
Masks that keep the same number in each group, on the grouped conv and on the convs feeding it,
let whole channels leave every group (``balanced_groups``).
"""

from __future__ import annotations

import collections
import math

import torch
from torch import nn

from acosp.compression.channels import FUNCTIONAL_LAYERS, UNPOOLING, ChannelFlow, is_linear_step, is_step
from acosp.compression.channelwise import channelwise_layers
from acosp.compression.frozen import has_conv_forward
from acosp.compression.trace import Graph, trace
from acosp.inject import MaskedConv, is_prunable, unwrap


def coupled_groups(model: nn.Module, example_input: torch.Tensor | tuple) -> list[list[str]]:
    """Names of the prunable convs whose outputs are combined channel by channel, one list per group.

    Found by running the (unmasked) network once on ``example_input`` in eval mode and following
    the channels through the operations that keep them. Concatenations place channels side by side:
    convs are tied through them only where every channel of one is a channel of the other (the same
    place in concatenations summed into one stream). Only groups of two or more convs are listed, in
    the order the forward pass first calls them.
    """
    return mask_constraints(model, example_input)[0]


def balanced_groups(model: nn.Module, example_input: torch.Tensor | tuple) -> dict[str, int]:
    """``{conv name: G}`` for the prunable convs whose kept channels should spread evenly over G groups.

    A grouped conv (not depthwise) with G groups compresses to a grouped conv only where each of
    its groups keeps as many input channels, and computes as many output channels, as every other.
    So its own mask and the masks of the convs that feed it (through BatchNorm, activations, sums)
    keep the same number of channels in each of the G equal groups: then whole channels leave
    every group, as in a plain conv. Found by the same run as ``coupled_groups``.
    """
    return mask_constraints(model, example_input)[1]


def gathered_masks(model: nn.Module, example_input: torch.Tensor | tuple) -> dict[str, tuple[str, list[int]]]:
    """``{conv name: (source conv name, index)}`` for the prunable convs whose output channels are whole
    copies of the output channels of another coupled group: output channel i meets channel ``index[i]``
    of the source's output, and no group of their own matches them. GhostNet's shortcut convs are such: the
    block adds their output to a concatenation of two convs that share one mask (a depthwise conv
    and the conv it reads), so shortcut channel i meets that mask's channel ``i % half``. Their mask
    is the source's mask at ``index`` (``acosp.GatheredMask``), so that the stream narrows with it.
    Found by the same run as ``coupled_groups``.
    """
    return mask_constraints(model, example_input, gathered=True)[2]


def mask_constraints(
    model: nn.Module, example_input: torch.Tensor | tuple, gathered: bool = False
) -> tuple[list[list[str]], dict[str, int]] | tuple[list[list[str]], dict[str, int], dict]:
    """``(coupled_groups, balanced_groups)`` from one run of the network; with ``gathered`` also
    ``gathered_masks`` (the groups then leave out the convs whose masks are gathered)."""
    return _constraints(_traced(model, example_input, "coupled masks"), gathered)


def mask_plan(model: nn.Module, example_input: torch.Tensor | tuple, gathered: bool, linears: bool) -> dict:
    """What ``SoftTopKPruner.configure_model`` needs, from one run of the network: ``groups``,
    ``balanced`` and ``gathered`` (``mask_constraints``) and ``linears`` (``maskable_linears``, or
    none without ``linears``)."""
    graph = _traced(model, example_input, "coupled masks")
    groups, balanced, *gathers = _constraints(graph, gathered)
    names = _maskable_linears(unwrap(model), graph) if linears else []
    return {"groups": groups, "balanced": balanced, "gathered": gathers[0] if gathers else {}, "linears": names}


def _constraints(graph: Graph, gathered: bool) -> tuple:
    flow = ChannelFlow(graph, strict=False)
    tensors = _Sets()  # tensors that are one another, channel by channel
    partial = []
    for link in flow.links:
        same = link.a.channels == link.b.channels == link.a_index.numel()
        if same and torch.equal(link.a_index, link.b_index):
            tensors.union(link.a.index, link.b.index)
        else:
            partial.append(link)  # a concatenation's parts, a chunk, a shuffle: some channels each
    channels = _Sets()  # (tensor, channel) pairs that one channel of a sum or product ties together
    for link in partial:
        a, b = tensors.find(link.a.index), tensors.find(link.b.index)
        for i, j in zip(link.a_index.tolist(), link.b_index.tolist()):
            channels.union((a, i), (b, j))

    def ties(value) -> tuple:
        """What each channel of ``value`` is tied to. Convs whose outputs have the same ties keep or drop
        their channels together: one mask serves them (GhostNet's blocks add a concatenation of two
        convs to their stream, so the convs at one place of each block's concatenation are tied)."""
        base = tensors.find(value.index)
        return tuple(channels.find((base, channel)) for channel in range(value.channels))

    groups: dict[tuple, list[str]] = {}
    for node in graph.nodes:
        if node.kind != "module" or not is_prunable(node.target):
            continue
        members = groups.setdefault(ties(node.outputs[0]), [])
        if node.name not in members:  # the layer's name in the network, as the trace recorded it
            members.append(node.name)
    balanced: dict[str, int] = {}
    for source, output, count in flow.grouped:
        for value in (source, output):
            if value.channels == count:  # one channel per group: groups that keep none just vanish
                continue
            for name in groups.get(ties(value), []):
                balanced[name] = math.lcm(balanced.get(name, 1), count)
    if not gathered:
        return [members for members in groups.values() if len(members) > 1], balanced
    sources = _gathering(groups, balanced)
    coupled = [members for key, members in groups.items() if len(members) > 1 and key not in sources]
    gathers = {name: (groups[source][0], index) for key, (source, index) in sources.items() for name in groups[key]}
    return coupled, balanced, gathers


def _gathering(groups: dict[tuple, list[str]], balanced: dict[str, int]) -> dict[tuple, tuple[tuple, list[int]]]:
    """``{ties of a group: (ties of its source group, index)}`` for the groups whose channels are whole
    copies of the channels of one other group (``gathered_masks``).

    Each tie is owned by one group whose channels are all different ties: the one with the most
    convs (the first called among equals). A group whose ties one other group owns, every one of
    them as often (GhostNet's shortcut: each channel of the concatenation's shared mask twice), takes
    its mask from that group, so it keeps that many times the source's channels, never none. Ties
    through a channel shuffle are coarser (a shuffle's view ties the channels of each of its
    groups), and are not copies. Groups a grouped conv constrains (``balanced``) keep masks of
    their own.
    """
    distinct = [key for key in groups if len(set(key)) == len(key)]
    owner: dict = {}
    for key in sorted(distinct, key=lambda key: -len(groups[key])):  # stable: first called among equals
        for tie in key:
            owner.setdefault(tie, key)
    sources = {}
    for key, members in groups.items():
        owners = {owner.get(tie) for tie in key}
        if len(owners) != 1 or any(name in balanced for name in members):
            continue
        (source,) = owners
        if source is None or source == key or any(name in balanced for name in groups[source]):
            continue
        copies = collections.Counter(key)
        if len(key) % len(source) or any(copies[tie] != len(key) // len(source) for tie in source):
            continue
        position = {tie: i for i, tie in enumerate(source)}
        sources[key] = (source, [position[tie] for tie in key])
    return sources


class _Sets:
    """Disjoint sets of hashable items (union-find)."""

    def __init__(self):
        self.parent: dict = {}

    def find(self, item):
        parent = self.parent
        while parent.get(item, item) != item:
            parent[item] = parent.get(parent[item], parent[item])  # halve the path
            item = parent[item]
        return item

    def union(self, a, b) -> None:
        self.parent[self.find(a)] = self.find(b)


def output_convs(model: nn.Module, example_input: torch.Tensor | tuple) -> list[str]:
    """Names of the prunable convs whose output channels reach the network's output through no other
    conv or linear layer: a segmentation network's classifier (through the upsampling), SqueezeNet's
    (through the pooling). Their channels are the classes, which pruning should not remove.

    Found by the same kind of run as ``coupled_groups``, on the unmasked network; listed in the order
    of ``named_modules``. ``acosp.unprunable_outputs`` marks them.
    """
    graph = _traced(model, example_input, "output convs")
    network = unwrap(model)
    found: set[str] = set()
    seen: set[int] = set()
    pending = list(graph.outputs)
    while pending:
        value = pending.pop()
        node = value.producer
        if node is None or node.index in seen:
            continue
        seen.add(node.index)
        if node.kind == "module":
            layer, name = node.target, node.name
        elif node.name in FUNCTIONAL_LAYERS:  # in a layer's own forward (a weight-standardised conv's)
            layer, name = _layer(network, node.scope), node.scope
        else:
            pending.extend(node.inputs)
            continue
        if layer is not None and is_prunable(layer):
            found.add(name)
        elif node.kind == "module" and not isinstance(layer, _WEIGHTED_LAYERS):
            pending.extend(node.inputs)  # BatchNorm and other layers that map channels on their own
    return [name for name, _ in network.named_modules() if name in found]


def maskable_linears(model: nn.Module, example_input: torch.Tensor | tuple) -> list[str]:
    """Names of the linear layers whose output features compression can remove: the hidden features of an
    MLP (``fc1`` of ConvNeXt's blocks, of a squeeze-excitation written with linear layers, of VGG's
    classifier), which only element-wise steps carry to the linear layer that reads them.

    Found by the same kind of run as ``coupled_groups``, on the unmasked network, taking every linear
    layer as keeping none of its features: those whose features then all leave the network (none
    reaches a residual sum, a reshape, a normalisation or the output) are listed, in the order of
    ``named_modules``. ``SoftTopKPruner.configure_model`` masks them (``linear_masks``).
    """
    network = unwrap(model)
    if not any(is_linear_step(module) for module in network.modules()):
        return []  # no need to run the network
    return _maskable_linears(network, _traced(model, example_input, "maskable linears"))


def _maskable_linears(network: nn.Module, graph: Graph) -> list[str]:
    calls = {
        id(node.target): node.target
        for node in graph.nodes
        if node.kind == "module" and is_linear_step(node.target) and not getattr(node.target, "unprunable", False)
    }
    if not calls:
        return []  # no need to follow the channels again
    flow = ChannelFlow(graph, strict=False, pruned_layers=frozenset(calls))
    free = {key: module.out_features > 1 for key, module in calls.items()}
    for node in graph.nodes:
        if node.kind == "module" and id(node.target) in calls:
            required = flow.required.get(node.outputs[0].index)
            if required is None or required.any():
                free[id(node.target)] = False
    return [name for name, module in network.named_modules() if free.get(id(module), False)]


def _layer(network: nn.Module, name: str) -> nn.Module | None:
    try:
        return network.get_submodule(name) if name else None
    except AttributeError:
        return None


_WEIGHTED_LAYERS = (nn.modules.conv._ConvNd, nn.Linear, nn.Bilinear)


def _traced(model: nn.Module, example_input: torch.Tensor | tuple, purpose: str) -> Graph:
    network = unwrap(model)
    masked = [name for name, module in network.named_modules() if isinstance(module, MaskedConv)]
    if masked:
        raise ValueError(
            f"{purpose} are chosen on the network before it is masked, but '{masked[0]}' has a mask already"
        )
    args = example_input if isinstance(example_input, tuple) else (example_input,)
    training = network.training
    network.eval()
    # Convs that pad or compute their filters in their own forward, and layer scales, are one layer here,
    # as in compression.
    layers = {id(module) for module in network.modules() if has_conv_forward(module)} | channelwise_layers(network)
    try:
        graph = trace(
            network, args, lambda module: is_step(module) or id(module) in layers, snapshot_functions=UNPOOLING
        )
    except Exception as error:
        shapes = [tuple(item.shape) for item in args if isinstance(item, torch.Tensor)]
        raise ValueError(
            f"{purpose}: the network failed on the example input {shapes}; give an input it accepts "
            f"(a training crop, on the network's device): {error}"
        ) from error
    finally:
        network.train(training)
    return graph
