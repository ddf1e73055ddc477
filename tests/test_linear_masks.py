"""Masked linear layers: the hidden features of an MLP (ConvNeXt's blocks, a squeeze-excitation written with
linear layers, a classifier's hidden layers) get masks over their last dimension, and compression removes
the features they prune, in the layer that computes them and in the one that reads them."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from acosp.compress import (
    apply_compression_spec,
    compress,
    compression_spec,
    maskable_linears,
    model_statistics,
    relative_error,
)
from acosp.inject import MaskedConv, hard_to_conv, inject_soft_masks, prepare_for_state_dict, soft_to_hard_k
from acosp.masks import ChannelMask, SigmoidSoftTopK
from acosp.pruner import SoftTopKPruner


class ChannelsLastBlock(nn.Module):
    """ConvNeXt's block: a depthwise conv, then LayerNorm and an MLP over channels moved last, scaled."""

    def __init__(self, dim):
        super().__init__()
        self.dw = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.fc2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim, 1, 1), 0.5))

    def forward(self, x):
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.fc2(F.gelu(self.fc1(self.norm(y)))).permute(0, 3, 1, 2)
        return x + self.gamma * y


class LinearExcitation(nn.Module):
    """A squeeze-excitation written with linear layers on the pooled (N, C) vector."""

    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        scale = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean((2, 3))))))
        return x * scale[:, :, None, None]


