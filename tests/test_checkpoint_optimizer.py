"""Checkpoints rebuild their networks; the optimizer drops mask logits cleanly; learning-rate schedules."""

import math

import pytest
import torch

from acosp import SoftTopKPruner
from acosp.inject import soft_masks, soft_to_hard_k
from semseg.models import build_model, describe_arch
from semseg.training.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint, save_checkpoint
from semseg.training.optimizer import build_optimizer, drop_stale_parameters, learning_rate, parameter_groups

SMALL_SEGNET = {"arch": "segnet", "classes": 3, "width": 0.125}


class Settings(dict):
    __getattr__ = dict.__getitem__


SGD = Settings(optimizer="sgd", base_lr=0.1, momentum=0.9, weight_decay=1e-4, head_lr_factor=10.0)


def _train_step(model, optimizer):
    model.train()
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 3, (2, 32, 32))
    _, loss, _ = model(x, y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["dense", "soft", "hard"])
def test_checkpoint_rebuilds_its_network_from_arch(tmp_path, stage):
    model = build_model(SMALL_SEGNET)
    pruner = None
    if stage != "dense":
        pruner = SoftTopKPruner(ending_epoch=2, final_sparsity=0.5)
        model = pruner.configure_model(model)
        _train_step(model, torch.optim.SGD(model.parameters(), lr=0.1))
        pruner.update_mask_layers(model, 1)
        if stage == "hard":
            model = pruner.on_pruning_end(model)
    state = {"state_dict": model.state_dict(), "arch": describe_arch(SMALL_SEGNET)}
    state["pruner"] = None if pruner is None else pruner.state_dict()
    path = save_checkpoint(state, tmp_path / "model" / "final.pth")
    assert not list(path.parent.glob("*.tmp*"))
    restored = model_from_checkpoint(path)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(restored(x), model.eval()(x))


def test_semseg_checkpoint_needs_the_config_and_loads_with_it(tmp_path):
    model = build_model(SMALL_SEGNET)
    path = tmp_path / "train_epoch_50.pth"
    torch.save({"epoch": 50, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    with pytest.raises(CheckpointError, match="no 'arch' entry"):
        model_from_checkpoint(path)
    restored = model_from_checkpoint(path, Settings(SMALL_SEGNET))
    assert torch.equal(restored.dec1[1].weight, model.dec1[1].weight)
    # the checkpoint holds every weight: a config's ImageNet file is neither needed nor read
    with_weights = Settings(SMALL_SEGNET, pretrained_weights=str(tmp_path / "no_such_vgg16.pth"))
    assert torch.equal(model_from_checkpoint(path, with_weights).dec1[1].weight, model.dec1[1].weight)


def test_checkpoint_errors_name_the_file_and_keys(tmp_path):
    with pytest.raises(CheckpointError, match="missing.pth does not exist"):
        load_checkpoint(tmp_path / "missing.pth")
    (tmp_path / "broken.pth").write_bytes(b"\x00" * 10)
    with pytest.raises(CheckpointError, match="broken.pth cannot be read"):
        load_checkpoint(tmp_path / "broken.pth")
    state = build_model(SMALL_SEGNET).state_dict()
    del state["enc1.0.0.weight"]
    path = save_checkpoint({"state_dict": state, "arch": describe_arch(SMALL_SEGNET)}, tmp_path / "cut.pth")
    with pytest.raises(CheckpointError, match=r"cut\.pth does not fit.*missing keys: enc1\.0\.0\.weight"):
        model_from_checkpoint(path)


def test_pspnet_heads_get_the_head_learning_rate():
    model = build_model({"arch": "psp", "classes": 3})
    groups = parameter_groups(model, 10.0)
    assert [g["lr_factor"] for g in groups] == [1.0, 10.0]
    heads = {id(p) for name in ("ppm", "cls", "aux") for p in getattr(model, name).parameters()}
    assert {id(p) for p in groups[1]["params"]} == heads
    assert len(groups[0]["params"]) + len(groups[1]["params"]) == len(list(model.parameters()))


def test_dropping_the_logits_leaves_the_optimizer_a_fresh_one_would_be():
    model = SoftTopKPruner(final_sparsity=0.5).configure_model(build_model(SMALL_SEGNET))
    optimizer = build_optimizer(model, SGD)
    _train_step(model, optimizer)
    logits = {id(mask.weight) for mask in soft_masks(model)}
    model = soft_to_hard_k(model)
    assert drop_stale_parameters(optimizer, model) == len(logits) > 0
    assert not any(id(p) in logits for p in optimizer.state)
    fresh = build_optimizer(model, SGD)
    fresh.load_state_dict(optimizer.state_dict())  # same groups, same order, same sizes
    assert [len(g["params"]) for g in fresh.param_groups] == [len(g["params"]) for g in optimizer.param_groups]
    _train_step(model, optimizer)  # momentum of the remaining parameters carries on


def test_learning_rate_schedules():
    assert learning_rate("poly", 0.01, 0, 100) == 0.01
    assert learning_rate("poly", 0.01, 50, 100, 0.9) == pytest.approx(0.01 * 0.5**0.9)
    assert learning_rate("poly", 0.01, 100, 100) == 0.0
    assert learning_rate("cosine", 0.01, 50, 100) == pytest.approx(0.005)
    assert learning_rate("cosine", 0.01, 25, 100) == pytest.approx(0.005 * (1 + math.cos(math.pi / 4)))
    with pytest.raises(ValueError, match="lr_schedule must be one of poly, cosine, got 'step'"):
        learning_rate("step", 0.01, 0, 10)
