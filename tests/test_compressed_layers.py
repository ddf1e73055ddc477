"""What other tools see in a compressed network: standard layers, counted alike, in channels-last on the CPU."""

import warnings

import pytest
import torch
from test_compress import random_batch_norm
from test_compress_networks import NETWORKS, pruned
from torch import nn

from acosp.compress import (
    apply_compression_spec,
    compress,
    compression_report,
    compression_spec,
    model_statistics,
    relative_error,
)
from acosp.compression.layers import CompressedConv2d, channel_runs
from acosp.pruner import SoftTopKPruner
from semseg.models import build_model

STANDARD = (nn.Conv2d, nn.ConvTranspose2d, nn.BatchNorm2d, nn.Linear)


def exact_type_macs(network: nn.Module, x: torch.Tensor) -> dict[str, int]:
    """MACs per layer as counters that look layers up by their exact type (thop, ptflops, Torch-Pruning) count them."""
    counted: dict[str, int] = {}

    def hook(name):
        def count(module, inputs, output):
            per_position = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            if type(module) is nn.ConvTranspose2d:
                macs = inputs[0].numel() * module.out_channels * module.kernel_size[0] * module.kernel_size[1]
            else:
                macs = output.numel() // output.shape[1] * module.out_channels * per_position
            counted[name] = counted.get(name, 0) + macs // x.shape[0]

        return count

    handles = [
        module.register_forward_hook(hook(name))
        for name, module in network.named_modules()
        if type(module) in (nn.Conv2d, nn.ConvTranspose2d)
    ]
    with torch.no_grad():
        network(x)
    for handle in handles:
        handle.remove()
    return counted


@pytest.mark.slow
@pytest.mark.parametrize("coupled", [False, True], ids=["independent", "coupled"])
@pytest.mark.parametrize("network", ["pspnet50", "segnet"])
def test_compressed_networks_hold_only_standard_layers_that_counters_count_alike(network, coupled):
    arch, size = NETWORKS[network]
    torch.manual_seed(0)
    x = torch.randn(1, 3, size, size)
    pruner = SoftTopKPruner(final_sparsity=0.75, coupled_masks=coupled)
    model = pruner.on_pruning_end(pruner.configure_model(build_model(arch), x if coupled else None)).eval()
    compressed = compress(model, x)
    holders = {type(module) for module in compressed.modules() if any(True for _ in module.parameters(False))}
    assert holders <= set(STANDARD), holders - set(STANDARD)
    ours = model_statistics(compressed, x)
    theirs = exact_type_macs(compressed, x)
    assert sum(theirs.values()) == ours["macs"]
    for name, row in ours["layers"].items():
        inner = name if name in theirs else f"{name}.conv"  # a wrapper's row is its conv's
        assert theirs[inner] == row["macs"], name


@pytest.mark.slow
def test_torch_pruning_counts_compressed_convs_as_acosp_does():
    torch_pruning = pytest.importorskip("torch_pruning")
    arch, size = NETWORKS["pspnet50"]
    model, _ = pruned(arch, 0.875)
    x = torch.randn(1, 3, size, size)
    compressed = compress(model, x)
    _, _, per_layer, _ = torch_pruning.utils.count_ops_and_params(compressed, x, layer_wise=True)
    ours = exact_type_macs(compressed, x)
    modules = dict(compressed.named_modules())
    assert any(isinstance(module, CompressedConv2d) for module in modules.values())  # border terms, streams
    for name, macs in ours.items():
        conv = modules[name]
        taps = conv.in_channels // conv.groups * conv.kernel_size[0] * conv.kernel_size[1]
        bias_adds = 0 if conv.bias is None else macs // taps  # Torch-Pruning counts one op per bias add
        assert per_layer[conv] == macs + bias_adds, name