class Attention(nn.Module):
    """Features that heads reshape (qkv) and features added to the stream (proj): neither can leave."""

    def __init__(self, dim):
        super().__init__()
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        n, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        q, k, v = self.qkv(tokens).reshape(n, h * w, 3, 2, c // 2).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, h * w, c)
        return x + self.proj(out).transpose(1, 2).reshape(n, c, h, w)


class Network(nn.Module):
    def __init__(self, dim=32, classes=10):
        super().__init__()
        self.stem = nn.Conv2d(3, dim, 4, stride=4)
        self.blocks = nn.Sequential(ChannelsLastBlock(dim), ChannelsLastBlock(dim))
        self.excite = LinearExcitation(dim, 16)
        self.attention = Attention(dim)
        self.classifier = nn.Sequential(nn.Linear(dim, 64), nn.ReLU(), nn.Dropout(), nn.Linear(64, classes))

    def forward(self, x):
        x = self.attention(self.excite(self.blocks(self.stem(x))))
        return self.classifier(x.mean((2, 3)))


X = torch.randn(2, 3, 32, 32)
HIDDEN = ["blocks.0.fc1", "blocks.1.fc1", "excite.fc1", "classifier.0"]


def network():
    torch.manual_seed(0)
    return Network()


def trained_hard(model, sparsity=0.75, selection="logits"):
    """Configure, one training step with soft masks, harden: the network a pruning run ends with."""
    pruner = SoftTopKPruner(final_sparsity=sparsity, selection=selection)
    model = pruner.configure_model(model, X)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model(X).square().mean().backward()
    optimizer.step()
    return pruner.on_pruning_end(model).eval()


def test_the_hidden_features_of_mlps_are_maskable_and_nothing_else():
    assert maskable_linears(network(), X) == HIDDEN  # not fc2, qkv, proj, nor the classifier's output


def test_the_pruner_masks_the_maskable_linears_over_their_output_features():
    model = SoftTopKPruner(final_sparsity=0.75).configure_model(network(), X)
    masked = {name: module for name, module in model.named_modules() if isinstance(module, MaskedConv)}
    assert [name for name in masked if isinstance(masked[name].conv, nn.Linear)] == HIDDEN
    fc1 = masked["blocks.0.fc1"]
    assert isinstance(fc1.mask_layer, SigmoidSoftTopK) and fc1.mask_layer.num_channels == 128
    assert fc1.mask_layer.k == 32
    for rows in ((2, 5, 5), (2,)):  # the mask scales the last dimension (through the filters, or the output)
        x = torch.randn(*rows, 32)
        with torch.no_grad():
            y = fc1(x)
            torch.testing.assert_close(y, fc1.conv(x) * fc1.mask_layer.mask, rtol=1e-5, atol=1e-6)
        assert y.shape == (*rows, 128)


def test_no_linear_masks_without_an_example_input_or_when_turned_off():
    masked = SoftTopKPruner(final_sparsity=0.5).configure_model(network())
    assert not any(isinstance(module.conv, nn.Linear) for module in masked.modules() if isinstance(module, MaskedConv))
    masked = SoftTopKPruner(final_sparsity=0.5, linear_masks=False).configure_model(network(), X)
    assert not any(isinstance(module.conv, nn.Linear) for module in masked.modules() if isinstance(module, MaskedConv))


@pytest.mark.parametrize("selection", ["logits", "l1"])
def test_a_pruned_mlp_compresses_exactly_and_narrower(selection):
    model = trained_hard(network(), selection=selection)
    compressed = compress(model, X)
    with torch.no_grad():
        assert relative_error(model(X), compressed(X)) < 1e-5
    fc1, fc2 = compressed.blocks[0].fc1, compressed.blocks[0].fc2
    assert type(fc1) is nn.Linear and (fc1.in_features, fc1.out_features) == (32, 32)
    assert (fc2.in_features, fc2.out_features) == (32, 32)
    assert (compressed.excite.fc1.out_features, compressed.excite.fc2.in_features) == (8, 8)  # at least 8 stay
    assert (compressed.classifier[0].out_features, compressed.classifier[3].in_features) == (16, 16)
    assert compressed.attention.qkv.out_features == 96 and compressed.classifier[3].out_features == 10
    statistics = model_statistics(compressed, X)
    dense = model_statistics(network(), X)
    assert statistics["macs"] < 0.6 * dense["macs"]


def test_the_compression_spec_rebuilds_the_narrowed_linears():
    model = trained_hard(network())
    compressed = compress(model, X)
    spec = compression_spec(compressed)
    assert spec["layers"]["blocks.0.fc1"] == {
        "type": "Linear",
        "in_features": 32,
        "out_features": 32,
        "bias": True,
        "original_in_features": 32,
        "original_out_features": 128,
    }
    assert spec["kept_channels"]["blocks.0.fc1"] == [32, 128]
    rebuilt = apply_compression_spec(network(), spec)
    rebuilt.load_state_dict(compressed.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(X), compressed(X))


def test_hard_to_conv_folds_a_linear_mask_into_its_rows():
    model = trained_hard(network())
    with torch.no_grad():
        expected = model(X)
        mask = model.blocks[0].fc1.mask_layer.mask.clone()
    folded = hard_to_conv(model)
    assert type(folded.blocks[0].fc1) is nn.Linear
    assert torch.equal(folded.blocks[0].fc1.weight[mask == 0], torch.zeros(int((mask == 0).sum()), 32))
    with torch.no_grad():
        torch.testing.assert_close(folded(X), expected)


def test_a_hardened_checkpoint_with_linear_masks_loads_into_a_freshly_configured_network():
    state = trained_hard(network()).state_dict()
    fresh = SoftTopKPruner(final_sparsity=0.75).configure_model(network(), X)
    fresh = prepare_for_state_dict(fresh, state)
    fresh.load_state_dict(state)
    assert isinstance(fresh.blocks[0].fc1.mask_layer, ChannelMask)


def test_a_linear_mask_on_features_that_cannot_leave_still_compresses_exactly():
    """Masked by hand where the features meet the stream (fc2): they stay, computed as the zeros they are."""
    model = inject_soft_masks(network(), 0.5, linears=["blocks.0.fc2", "attention.qkv"])
    model = soft_to_hard_k(model).eval()
    compressed = compress(model, X)
    with torch.no_grad():
        assert relative_error(model(X), compressed(X)) < 1e-5
    assert compressed.blocks[0].fc2.out_features == 32


def test_linears_named_wrongly_are_refused_with_the_name():
    with pytest.raises(ValueError, match="no layer 'blocks.0.fc9'"):
        inject_soft_masks(network(), 0.5, linears=["blocks.0.fc9"])
    with pytest.raises(ValueError, match="'stem' is not a linear layer"):
        inject_soft_masks(network(), 0.5, linears=["stem"])


def test_network_code_reading_a_masked_linear_width_is_told_where_it_went():
    model = inject_soft_masks(network(), 0.5, linears=["excite.fc1"])
    with pytest.raises(AttributeError, match=r"read '.conv.out_features'"):
        _ = model.excite.fc1.out_features


def test_a_pruner_state_saved_before_linear_masks_existed_keeps_them_off():
    pruner = SoftTopKPruner()
    state = pruner.state_dict()
    assert state["linear_masks"] is True
    del state["linear_masks"]
    pruner.load_state_dict(state)
    assert pruner.linear_masks is False


def test_channels_moved_last_and_read_by_a_conv_stay_whole():
    """A permute that hands a conv channels-last data (the conv reads rows as channels): exact, nothing cut."""

    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(8, 8, 1), nn.Conv2d(10, 8, 1)

        def forward(self, x):
            return self.b(self.a(x).permute(0, 3, 2, 1))

    model = soft_to_hard_k(inject_soft_masks(Odd(), 0.5)).eval()
    x = torch.randn(2, 8, 6, 10)  # b reads the 10 columns as channels
    compressed = compress(model, x)
    with torch.no_grad():
        assert relative_error(model(x), compressed(x)) < 1e-5
    assert compressed.b.in_channels == 10


class ConvThenMLP(nn.Module):
    """A conv, then a LayerNorm and an MLP over channels moved last; subclasses say how they get there."""

    def __init__(self, dim=16):
        super().__init__()
        self.conv = nn.Conv2d(3, dim, 3, padding=1)
        self.norm = nn.LayerNorm(dim)
        self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)


