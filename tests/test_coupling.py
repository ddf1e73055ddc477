"""Coupled masks: convs whose outputs are combined channel by channel share one mask."""

import pytest
import torch
from torch import nn

from acosp.compress import compress, compression_report, coupled_groups, relative_error, shared_mask_groups
from acosp.inject import MaskedConv, inject_soft_masks, named_mask_layers, soft_to_hard_k
from acosp.masks import ChannelMask
from acosp.pruner import SoftTopKPruner
from semseg.models import build_model


class Branches(nn.Module):
    """A sum of two convs, a product of two more, and a concatenation of two that must stay apart."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.left, self.right = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 1)
        self.gate, self.value = nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 1)
        self.up, self.down = nn.Conv2d(8, 4, 1), nn.Conv2d(8, 4, 1)
        self.norm = nn.BatchNorm2d(8)
        self.head = nn.Conv2d(16, 2, 1)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        summed = torch.relu(self.norm(self.left(x)) + self.right(x))
        gated = torch.sigmoid(self.gate(summed)) * self.value(summed)
        return self.head(torch.cat([gated, self.up(summed), self.down(summed)], 1))


def test_sums_and_products_couple_convs_and_concatenations_do_not():
    groups = coupled_groups(Branches(), torch.randn(2, 3, 8, 8))
    assert sorted(map(sorted, groups)) == [["gate", "value"], ["left", "right"]]


class GhostStream(nn.Module):
    """GhostNet's modules: a conv and a depthwise conv of it, concatenated. One starts the stream, two
    more add to it."""

    def __init__(self):
        super().__init__()
        self.primary0, self.cheap0 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.primary1, self.cheap1 = nn.Conv2d(16, 8, 1), nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.primary2, self.cheap2 = nn.Conv2d(16, 8, 1), nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.head = nn.Conv2d(16, 2, 1)

    def forward(self, x):
        for number, (primary, cheap) in enumerate(
            ((self.primary0, self.cheap0), (self.primary1, self.cheap1), (self.primary2, self.cheap2))
        ):
            y = primary(x)
            y = torch.cat([y, cheap(y)], 1)
            x = y if number == 0 else x + y
        return self.head(x)


def test_convs_at_the_same_place_of_concatenations_summed_into_one_stream_share_a_mask():
    """Channel j < 8 of the stream is channel j of every module's first conv, and of its depthwise conv."""
    x = torch.randn(2, 3, 8, 8)
    names = ["primary0", "cheap0", "primary1", "cheap1", "primary2", "cheap2"]
    assert coupled_groups(GhostStream(), x) == [names]
    torch.manual_seed(0)
    pruner = SoftTopKPruner(final_sparsity=0.75, min_remaining_elements=1, coupled_masks=True)
    model = soft_to_hard_k(pruner.configure_model(GhostStream(), x)).eval()
    small = compress(model, x)
    assert relative_error(model(x), small(x)) < 1e-5
    assert small.head.in_channels == 4  # 2 of 8 in each half of the stream, as the shared mask keeps


@pytest.mark.parametrize(
    "arch, size, expected",
    [
        (
            {"arch": "resnet18", "classes": 10},
            32,
            [
                ["conv1", "layer1.0.conv2", "layer1.1.conv2"],
                ["layer2.0.downsample.0", "layer2.0.conv2", "layer2.1.conv2"],
                ["layer3.0.downsample.0", "layer3.0.conv2", "layer3.1.conv2"],
                ["layer4.0.downsample.0", "layer4.0.conv2", "layer4.1.conv2"],
            ],
        ),
        (
            {"arch": "segnet", "classes": 5, "width": 0.125},
            32,
            [["enc1.1.0", "dec2.1.0"], ["enc2.1.0", "dec3.2.0"], ["enc3.2.0", "dec4.2.0"], ["enc4.2.0", "dec5.2.0"]],
        ),
    ],
)
def test_the_residual_stages_and_the_unpooling_pairs_of_the_networks(arch, size, expected):
    assert coupled_groups(build_model(arch), torch.randn(1, 3, size, size)) == expected


def test_pspnet50_couples_each_stages_downsample_and_conv3s():
    model = build_model({"arch": "psp", "layers": 50, "classes": 4})
    groups = coupled_groups(model, torch.randn(1, 3, 33, 33))
    blocks = {"layer1": 3, "layer2": 4, "layer3": 6, "layer4": 3}
    assert groups == [
        [f"{stage}.0.downsample.0"] + [f"{stage}.{block}.conv3" for block in range(count)]
        for stage, count in blocks.items()
    ]
    assert model.training  # the trace ran in eval mode and left the mode as it was


def coupled_resnet(sparsity=0.75, seed=0):
    torch.manual_seed(seed)
    model = build_model({"arch": "resnet18", "classes": 10, "width": 0.25})
    pruner = SoftTopKPruner(final_sparsity=sparsity, min_remaining_elements=2, coupled_masks=True)
    return pruner, pruner.configure_model(model, torch.randn(1, 3, 32, 32))


