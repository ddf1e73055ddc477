"""Faults a long run meets: signals, kills during saves, divergence, a second run, damaged files, full disks."""

import os
import signal
import subprocess
import sys
import time
import zipfile
from types import SimpleNamespace

import pytest
import torch
import yaml
from train_helpers import ROOT, load_tool, write_config

from semseg.data.dataset import read_list
from semseg.training import checkpoint as checkpoint_module
from semseg.training import epoch as training
from semseg.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from semseg.training.epoch import TrainingError
from semseg.training.experiment_lock import ExperimentBusy, hold
from semseg.training.stop_signals import EXIT_INTERRUPTED, EXIT_PREEMPTED

train_tool = load_tool("train")
test_tool = load_tool("test")


def train(config, *overrides):
    return train_tool.main(["--config", str(config), "--device", "cpu", *map(str, overrides)])


def weights(path):
    return load_checkpoint(path)["state_dict"]


def same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


def signal_at(monkeypatch, number, epoch, iteration):
    """Send ``number`` to this process while ``epoch`` (0-based) runs iteration ``iteration``."""
    real = training.learning_rate
    calls = {"n": 0}

    def learning_rate(*args):
        calls["n"] += 1
        if calls["n"] == 2 * epoch + iteration + 1:  # the tiny dataset has 2 iterations per epoch
            os.kill(os.getpid(), number)
        return real(*args)

    monkeypatch.setattr(training, "learning_rate", learning_rate)


@pytest.mark.slow
@pytest.mark.parametrize("number, status", [(signal.SIGTERM, EXIT_PREEMPTED), (signal.SIGUSR1, EXIT_PREEMPTED),
                                            (signal.SIGINT, EXIT_INTERRUPTED)])  # fmt: skip
def test_a_signal_mid_epoch_saves_the_iteration_and_the_resumed_run_equals_the_uninterrupted_one(
    tmp_path, monkeypatch, number, status
):
    whole = write_config(tmp_path / "whole", epochs=3, ending_epoch=2, evaluate=False)
    assert train(whole) == 0
    config = write_config(tmp_path / "cut", epochs=3, ending_epoch=2, evaluate=False)
    signal_at(monkeypatch, number, epoch=1, iteration=0)
    assert train(config) == status
    monkeypatch.undo()
    model_dir = tmp_path / "cut" / "exp" / "model"
    last = load_checkpoint(model_dir / "last.pth")
    assert (last["epoch"], last["iteration"]) == (1, 1) and last["interrupted"]
    assert not (model_dir / "final.pth").exists()
    assert signal.getsignal(number) in (signal.default_int_handler, signal.SIG_DFL)  # handlers put back
    assert train(config, "resume", "auto") == 0
    assert same_weights(weights(model_dir / "final.pth"), weights(tmp_path / "whole" / "exp" / "model" / "final.pth"))


@pytest.mark.slow
@pytest.mark.parametrize("nproc", ["1", "2"])
def test_train_sh_passes_sigterm_on_and_exits_75_with_last_pth_saved(tmp_path, nproc):
    config = write_config(tmp_path, epochs=400, ending_epoch=2, evaluate=False, print_freq=1)
    copy = tmp_path / "repo"
    (copy / "config" / "tiny").mkdir(parents=True)
    for name in ("tool", "semseg", "acosp", "dataset"):
        os.symlink(ROOT / name, copy / name)
    (copy / "config" / "tiny" / "tiny_segnet.yaml").write_text(config.read_text())
    env = {**os.environ, "PYTHON": sys.executable, "DEVICE": "cpu", "OMP_NUM_THREADS": "1", "NPROC": nproc}
    process = subprocess.Popen(["sh", "tool/train.sh", "tiny", "segnet"], cwd=copy, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    log = tmp_path / "exp" / "model"
    deadline = time.time() + 120
    while time.time() < deadline and not (log / "last.pth").exists():
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=120)
    assert process.returncode == EXIT_PREEMPTED, out[-2000:]
    assert "SIGTERM in epoch" in out and "training failed (exit code 75): not testing" in out
    last = load_checkpoint(log / "last.pth")
    assert last["epoch"] < 400 and last["interrupted"] in (True, False)  # stopped within an epoch or between two


