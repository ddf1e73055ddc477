"""Grouped convs narrow group by group: masks keep channels evenly over the groups, compression follows."""

import copy

import pytest
import torch
from test_compress import random_batch_norm
from torch import nn

from acosp import mask_bank
from acosp.compress import balanced_groups, compress, model_statistics, relative_error
from acosp.inject import ChannelMask, inject_soft_masks, named_mask_layers, soft_to_hard_k
from acosp.masks import SigmoidSoftTopK, sigmoid_soft_top_k
from acosp.pruner import SoftTopKPruner


class GroupedBlock(nn.Module):
    """A ResNeXt bottleneck: 1x1, grouped 3x3, 1x1, added to its input."""

    def __init__(self, channels=16, width=32, groups=4):
        super().__init__()
        self.reduce = nn.Conv2d(channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.grouped = nn.Conv2d(width, width, 3, padding=1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.expand = nn.Conv2d(width, channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(channels)

    def forward(self, x):
        y = torch.relu(self.bn1(self.reduce(x)))
        y = torch.relu(self.bn2(self.grouped(y)))
        return torch.relu(x + self.bn3(self.expand(y)))


def grouped_network(groups=4):
    torch.manual_seed(0)
    network = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        GroupedBlock(groups=groups),
        GroupedBlock(groups=groups),
        nn.Conv2d(16, 5, 1),
    )
    return random_batch_norm(network)


def grouped_convs(network):
    return [m for m in network.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]


def test_a_grouped_mask_keeps_k_over_groups_in_every_group():
    logits = torch.randn(24)
    mask, x0 = sigmoid_soft_top_k(logits, 12, 0.5, groups=4)
    assert x0.shape == (4,)
    assert ((mask > 0.5).view(4, 6).sum(1) == 3).all()
    for group, row in enumerate(logits.view(4, 6)):  # each group is the top-k mask of its own logits
        alone, _ = sigmoid_soft_top_k(row, 3, 0.5)
        assert torch.allclose(mask.view(4, 6)[group], alone)
    with pytest.raises(ValueError, match="do not split evenly into 4 channel groups"):
        sigmoid_soft_top_k(logits, 10, 0.5, groups=4)


def test_the_hard_mask_of_a_grouped_mask_keeps_the_best_of_each_group():
    soft = SigmoidSoftTopK(12, 6, groups=3)
    with torch.no_grad():
        soft.weight.copy_(torch.tensor([9.0, 8, 7, 6, 0, 1, 2, 3, -1, -2, 5, 4]))
    hard = ChannelMask.from_soft(soft)
    assert hard.mask.tolist() == [1, 1, 0, 0, 0, 0, 1, 1, 0, 0, 1, 1]
    # round_to rounds k up first, then to a multiple of the groups: 7 -> 8 -> 9
    assert ChannelMask.from_soft(soft, round_to=4).k == 9
    assert "groups=3" in repr(soft)


def test_batched_rows_compute_grouped_masks_like_the_layer():
    masks = [SigmoidSoftTopK(24, 12, groups=4), SigmoidSoftTopK(10, 3), SigmoidSoftTopK(16, 8, groups=2)]
    for mask, tau in zip(masks, (0.3, 1.0, 0.05)):
        mask.set_temperature(tau)
    rows = mask_bank.soft_top_k_rows(masks)
    for mask, row in zip(masks, rows):
        assert torch.allclose(row, mask.compute_mask()[0], atol=1e-6)


def test_balanced_groups_finds_the_grouped_convs_and_their_feeders():
    network = grouped_network()
    found = balanced_groups(network, torch.randn(1, 3, 8, 8))
    assert found == {"3.reduce": 4, "3.grouped": 4, "4.reduce": 4, "4.grouped": 4}


@pytest.mark.parametrize("coupled", [False, True])
def test_balanced_masks_narrow_every_group_alike_and_compress_exactly(coupled):
    network = grouped_network()
    x = torch.randn(2, 3, 12, 12)
    pruner = SoftTopKPruner(final_sparsity=0.75, min_remaining_elements=1, coupled_masks=coupled)
    network = pruner.configure_model(network, torch.randn(1, 3, 12, 12))
    network(x).sum().backward()  # one training step's worth of the batched masks
    network = soft_to_hard_k(network).eval()
    for name, mask in named_mask_layers(network):
        if name.endswith(("reduce", "grouped")):
            assert (mask.mask.view(4, -1).sum(1) == 2).all(), name  # 8 of 32 kept: 2 per group
    compressed = compress(network, x)
    for conv in grouped_convs(compressed):
        assert (conv.in_channels, conv.out_channels, conv.groups) == (8, 8, 4)
    assert relative_error(network(x), compressed(x)) < 1e-5
    dense = model_statistics(grouped_network(), x)
    assert model_statistics(compressed, x)["macs"] < dense["macs"] / 3


def test_unbalanced_masks_still_compress_exactly_with_even_groups():
    """Masks chosen without regard to the groups: each surviving group reads and computes as many channels."""
    network = grouped_network()
    inject_soft_masks(network, 0.5, min_remaining_elements=1)
    network = soft_to_hard_k(network).eval()
    keep_grouped = torch.zeros(32)
    keep_grouped[[0, 1, 2, 3, 9, 17]] = 1.0  # group 3 computes nothing, group 0 four channels
    network[3].grouped[1].mask.copy_(keep_grouped)
    keep_reduce = torch.zeros(32)
    keep_reduce[[0, 8, 9, 10, 16]] = 1.0  # group 3 reads nothing
    network[3].reduce[1].mask.copy_(keep_reduce)
    x = torch.randn(2, 3, 12, 12)
    compressed = compress(network, x)
    conv = compressed[3].grouped.conv
    assert conv.groups == 3  # group 3 neither reads nor writes a channel: it is gone
    assert (conv.in_channels, conv.out_channels) == (9, 12)  # 3 inputs and 4 outputs in each
    assert relative_error(network(x), compressed(x)) < 1e-5


def _hardened_and_compressed(network: nn.Sequential):
    """Half of each conv's channels masked, hardened, compressed: (masked network, compressed, input)."""
    random_batch_norm(network)
    network = SoftTopKPruner(final_sparsity=0.5, min_remaining_elements=1).configure_model(
        network, torch.randn(1, 3, 6, 6)
    )
    network = soft_to_hard_k(network).eval()
    x = torch.randn(2, 3, 6, 6)
    return network, compress(copy.deepcopy(network), x), x


def test_depth_multiplier_convs_compress_exactly():
    torch.manual_seed(1)
    network, compressed, x = _hardened_and_compressed(
        nn.Sequential(
            nn.Conv2d(3, 8, 1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1, groups=8),
            nn.ReLU(),
            nn.Conv2d(16, 4, 1),
        )
    )
    conv = getattr(compressed[3], "conv", compressed[3])  # a plain conv, or one that folds constants
    # one of the two outputs of each group kept; every group survives and reads its one channel
    assert (conv.in_channels, conv.out_channels, conv.groups) == (8, 8, 8)
    assert relative_error(network(x), compressed(x)) < 1e-5


def test_batch_norms_after_depthwise_convs_fold_into_them():
    """A MobileNet block: the depthwise conv takes its BatchNorm into its filters, like a plain conv."""
    torch.manual_seed(2)
    network, compressed, x = _hardened_and_compressed(
        nn.Sequential(
            nn.Conv2d(3, 16, 1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 4, 1),
        )
    )
    assert not any(isinstance(module, nn.BatchNorm2d) for module in compressed.modules())
    depthwise = getattr(compressed[3], "conv", compressed[3])
    assert depthwise.groups == depthwise.out_channels < 16 and depthwise.bias is not None
    assert relative_error(network(x), compressed(x)) < 1e-5


def test_channel_groups_that_do_not_fit_are_refused():
    network = grouped_network()
    with pytest.raises(ValueError, match="no layer 'nothing'"):
        inject_soft_masks(copy.deepcopy(network), 0.5, channel_groups={"nothing": 2})
    with pytest.raises(ValueError, match="'3.reduce' has 32 channels, not 5 equal groups"):
        inject_soft_masks(copy.deepcopy(network), 0.5, channel_groups={"3.reduce": 5})


def test_l1_selection_keeps_the_largest_filters_of_each_group():
    network = grouped_network()
    pruner = SoftTopKPruner(final_sparsity=0.5, min_remaining_elements=1, selection="l1")
    network = pruner.configure_model(network, torch.randn(1, 3, 8, 8))
    network = pruner.on_pruning_end(network)
    grouped = network[3].grouped
    norms = grouped[0].weight.detach().abs().flatten(1).sum(1).view(4, 8)
    kept = grouped[1].mask.view(4, 8) > 0.5
    assert (kept.sum(1) == 4).all()
    assert torch.equal(kept, norms >= norms.topk(4, dim=1).values[:, -1:])


@pytest.mark.parametrize("sparsity, groups, kept", [(0.5, 16, 16), (0.75, 1, 8)])
def test_masks_over_many_small_groups_ignore_them_rather_than_keep_twice_the_channels(sparsity, groups, kept):
    """32 channels in 16 groups of 2: at 0.75 an even mask would keep one per group, 16 rather than 8."""
    torch.manual_seed(0)
    layers = [nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU()]
    layers += [nn.Conv2d(16, 32, 3, padding=1, groups=16), nn.BatchNorm2d(32), nn.ReLU(), nn.Conv2d(32, 4, 1)]
    network = random_batch_norm(nn.Sequential(*layers))
    model = inject_soft_masks(network, sparsity, min_remaining_elements=1, channel_groups={"3": 16})
    mask = model[3].mask_layer
    assert (mask.groups, mask.k) == (groups, kept)
    model = soft_to_hard_k(model).eval()
    x = torch.randn(2, 3, 8, 8)
    assert relative_error(model(x), compress(model, x)(x)) < 1e-5
