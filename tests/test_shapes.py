"""The built-in 'shapes' dataset: deterministic, valid for SemData, generated on first use by train.py."""

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest
from train_helpers import ROOT

from semseg.config import load_config
from semseg.data.dataset import SemData
from semseg.data.images import read_label
from semseg.data.list_files import OverwriteError
from semseg.data.palette import read_colors, read_names
from semseg.data.shapes import CLASSES, COLORS, IGNORE, ensure_dataset, generate, sample

SIZES = {"train": 6, "val": 3, "test": 3}


def test_samples_follow_from_the_seed_alone():
    image, label = sample(3, "val", seed=5)
    again_image, again_label = sample(3, "val", seed=5)
    assert np.array_equal(image, again_image) and np.array_equal(label, again_label)
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8 and label.shape == (64, 64)
    assert not np.array_equal(image, sample(3, "val", seed=6)[0])
    assert not np.array_equal(image, sample(3, "train", seed=5)[0])
    assert not np.array_equal(image, sample(4, "val", seed=5)[0])


def test_labels_are_classes_with_a_thin_ignore_band():
    labels = np.stack([sample(i)[1] for i in range(40)])
    assert set(np.unique(labels).tolist()) <= set(range(len(CLASSES))) | {IGNORE}
    assert set(range(len(CLASSES))) <= set(np.unique(labels).tolist())  # every class appears
    ignored = (labels == IGNORE).mean()
    assert 0.005 < ignored < 0.08  # edges only
    foreground = ((labels > 0) & (labels != IGNORE)).mean()
    assert 0.1 < foreground < 0.5


def test_colour_alone_does_not_tell_the_shape_classes_apart():
    """The mean colour of every shape class is about the same: a network has to look at outlines."""
    means = {cls: [] for cls in range(1, len(CLASSES))}
    for i in range(60):
        image, label = sample(i)
        for cls in means:
            if (label == cls).sum() > 20:
                means[cls].append(image[label == cls].mean(0))
    centres = np.array([np.mean(values, 0) for values in means.values()])
    assert np.abs(centres - centres.mean(0)).max() < 25


def test_generated_dataset_is_identical_twice_and_read_by_semdata(tmp_path):
    generate(tmp_path / "a", SIZES, seed=2)
    generate(tmp_path / "b", SIZES, seed=2)
    for split, count in SIZES.items():
        lines = (tmp_path / "a" / f"{split}.txt").read_text().splitlines()
        assert lines[0] == "# list file written by tool/make_shapes.py"
        assert len(lines) == count + 1 and lines == (tmp_path / "b" / f"{split}.txt").read_text().splitlines()
        for line in lines[1:]:
            for relative in line.split():
                assert (tmp_path / "a" / relative).read_bytes() == (tmp_path / "b" / relative).read_bytes()
    data = SemData("train", tmp_path / "a", tmp_path / "a" / "train.txt", classes=len(CLASSES))
    image, label = data[0]
    assert len(data) == 6 and image.shape == (64, 64, 3) and label.shape == (64, 64)
    first_label = read_label(str(tmp_path / "a" / "labels" / "train" / "train_00000.png"))
    assert np.array_equal(first_label, sample(0, seed=2)[1])


