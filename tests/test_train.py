"""tool/train.py end to end on a tiny generated dataset, on the CPU."""

import math
import os
import subprocess
import sys

import pytest
import torch
from test_pruner import read_scalars
from train_helpers import CIFAR_MEAN, CIFAR_STD, ROOT, load_tool, write_cifar_config, write_config

from acosp.inject import soft_masks
from acosp.masks import num_kept_channels
from semseg.training.checkpoint import CheckpointError, model_from_checkpoint
from semseg.training.epoch import TrainingError

train_tool = load_tool("train")


def train(config, *overrides):
    return train_tool.main(["--config", str(config), "--device", "cpu", *map(str, overrides)])


def masks_of(state):
    return {key: value for key, value in state.items() if key.endswith(".1.mask")}


@pytest.mark.slow
def test_training_prunes_through_the_hard_conversion(tmp_path):
    config = write_config(tmp_path)
    assert train(config) == 0
    model_dir = tmp_path / "exp" / "model"
    assert sorted(p.name for p in model_dir.glob("*.pth")) == [
        "final.pth",
        "last.pth",
        "train_epoch_1.pth",
        "train_epoch_2.pth",
        "train_epoch_3.pth",
    ]
    final = torch.load(model_dir / "final.pth", weights_only=True)
    assert final["epoch"] == 3 and final["pruner"]["finished"] and final["arch"]["arch"] == "segnet"
    masks = masks_of(final["state_dict"])
    assert len(masks) == 25  # every conv of SegNet but the classifier
    for key, mask in masks.items():
        assert set(mask.unique().tolist()) <= {0.0, 1.0}
        assert mask.sum() == num_kept_channels(mask.numel(), 0.5, 2), key
        assert key.replace(".mask", ".weight") not in final["state_dict"]  # the logits are gone
    soft = torch.load(model_dir / "train_epoch_1.pth", weights_only=True)
    assert any(
        key.endswith(".1.weight") and key.replace(".weight", ".mask") in soft["state_dict"]
        for key in soft["state_dict"]
    )
    assert (model_dir / "config.yaml").is_file() and list(model_dir.glob("train-*.log"))
    assert model_from_checkpoint(model_dir / "final.pth")(torch.randn(1, 3, 32, 32)).shape == (1, 3, 32, 32)