class TokensBackToImage(ConvThenMLP):
    """EdgeNeXt's transposed attention block: tokens (N, HW, C) reshaped to (N, H, W, C), where the record
    loses the channels; then a LayerNorm and an MLP over the last dimension."""

    def forward(self, x):
        x = self.conv(x)
        n, c, h, w = x.shape
        tokens = x.reshape(n, c, h * w).permute(0, 2, 1)
        y = self.fc2(F.gelu(self.fc1(self.norm(tokens.reshape(n, h, w, c)))))
        return x + y.permute(0, 3, 1, 2)


def test_a_masked_mlp_after_a_reshape_that_loses_the_channels_reads_every_feature():
    torch.manual_seed(0)
    model = TokensBackToImage()
    x = torch.randn(2, 3, 5, 7)  # no size equals another
    assert maskable_linears(model, x) == ["fc1"]
    model = soft_to_hard_k(SoftTopKPruner(final_sparsity=0.75).configure_model(model, x)).eval()
    compressed = compress(model, x)
    with torch.no_grad():
        assert relative_error(model(x), compressed(x)) < 1e-5
    assert (compressed.fc1.in_features, compressed.fc1.out_features, compressed.fc2.in_features) == (16, 16, 16)


class GatedByPosition(ConvThenMLP):
    """Hidden features scaled by a value per position (a mean over the features, kept as a last dimension of 1)."""

    def forward(self, x):
        x = self.conv(x)
        z = self.norm(x.permute(0, 2, 3, 1))
        hidden = F.gelu(self.fc1(z)) * torch.sigmoid(z.mean(-1, keepdim=True))
        return x + self.fc2(hidden).permute(0, 3, 1, 2)


def test_hidden_features_scaled_by_a_value_per_position_compress_exactly():
    torch.manual_seed(0)
    model = soft_to_hard_k(inject_soft_masks(GatedByPosition(), 0.75, linears=["fc1"])).eval()
    x = torch.randn(2, 3, 5, 7)
    compressed = compress(model, x)  # strict: the broadcast is understood, not refused
    with torch.no_grad():
        assert relative_error(model(x), compressed(x)) < 1e-5
