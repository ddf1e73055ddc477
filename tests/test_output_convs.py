"""The convs that compute a network's output channels (its classes) are found, and stay whole when marked."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import acosp
from acosp.compress import compress, output_convs, relative_error
from acosp.inject import MaskedConv, named_mask_layers, soft_to_hard_k


class Segmenter(nn.Module):
    """LRASPP's two classifiers summed and upsampled, and an auxiliary classifier as a second output."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.norm = nn.BatchNorm2d(8)
        self.low, self.high, self.aux = nn.Conv2d(8, 5, 1), nn.Conv2d(8, 5, 3, padding=1), nn.Conv2d(8, 5, 1)

    def forward(self, x):
        features = torch.relu(self.norm(self.stem(x)))
        out = F.interpolate(self.low(features) + self.high(features), size=x.shape[-2:], mode="bilinear")
        return {"out": out, "aux": self.aux(features)}


class StandardisedConv(nn.Conv2d):
    """NFNet's conv: it computes its filters in its own forward and calls F.conv2d."""

    def forward(self, x):
        weight = (self.weight - self.weight.mean((1, 2, 3), keepdim=True)) / (self.weight.std((1, 2, 3), keepdim=True))
        return F.conv2d(x, weight, self.bias, self.stride, self.padding)


class FunctionalLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(3, 8))

    def forward(self, x):
        return F.linear(x, self.weight)


def classifier(head: nn.Module) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), head)


@pytest.mark.parametrize(
    "network, expected",
    [
        (Segmenter(), ["low", "high", "aux"]),
        (classifier(nn.Sequential(nn.Conv2d(8, 3, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())), ["3.0"]),
        (classifier(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))), []),
        (classifier(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), FunctionalLinear())), []),
        (classifier(StandardisedConv(8, 3, 1)), ["3"]),
    ],
    ids=["segmenter", "conv-head", "linear-head", "functional-linear-head", "standardised-conv-head"],
)
def test_the_convs_whose_channels_reach_the_output_through_no_other_layer(network, expected):
    assert output_convs(network, torch.randn(2, 3, 16, 16)) == expected


def test_marked_output_convs_stay_whole_through_pruning_and_compression():
    torch.manual_seed(0)
    network, x = Segmenter().eval(), torch.randn(2, 3, 16, 16)
    assert acosp.unprunable_outputs(network, x) == ["low", "high", "aux"]
    pruner = acosp.SoftTopKPruner(final_sparsity=0.5, min_remaining_elements=1, coupled_masks=True)
    network = soft_to_hard_k(pruner.configure_model(network, x)).eval()
    assert [name for name, _ in named_mask_layers(network)] == ["stem"]
    compressed = compress(network, x)
    assert compressed.low.out_channels == compressed.high.out_channels == compressed.aux.out_channels == 5
    assert compressed.stem.out_channels == 4
    expected, got = network(x), compressed(x)
    assert relative_error(expected["out"], got["out"]) < 1e-5 and relative_error(expected["aux"], got["aux"]) < 1e-5


def test_output_convs_are_found_on_the_unmasked_network_with_an_input_it_accepts():
    network = Segmenter()
    network.stem = MaskedConv(network.stem, acosp.SigmoidSoftTopK(8, 4))
    with pytest.raises(ValueError, match="output convs are chosen on the network before it is masked, but 'stem'"):
        output_convs(network, torch.randn(2, 3, 16, 16))
    with pytest.raises(ValueError, match=r"output convs: the network failed on the example input \[\(2, 5, 16, 16\)\]"):
        output_convs(Segmenter(), torch.randn(2, 5, 16, 16))
