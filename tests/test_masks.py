import pytest
import torch

from acosp.masks import ChannelMask, SigmoidSoftTopK, num_kept_channels, sigmoid_soft_top_k


@pytest.mark.parametrize("channels", [2, 3, 7, 16, 64, 100, 512, 2048])
@pytest.mark.parametrize("tau", [10.0, 1.0, 0.1, 1e-3, 1e-5])
def test_exactly_k_entries_above_one_half(channels, tau):
    generator = torch.Generator().manual_seed(channels)
    for k in sorted({1, channels // 4 or 1, channels // 2 or 1, channels - 1 or 1}):
        logits = torch.randn(channels, generator=generator) * 5
        mask, x0 = sigmoid_soft_top_k(logits, k, tau)
        assert int((mask > 0.5).sum()) == k, (channels, k, tau)
        assert mask.shape == (channels,)
        assert torch.equal(mask > 0.5, logits > logits.sort().values[channels - k - 1])
        assert torch.isfinite(x0)


def test_threshold_is_the_linear_quantile_of_normalised_logits():
    logits = torch.randn(37)
    z = (logits - logits.mean()) / logits.std()
    _, x0 = sigmoid_soft_top_k(logits, 9, 1.0)
    assert torch.allclose(x0, torch.quantile(z, 1 - 9 / 37), atol=1e-6)
    assert not x0.requires_grad


def test_mask_formula_matches_the_paper():
    logits = torch.randn(20)
    z = (logits - logits.mean()) / logits.std()
    mask, x0 = sigmoid_soft_top_k(logits, 5, 0.3)
    assert torch.allclose(mask, torch.sigmoid((z - x0) / 0.3), atol=1e-6)


def test_near_constant_logits_are_normalised_by_at_least_min_std():
    logits = torch.arange(10.0) * 1e-6
    mask, _ = sigmoid_soft_top_k(logits, 5, 1.0)
    # With the std clamped at 1e-3 the normalised logits are tiny, so the mask stays near 0.5.
    assert torch.all((mask - 0.5).abs() < 0.01)
    assert int((mask > 0.5).sum()) == 5


def test_low_temperature_equals_hard_top_k():
    logits = torch.randn(64)
    mask, _ = sigmoid_soft_top_k(logits, 16, 1e-5)
    hard = torch.zeros(64)
    hard[logits.topk(16).indices] = 1
    assert torch.allclose(mask, hard, atol=1e-6)


def test_k_equal_to_channels_keeps_everything():
    logits = torch.randn(12, requires_grad=True)
    mask, x0 = sigmoid_soft_top_k(logits, 12, 0.5)
    assert torch.equal(mask, torch.ones(12))
    assert x0 == float("-inf")
    mask.sum().backward()  # still in the graph, with a zero gradient
    assert torch.equal(logits.grad, torch.zeros(12))


@pytest.mark.parametrize(
    ("channels", "sparsity", "minimum", "k"),
    [
        (64, 0.5, 8, 32),
        (64, 0.75, 8, 16),
        (64, 0.875, 8, 8),
        (64, 0.9375, 8, 8),
        (64, 0.9375, 0, 4),
        (10, 0.7, 0, 3),  # (1 - 0.7) * 10 is 3.0000000000000004 in floating point
        (10, 0.65, 0, 4),  # ceil(3.5)
        (2048, 0.9375, 8, 128),
        (4, 0.5, 8, 4),  # min_remaining_elements above the channel count keeps all
        (5, 0.0, 8, 5),
        (3, 0.99, 0, 1),
    ],
)
def test_k_rounding_and_minimum(channels, sparsity, minimum, k):
    assert num_kept_channels(channels, sparsity, minimum) == k


@pytest.mark.parametrize("sparsity", [-0.1, 1.0, 1.5])
def test_sparsity_outside_unit_interval_is_rejected(sparsity):
    with pytest.raises(ValueError, match="sparsity"):
        num_kept_channels(10, sparsity)


def test_bad_mask_arguments_are_rejected():
    with pytest.raises(ValueError, match="k must lie"):
        sigmoid_soft_top_k(torch.randn(4), 5, 1.0)
    with pytest.raises(ValueError, match="temperature"):
        sigmoid_soft_top_k(torch.randn(4), 2, 0.0)
    with pytest.raises(ValueError, match="1-D"):
        sigmoid_soft_top_k(torch.randn(2, 4), 2, 1.0)


def test_gradients_reach_the_logits():
    layer = SigmoidSoftTopK(16, 4)
    x = torch.randn(2, 16, 3, 3)
    (layer(x) * torch.randn_like(x)).sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0


def test_soft_layer_keeps_a_detached_current_mask_buffer():
    layer = SigmoidSoftTopK(16, 4)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(16))
    layer(torch.randn(1, 16, 2, 2)).sum().backward()
    assert not layer.mask.requires_grad and layer.mask.grad_fn is None
    assert torch.equal(layer.mask, layer.compute_mask()[0].detach())


def test_set_temperature_refreshes_the_mask():
    layer = SigmoidSoftTopK(32, 8)
    with torch.no_grad():
        layer.weight.copy_(torch.randperm(32, generator=torch.Generator().manual_seed(0)).float())
    layer.set_temperature(1e-4)
    assert float(layer.temperature) == pytest.approx(1e-4)
    assert torch.allclose(layer.mask, layer.mask.round(), atol=1e-6)
    assert int(layer.mask.round().sum()) == 8
    with pytest.raises(ValueError, match="temperature"):
        layer.set_temperature(-1.0)


def test_fixed_logits_are_a_buffer_with_the_same_key():
    layer = SigmoidSoftTopK(8, 2, learnable_weights=False)
    assert list(layer.parameters()) == []
    assert set(layer.state_dict()) == {"weight", "mask", "temperature"}


def test_hard_mask_from_soft_keeps_top_k_logits():
    soft = SigmoidSoftTopK(20, 6)
    hard = ChannelMask.from_soft(soft)
    assert hard.k == 6 and hard.num_channels == 20
    assert torch.equal(hard.mask.nonzero().flatten().sort().values, soft.weight.topk(6).indices.sort().values)
    assert set(hard.state_dict()) == {"mask"}


def test_mask_follows_the_activation_dtype_under_autocast():
    layer = SigmoidSoftTopK(8, 2)
    x = torch.randn(2, 8, 4, 4, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(x).dtype == torch.bfloat16
        assert ChannelMask.from_soft(layer)(x).dtype == torch.bfloat16
