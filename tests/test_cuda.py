"""The CUDA paths: compression in float32 and float16, masks under mixed precision, training with AMP.

Skipped on machines without a CUDA device; where there is one, ``sh tests/run.sh`` runs them too.
"""

import copy
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from test_compress_networks import NETWORKS, ROOT, pruned
from train_helpers import load_tool, write_config

from acosp.compress import compress, compression_spec, full_float32_precision, relative_error
from acosp.inject import soft_masks
from acosp.pruner import SoftTopKPruner
from semseg.models import build_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CUDA = torch.device("cuda")


@pytest.mark.parametrize("network", ["pspnet50", "segnet", "resnet18"])
def test_compression_on_cuda_is_exact_in_float32(network):
    arch, size = NETWORKS[network]
    model, _ = pruned(arch, 0.75)
    x = torch.randn(2, 3, size, size, device=CUDA)
    compressed = compress(model.to(CUDA), x, tolerance=1e-4)
    assert all(parameter.is_cuda for parameter in compressed.parameters())
    assert compression_spec(compressed)["relative_error"] < 1e-4


@pytest.mark.parametrize("network", ["pspnet50", "resnet18"])
def test_compression_in_float16_stays_close_to_the_float32_network(network):
    arch, size = NETWORKS[network]
    model, _ = pruned(arch, 0.75)
    model = model.to(CUDA)
    x = torch.randn(2, 3, size, size, device=CUDA)
    half = compress(copy.deepcopy(model).half(), x.half(), check=False)
    assert all(parameter.dtype == torch.float16 for parameter in half.parameters())
    with torch.inference_mode(), full_float32_precision():
        assert relative_error(model(x), half(x.half()).float()) < 2e-2


def test_a_masked_training_step_under_autocast_trains_the_logits():
    torch.manual_seed(0)
    pruner = SoftTopKPruner(final_sparsity=0.5, min_remaining_elements=2)
    model = pruner.configure_model(build_model({"arch": "resnet18", "classes": 10, "width": 0.25})).to(CUDA)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cuda", init_scale=1024.0)
    x, y = torch.randn(4, 3, 32, 32, device=CUDA), torch.randint(0, 10, (4,), device=CUDA)
    with torch.autocast("cuda", dtype=torch.float16):
        out = model(x)
        loss = F.cross_entropy(out, y)
    assert out.dtype == torch.float16
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    logits = [mask.weight for mask in soft_masks(model)]
    assert all(torch.isfinite(weight.grad).all() for weight in logits)
    assert sum(float(weight.grad.abs().sum()) for weight in logits) > 0
    before = [weight.detach().clone() for weight in logits]
    scaler.step(optimizer)
    scaler.update()
    assert any(not torch.equal(old, weight) for old, weight in zip(before, logits))


def test_training_with_amp_and_coupled_masks_on_cuda(tmp_path):
    config = write_config(tmp_path, epochs=2, ending_epoch=1, amp=True, coupled_masks=True, evaluate=False)
    assert load_tool("train").main(["--config", str(config), "--device", "cuda"]) == 0
    final = torch.load(tmp_path / "exp" / "model" / "final.pth", weights_only=True)
    assert final["pruner"]["finished"] and final["pruner"]["coupled_masks"]
    state = final["state_dict"]
    assert torch.equal(state["enc2.1.0.1.mask"], state["dec3.2.0.1.mask"])


def test_the_speed_benchmark_runs_in_float16():
    command = [sys.executable, "benchmarks/compress_speed.py", "--quick", "--device", "cuda", "--half"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("float16") == 2  # PSPNet50 and SegNet
