"""Operations that mix channels or move the channel axis (ConvNeXt's LayerNorm, ECA, GRN): the tensors
they read keep their full width, so compression stays exact, and the report says where and why."""

import pytest
import torch
from test_compress import onnx_output, random_batch_norm
from torch import nn

from acosp.compress import (
    UnsupportedOperation,
    apply_compression_spec,
    compress,
    compression_report,
    compression_spec,
    relative_error,
)
from acosp.inject import inject_soft_masks, soft_to_hard_k


class ChannelsLastNorm(nn.Module):
    """ConvNeXt's block: a depthwise conv, the channels moved last for a LayerNorm and a linear layer."""

    def __init__(self, channels=16):
        super().__init__()
        self.dw = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
        self.norm = nn.LayerNorm(channels)
        self.mlp = nn.Linear(channels, channels)

    def forward(self, x):
        y = self.mlp(self.norm(self.dw(x).permute(0, 2, 3, 1)))
        return x + y.permute(0, 3, 1, 2)


class EfficientChannelAttention(nn.Module):
    """ECA: the pooled channels as a sequence, a 1-D conv across neighbours, a gate per channel."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(1, 1, 3, padding=1, bias=False)

    def forward(self, x):
        y = x.mean((2, 3)).view(x.shape[0], 1, -1)
        y = torch.sigmoid(self.conv(y)).view(x.shape[0], -1, 1, 1)
        return x * y.expand_as(x)


class GlobalResponseNorm(nn.Module):
    """ConvNeXt-V2's GRN: each channel's norm over space, divided by the mean over channels."""

    def forward(self, x):
        gx = x.norm(p=2, dim=(2, 3), keepdim=True)
        return x + x * gx / (gx.mean(dim=1, keepdim=True) + 1e-6)


class FunctionalNorm(nn.Module):
    """A layer of its own that calls F.group_norm and F.batch_norm with tensors it holds."""

    def __init__(self, channels=16):
        super().__init__()
        self.register_buffer("mean", torch.randn(channels) * 0.1)
        self.register_buffer("var", torch.rand(channels) + 0.5)

    def forward(self, x):
        x = nn.functional.group_norm(x, 4)
        return nn.functional.batch_norm(x, self.mean, self.var, training=False)


class BlurPool(nn.Module):
    """timm's anti-aliasing: a fixed blur of every channel, called as F.conv2d with a filter it holds."""

    def __init__(self, channels=16):
        super().__init__()
        blur = torch.tensor([1.0, 2.0, 1.0])
        self.register_buffer("filt", (blur[:, None] * blur[None, :] / 16).expand(channels, 1, 3, 3).clone())

    def forward(self, x):
        return nn.functional.conv2d(nn.functional.pad(x, (1, 1, 1, 1), mode="reflect"), self.filt, groups=16)


class SelectiveKernel(nn.Module):
    """SK-ResNet's attention over two branches, stacked in a new dimension before the channels."""

    def forward(self, x):
        branches = torch.stack([x, torch.tanh(x)], dim=1)
        attention = torch.softmax(branches.mean((3, 4), keepdim=True), dim=1)
        return (branches * attention).sum(1)


def masked(middle):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        middle,
        nn.Conv2d(16, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 4, 1),
    )
    random_batch_norm(model)
    inject_soft_masks(model, 0.5, min_remaining_elements=1)
    return soft_to_hard_k(model).eval()


@pytest.mark.parametrize(
    "middle, reason",
    [
        (
            ChannelsLastNorm(),
            "'layer_norm' (called in 3.norm) normalises with statistics or parameters of every channel",
        ),
        (EfficientChannelAttention(), "'view' (called in 3) reshapes (2, 16) to (2, 1, 16)"),
        (GlobalResponseNorm(), "'mean' (called in 3) reduces over channels or samples"),
        (FunctionalNorm(), "'group_norm' (called in 3) normalises with statistics or parameters of every channel"),
        (BlurPool(), "'conv2d' (called in 3) computes with weights of every channel"),
        (SelectiveKernel(), "'stack' (called in 3) stacks tensors in a new dimension before the channels"),
    ],
    ids=["channels-last-norm", "eca", "grn", "functional-norm", "blur-pool", "selective-kernel"],
)
def test_channel_mixing_keeps_its_input_whole_and_compression_exact(middle, reason):
    model = masked(middle)
    x = torch.randn(2, 3, 8, 8)
    compressed = compress(model, x)
    assert relative_error(model(x), compressed(x)) < 1e-5
    assert reason in compression_report(compressed)
    assert compressed[4].out_channels == 8  # the conv after the mixing narrows all the same