def test_a_group_trains_one_set_of_logits_and_hardens_to_one_mask():
    pruner, model = coupled_resnet()
    masks = dict(named_mask_layers(model))
    group = ["layer2.0.downsample.0", "layer2.0.conv2", "layer2.1.conv2"]
    assert masks[group[0]] is masks[group[1]] is masks[group[2]]
    assert sorted(shared_mask_groups(model)[1]) == sorted(group)
    assert masks["layer2.0.conv1"] is not masks["layer2.1.conv1"]
    logits = {id(mask.weight) for mask in masks.values()}
    assert len(logits) == len(masks) - 8  # four groups of three convs: 19 masked convs, 11 sets of logits
    assert logits <= {id(p) for p in model.parameters()}  # each once, for the optimizer

    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert masks[group[0]].weight.grad.abs().sum() > 0

    state = model.state_dict()
    assert torch.equal(state[f"{group[0]}.1.weight"], state[f"{group[2]}.1.weight"])
    model = pruner.on_pruning_end(model)
    hard = dict(named_mask_layers(model))
    assert isinstance(hard[group[0]], ChannelMask) and hard[group[0]] is hard[group[2]]
    assert int(hard[group[0]].mask.sum()) == 8  # k of a 32-channel stage (width 0.25) at 0.75

    # Saved per conv, so a network masked without coupling loads the checkpoint as it is.
    plain = SoftTopKPruner(final_sparsity=0.75, min_remaining_elements=2, finished=True)
    other = plain.configure_model(build_model({"arch": "resnet18", "classes": 10, "width": 0.25}))
    other.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(other.eval()(x), model.eval()(x))


def test_coupled_streams_compress_without_writing_into_wider_tensors():
    _, model = coupled_resnet(seed=1)
    model = soft_to_hard_k(model).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.bias.normal_()  # pruned channels carry a non-zero constant
                module.running_mean.normal_()
    x = torch.randn(2, 3, 32, 32)
    small = compress(model, x)
    assert "every layer keeps only its own channels" in compression_report(small)
    assert relative_error(model(x), small(x)) < 1e-5
    assert small.layer4[1].conv2.out_channels == 32 and small.fc.in_features == 32  # 128 channels at 0.75


def test_coupling_needs_an_example_input_and_a_plain_network():
    pruner = SoftTopKPruner(final_sparsity=0.5, coupled_masks=True)
    with pytest.raises(ValueError, match="example_input"):
        pruner.configure_model(build_model({"arch": "resnet18", "classes": 10, "width": 0.25}))
    psp = build_model({"arch": "psp", "layers": 50, "classes": 4})
    with pytest.raises(ValueError, match=r"failed on the example input \[\(1, 3, 32, 32\)\]"):
        coupled_groups(psp, torch.randn(1, 3, 32, 32))  # PSPNet wants (size - 1) divisible by 8
    _, masked = coupled_resnet()
    with pytest.raises(ValueError, match="has a mask already"):
        coupled_groups(masked, torch.randn(1, 3, 32, 32))


def test_the_pruner_state_keeps_coupling_and_old_states_load_without_it():
    pruner = SoftTopKPruner(final_sparsity=0.5, coupled_masks=True)
    restored = SoftTopKPruner()
    restored.load_state_dict(pruner.state_dict())
    assert restored.coupled_masks
    old = pruner.state_dict()
    del old["coupled_masks"]
    restored.load_state_dict(old)
    assert not restored.coupled_masks


@pytest.mark.parametrize(
    "groups, message",
    [
        ([["left", "nowhere"]], "no layer 'nowhere'"),
        ([["left", "norm"]], "'norm' is not a prunable conv"),
        ([["left", "up"]], "mixes output widths"),
        ([["left", "right"], ["right", "gate"]], "'right' is in mask groups 0 and 1"),
    ],
)
def test_bad_mask_groups_are_named(groups, message):
    with pytest.raises(ValueError, match=message):
        inject_soft_masks(Branches(), 0.5, groups=groups)


def test_hardening_keeps_a_mask_shared_by_its_group():
    model = inject_soft_masks(Branches(), 0.5, min_remaining_elements=1, groups=[["left", "right"]])
    model = soft_to_hard_k(model)
    assert isinstance(model.left, MaskedConv) and model.left.mask_layer is model.right.mask_layer


@pytest.mark.slow
def test_coupled_pspnet50_compresses_exactly_with_narrow_streams():
    torch.manual_seed(0)
    model = build_model({"arch": "psp", "layers": 50, "classes": 4})
    x = torch.randn(2, 3, 33, 33)
    pruner = SoftTopKPruner(final_sparsity=0.75, coupled_masks=True)
    model = pruner.on_pruning_end(pruner.configure_model(model, x)).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.bias.normal_()
    small = compress(model, x)
    assert "every layer keeps only its own channels" in compression_report(small)
    assert small.layer4[2].conv3.out_channels == small.layer4[0].downsample[0].out_channels == 512
    assert small.cls[0].in_channels == 512 + 4 * 128  # the stream and the pyramid's four branches
    assert relative_error(model(x), small(x)) < 1e-5
