"""acosp.compress.model_statistics: parameters, MACs and kept channels, the same for masked and compressed networks."""

import pytest
import torch
from conftest import SmallCNN
from torch import nn

from acosp.compress import compress, format_comparison, format_model_statistics, model_statistics
from acosp.inject import UnprunableConv2d, soft_to_hard_k
from acosp.masks import ChannelMask
from acosp.pruner import SoftTopKPruner


def test_counts_of_a_plain_network_by_hand():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8 * 4 * 4, 2))
    stats = model_statistics(model, torch.randn(5, 3, 4, 4))
    conv = 8 * 3 * 9 * 16  # per sample: out channels x in channels x taps x positions
    assert stats["layers"]["0"]["macs"] == conv and stats["layers"]["3"]["macs"] == 128 * 2
    assert stats["macs"] == conv + 256
    assert stats["parameters"] == sum(p.numel() for p in model.parameters())
    assert (stats["kept_channels"], stats["channels"]) == (8, 8)


def test_a_masked_network_counts_as_its_compressed_copy():
    torch.manual_seed(0)
    model = SmallCNN()
    SoftTopKPruner(final_sparsity=0.75, min_remaining_elements=2).configure_model(model)
    x = torch.randn(2, 3, 8, 8)
    soft = model_statistics(model, x)  # soft masks count as their top-k
    model = soft_to_hard_k(model).eval()
    masked, compressed = model_statistics(model, x), model_statistics(compress(model, x), x)
    for key in ("parameters", "macs", "kept_channels", "channels"):
        assert masked[key] == compressed[key] == soft[key]
    assert (masked["kept_channels"], masked["channels"]) == (4 + 8 + 6, 16 + 32 + 24)
    assert masked["layers"]["features.3"]["kept"] == 8 and masked["layers"]["features.3"]["channels"] == 32
    as_run = model_statistics(model, x, as_compressed=False)
    assert as_run["macs"] > 4 * masked["macs"] and as_run["kept_channels"] == masked["kept_channels"]


def test_tables():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), UnprunableConv2d(4, 2, 1))
    x = torch.randn(1, 3, 2, 2)
    stats = model_statistics(model, x)
    table = format_model_statistics(stats)
    assert table.splitlines()[0].split() == ["layer", "type", "kept/all", "params", "MACs"]
    assert table.splitlines()[-1].split() == ["total", "4/4", "26", "80"]
    comparison = format_comparison({"a": stats, "b": {**stats, "macs": 40, "parameters": 13}})
    assert "(2.00x)" in comparison.splitlines()[1] and "(2.00x)" in comparison.splitlines()[2]


def test_round_to_rounds_kept_channels_up_to_a_multiple():
    torch.manual_seed(0)
    model = SmallCNN()
    pruner = SoftTopKPruner(final_sparsity=0.9, min_remaining_elements=1, round_to=8)
    model = pruner.on_pruning_end(pruner.configure_model(model))
    masks = [module.mask_layer for module in model.modules() if hasattr(module, "mask_layer")]
    assert all(isinstance(mask, ChannelMask) for mask in masks)
    assert [mask.k for mask in masks] == [8, 8, 8]  # 2, 4 and 3 channels rounded up to 8
    restored = SoftTopKPruner()
    restored.load_state_dict(pruner.state_dict())
    assert restored.round_to == 8
    with pytest.raises(ValueError, match="round_to"):
        SoftTopKPruner(round_to=0)
