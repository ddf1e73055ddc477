"""Layers other libraries write: a BatchNorm subclass with its own forward (timm's BatchNormAct2d), a Linear
subclass that casts its weight (timm's Linear), convs that compute their filters or pad as TensorFlow does.
Compression narrows them and keeps what they compute."""

import math

import pytest
import torch
from torch import nn

import acosp.inject
from acosp.compress import apply_compression_spec, compress, compression_spec, coupled_groups, model_statistics
from acosp.compression.layers import CompressedConv2d, SamePaddedConv2d
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


def hardened(network, coupled_input=None):
    """``network`` with BatchNorm statistics as after training and hard masks at sparsity 0.5, coupled on
    ``coupled_input`` when given."""
    torch.manual_seed(0)
    pruner = SoftTopKPruner(final_sparsity=0.5, min_remaining_elements=1, coupled_masks=coupled_input is not None)
    return acosp.inject.soft_to_hard_k(pruner.configure_model(randomized(network), coupled_input)).eval()


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


class TensorFlowSameConv(nn.Conv2d):
    """A conv that pads as TensorFlow's 'same' does, from the size of each input, then convolves unpadded: the
    strided convs of timm's ``tf_`` EfficientNets (its ``Conv2dSame``). A strided conv pads by the parity of the
    size, so no fixed padding computes it at every size."""

    def forward(self, x):
        padding = []
        for axis in (1, 0):  # F.pad takes the last dimension first
            size, stride = x.shape[2 + axis], self.stride[axis]
            reach = (self.kernel_size[axis] - 1) * self.dilation[axis] + 1
            total = max((math.ceil(size / stride) - 1) * stride + reach - size, 0)
            padding += [total // 2, total - total // 2]
        return nn.functional.conv2d(nn.functional.pad(x, padding), self.weight, self.bias, self.stride, 0,
                                    self.dilation, self.groups)  # fmt: skip


def tensorflow_network():
    return nn.Sequential(
        TensorFlowSameConv(3, 16, 3, stride=2),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        TensorFlowSameConv(16, 16, 5, stride=2, groups=16),  # depthwise, as in the EfficientNets
        nn.BatchNorm2d(16),
        nn.ReLU(),
        TensorFlowSameConv(16, 24, 3, stride=2, dilation=(1, 2)),  # reads the pruned channels' constants
        nn.BatchNorm2d(24),
        nn.ReLU(),
        nn.Conv2d(24, 4, 1),
    )


def test_convs_with_tensorflow_same_padding_narrow_and_stay_exact_at_every_size():
    model = hardened(tensorflow_network())
    small = compress(model, torch.randn(2, 3, 20, 20))
    convs = [m for m in small.modules() if isinstance(m, SamePaddedConv2d)]
    first, depthwise, last = ((c.in_channels, c.out_channels, c.groups) for c in convs)
    assert first == (3, 8, 1) and last[1:] == (12, 1)
    assert depthwise[0] == depthwise[1] == depthwise[2] == last[0] < 16  # the union of two masks, halves of 16
    assert isinstance(small[6], CompressedConv2d) and small[6].constant_input  # the constants fold, borders too
    for size in [(20, 20), (21, 23), (17, 18), (33, 30)]:  # odd and even: the padding differs
        x = torch.randn(2, 3, *size)
        assert torch.allclose(small(x), model(x), atol=1e-5), size
    x = torch.randn(2, 3, 20, 20)
    assert model_statistics(small, x)["macs"] < model_statistics(model, x, as_compressed=False)["macs"] / 2
    rebuilt = apply_compression_spec(tensorflow_network(), compression_spec(small))
    rebuilt.load_state_dict(small.state_dict())
    x = torch.randn(2, 3, 19, 22)
    assert torch.allclose(rebuilt.eval()(x), small(x), atol=1e-6)


def test_a_same_padded_conv_refuses_a_padding_of_its_own():
    with pytest.raises(ValueError, match="padding must be 0"):
        SamePaddedConv2d(3, 8, 3, padding=1)


def test_coupled_masks_tie_the_depthwise_conv_that_pads_as_tensorflow_does_to_the_conv_it_reads():
    """Channel c of a depthwise conv is computed from channel c alone: one mask serves both convs, so the depthwise
    conv keeps the channels it reads (it kept the union of two masks when its own forward hid the conv)."""
    x = torch.randn(2, 3, 20, 20)
    assert coupled_groups(tensorflow_network(), x) == [["0", "3"]]
    model = hardened(tensorflow_network(), x)
    small = compress(model, x)
    assert [m.out_channels for m in small.modules() if isinstance(m, SamePaddedConv2d)] == [8, 8, 12]
    assert torch.allclose(small(x), model(x), atol=1e-5)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # from inside torch.onnx
def test_a_compressed_network_with_same_padded_convs_exports_to_onnx(tmp_path):
    from test_compress import onnx_output

    model = hardened(tensorflow_network())
    x = torch.randn(2, 3, 21, 18)
    small = compress(model, x)
    assert torch.allclose(onnx_output(small, x, tmp_path / "same.onnx"), small(x), atol=1e-5)


class NeedsLargeInput(nn.Conv2d):
    """A conv subclass whose forward fails on small inputs: traced as it is, never frozen."""

    def forward(self, x):
        if x.shape[-1] < 16:
            raise RuntimeError("this layer needs inputs of 16 pixels or more")
        return super().forward(x)


def test_a_conv_subclass_that_fails_on_a_small_probe_is_traced_as_it_is():
    torch.manual_seed(0)
    model = nn.Sequential(NeedsLargeInput(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1))
    x = torch.randn(2, 3, 16, 16)
    pruner = SoftTopKPruner(final_sparsity=0.5, min_remaining_elements=1, coupled_masks=True)
    model = acosp.inject.soft_to_hard_k(pruner.configure_model(model, x)).eval()
    assert torch.allclose(compress(model, x)(x), model(x), atol=1e-5)


class LayerScale(nn.Module):
    """FastViT's layer scale: every channel times a parameter of its own, in the layer's own forward."""

    def __init__(self, channels):
        super().__init__()
        self.gamma = nn.Parameter(torch.rand(channels, 1, 1) + 0.5)

    def forward(self, x):
        return x * self.gamma


def scaled_network():
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        LayerScale(16),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.PReLU(16),
        nn.Conv2d(16, 16, 1),
        nn.GroupNorm(4, 16),  # normalises groups of channels: keeps its input whole
        nn.Conv2d(16, 4, 1),
    )


