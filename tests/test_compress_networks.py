"""The repository's networks compress exactly at every sparsity of the publication, and load back from checkpoints."""

import subprocess
import sys
from pathlib import Path

import cv2
import pytest
import torch
from test_compress import random_batch_norm
from test_evaluate import ARCH as TINY_SEGNET
from test_evaluate import experiment  # noqa: F401  (the fixture: a tiny dataset and its config)

import tool.test as test_tool
from acosp.compress import compress, compression_spec, model_statistics
from acosp.inject import MaskedConv
from acosp.pruner import SoftTopKPruner
from semseg.models import build_model, describe_arch
from semseg.training.checkpoint import model_from_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SPARSITIES = (0.5, 0.75, 0.875, 0.9375)
NETWORKS = {
    "pspnet50": ({"arch": "psp", "layers": 50, "classes": 5}, 33),
    "segnet": ({"arch": "segnet", "classes": 5}, 32),
    "segnet_3_blocks": ({"arch": "segnet", "classes": 5, "blocks": 3}, 20),  # 20 -> 10 -> 5 -> 2: an odd pooling
    "resnet18": ({"arch": "resnet18", "classes": 10}, 32),
}


def pruned(arch, sparsity, seed=0):
    """The network with random hard masks and BatchNorm statistics as after training."""
    torch.manual_seed(seed)
    model = random_batch_norm(build_model(arch))
    pruner = SoftTopKPruner(final_sparsity=sparsity)
    return pruner.on_pruning_end(pruner.configure_model(model)).eval(), pruner


@pytest.mark.slow
@pytest.mark.parametrize("sparsity", SPARSITIES)
@pytest.mark.parametrize("network", sorted(NETWORKS))
def test_network_compresses_exactly(network, sparsity):
    arch, size = NETWORKS[network]
    model, _ = pruned(arch, sparsity)
    x = torch.randn(2, 3, size, size)
    compressed = compress(model, x, tolerance=1e-5)  # compared with the masked network on x
    assert compression_spec(compressed)["relative_error"] < 1e-5
    masked = sum(
        isinstance(module, MaskedConv) and not name.startswith("aux") for name, module in model.named_modules()
    )
    assert len(compression_spec(compressed)["kept_channels"]) == masked
    kept = sum(k for k, _ in compression_spec(compressed)["kept_channels"].values())
    total = sum(c for _, c in compression_spec(compressed)["kept_channels"].values())
    assert kept / total < 1 - sparsity + 0.02


@pytest.mark.slow
def test_pspnet_compressed_at_the_paper_sparsity_matches_on_new_inputs_and_shrinks():
    arch, size = NETWORKS["pspnet50"]
    model, _ = pruned(arch, 0.75)
    x = torch.randn(1, 3, size, size)
    compressed = compress(model, x)
    fresh = torch.randn(1, 3, size, size)
    with torch.no_grad():
        expected = model(fresh)
        assert float((compressed(fresh) - expected).abs().max() / expected.abs().max()) < 1e-5
    dense, small = model_statistics(model, x, as_compressed=False), model_statistics(compressed, x)
    assert dense["macs"] / small["macs"] > 6 and dense["parameters"] / small["parameters"] > 6
    assert model_statistics(model, x)["macs"] == small["macs"]  # a masked network counts as compressed


def test_compressed_checkpoint_loads_with_weights_only_from_its_arch(tmp_path):
    arch = {"arch": "segnet", "classes": 3, "width": 0.125}
    model, pruner = pruned(arch, 0.75)
    x = torch.randn(1, 3, 32, 64)
    compressed = compress(model, x)
    path = save_checkpoint(
        {
            "state_dict": compressed.state_dict(),
            "arch": describe_arch(arch),
            "compression": compression_spec(compressed),
        },
        tmp_path / "compressed.pth",
    )
    restored = model_from_checkpoint(path)  # torch.load(weights_only=True), no config
    with torch.no_grad():
        assert torch.equal(restored(x), compressed(x))
    assert sum(p.numel() for p in restored.parameters()) == sum(p.numel() for p in compressed.parameters())