def test_a_run_stopped_before_final_pth_was_written_writes_it_on_resume(tmp_path):
    config = write_config(tmp_path, epochs=2, ending_epoch=1, evaluate=False)
    assert train(config) == 0
    model_dir = tmp_path / "exp" / "model"
    (model_dir / "final.pth").unlink()  # a kill after last.pth recorded the last epoch
    (model_dir / ".last.pth.k1ll3d0k.pth").write_bytes(b"half a checkpoint")  # what a kill mid-save leaves
    assert train(config, "resume", "auto") == 0
    assert same_weights(weights(model_dir / "final.pth"), weights(model_dir / "last.pth"))
    assert not (model_dir / ".last.pth.k1ll3d0k.pth").exists()


def test_final_pth_is_written_before_last_pth(tmp_path, monkeypatch):
    config = write_config(tmp_path, epochs=2, ending_epoch=1, evaluate=False)
    written = []
    real = checkpoint_module.save_checkpoint

    def save(state, path):
        written.append(os.path.basename(path))
        return real(state, path)

    monkeypatch.setattr(checkpoint_module, "save_checkpoint", save)
    assert train(config) == 0
    assert written[-3:] == ["train_epoch_2.pth", "final.pth", "last.pth"]


def test_non_finite_weights_are_never_saved_and_the_last_good_checkpoint_stays(tmp_path, monkeypatch):
    config = write_config(tmp_path, epochs=3, ending_epoch=2, evaluate=False)
    real = training.train_epoch

    def diverging(model, loader, epoch, *args, **kwargs):
        result = real(model, loader, epoch, *args, **kwargs)
        if epoch == 1:  # the epoch's last step blew up a BatchNorm statistic; its loss was still finite
            next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)).running_var.fill_(float("inf"))
        return result

    monkeypatch.setattr(train_tool, "train_epoch", diverging)
    with pytest.raises(CheckpointError, match=r"not writing .*train_epoch_2.pth: non-finite values in state_dict\."):
        train(config)
    model_dir = tmp_path / "exp" / "model"
    assert load_checkpoint(model_dir / "last.pth")["epoch"] == 1 and not (model_dir / "final.pth").exists()


def test_a_loss_that_grows_a_hundredfold_is_warned_about(tmp_path, monkeypatch, capsys):
    config = write_config(tmp_path, epochs=2, ending_epoch=1, evaluate=False)
    real = training.train_epoch

    def growing(model, loader, epoch, *args, **kwargs):
        result = real(model, loader, epoch, *args, **kwargs)
        result.loss *= 1e4 if epoch == 1 else 1
        return result

    monkeypatch.setattr(train_tool, "train_epoch", growing)
    assert train(config) == 0
    assert "the run may be diverging" in capsys.readouterr().out


@pytest.mark.slow
def test_a_resume_pruned_otherwise_stops_or_follows_the_checkpoint_when_told(tmp_path):
    config = write_config(tmp_path, epochs=3, ending_epoch=2, evaluate=False)
    assert train(config, "epochs", 3, "save_freq", 1) == 0
    model_dir = tmp_path / "exp" / "model"
    middle = model_dir / "train_epoch_1.pth"
    with pytest.raises(TrainingError, match=r"sparsity: checkpoint 0.5, config 0.75; ending_epoch: checkpoint 2"):
        train(config, "resume", middle, "sparsity", 0.75, "ending_epoch", 3)
    assert train(config, "resume", middle, "sparsity", 0.75, "resume_pruning", "checkpoint") == 0
    final = load_checkpoint(model_dir / "final.pth")
    assert final["pruner"]["final_sparsity"] == 0.5 and final["config"]["sparsity"] == 0.5
    assert yaml.safe_load((model_dir / "config.yaml").read_text())["TRAIN"]["sparsity"] == 0.5
    dense = write_config(tmp_path / "dense", epochs=1, sparsity=0.0, evaluate=False)
    assert train(dense) == 0
    with pytest.raises(TrainingError, match="sparsity: checkpoint 0.0, config 0.5"):
        train(dense, "resume", "auto", "epochs", 2, "sparsity", 0.5)