def test_tensors_stacked_in_a_dimension_after_the_channels_keep_them_apart():
    class Stacked(nn.Module):
        def forward(self, x):
            return torch.stack([x, torch.sigmoid(x)], dim=2).amax(2)

    model = masked(Stacked())
    x = torch.randn(2, 3, 8, 8)
    compressed = compress(model, x)
    assert relative_error(model(x), compressed(x)) < 1e-5
    assert "stack" not in compression_report(compressed)
    assert compressed[4].out_channels == 8  # the conv after it narrows


class SplitBySize(nn.Module):
    """CSPNet's split: a size written in the code, which does not follow a narrower tensor."""

    def forward(self, x):
        left, right = x.split(8, dim=1)
        return torch.cat([2 * left, right], 1)


class SliceBySize(nn.Module):
    """GhostNet's module: channels made two ways, concatenated, sliced to a width written in the code."""

    def forward(self, x):
        return torch.cat([x, torch.sigmoid(x)], 1)[:, :16]


@pytest.mark.parametrize("middle", [SplitBySize, SliceBySize])
def test_a_conv_reads_only_the_live_channels_of_a_tensor_kept_whole(middle):
    model = masked(middle())
    x = torch.randn(2, 3, 8, 8)
    compressed = compress(model, x)
    conv = compressed[4]  # a padded 3x3 conv: the constants it leaves out are folded, borders included
    assert (conv.in_width, conv.in_channels, conv.out_channels) == (16, 8, 8)
    assert relative_error(model(x), compressed(x)) < 1e-5
    assert "4: reads 8 of the 16 channels it receives" in compression_report(compressed)
    rebuilt = apply_compression_spec(masked(middle()), compression_spec(compressed))
    rebuilt.load_state_dict(compressed.state_dict())  # strict: the index of the channels read comes with it
    with torch.no_grad():
        assert torch.equal(rebuilt(x), compressed(x))


class GhostModule(nn.Module):
    """GhostNet's module where the concatenation has exactly the width the slice names: the slice takes
    every channel, of the narrower tensor too."""

    def __init__(self, stop=16):
        super().__init__()
        self.primary = nn.Conv2d(16, 8, 1)
        self.cheap = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.stop = stop

    def forward(self, x):
        x1 = self.primary(x)
        x = torch.cat([x1, self.cheap(x1)], 1)
        if self.stop is None:
            return x
        return x[:, : self.stop] if self.stop > 0 else x[:, self.stop :]


@pytest.mark.parametrize("stop", [16, 99, -16])
def test_a_slice_that_takes_every_channel_narrows_with_its_tensor(stop):
    model = masked(GhostModule(stop))
    x = torch.randn(2, 3, 8, 8)
    compressed = compress(model, x)
    unsliced = compress(masked(GhostModule(None)), x)  # the same network without the slice
    assert compressed[4].in_channels == unsliced[4].in_channels < 16
    assert getattr(compressed[4], "in_width", None) is None  # a narrower tensor, not a gather from a whole one
    assert relative_error(model(x), compressed(x)) < 1e-5
    assert "slices channels" not in compression_report(compressed)


def test_a_conv_reads_a_tensor_whole_where_few_of_its_channels_are_constants():
    model = masked(SplitBySize())
    model[0][1].mask[:] = 1.0  # the stem keeps every channel: nothing to leave out
    model[0][1].mask[0] = 0.0  # but one, too few to be worth a gather
    compressed = compress(model, torch.randn(2, 3, 8, 8))
    assert compressed[4].in_channels == 16 and getattr(compressed[4], "in_width", None) is None


class Cumulative(nn.Module):
    def forward(self, x):
        return torch.cumsum(x, 1)


def test_a_function_compression_does_not_know_is_still_refused_by_name():
    model = masked(Cumulative())
    with pytest.raises(UnsupportedOperation, match="'cumsum' .* is not an operation compression knows"):
        compress(model, torch.randn(2, 3, 8, 8))


@pytest.mark.slow
def test_a_conv_that_reads_some_channels_exports_to_onnx(tmp_path):
    x = torch.randn(1, 3, 8, 8)
    compressed = compress(masked(SplitBySize()), x)
    assert compressed[4].in_width == 16
    with torch.no_grad():
        assert relative_error(compressed(x), onnx_output(compressed, x, tmp_path / "split.onnx")) < 1e-4
