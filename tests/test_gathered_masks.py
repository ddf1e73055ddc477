"""Gathered masks: a conv whose output channels are, one by one, channels of another group's mask (GhostNet's
shortcut convs, added to a concatenation of two convs that share one mask) takes that mask at those channels,
so that the sum narrows as much as the convs do."""

import pytest
import torch
from test_compress import random_batch_norm
from torch import nn

import acosp.inject
from acosp.compress import compress, coupled_groups, gathered_masks, mask_constraints, model_statistics
from acosp.inject import MaskedConv, inject_soft_masks, named_mask_layers, prepare_for_state_dict
from acosp.masks import ChannelMask, GatheredMask, SigmoidSoftTopK
from acosp.pruner import SoftTopKPruner
from acosp.stats import mask_statistics


def conv_bn(cin, cout, kernel=1, groups=1):
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=kernel // 2, groups=groups), nn.BatchNorm2d(cout))


class Ghost(nn.Module):
    """Half the channels from a conv, the other half from a depthwise conv of those: GhostNet's module."""

    def __init__(self, cin, cout):
        super().__init__()
        self.primary = conv_bn(cin, cout // 2)
        self.cheap = conv_bn(cout // 2, cout // 2, 3, groups=cout // 2)

    def forward(self, x):
        x = torch.relu(self.primary(x))
        return torch.cat([x, torch.relu(self.cheap(x))], 1)


class GhostBlock(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.ghost = Ghost(cin, cout)
        self.shortcut = conv_bn(cin, cout) if cin != cout else nn.Identity()

    def forward(self, x):
        return self.ghost(x) + self.shortcut(x)


def ghost_network():
    return nn.Sequential(conv_bn(3, 8), nn.ReLU(), GhostBlock(8, 16), GhostBlock(16, 16), nn.Conv2d(16, 4, 1))


X = torch.randn(2, 3, 12, 12)
HALF = list(range(8))


def test_a_shortcut_added_to_a_ghost_concatenation_gathers_the_mask_of_both_halves():
    model = ghost_network()
    assert gathered_masks(model, X) == {"2.shortcut.0": ("2.ghost.primary.0", HALF + HALF)}
    groups, _, gathered = mask_constraints(model, X, gathered=True)
    assert ["2.ghost.primary.0", "2.ghost.cheap.0", "3.ghost.primary.0", "3.ghost.cheap.0"] in groups
    assert all("2.shortcut.0" not in group for group in groups) and gathered == gathered_masks(model, X)
    assert ["2.shortcut.0"] not in coupled_groups(model, X)  # as before: a group of one is no group


def coupled(sparsity=0.5, seed=0):
    torch.manual_seed(seed)
    pruner = SoftTopKPruner(final_sparsity=sparsity, min_remaining_elements=1, coupled_masks=True)
    return pruner.configure_model(random_batch_norm(ghost_network()), X), pruner


def test_the_gathered_mask_trains_the_logits_of_its_source():
    model, _ = coupled()
    shortcut = model[2].shortcut[0]
    source = model[2].ghost.primary[0].mask_layer
    assert isinstance(shortcut.mask_layer, GatheredMask) and shortcut.mask_layer.source is source
    assert torch.equal(shortcut.mask_layer.channel_scale(), torch.cat([source.channel_scale()] * 2))
    model.train()
    model(X).square().mean().backward()
    gradient = source.weight.grad.clone()
    source.weight.grad = None
    model[2].shortcut[0].mask_layer.channel_scale().sum().backward()  # the shortcut's share reaches the logits
    assert source.weight.grad.abs().sum() > 0 and gradient.abs().sum() > 0
    soft = {id(mask) for _, mask in named_mask_layers(model) if isinstance(mask, SigmoidSoftTopK)}
    assert len(soft) == 3  # the stem's, the stream's (four convs and the shortcut's gather), the last conv's
    assert "acosp/layer/2.shortcut.0/kept_channels" in mask_statistics(model)


def test_hardening_keeps_the_gather_and_the_stream_narrows_as_much_as_the_convs():
    model, _ = coupled()
    model = acosp.inject.soft_to_hard_k(model).eval()
    shortcut, source = model[2].shortcut[0].mask_layer, model[2].ghost.primary[0].mask_layer
    assert isinstance(source, ChannelMask) and shortcut.source is source
    assert torch.equal(shortcut.mask, torch.cat([source.mask] * 2)) and shortcut.k == 2 * source.k == 8
    small = compress(model, X)
    assert torch.allclose(small(X), model(X), atol=1e-5)
    assert small[4].in_channels == 8  # the stream: half of 16, as each of its convs keeps
    assert small[2].shortcut[0].out_channels == 8 and getattr(small[2].shortcut[0], "out_width", None) is None


def test_without_the_gather_the_stream_keeps_the_union_of_two_masks():
    torch.manual_seed(0)
    model = random_batch_norm(ghost_network())
    groups, balanced, _ = mask_constraints(model, X, gathered=True)
    model = inject_soft_masks(model, 0.5, min_remaining_elements=1, groups=groups, channel_groups=balanced)
    model = acosp.inject.soft_to_hard_k(model).eval()
    small = compress(model, X)
    assert small[4].in_channels > 8
    gathered, _ = coupled()
    gathered = compress(acosp.inject.soft_to_hard_k(gathered).eval(), X)
    assert model_statistics(gathered, X)["macs"] < model_statistics(small, X)["macs"]


def test_a_hardened_checkpoint_loads_into_a_freshly_configured_network():
    model, _ = coupled(seed=0)
    model = acosp.inject.soft_to_hard_k(model).eval()
    state = model.state_dict()
    assert "2.shortcut.0.1.index" in state
    fresh, _ = coupled(seed=1)
    fresh = prepare_for_state_dict(fresh, state)
    fresh.load_state_dict(state)
    fresh.eval()
    assert isinstance(fresh[2].shortcut[0].mask_layer.source, ChannelMask)
    assert fresh[2].shortcut[0].mask_layer.source is fresh[2].ghost.primary[0].mask_layer
    assert torch.equal(fresh(X), model(X))


def test_l1_selection_counts_the_gathered_convs_filters_for_the_source_channels():
    model, _ = coupled()
    with torch.no_grad():  # channel 3: no filter in the group's own convs, the largest in the shortcut
        for block in model[2:4]:
            block.ghost.primary[0].conv.weight[3] = 0.0
            block.ghost.cheap[0].conv.weight[3] = 0.0
        model[2].shortcut[0].conv.weight[[3, 11]] = 100.0
    hard = acosp.inject.soft_to_hard_k(model, selection="l1")
    assert hard[2].ghost.primary[0].mask_layer.mask[3] == 1
    assert isinstance(hard[2].shortcut[0].mask_layer, GatheredMask)
    assert isinstance(acosp.hard_to_conv(hard)[2].shortcut[0], nn.Conv2d)  # folds the gathered mask too


@pytest.mark.parametrize(
    "gathered, message",
    [
        ({"2.shortcut.0": ("2.ghost.primary.0", HALF)}, "needs 16 indices into the 8 channels"),
        ({"2.shortcut.0": ("2.ghost.primary.0", HALF + [0] * 7 + [8])}, "needs 16 indices"),
        ({"2.shortcut.0": ("2.nothing", HALF + HALF)}, "has no layer '2.nothing'"),
        ({"2.ghost.primary.0": ("0.0", HALF), "0.0": ("2.shortcut.0", HALF)}, "has a gathered mask itself"),
    ],
)
def test_bad_gathered_masks_are_named(gathered, message):
    with pytest.raises(ValueError, match=message):
        inject_soft_masks(ghost_network(), 0.5, gathered=gathered)


def test_a_conv_in_a_mask_group_cannot_have_its_mask_gathered():
    groups = [["2.shortcut.0"]]
    with pytest.raises(ValueError, match="'2.shortcut.0' is in a mask group"):
        inject_soft_masks(ghost_network(), 0.5, groups=groups, gathered={"2.shortcut.0": ("0.0", HALF + HALF)})


def test_masked_convs_hold_the_gathered_mask_as_their_mask_layer():
    model, _ = coupled()
    masked = [name for name, module in model.named_modules() if isinstance(module, MaskedConv)]
    assert "2.shortcut.0" in masked and len(masked) == 7


class Shuffled(nn.Module):
    """ShuffleNetV2's unit: half the channels pass, the other half through convs, then a channel shuffle."""

    def __init__(self, channels):
        super().__init__()
        self.branch = nn.Sequential(conv_bn(channels // 2, channels // 2), nn.ReLU())

    def forward(self, x):
        passed, branch = x.chunk(2, dim=1)
        x = torch.cat([passed, self.branch(branch)], 1)
        batch, channels, height, width = x.shape
        return x.view(batch, 2, channels // 2, height, width).transpose(1, 2).reshape(batch, channels, height, width)


def test_a_channel_shuffle_gathers_no_mask():
    """Through a shuffle's view the channels of each of its groups are tied: not copies of another mask's channels."""
    model = nn.Sequential(conv_bn(3, 16), nn.ReLU(), Shuffled(16), Shuffled(16), Shuffled(16), nn.Conv2d(16, 4, 1))
    assert gathered_masks(model, X) == {}
    torch.manual_seed(0)
    pruner = SoftTopKPruner(final_sparsity=0.75, min_remaining_elements=1, coupled_masks=True)
    model = acosp.inject.soft_to_hard_k(pruner.configure_model(random_batch_norm(model), X)).eval()
    assert torch.allclose(compress(model, X)(X), model(X), atol=1e-5)