@pytest.mark.slow
def test_one_run_per_folder_and_a_finished_run_is_kept_unless_told(tmp_path, capsys):
    config = write_config(tmp_path, epochs=1, ending_epoch=1, evaluate=False)
    model_dir = tmp_path / "exp" / "model"
    busy = r"model is in use by another run \(pid \d+ on .*another training"
    with hold(model_dir, "another training run"), pytest.raises(ExperimentBusy, match=busy):
        train(config)
    assert train(config) == 0
    before = (model_dir / "config.yaml").read_text()
    with pytest.raises(ExperimentBusy, match="holds a finished run .*'resume auto' continues it, 'overwrite true'"):
        train(config, "base_lr", 0.5)
    with pytest.raises(
        CheckpointError, match="missing.pth does not exist"
    ):  # fails in its setup: the finished run's files stay as they were
        train(config, "resume", "auto", "base_lr", 0.5, "weight", tmp_path / "missing.pth")
    assert (model_dir / "config.yaml").read_text() == before
    assert train(config, "overwrite", "true", "base_lr", 0.02) == 0
    assert "base_lr: 0.02" in (model_dir / "config.yaml").read_text()
    capsys.readouterr()
    assert train(config, "save_path", tmp_path / "typo" / "model", "resume", "auto") == 0
    assert "resume auto: no " in capsys.readouterr().out


def test_a_checkpoint_changed_on_disk_is_refused_by_name(tmp_path):
    path = save_checkpoint({"state_dict": {"w": torch.arange(1000.0)}, "epoch": 1}, tmp_path / "c.pth")
    assert torch.equal(load_checkpoint(path)["state_dict"]["w"], torch.arange(1000.0))
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith("data/0"))
    with open(path, "r+b") as handle:  # the member's data start after its local header
        handle.seek(info.header_offset + 26)
        name_length, extra_length = (int.from_bytes(handle.read(2), "little") for _ in range(2))
        handle.seek(info.header_offset + 30 + name_length + extra_length + 400)
        handle.write(b"\xff\xff\xff\x7f")
    with pytest.raises(CheckpointError, match="c.pth is damaged: its tensors do not match the checksum"):
        load_checkpoint(path)


def test_a_full_disk_is_an_error_that_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    path = save_checkpoint({"epoch": 1}, tmp_path / "last.pth")

    def full(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 512 vs 0")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(CheckpointError, match=r"cannot write checkpoint .*last.pth: .*unexpected pos.* free on that"):
        save_checkpoint({"epoch": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1 and sorted(p.name for p in tmp_path.iterdir()) == ["last.pth"]


def test_the_free_space_check_speaks_in_mib_for_small_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint_module.shutil, "disk_usage", lambda path: SimpleNamespace(free=1000))
    with pytest.raises(CheckpointError, match=r"has 0.0 MiB free, but checkpoints of this network need about \d"):
        checkpoint_module.check_free_space(tmp_path, torch.nn.Linear(100, 100))


def test_testing_a_checkpoint_of_another_class_count_stops_before_any_image(tmp_path, capsys):
    config = write_config(tmp_path, epochs=1, ending_epoch=1, evaluate=False)
    assert train(config) == 0
    names = tmp_path / "names.txt"
    names.write_text("".join(f"c{i}\n" for i in range(5)))
    overrides = ["classes", "5", "names_path", str(names), "colors_path", str(names)]
    assert test_tool.main(["--config", str(config), *overrides, "--device", "cpu"]) == 2
    assert "holds a network of 3 classes, but the config has 5 (classes)" in capsys.readouterr().out
    assert not (tmp_path / "exp" / "result" / "val").exists()


def test_sizes_that_pool_to_nothing_and_bom_list_files(tmp_path):
    config = write_config(tmp_path, epochs=1, ending_epoch=1)
    with pytest.raises(ValueError, match="test_h must be at least 32 for SegNet with 5 blocks, got 3"):
        train(config, "test_h", 3)
    lines = (tmp_path / "data" / "train.txt").read_text()
    (tmp_path / "bom.txt").write_text("\ufeff" + lines, encoding="utf-8")
    entries = read_list("train", tmp_path / "data", tmp_path / "bom.txt")
    assert entries[0].image == str(tmp_path / "data" / "images" / "0.png")