@pytest.mark.slow
def test_compress_tool_writes_a_checkpoint_that_loads(tmp_path):
    arch = {"arch": "segnet", "classes": 3, "width": 0.125}
    model, pruner = pruned(arch, 0.75)
    state = {"state_dict": model.state_dict(), "arch": describe_arch(arch), "pruner": pruner.state_dict()}
    checkpoint = save_checkpoint(state, tmp_path / "model" / "final.pth")
    config = tmp_path / "test_segnet.yaml"
    config.write_text(
        f"DATA:\n  dataset: test\n  data_root: {tmp_path}\n  train_list: {tmp_path}/list.txt\n  classes: 3\n"
        f"TRAIN:\n  arch: segnet\n  save_path: {tmp_path}/model\nTEST:\n  test_h: 32\n  test_w: 64\n"
    )
    command = [sys.executable, "tool/compress.py", "--config", str(config), "--runs", "1"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "parameters" in result.stdout and "latency (ms)" in result.stdout
    written = tmp_path / "model" / "final_compressed.pth"
    assert f"compressed checkpoint: {written}" in result.stdout
    table = written.with_suffix(".txt").read_text()
    assert "latency (ms)" in table and "enc1.0.0" in table  # the totals and every layer
    restored = model_from_checkpoint(written)
    x = torch.randn(1, 3, 32, 64)
    with torch.no_grad():
        assert float((restored(x) - model(x)).abs().max() / model(x).abs().max()) < 1e-5
    assert checkpoint.stat().st_size > 4 * written.stat().st_size


@pytest.mark.slow
def test_compress_tool_refuses_soft_masks(tmp_path):
    arch = {"arch": "segnet", "classes": 3, "width": 0.125}
    torch.manual_seed(0)
    pruner = SoftTopKPruner(final_sparsity=0.5)
    model = pruner.configure_model(build_model(arch))
    state = {"state_dict": model.state_dict(), "arch": describe_arch(arch), "pruner": pruner.state_dict()}
    save_checkpoint(state, tmp_path / "soft.pth")
    config = tmp_path / "test_segnet.yaml"
    config.write_text(
        f"DATA:\n  dataset: test\n  data_root: {tmp_path}\n  train_list: x.txt\n  classes: 3\n"
        f"TRAIN:\n  arch: segnet\nTEST:\n  model_path: {tmp_path}/soft.pth\n"
    )
    command = [sys.executable, "tool/compress.py", "--config", str(config), "--runs", "0"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2 and "soft masks" in result.stderr and "ending_epoch" in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("masks", ["independent", "coupled"])
def test_speed_benchmark_runs_quickly(masks):
    command = [sys.executable, "benchmarks/compress_speed.py", "--quick", "--networks", "SegNet"]
    result = subprocess.run(
        command + (["--coupled"] if masks == "coupled" else []), cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert f"{masks} masks" in result.stdout
    rows = [line.split() for line in result.stdout.splitlines() if line.strip().startswith("0.75")]
    assert len(rows) == 1
    for row in rows:
        assert row[7].endswith("x") and float(row[7].rstrip("x")) > 4  # MAC ratio at sparsity 0.75
        # compressed vs masked (a near-tie in unpooling adds "(... in float64)"); masked vs itself
        error, noise = float(row[13]), float(row[-1].strip("()"))
        # noise: a near-tie in max-pooling that SegNet unpools flips with the summation order now and then
        assert 0 <= error < 1e-4 and 0 <= noise < 1e-2


def test_tool_test_scores_a_compressed_checkpoint_as_the_masked_one(experiment, tmp_path):  # noqa: F811
    """tool/test.py loads a compressed checkpoint like any other and predicts what the masked network predicts."""
    masked, pruner = pruned(TINY_SEGNET, 0.75)
    state = {"state_dict": masked.state_dict(), "arch": describe_arch(TINY_SEGNET), "pruner": pruner.state_dict()}
    save_checkpoint(state, tmp_path / "masked.pth")
    compressed = compress(masked, torch.randn(2, 3, 32, 32))
    state = {"state_dict": compressed.state_dict(), "arch": describe_arch(TINY_SEGNET)}
    save_checkpoint({**state, "compression": compression_spec(compressed)}, tmp_path / "compressed.pth")
    folders = {}
    for name in ("masked", "compressed"):
        folders[name] = tmp_path / name
        overrides = ["model_path", str(tmp_path / f"{name}.pth"), "save_folder", str(folders[name])]
        assert test_tool.main(["--config", str(experiment / "tiny_segnet.yaml"), *overrides]) == 0
    for image in ("img0", "img1", "img2"):
        masked_gray, compressed_gray = (
            cv2.imread(str(folders[name] / "val" / "ss" / "gray" / f"{image}.png"), cv2.IMREAD_UNCHANGED)
            for name in ("masked", "compressed")
        )
        assert (masked_gray == compressed_gray).mean() > 0.99


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_torch_pruning_peer_prunes_inside_no_grad_and_inference_mode(context):
    """The benchmark re-checks Torch-Pruning's network in float64 under no_grad; its graph needs autograd."""
    pytest.importorskip("torch_pruning")
    from benchmarks import torch_pruning_peer

    masked, _ = pruned(TINY_SEGNET, 0.75)
    removed = torch_pruning_peer.pruned_channels(masked)
    plain = torch_pruning_peer.plain_copy(masked)
    with context():
        x = torch.randn(1, 3, 32, 32)
        peer = torch_pruning_peer.torch_pruning_prune(plain, removed, x)
        claimed = torch_pruning_peer.zeroed(plain, removed, x)(x)
        output = peer(x)
    narrowed = {
        name: (masked.get_submodule(name)[0].out_channels - len(channels), peer.get_submodule(name).out_channels)
        for name, channels in removed.items()
        if channels
    }
    assert narrowed and all(expected == width for expected, width in narrowed.values()), narrowed
    assert output.shape == claimed.shape
