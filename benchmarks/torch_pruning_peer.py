"""The same channels removed by Torch-Pruning (``pip install torch-pruning``): ``compress_speed.py --vs-torch-pruning``.

Torch-Pruning removes a conv's output channels together with the BatchNorm channels after it and
the input channels of every layer that reads them, as its dependency graph couples them. It
claims the function of the network whose removed channels are zero where they leave their
layer (after the BatchNorm): ``zeroed`` builds that network, and the error column measures the
pruned network against it. (ACoSP's masks zero a channel before the BatchNorm, whose shift then
makes it a constant; ``acosp.compress`` keeps that function exactly, so the two tools compute
different functions with the same widths, and each is checked against its own.)
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from acosp.compress import relative_error
from acosp.inject import MaskedConv, hard_to_conv


def available() -> bool:
    try:
        import torch_pruning  # noqa: F401
    except ImportError:
        return False
    return True


def pruned_channels(masked: nn.Module) -> dict[str, list[int]]:
    """``{conv name: indices of the output channels its hard mask removes}``."""
    return {
        name: torch.nonzero(module.mask_layer.mask <= 0.5).flatten().tolist()
        for name, module in masked.named_modules()
        if isinstance(module, MaskedConv)
    }


def plain_copy(masked: nn.Module) -> nn.Module:
    """The masked network as plain convs with their original filters (the masks dropped, not folded)."""
    plain = copy.deepcopy(masked)
    for module in plain.modules():
        if isinstance(module, MaskedConv):
            module.mask_layer.mask.fill_(1.0)
    return hard_to_conv(plain).eval()


def zeroed(plain: nn.Module, removed: dict[str, list[int]], example: torch.Tensor) -> nn.Module:
    """``plain`` with each removed channel 0 where it leaves its layer: the function Torch-Pruning claims."""
    network = copy.deepcopy(plain)
    modules = dict(network.named_modules())
    following = _batch_norm_after(network, example)
    with torch.no_grad():
        for name, channels in removed.items():
            if not channels:
                continue
            conv = modules[name]
            norm = following.get(name)
            target = norm if norm is not None else conv
            weight = target.weight if norm is not None else conv.weight
            if isinstance(conv, nn.ConvTranspose2d) and norm is None:
                weight[:, channels] = 0
            else:
                weight[channels] = 0
            if target.bias is not None:
                target.bias[channels] = 0
    return network


def _batch_norm_after(network: nn.Module, example: torch.Tensor) -> dict[str, nn.BatchNorm2d]:
    """``{conv name: the BatchNorm that reads its output}``, found by running ``network`` on ``example``."""
    produced: dict[int, str] = {}
    alive: list[torch.Tensor] = []  # so that no id is reused within the pass
    pairs: dict[str, nn.BatchNorm2d] = {}
    handles = []
    for name, module in network.named_modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):

            def record(module, inputs, output, name=name):
                produced[id(output)] = name
                alive.append(output)

            handles.append(module.register_forward_hook(record))
        elif isinstance(module, nn.BatchNorm2d):

            def pair(module, inputs):
                if id(inputs[0]) in produced:
                    pairs[produced[id(inputs[0])]] = module

            handles.append(module.register_forward_pre_hook(pair))
    try:
        with torch.no_grad():
            network(example)
    finally:
        for handle in handles:
            handle.remove()
    return pairs


def torch_pruning_prune(plain: nn.Module, removed: dict[str, list[int]], example: torch.Tensor) -> nn.Module:
    """A copy of ``plain`` with the removed channels taken out by Torch-Pruning's dependency graph.

    Convs that Torch-Pruning couples (a residual stream's convs) share one mask when the masks
    were trained coupled; a conv already narrowed through a group it belongs to is skipped.
    """
    import torch_pruning

    # the graph is read off autograd, so the copy and the graph are made with gradients on, even
    # inside no_grad or inference_mode
    with torch.inference_mode(False), torch.enable_grad():
        network = copy.deepcopy(plain).eval()
        graph = torch_pruning.DependencyGraph().build_dependency(network, example_inputs=example.clone(), verbose=False)
    modules = dict(network.named_modules())
    original = {name: modules[name].out_channels for name in removed}
    for name, channels in removed.items():
        conv = modules[name]
        if not channels or conv not in graph.module2node or conv.out_channels != original[name]:
            continue
        group = graph.get_pruning_group(conv, torch_pruning.prune_conv_out_channels, idxs=channels)
        if graph.check_pruning_group(group):
            group.prune()
    return network.eval()


def compare(masked: nn.Module, example: torch.Tensor) -> tuple[nn.Module, tuple[float, float]]:
    """Torch-Pruning's network for ``masked``'s hard masks, and its errors (relative, as ``compress`` measures them)
    against the removal it claims and against ``masked`` itself.

    Where float32 rounding can flip a max-pooling near-tie (SegNet unpools by its indices), an error
    above 1e-4 is measured again in float64, as ``compress`` checks itself.
    """
    removed = pruned_channels(masked)
    plain = plain_copy(masked)
    peer = torch_pruning_prune(plain, removed, example)
    with torch.no_grad():
        claimed = relative_error(zeroed(plain, removed, example)(example), peer(example))
        trained = relative_error(masked(example), peer(example))
        if claimed > 1e-4 and example.is_floating_point():
            precise, x = copy.deepcopy(plain).double(), example.double()
            claimed = relative_error(zeroed(precise, removed, x)(x), torch_pruning_prune(precise, removed, x)(x))
    return peer, (claimed, trained)