def test_tensorboard_has_losses_metrics_pruning_statistics_histograms_and_images(tmp_path):
    config = write_config(tmp_path, epochs=2, ending_epoch=2)
    assert train(config) == 0
    events = list((tmp_path / "exp").glob("events.out.tfevents.*"))
    assert len(events) == 1
    scalars = read_scalars(tmp_path / "exp")
    for tag in ("train/loss_iter", "train/lr", "train/loss", "train/mIoU", "train/mAcc", "train/allAcc"):
        assert tag in scalars, tag
    for tag in ("val/loss", "val/mIoU", "acosp/temperature/mean", "acosp/kept_channels", "acosp/undecided/mean"):
        assert tag in scalars, tag
    assert len(scalars["train/loss_iter"]) == 4 and len(scalars["val/mIoU"]) == 2
    assert "acosp/logits/enc1.0.0" in scalars and "val/image_truth_prediction" in scalars


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_resumed_run_equals_the_uninterrupted_one(tmp_path, workers):
    config = write_config(tmp_path, workers=workers)  # 2: persistent worker processes
    assert train(config) == 0
    model_dir = tmp_path / "exp" / "model"
    resumed_dir = tmp_path / "resumed" / "model"
    assert train(config, "resume", model_dir / "train_epoch_1.pth", "save_path", resumed_dir) == 0
    whole = torch.load(model_dir / "final.pth", weights_only=True)
    resumed = torch.load(resumed_dir / "final.pth", weights_only=True)
    assert whole["state_dict"].keys() == resumed["state_dict"].keys()
    for key, value in whole["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][key], value, rtol=0, atol=1e-6, msg=key)
    assert whole["pruner"] == resumed["pruner"]


@pytest.mark.slow
def test_two_runs_of_a_seeded_config_train_the_same_network(tmp_path):
    config = write_config(tmp_path, epochs=1, ending_epoch=1)
    torch.manual_seed(123)  # whatever the global generator holds before: manual_seed decides
    assert train(config) == 0
    torch.manual_seed(456)
    assert train(config, "save_path", tmp_path / "again" / "model") == 0
    first = torch.load(tmp_path / "exp" / "model" / "final.pth", weights_only=True)["state_dict"]
    second = torch.load(tmp_path / "again" / "model" / "final.pth", weights_only=True)["state_dict"]
    assert first.keys() == second.keys()
    for key, value in first.items():
        torch.testing.assert_close(second[key], value, rtol=0, atol=0, msg=key)


@pytest.mark.slow
def test_validation_sees_the_temperature_the_epoch_trained_at(tmp_path, monkeypatch):
    """BatchNorm's running statistics come from the epoch's masks: validating at the next temperature would mix them."""
    seen = {"train": [], "val": []}

    def temperatures(model):
        return [float(mask.temperature) for mask in soft_masks(model)]

    def recording(kind, function):
        def run(model, *args, **kwargs):
            seen[kind].append(temperatures(model))
            return function(model, *args, **kwargs)

        return run

    monkeypatch.setattr(train_tool, "train_epoch", recording("train", train_tool.train_epoch))
    monkeypatch.setattr(train_tool, "validate", recording("val", train_tool.validate))
    assert train(write_config(tmp_path, epochs=3, ending_epoch=3)) == 0
    assert seen["val"] == seen["train"] and len(seen["val"]) == 3
    assert len({tuple(epoch) for epoch in seen["train"]}) > 1  # the temperature did fall


@pytest.mark.slow
def test_resume_auto_continues_from_last(tmp_path):
    config = write_config(tmp_path, epochs=1, sparsity=0.0)
    assert train(config) == 0
    assert train(config, "epochs", 2, "resume", "auto") == 0
    final = torch.load(tmp_path / "exp" / "model" / "final.pth", weights_only=True)
    assert final["epoch"] == 2 and final["pruner"] is None


def test_a_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    config = write_config(tmp_path)
    real_build = train_tool.build_model

    def poisoned(cfg, **options):
        model = real_build(cfg, **options)
        calls = {"n": 0}
        forward = model.forward

        def forward_with_nan(x, y=None):
            out = forward(x, y)
            if y is not None:
                calls["n"] += 1
                if calls["n"] == 4:  # epoch 2, iteration 2
                    return out[0], out[1] * float("nan"), out[2]
            return out

        model.forward = forward_with_nan
        return model

    monkeypatch.setattr(train_tool, "build_model", poisoned)
    with pytest.raises(TrainingError, match="not finite .* at epoch 2, iteration 2"):
        train(config)
    last = torch.load(tmp_path / "exp" / "model" / "last.pth", weights_only=True)
    assert last["epoch"] == 1


def test_setup_errors_come_before_training(tmp_path):
    config = write_config(tmp_path)
    with pytest.raises(FileNotFoundError, match="nowhere.txt: list file not found"):
        train(config, "train_list", tmp_path / "nowhere.txt")
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(CheckpointError, match="cannot write to the experiment folder"):
        train(config, "save_path", blocker / "model")
    assert not (tmp_path / "exp" / "model" / "last.pth").exists()


def test_pretrained_weights_are_found_relative_to_the_repository_from_any_folder(tmp_path, monkeypatch):
    config = write_config(tmp_path)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="pretrained_weights: weight file .* does not exist") as error:
        train(config, "width", "1.0", "pretrained_weights", "data/pretrained/nowhere_vgg16.pth")
    assert str(ROOT / "data" / "pretrained" / "nowhere_vgg16.pth") in str(error.value)