@pytest.mark.slow
def test_compressed_networks_run_channels_last_on_the_cpu_and_rebuild_so():
    arch, size = NETWORKS["segnet"]
    model, _ = pruned(arch, 0.875)
    x = torch.randn(2, 3, size, size)
    compressed = compress(model, x)
    assert compression_spec(compressed)["channels_last"]
    convs = [module for module in compressed.modules() if type(module) is nn.Conv2d]
    assert all(conv.weight.is_contiguous(memory_format=torch.channels_last) for conv in convs)
    with torch.no_grad():
        y = compressed(x)
        assert y.is_contiguous(memory_format=torch.channels_last)
        assert relative_error(model(x), y) < 1e-4
    rebuilt = apply_compression_spec(build_model(arch), compression_spec(compressed))
    rebuilt.load_state_dict(compressed.state_dict())
    assert all(
        module.weight.is_contiguous(memory_format=torch.channels_last)
        for module in rebuilt.modules()
        if type(module) is nn.Conv2d
    )
    contiguous = compress(model, x, channels_last=False)
    assert not compression_spec(contiguous)["channels_last"]
    with torch.no_grad():
        assert contiguous(x).is_contiguous()


class Flattening(nn.Module):
    """A forward that assumes contiguous tensors, as many classifiers do."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.fc = nn.Linear(8 * 4 * 4, 3)

    def forward(self, x):
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 4)
        return self.fc(x.view(x.size(0), -1))


def test_a_forward_that_needs_contiguous_tensors_keeps_contiguous_format_with_a_warning():
    torch.manual_seed(0)
    pruner = SoftTopKPruner(final_sparsity=0.5)
    model = pruner.on_pruning_end(pruner.configure_model(Flattening())).eval()
    x = torch.randn(2, 3, 8, 8)
    with pytest.warns(UserWarning, match="stays in contiguous memory format"):
        compressed = compress(model, x)
    assert not compression_spec(compressed)["channels_last"]
    with torch.no_grad():
        assert relative_error(model(x), compressed(x)) < 1e-5
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compress(model, x, channels_last=False)
    with pytest.raises(RuntimeError, match="view"):
        compress(model, x, channels_last=True)


@pytest.mark.slow
def test_border_terms_follow_the_input_size_dtype_and_loaded_values():
    arch, size = NETWORKS["pspnet50"]
    model, _ = pruned(arch, 0.75)
    compressed = compress(model, torch.randn(1, 3, size, size))
    corrected = [module for module in compressed.modules() if getattr(module, "constant_input", False)]
    assert corrected
    with torch.no_grad():
        for shape in [(1, 3, size, size), (1, 3, 41, 49), (1, 3, size, size)]:  # cached, then another size, back
            x = torch.randn(*shape)
            assert relative_error(model(x), compressed(x)) < 1e-5
        model.double()
        precise = compress(model, torch.randn(1, 3, size, size, dtype=torch.float64))
        for shape in [(1, 3, 41, 49), (1, 3, size, size)]:
            x = torch.randn(*shape, dtype=torch.float64)
            assert relative_error(model(x), precise(x)) < 1e-12
        layer = corrected[0]
        assert layer._cache  # filled by the runs above
        layer.load_state_dict(layer.state_dict())  # values loaded after the terms were cached
        assert not layer._cache
        layer(torch.randn(1, layer.in_channels, 9, 9))
        assert layer._cache
        compressed.double()  # another dtype
        assert not layer._cache


def test_a_state_dict_whose_wrapper_was_the_conv_itself_still_loads():
    """Compressed checkpoints written when CompressedConv2d subclassed nn.Conv2d hold ``<name>.weight``."""
    layer = CompressedConv2d(4, 6, 3, padding=1, constant_input=True)
    old = {"weight": torch.randn(6, 4, 3, 3), "bias": torch.randn(6), "constant_kernel": torch.randn(6, 3, 3)}
    layer.load_state_dict(old)
    assert torch.equal(layer.conv.weight, old["weight"]) and torch.equal(layer.constant_kernel, old["constant_kernel"])


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_a_conv_reads_the_channels_its_index_names_in_either_memory_format(memory_format):
    layer = CompressedConv2d(3, 5, 3, padding=1, in_width=8).eval()
    layer.in_index.copy_(torch.tensor([0, 4, 6]))
    x = torch.randn(2, 8, 6, 7)
    expected = layer.conv(x[:, [0, 4, 6]])
    layer.to(memory_format=memory_format)
    with torch.no_grad():
        y = layer(x.contiguous(memory_format=memory_format))
    assert torch.allclose(y, expected, atol=1e-6)
    assert y.is_contiguous(memory_format=memory_format)  # channels-last stays channels-last: no conversion
    assert "in_width=8" in repr(layer)


def wide_layer(index: list[int], width: int, filled: bool) -> CompressedConv2d:
    layer = CompressedConv2d(3, len(index), 3, padding=1, out_width=width, filled=filled)
    layer.out_index.copy_(torch.tensor(index))
    if filled:
        layer.out_fill.copy_(torch.randn(width))
    return layer


def scattered(layer: CompressedConv2d, x: torch.Tensor) -> torch.Tensor:
    """What the masked network gives: the computed channels at their index, the others 0 or ``out_fill``."""
    y = layer.conv(x)
    fill = torch.zeros(layer.out_width) if layer.out_fill is None else layer.out_fill
    full = fill.view(1, -1, 1, 1).expand(y.shape[0], -1, *y.shape[2:]).clone()
    full[:, layer.out_index] = y
    return full


@pytest.mark.parametrize("filled", [False, True])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_the_wider_tensor_is_one_concatenation_of_few_runs_and_an_indexed_copy_of_many(filled, memory_format):
    torch.manual_seed(0)
    few = wide_layer([0, 1, 2, 4, 5, 6, 7, 8], 10, filled)  # runs: 3 computed, 1 other, 5 computed, 1 other
    many = wide_layer(list(range(0, 24, 2)), 24, filled)  # 24 runs
    assert channel_runs(few.out_index, 10) == [(True, 0, 3), (False, 3, 4), (True, 3, 8), (False, 9, 10)]
    for layer, concatenated in ((few, True), (many, False)):
        layer.to(memory_format=memory_format)
        x = torch.randn(2, 3, 7, 9).to(memory_format=memory_format)
        with torch.inference_mode():
            y = layer(x)
            assert (layer._runs(y) is not None) is concatenated
            assert torch.equal(y, scattered(layer, x))
            assert y.is_contiguous(memory_format=memory_format)
        x.requires_grad_(True)  # fine-tuning a compressed network (fold_batchnorm=False) differentiates it
        y = layer(x)
        y.square().sum().backward()
        expected_x = x.detach().clone().requires_grad_(True)
        scattered(layer, expected_x).square().sum().backward()
        assert torch.allclose(x.grad, expected_x.grad, atol=1e-5)
        assert y.is_contiguous(memory_format=memory_format)


@pytest.mark.slow
def test_segnet_with_coupled_masks_concatenates_its_one_unpooled_constant_channel_per_pair():
    """Each encoder/decoder pair keeps one pruned channel (what unpooling needs): a constant concatenated in."""
    arch, size = NETWORKS["segnet"]
    torch.manual_seed(0)
    x = torch.randn(2, 3, size, size)
    pruner = SoftTopKPruner(final_sparsity=0.875, coupled_masks=True)
    model = pruner.on_pruning_end(pruner.configure_model(random_batch_norm(build_model(arch)), x)).eval()
    compressed = compress(model, x, channels_last=True)
    wider = [module for module in compressed.modules() if getattr(module, "out_width", None)]
    assert wider and all(module.out_width == module.out_channels + 1 for module in wider)
    assert "written into" in compression_report(compressed)
    with torch.inference_mode():
        assert relative_error(model(x), compressed(x)) < 1e-4
        y = torch.randn(1, wider[0].out_channels, 5, 5).to(memory_format=torch.channels_last)
        assert all(module._runs(y) is not None for module in wider)  # one concatenation each
        model.double()
        precise = compress(model, x.double())
        assert relative_error(model(x.double()), precise(x.double())) < 1e-12
