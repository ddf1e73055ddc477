"""All masks of a training step computed together: the same masks, outputs and gradients as layer by layer."""

import copy

import pytest
import torch
from conftest import SmallCNN
from torch import nn

from acosp import mask_bank
from acosp.inject import MaskedConv, soft_masks, soft_to_hard_k
from acosp.masks import SigmoidSoftTopK, sigmoid_soft_top_k
from acosp.pruner import SoftTopKPruner
from semseg.models import build_model


def layers(*shapes):
    torch.manual_seed(0)
    masks = []
    for channels, k, temperature in shapes:
        mask = SigmoidSoftTopK(channels, k, temperature=temperature)
        masks.append(mask)
    return masks


SHAPES = [(16, 4, 1.0), (7, 7, 0.5), (1, 1, 1.0), (64, 1, 0.01), (33, 17, 2.0), (5, 4, 1e-3)]


def test_rows_compute_each_layers_soft_mask_and_keep_exactly_k():
    masks = layers(*SHAPES)
    rows = mask_bank.soft_top_k_rows(masks)
    for mask, row in zip(masks, rows):
        alone, _ = sigmoid_soft_top_k(mask.weight, mask.k, mask.temperature)
        assert row.shape == (mask.num_channels,)
        torch.testing.assert_close(row, alone, rtol=1e-5, atol=1e-6)
        assert int((row > 0.5).sum()) == mask.k


def test_rows_give_the_logits_the_gradients_of_the_per_layer_masks():
    masks = layers(*SHAPES)
    weights = [torch.randn(mask.num_channels) for mask in masks]
    rows = mask_bank.soft_top_k_rows(masks)
    sum((row * w).sum() for row, w in zip(rows, weights)).backward()
    batched = [mask.weight.grad.clone() for mask in masks]
    for mask in masks:
        mask.weight.grad = None
    sum((sigmoid_soft_top_k(m.weight, m.k, m.temperature)[0] * w).sum() for m, w in zip(masks, weights)).backward()
    for mask, grad in zip(masks, batched):
        assert torch.isfinite(grad).all()
        torch.testing.assert_close(grad, mask.weight.grad, rtol=1e-4, atol=1e-6)


def backward_nodes(output: torch.Tensor) -> int:
    seen, stack = set(), [output.grad_fn]
    while stack:
        node = stack.pop()
        if node is not None and node not in seen:
            seen.add(node)
            stack += [next_node for next_node, _ in node.next_functions]
    return len(seen)


def test_the_backward_graph_does_not_grow_with_the_rows():
    """A grouped conv's mask takes a row per group (ResNeXt-101: thousands): a graph node per row, each
    cloning the whole matrix in backward, took gigabytes."""
    torch.manual_seed(0)
    sizes = {}
    for groups in (1, 64):
        masks = [SigmoidSoftTopK(256, 128, groups=groups) for _ in range(4)]
        rows = mask_bank.soft_top_k_rows(masks)
        sizes[groups] = backward_nodes(sum(row.sum() for row in rows))
    assert sizes[64] == sizes[1]


def per_layer_copy(model: nn.Module) -> nn.Module:
    """The same network, with the batched preparation unhooked: every layer computes its own mask."""
    twin = copy.deepcopy(model)
    twin._forward_pre_hooks.clear()
    return twin


