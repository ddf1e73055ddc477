"""L1-norm selection, the baseline ACoSP is compared with: hard masks from the filters' L1 norms."""

import pytest
import torch
from conftest import SmallCNN
from torch import nn

import acosp.inject
from acosp.inject import MaskedConv, named_mask_layers
from acosp.masks import ChannelMask, num_kept_channels
from acosp.pruner import SoftTopKPruner


def filter_norms(conv: nn.Module) -> torch.Tensor:
    """Each output channel's L1 norm, computed the slow and obvious way."""
    weight = conv.weight.detach().abs()
    if isinstance(conv, nn.ConvTranspose2d):
        return torch.stack([weight[:, channel].sum() for channel in range(conv.out_channels)])
    return torch.stack([weight[channel].sum() for channel in range(conv.out_channels)])


def test_l1_selection_trains_dense_then_keeps_exactly_the_k_largest_norm_filters_per_layer():
    torch.manual_seed(0)
    model = SmallCNN()
    pruner = SoftTopKPruner(final_sparsity=0.75, min_remaining_elements=2, selection="l1")
    model = pruner.configure_model(model)
    assert not list(named_mask_layers(model)) and not pruner.adds_masks  # dense until pruning ends
    parameters = {id(p) for p in model.parameters()}
    convs = {
        name: module for name, module in model.named_modules() if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d))
    }
    norms = {name: filter_norms(conv) for name, conv in convs.items() if not getattr(conv, "unprunable", False)}

    model = pruner.on_pruning_end(model)
    layers = dict(named_mask_layers(model))
    assert set(layers) == set(norms) and pruner.finished and pruner.adds_masks
    for name, mask in layers.items():
        assert isinstance(mask, ChannelMask)
        k = num_kept_channels(norms[name].numel(), 0.75, 2)
        assert mask.k == k
        expected = set(torch.topk(norms[name], k).indices.tolist())
        assert set(torch.nonzero(mask.mask).flatten().tolist()) == expected, name
    assert {id(p) for p in model.parameters()} == parameters  # hard masks add no parameters


def test_shared_masks_rank_channels_by_the_summed_norms_of_their_convs():
    torch.manual_seed(0)
    left, right = nn.Conv2d(3, 6, 1, bias=False), nn.Conv2d(3, 6, 1, bias=False)
    with torch.no_grad():
        left.weight.copy_(torch.tensor([6.0, 5, 4, 3, 2, 1]).reshape(6, 1, 1, 1).expand(6, 3, 1, 1))
        right.weight.copy_(torch.tensor([0.0, 0, 0, 10, 10, 0]).reshape(6, 1, 1, 1).expand(6, 3, 1, 1))
    model = nn.ModuleDict({"left": left, "right": right})
    acosp.inject.inject_soft_masks(model, 0.5, min_remaining_elements=1, groups=[["left", "right"]])
    acosp.inject.soft_to_hard_k(model, selection="l1")
    assert model["left"].mask_layer is model["right"].mask_layer
    # summed per channel: 18, 15, 12, 39, 36, 3 (times 3 inputs): channels 3, 4 and 0
    assert torch.nonzero(model["left"].mask_layer.mask).flatten().tolist() == [0, 3, 4]


def test_l1_selection_rounds_k_up_and_rejects_unknown_selections():
    model = acosp.inject.inject_soft_masks(nn.Sequential(nn.Conv2d(3, 10, 1)), 0.9, min_remaining_elements=1)
    hard = acosp.inject.soft_to_hard_k(model, round_to=4, selection="l1")
    assert hard[0].mask_layer.k == 4
    with pytest.raises(ValueError, match="selection must be logits or l1, got 'l2'"):
        acosp.inject.soft_to_hard_k(model, selection="l2")
    with pytest.raises(ValueError, match="selection must be one of logits, l1"):
        SoftTopKPruner(selection="random")


def test_an_l1_pruner_survives_a_checkpoint_before_and_after_pruning_ends():
    pruner = SoftTopKPruner(final_sparsity=0.5, selection="l1")
    state = pruner.state_dict()
    assert state["selection"] == "l1" and state["active"]
    restored = SoftTopKPruner()
    restored.load_state_dict(state)
    assert restored.selection == "l1" and not restored.adds_masks
    model = SoftTopKPruner(**{**state, "active": False, "finished": True}).configure_model(SmallCNN())
    assert all(isinstance(m.mask_layer, ChannelMask) for m in model.modules() if isinstance(m, MaskedConv))
    old = dict(state)
    del old["selection"]  # a checkpoint of an earlier version
    restored.load_state_dict(old)
    assert restored.selection == "logits"