@pytest.mark.slow
def test_two_process_ddp_run_keeps_masks_identical(tmp_path):
    config = write_config(tmp_path, epochs=2, ending_epoch=1, evaluate=False)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    result = subprocess.run(
        [*command, str(ROOT / "tool" / "train.py"), "--config", str(config), "--device", "cpu"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "masks agree across 2 processes" in result.stdout
    final = torch.load(tmp_path / "exp" / "model" / "final.pth", weights_only=True)
    assert final["epoch"] == 2 and final["pruner"]["finished"]


def test_cifar10_training_on_fabricated_batches(tmp_path):
    config = write_cifar_config(tmp_path)
    assert train(config) == 0
    final = torch.load(tmp_path / "exp" / "model" / "final.pth", weights_only=True)
    assert final["arch"] == {"arch": "resnet18", "classes": 10, "width": 0.125}
    assert final["best"]["epoch"] in (1, 2) and 0 <= final["best"]["accuracy"] <= 1
    masks = masks_of(final["state_dict"])
    assert len(masks) == 20 and all(m.sum() == num_kept_channels(m.numel(), 0.5, 2) for m in masks.values())
    assert final["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.01 * 0.5 * (1 + math.cos(math.pi / 2)))
    scalars = read_scalars(tmp_path / "exp")
    assert len(scalars["val/accuracy"]) == 2 and len(scalars["train/accuracy"]) == 2


def test_stray_label_values_stop_the_run_before_the_first_iteration(tmp_path, monkeypatch):
    config = write_config(tmp_path, classes=3, ignore_label=3)  # the labels use 255 for ignore
    steps = []
    monkeypatch.setattr(train_tool, "train_epoch", lambda *args: steps.append(args))
    with pytest.raises(ValueError, match=r"labels/0\.png: label values \[255\] are neither class ids"):
        train(config)
    assert not steps


def test_cifar10_test_script_scores_the_test_batch(tmp_path):
    config = write_cifar_config(tmp_path, epochs=1, ending_epoch=1)
    assert train(config) == 0
    test_tool = load_tool("test")
    assert test_tool.main(["--config", str(config), "--device", "cpu"]) == 0
    rows = (tmp_path / "exp" / "result" / "test" / "metrics.csv").read_text().splitlines()
    assert rows[0] == "name,Acc" and rows[1].startswith("airplane,") and rows[-1].startswith("accuracy,")
    model = model_from_checkpoint(tmp_path / "exp" / "model" / "final.pth")
    from semseg.data.dataset import Cifar10
    from semseg.data.transform import cifar_transforms

    cfg = type("Cfg", (), {"mean": CIFAR_MEAN, "std": CIFAR_STD})
    images, labels = zip(*Cifar10(tmp_path / "cifar", train=False, transform=cifar_transforms(cfg, False)))
    with torch.no_grad():
        expected = (model(torch.stack(images)).argmax(1) == torch.tensor(labels)).float().mean().item()
    assert float(rows[-1].split(",")[1]) == pytest.approx(expected, abs=1e-4)


@pytest.mark.slow
def test_weight_starts_a_run_from_a_pruned_checkpoint_with_its_masks_folded(tmp_path):
    config = write_config(tmp_path, epochs=2, ending_epoch=1)
    assert train(config) == 0
    final = torch.load(tmp_path / "exp" / "model" / "final.pth", weights_only=True)["state_dict"]
    from semseg.models import build_model

    dense = build_model({"arch": "segnet", "classes": 3, "width": 0.125})
    train_tool.initial_weights(dense, tmp_path / "exp" / "model" / "final.pth", None)
    mask = final["enc2.0.0.1.mask"]
    assert 0 < mask.sum() < mask.numel()
    expected = final["enc2.0.0.0.weight"] * mask[:, None, None, None]
    assert torch.equal(dense.enc2[0][0].weight, expected)
    assert torch.equal(dense.enc2[0][0].bias, final["enc2.0.0.0.bias"] * mask)
    retrained = tmp_path / "again" / "model"
    assert train(config, "weight", tmp_path / "exp" / "model" / "final.pth", "save_path", retrained, "epochs", 1) == 0


def test_round_to_rounds_each_layers_kept_channels_up(tmp_path):
    config = write_config(tmp_path, epochs=2, ending_epoch=1, round_to=3, evaluate=False)
    assert train(config) == 0
    final = torch.load(tmp_path / "exp" / "model" / "final.pth", weights_only=True)
    assert final["pruner"]["round_to"] == 3
    for key, mask in masks_of(final["state_dict"]).items():
        k = num_kept_channels(mask.numel(), 0.5, 2)
        assert mask.sum() == min(mask.numel(), math.ceil(k / 3) * 3), key


@pytest.mark.slow
def test_coupled_masks_keep_the_same_channels_in_segnets_unpooling_pairs(tmp_path):
    config = write_config(tmp_path, epochs=2, ending_epoch=1, coupled_masks=True, evaluate=False)
    assert train(config) == 0
    model_dir = tmp_path / "exp" / "model"
    soft = torch.load(model_dir / "train_epoch_1.pth", weights_only=True)["state_dict"]
    final = torch.load(model_dir / "final.pth", weights_only=True)
    assert final["pruner"]["coupled_masks"]
    pairs = [("enc1.1.0", "dec2.1.0"), ("enc2.1.0", "dec3.2.0"), ("enc3.2.0", "dec4.2.0"), ("enc4.2.0", "dec5.2.0")]
    for encoder, decoder in pairs:
        assert torch.equal(soft[f"{encoder}.1.weight"], soft[f"{decoder}.1.weight"])  # one set of logits, trained
        assert torch.equal(final["state_dict"][f"{encoder}.1.mask"], final["state_dict"][f"{decoder}.1.mask"])
    assert not torch.equal(soft["enc1.0.0.1.weight"], soft["enc1.1.0.1.weight"])
    log = next(model_dir.glob("train-*.log")).read_text()
    assert "coupled masks: 4 groups share a mask: enc1.1.0 + dec2.1.0; enc2.1.0 + dec3.2.0;" in log
    resumed = tmp_path / "resumed"
    assert train(config, "resume", model_dir / "train_epoch_1.pth", "save_path", resumed) == 0
    restored = torch.load(resumed / "final.pth", weights_only=True)["state_dict"]
    assert torch.equal(restored["enc2.1.0.1.mask"], restored["dec3.2.0.1.mask"])
    assert model_from_checkpoint(model_dir / "final.pth")(torch.randn(1, 3, 32, 32)).shape == (1, 3, 32, 32)


@pytest.mark.slow
def test_l1_selection_trains_dense_until_ending_epoch_then_prunes_by_filter_norm(tmp_path):
    config = write_config(tmp_path, epochs=3, ending_epoch=2, selection="l1", evaluate=False)
    assert train(config) == 0
    folder = tmp_path / "exp" / "model"
    dense = torch.load(folder / "train_epoch_2.pth", weights_only=True)
    assert not masks_of(dense["state_dict"]) and dense["pruner"]["selection"] == "l1" and dense["pruner"]["active"]
    final = torch.load(folder / "final.pth", weights_only=True)
    assert final["pruner"]["finished"] and masks_of(final["state_dict"])
    for key, mask in masks_of(final["state_dict"]).items():
        assert int(mask.sum()) == num_kept_channels(mask.numel(), 0.5, 2), key
    # the kept filters are those of largest L1 norm in the dense weights that pruning started from
    weight = dense["state_dict"]["enc1.0.0.weight"]
    kept = torch.nonzero(final["state_dict"]["enc1.0.0.1.mask"]).flatten()
    k = kept.numel()
    assert set(kept.tolist()) == set(torch.topk(weight.abs().flatten(1).sum(1), k).indices.tolist())
    # a dense-phase checkpoint resumes into the dense network
    assert train(config, "epochs", 3, "resume", str(folder / "train_epoch_2.pth")) == 0


def test_ending_epoch_zero_hardens_random_masks_before_the_first_step(tmp_path):
    config = write_config(tmp_path, epochs=1, ending_epoch=0, evaluate=False)
    assert train(config) == 0
    final = torch.load(tmp_path / "exp" / "model" / "final.pth", weights_only=True)
    state = final["state_dict"]
    assert final["pruner"]["finished"] and masks_of(state)
    for key, mask in masks_of(state).items():  # hard masks only: no logits beside them
        assert key.removesuffix("mask") + "weight" not in state
        assert int(mask.sum()) == num_kept_channels(mask.numel(), 0.5, 2)