def test_a_training_step_matches_the_per_layer_path():
    torch.manual_seed(0)
    pruner = SoftTopKPruner(final_sparsity=0.5, min_remaining_elements=2)
    model = pruner.configure_model(build_model({"arch": "segnet", "classes": 5, "width": 0.125})).train()
    twin = per_layer_copy(model)
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 5, (2, 32, 32))
    for network in (model, twin):
        _, loss, _ = network(x, y)
        loss.backward()
    # Float rounding differs between the two ways; through ten layers of a network it stays within
    # a small share of each gradient's size (a conv bias in front of BatchNorm gets only rounding).
    for (name, a), (_, b) in zip(model.named_parameters(), twin.named_parameters()):
        assert (a.grad - b.grad).abs().max() <= 1e-3 * b.grad.abs().max() + 1e-5, name
    for (name, a), (_, b) in zip(model.named_buffers(), twin.named_buffers()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


def prepared_during_forward(model: nn.Module, x: torch.Tensor) -> list:
    seen = []
    conv = next(module for module in model.modules() if isinstance(module, MaskedConv))
    handle = conv.register_forward_pre_hook(lambda module, args: seen.append(module.prepared))
    model(x)
    handle.remove()
    return seen


def test_masks_are_prepared_only_for_a_training_step_and_released_after_it():
    model = SoftTopKPruner(final_sparsity=0.5, min_remaining_elements=2).configure_model(SmallCNN())
    x = torch.randn(2, 3, 8, 8)
    assert prepared_during_forward(model.train(), x)[0] is not None
    assert all(conv.prepared is None for conv in model.modules() if isinstance(conv, MaskedConv))
    assert prepared_during_forward(model.eval(), x) == [None]
    with torch.no_grad():
        assert prepared_during_forward(model.train(), x) == [None]


def test_hard_masks_are_applied_layer_by_layer():
    model = SoftTopKPruner(final_sparsity=0.5, min_remaining_elements=2).configure_model(SmallCNN())
    model = soft_to_hard_k(model).train()
    assert prepared_during_forward(model, torch.randn(2, 3, 8, 8)) == [None]


def test_a_conv_that_multiplied_its_smaller_output_gets_no_scaled_filters_next_step():
    torch.manual_seed(0)
    conv = nn.Conv2d(64, 64, 3, padding=1)  # 36864 filter weights against 2 x 64 x 2 x 2 = 512 outputs
    model = SoftTopKPruner(final_sparsity=0.5, min_remaining_elements=2).configure_model(nn.Sequential(conv)).train()
    masked = model[0]
    x = torch.randn(2, 64, 2, 2)
    seen = []
    masked.register_forward_pre_hook(lambda module, args: seen.append(module.prepared))
    first, second = model(x), model(x)
    assert seen[0][1] is not None and seen[1][1] is None and seen[1][0] is not None
    assert not masked.scales_filters
    torch.testing.assert_close(second, per_layer_copy(model)(x))
    torch.testing.assert_close(first, second)


def test_a_forward_pass_that_fails_releases_the_prepared_masks_too():
    model = SoftTopKPruner(final_sparsity=0.5, min_remaining_elements=2).configure_model(SmallCNN()).train()
    with pytest.raises(RuntimeError):
        model(torch.randn(2, 5, 8, 8))  # five input channels where the first conv takes three
    assert all(conv.prepared is None for conv in model.modules() if isinstance(conv, MaskedConv))


def test_the_mask_buffers_follow_the_logits_of_a_training_step():
    model = SoftTopKPruner(final_sparsity=0.5, min_remaining_elements=2).configure_model(SmallCNN()).train()
    for mask in soft_masks(model):
        with torch.no_grad():
            mask.weight.normal_()
    model(torch.randn(2, 3, 8, 8))
    for mask in soft_masks(model):
        expected, _ = sigmoid_soft_top_k(mask.weight, mask.k, mask.temperature)
        torch.testing.assert_close(mask.mask, expected.detach(), rtol=1e-5, atol=1e-6)


def test_configuring_twice_hooks_the_network_once():
    pruner = SoftTopKPruner(final_sparsity=0.5, min_remaining_elements=2)
    model = pruner.configure_model(pruner.configure_model(SmallCNN()))
    assert len(model._forward_pre_hooks) == 1 and len(model._forward_hooks) == 1


@pytest.mark.parametrize("kind", ["linear layers", "gathered masks"])
def test_linear_layers_and_gathered_masks_are_prepared_with_the_rest(kind):
    """Masked linear layers (an MLP's hidden features) and convs whose mask is gathered from another group's
    (GhostNet's shortcuts) take their masks and scaled filters from the batch too, with the same gradients."""
    from test_gathered_masks import X as ghost_input
    from test_gathered_masks import ghost_network
    from test_linear_masks import X as mlp_input
    from test_linear_masks import network as mlp_network

    from acosp.masks import GatheredMask

    torch.manual_seed(0)
    if kind == "linear layers":
        model, x = mlp_network(), mlp_input
        model = SoftTopKPruner(final_sparsity=0.5).configure_model(model, x).train()
        chosen = model.blocks[0].fc1
        assert isinstance(chosen.conv, nn.Linear)
    else:
        model, x = ghost_network(), ghost_input
        model = SoftTopKPruner(final_sparsity=0.5, coupled_masks=True).configure_model(model, x).train()
        masked = [module for module in model.modules() if isinstance(module, MaskedConv)]
        chosen = next(module for module in masked if isinstance(module.mask_layer, GatheredMask))
    seen = []
    chosen.register_forward_pre_hook(lambda module, args: seen.append(module.prepared))
    twin = per_layer_copy(model)
    for network in (model, twin):
        torch.manual_seed(1)  # the same dropout in both
        network(x).square().mean().backward()
    assert seen[0] is not None and seen[0][1] is not None  # the mask and the scaled filters, ready
    torch.testing.assert_close(seen[0][0], chosen.mask_layer.channel_scale().detach())
    for (name, a), (_, b) in zip(model.named_parameters(), twin.named_parameters()):
        assert (a.grad - b.grad).abs().max() <= 1e-4 * b.grad.abs().max() + 1e-6, name