def test_layer_scales_and_prelu_narrow_in_place_and_group_norm_keeps_its_input_whole():
    model = hardened(scaled_network())
    x = torch.randn(2, 3, 10, 10)
    small = compress(model, x)
    assert torch.allclose(small(x), model(x), atol=1e-5)
    assert isinstance(small[3], LayerScale) and small[3].gamma.shape == (8, 1, 1)
    assert isinstance(small[6], nn.PReLU) and small[6].weight.shape == (8,) and small[6].num_parameters == 8
    assert small[8].num_channels == 16 and "group_norm" in compression_spec(small)["full_width"][0]
    rebuilt = apply_compression_spec(scaled_network(), compression_spec(small))
    rebuilt.load_state_dict(small.state_dict())
    assert torch.allclose(rebuilt.eval()(x), small(x), atol=1e-6)


def test_coupled_masks_see_a_layer_scale_as_one_layer():
    x = torch.randn(2, 3, 10, 10)
    model = hardened(scaled_network(), x)
    assert torch.allclose(compress(model, x)(x), model(x), atol=1e-5)


def test_an_instance_norm_narrows_with_the_width_it_checks_its_input_against():
    torch.manual_seed(0)
    layers = [nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.InstanceNorm2d(16, affine=True)]
    model = randomized(nn.Sequential(*layers, nn.Conv2d(16, 4, 3, padding=1)))
    with torch.no_grad():
        model[3].weight.uniform_(0.5, 2)
        model[3].bias.uniform_(-1, 1)
    model = acosp.inject.soft_to_hard_k(SoftTopKPruner(final_sparsity=0.5).configure_model(model)).eval()
    x = torch.randn(2, 3, 10, 10)
    small = compress(model, x)
    assert small[3].num_features == 8 and small[3].weight.shape == (8,)
    assert torch.allclose(small(x), model(x), atol=1e-5)
