"""The library's two layers: the core loads without the compression machinery, which loads on first use."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _loaded_after(code: str) -> set[str]:
    script = f"import sys\n{code}\nprint(' '.join(sorted(m for m in sys.modules if m.startswith('acosp'))))"
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True)
    return set(result.stdout.split())


def test_import_acosp_and_a_pruned_training_setup_load_only_the_core():
    loaded = _loaded_after(
        "import torch, acosp\n"
        "model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.BatchNorm2d(16))\n"
        "pruner = acosp.SoftTopKPruner(ending_epoch=2, final_sparsity=0.5)\n"
        "model = pruner.configure_model(model)\n"
        "pruner.update_mask_layers(model, 0)\n"
        "pruner.collect_logs(None, model, 0)\n"
        "acosp.stats.format_kept_channels(acosp.soft_to_hard_k(model))"
    )
    assert loaded == {"acosp", "acosp.inject", "acosp.mask_bank", "acosp.masks", "acosp.pruner", "acosp.stats"}


@pytest.mark.slow
def test_acosp_compress_is_reached_from_the_package_and_loads_the_compression_layer():
    loaded = _loaded_after("import acosp\nassert callable(acosp.compress.compress)")
    assert {"acosp.compress", "acosp.compression.compressor", "acosp.compression.trace"} <= loaded


@pytest.mark.slow
def test_coupled_masks_load_the_compression_layer_only_when_asked_for():
    loaded = _loaded_after(
        "import torch, acosp\n"
        "model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3))\n"
        "acosp.SoftTopKPruner(coupled_masks=True).configure_model(model, torch.zeros(1, 3, 8, 8))"
    )
    assert "acosp.compression.coupling" in loaded
