"""Layers other libraries write: a BatchNorm subclass with its own forward (timm's BatchNormAct2d), a Linear
subclass that casts its weight (timm's Linear). Compression narrows them in place and keeps their forward."""

import torch
from torch import nn

import acosp.inject
from acosp.compress import apply_compression_spec, compress, compression_spec, model_statistics
from acosp.pruner import SoftTopKPruner


class BatchNormAct(nn.BatchNorm2d):
    """BatchNorm, then an activation, in one layer, as timm writes it (F.batch_norm in its own forward)."""

    def forward(self, x):
        x = nn.functional.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, self.training, 0.1, self.eps
        )
        return nn.functional.silu(x)


class CastingLinear(nn.Linear):
    def forward(self, x):
        return nn.functional.linear(x, self.weight.to(x.dtype), self.bias.to(x.dtype))


def network():
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        BatchNormAct(16),
        nn.Conv2d(16, 32, 3, padding=1, stride=2),
        BatchNormAct(32),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        CastingLinear(32, 5),
    )


def randomized(model):
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2)
                module.weight.uniform_(0.5, 2)
                module.bias.uniform_(-1, 1)
    return model


def test_a_batchnorm_subclass_with_an_activation_is_narrowed_in_place_and_keeps_its_activation():
    torch.manual_seed(0)
    model = randomized(network())
    pruner = SoftTopKPruner(final_sparsity=0.5, min_remaining_elements=1)
    model = acosp.inject.soft_to_hard_k(pruner.configure_model(model)).eval()
    x = torch.randn(2, 3, 16, 16)
    small = compress(model, x)
    norms = [m for m in small.modules() if isinstance(m, BatchNormAct)]
    assert [n.num_features for n in norms] == [8, 16] and all(n.running_var.numel() == n.num_features for n in norms)
    assert torch.allclose(small(x), model(x), atol=1e-5)
    before = model_statistics(model, x, as_compressed=False)["parameters"]
    assert model_statistics(small, x)["parameters"] < before / 2
    # the spec rebuilds it from the plain network, the values come with the state dict
    rebuilt = apply_compression_spec(network(), compression_spec(small))
    rebuilt.load_state_dict(small.state_dict())
    assert torch.allclose(rebuilt.eval()(x), small(x), atol=1e-6)
    assert isinstance(rebuilt[1], BatchNormAct) and rebuilt[1].num_features == 8


class StdConv(nn.Conv2d):
    """A weight-standardised conv, as timm's NFNets use: the filters it applies are computed in forward."""

    def forward(self, x):
        mean = self.weight.mean(dim=(1, 2, 3), keepdim=True)
        std = self.weight.std(dim=(1, 2, 3), keepdim=True)
        return nn.functional.conv2d(x, (self.weight - mean) / (std + 1e-5), self.bias, self.stride, self.padding)


def test_convs_that_compute_their_filters_are_compressed_with_the_filters_they_compute():
    torch.manual_seed(0)

    def standardised():
        return nn.Sequential(StdConv(3, 16, 3, padding=1), nn.ReLU(), StdConv(16, 16, 3, padding=1), nn.ReLU(),
                             nn.Conv2d(16, 4, 1))  # fmt: skip

    model = standardised()
    pruner = SoftTopKPruner(final_sparsity=0.5, min_remaining_elements=1)
    model = acosp.inject.soft_to_hard_k(pruner.configure_model(model)).eval()
    x = torch.randn(2, 3, 12, 12)
    small = compress(model, x)
    assert torch.allclose(small(x), model(x), atol=1e-5)
    assert model_statistics(small, x)["macs"] < model_statistics(model, x, as_compressed=False)["macs"] / 2
    assert isinstance(model[0].conv, StdConv)  # the model itself is unchanged
    rebuilt = apply_compression_spec(standardised(), compression_spec(small))
    rebuilt.load_state_dict(small.state_dict())
    assert torch.allclose(rebuilt.eval()(x), small(x), atol=1e-6)