def test_generating_into_another_dataset_overwrites_nothing(tmp_path):
    (tmp_path / "train.txt").write_text("/SegNet/CamVid/train/a.png /SegNet/CamVid/trainannot/a.png\n")
    with pytest.raises(OverwriteError, match="train.txt: exists and was not written by this repository's data tools"):
        generate(tmp_path, SIZES)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["train.txt"]  # nothing written
    other = tmp_path / "other"
    (other / "images" / "val").mkdir(parents=True)
    cv2.imwrite(str(other / "images" / "val" / "val_00000.png"), np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(OverwriteError, match="val_00000.png: exists and is not an image of this dataset"):
        generate(other, SIZES)
    assert cv2.imread(str(other / "images" / "val" / "val_00000.png")).shape == (4, 4, 3)
    partial = tmp_path / "partial"  # an interrupted run: images, no lists yet; the same seed goes on
    generate(partial, {"train": 2}, seed=2)
    (partial / "train.txt").unlink()
    generate(partial, SIZES, seed=2)
    generate(partial, SIZES, seed=3)  # its own dataset: regenerated with another seed
    assert len((partial / "test.txt").read_text().splitlines()) == SIZES["test"] + 1


def test_names_and_colours_files_match_the_generator():
    assert read_names(ROOT / "dataset" / "shapes" / "shapes_names.txt") == list(CLASSES)
    assert read_colors(ROOT / "dataset" / "shapes" / "shapes_colors.txt").tolist() == [list(c) for c in COLORS]


def test_impossible_sizes_are_value_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown splits"):
        generate(tmp_path, {"training": 3})
    with pytest.raises(ValueError, match="at least one image"):
        generate(tmp_path, {"train": 0})


def test_ensure_dataset_generates_only_when_the_lists_are_missing(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr("semseg.data.shapes.generate", lambda root: calls.append(root) or generate(root, SIZES))
    root = tmp_path / "shapes"
    opts = ["data_root", str(root)] + [
        item for split in ("train", "val", "test") for item in (f"{split}_list", str(root / f"{split}.txt"))
    ]
    cfg = load_config(ROOT / "config" / "shapes" / "shapes_segnet_0.75.yaml", opts)
    assert ensure_dataset(cfg, log=lambda message: None) is True
    assert calls == [root] and (root / "test.txt").is_file()
    assert ensure_dataset(cfg, log=lambda message: None) is False and len(calls) == 1
    other = load_config(ROOT / "config" / "camvid" / "camvid_segnet.yaml")
    assert ensure_dataset(other) is False


def test_make_shapes_writes_the_lists(tmp_path):
    result = subprocess.run(
        [sys.executable, "tool/make_shapes.py", str(tmp_path), "--train", "2", "--val", "1", "--test", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert len((tmp_path / "train.txt").read_text().splitlines()) == 1 + 2  # the mark, two images
    assert "test.txt: 1 images" in result.stdout


@pytest.mark.slow
def test_quick_start_trains_tests_reports_and_feeds_the_figures_and_the_table(tmp_path):
    """sh tool/quickstart.sh with the default config shrunk by overrides (a few images, two epochs);
    then the schedule and segmentation figures and the table script on its run."""
    data = tmp_path / "shapes"
    generate(data, {"train": 8, "val": 4, "test": 4})
    shared = ["data_root", str(data), "epochs", "2", "ending_epoch", "1", "batch_size", "4", "batch_size_val", "4"]
    for split in ("train", "val", "test"):
        shared += [f"{split}_list", str(data / f"{split}.txt")]
    run = tmp_path / "runs" / "segnet_0.75"
    opts = [*shared, "save_path", str(run / "model"), "save_folder", str(run / "result")]
    env = {"PYTHON": sys.executable, "DEVICE": "cpu", "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        ["sh", "tool/quickstart.sh", *opts], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    results = run / "result" / "val" / "ss"
    for path in (run / "model" / "final.pth", results / "metrics.csv", results / "gray"):
        assert str(path) in out and path.exists()
    assert "tensorboard --logdir" in out and list(run.glob("events.out.tfevents.*"))
    rows = {line.split("  ")[0]: line for line in out.splitlines() if line.startswith(("dense", "ACoSP, sparsity"))}
    assert set(rows) == {"dense", "ACoSP, sparsity 0.75"}
    assert "(100.0%)" in rows["dense"] and "(25." in rows["ACoSP, sparsity 0.75"]

    def tool(*args):
        done = subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    tool("tool/plot_schedule.py", run, "--output", tmp_path / "schedule.png")
    schedule = cv2.imread(str(tmp_path / "schedule.png"))
    assert schedule is not None and (schedule < 250).any()
    tool(
        "tool/plot_segmentation.py",
        "shapes",
        "segnet_0.75",
        "--folder",
        run.parent,
        "--count",
        "2",
        "--height",
        "32",
        "--output",
        tmp_path / "maps.png",
        "--set",
        *shared,
    )
    maps = cv2.imread(str(tmp_path / "maps.png"))
    assert maps is not None and maps.shape[0] == 30 + 2 * (32 + 6) and maps.shape[1] > 3 * 32

    readme = tmp_path / "shapes.md"
    readme.write_text("before\n<!-- shapes-table:start -->\nold\n<!-- shapes-table:end -->\nafter\n")
    tool(
        "benchmarks/results_table.py",
        "shapes",
        "--skip-training",
        "--sparsities",
        "0.75",
        "--folder",
        run.parent,
        "--document",
        readme,
        "--json",
        tmp_path / "table.json",
        *shared,
    )
    text = readme.read_text()
    assert text.startswith("before\n") and text.endswith("after\n") and "\nold\n" not in text
    assert "| 0.75 | 4 |" in text and "python benchmarks/results_table.py shapes --skip-training" in text
    assert "publication" not in text.split("\n\n")[0]  # it quotes no numbers for shapes
    record = json.loads((tmp_path / "table.json").read_text())
    # a quarter of 512 channels: 4 of 16, 8 of 32 and 16 of 64 per layer
    row = record["rows"][0]
    assert row["kept_channels"] == 128 and 0 <= row["mIoU"] <= 1 and row["latency"] > 0
    assert 0 < row["macs"] < 0.2e9 and row["crop"] == "64x64"


@pytest.mark.slow
def test_device_agreement_benchmark_compares_two_runs_through_the_hard_conversion(tmp_path):
    data = tmp_path / "shapes"
    generate(data, {"train": 8, "val": 4, "test": 4})
    opts = ["data_root", str(data), "batch_size", "4", "batch_size_val", "4", "epochs", "2", "ending_epoch", "1"]
    for split in ("train", "val", "test"):
        opts += [f"{split}_list", str(data / f"{split}.txt")]
    command = [sys.executable, "benchmarks/device_agreement.py", "--devices", "cpu", "--folder", tmp_path / "runs"]
    result = subprocess.run([*map(str, command), *opts], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    row = [cell.strip() for cell in result.stdout.splitlines()[-1].split("|")[1:-1]]
    assert row[0] == "cpu" and row[2] == "128 / 512" and row[3:] == ["100%", "100.0%"]
    assert (tmp_path / "runs" / "cpu" / "model" / "final.pth").exists()


@pytest.mark.slow
def test_sliding_window_benchmark_counts_the_windows_it_runs():
    command = ["benchmarks/sliding_window_speed.py", "--device", "cpu", "--images", "1", "--size", "65x129"]
    command += ["--config", "config/shapes/shapes_segnet.yaml", "base_size", "129", "test_h", "65", "test_w", "65"]
    result = subprocess.run([sys.executable, *command], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    # one scale of 65x129 under 65x65 crops at a stride of 44: columns 0, 44 and 64
    assert result.stdout.splitlines()[-1].startswith("3 windows per image, ")
