"""tool/test.py and tool/test.sh end to end on a tiny generated dataset and a SegNet checkpoint."""

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

import tool.demo as demo_tool
import tool.test as test_tool
from semseg.models import build_model, describe_arch
from semseg.training.checkpoint import save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
CLASSES = 3
COLORS = [[255, 0, 0], [0, 255, 0], [0, 0, 255]]
ARCH = {"arch": "segnet", "classes": CLASSES, "width": 0.125}  # a narrow SegNet keeps the tests fast


def independent_scores(pairs, classes=CLASSES, ignore=255):
    """IoU and Acc per class, mIoU, mAcc, allAcc from (prediction, label) arrays, by counting pixels."""
    intersection, union, target = np.zeros(classes), np.zeros(classes), np.zeros(classes)
    for prediction, label in pairs:
        valid = label != ignore
        for c in range(classes):
            p, t = (prediction == c) & valid, (label == c) & valid
            intersection[c] += (p & t).sum()
            union[c] += (p | t).sum()
            target[c] += t.sum()
    iou = [i / u if u else float("nan") for i, u in zip(intersection, union)]
    acc = [i / t if t else float("nan") for i, t in zip(intersection, target)]
    return iou, acc, np.nanmean(iou), np.nanmean(acc), intersection.sum() / target.sum()


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """Images, labels, list files, class files, a config and a checkpoint in a temporary folder."""
    root = tmp_path_factory.mktemp("tiny")
    generator = np.random.default_rng(0)
    (root / "data" / "images").mkdir(parents=True)
    (root / "data" / "labels").mkdir()
    lines = []
    for index, (height, width) in enumerate([(40, 48), (36, 30), (48, 40)]):
        image = generator.integers(0, 256, (height, width, 3), dtype=np.uint8)
        label = generator.integers(0, CLASSES, (height, width)).astype(np.uint8)
        label[:4] = 255
        cv2.imwrite(str(root / "data" / "images" / f"img{index}.jpg"), image)
        cv2.imwrite(str(root / "data" / "labels" / f"img{index}.png"), label)
        lines.append(f"images/img{index}.jpg labels/img{index}.png")
    (root / "val.txt").write_text("\n".join(lines) + "\n")
    (root / "names.txt").write_text("road\ncar\nsky\n")
    (root / "colors.txt").write_text("".join(" ".join(map(str, color)) + "\n" for color in COLORS))
    config = {
        "DATA": {
            "dataset": "tiny",
            "data_root": str(root / "data"),
            "train_list": str(root / "val.txt"),
            "classes": CLASSES,
        },
        "TRAIN": {"arch": "segnet", "save_path": str(root / "exp" / "model")},
        "TEST": {
            "test_list": str(root / "val.txt"),
            "base_size": 48,
            "test_h": 32,
            "test_w": 32,
            "batch_size_test": 2,
            "save_folder": str(root / "exp" / "result"),
            "names_path": str(root / "names.txt"),
            "colors_path": str(root / "colors.txt"),
        },
    }
    (root / "tiny_segnet.yaml").write_text(yaml.safe_dump(config))
    torch.manual_seed(0)
    model = build_model(ARCH)
    save_checkpoint(
        {"state_dict": model.state_dict(), "arch": describe_arch(ARCH)},
        root / "exp" / "model" / "final.pth",
    )
    return root


def run(experiment, *overrides):
    return test_tool.main(["--config", str(experiment / "tiny_segnet.yaml"), *overrides])


def gray_and_labels(folder, experiment, names=("img0", "img1", "img2")):
    pairs = []
    for name in names:
        gray = cv2.imread(str(folder / "gray" / f"{name}.png"), cv2.IMREAD_UNCHANGED)
        label = cv2.imread(str(experiment / "data" / "labels" / f"{name}.png"), cv2.IMREAD_UNCHANGED)
        pairs.append((gray, label))
    return pairs


def check_csv_against_pngs(folder, experiment, names=("img0", "img1", "img2")):
    rows = read_csv(folder / "metrics.csv")
    iou, acc, miou, macc, allacc = independent_scores(gray_and_labels(folder, experiment, names))
    assert rows[0] == ["name", "IoU", "Acc"]
    assert [row[0] for row in rows[1:]] == ["road", "car", "sky", "mIoU", "mAcc", "allAcc"]
    for row, i, a in zip(rows[1:4], iou, acc):
        assert float(row[1]) == pytest.approx(i, abs=1e-6, nan_ok=True)
        assert float(row[2]) == pytest.approx(a, abs=1e-6, nan_ok=True)
    assert float(rows[4][1]) == pytest.approx(miou, abs=1e-6)
    assert float(rows[5][2]) == pytest.approx(macc, abs=1e-6)
    assert float(rows[6][2]) == pytest.approx(allacc, abs=1e-6)
    return rows


def test_test_py_writes_predictions_and_a_csv_that_matches_the_pngs(experiment, capsys):
    assert run(experiment) == 0
    folder = experiment / "exp" / "result" / "val" / "ss"
    for name, shape in (("img0", (40, 48)), ("img1", (36, 30)), ("img2", (48, 40))):
        gray = cv2.imread(str(folder / "gray" / f"{name}.png"), cv2.IMREAD_UNCHANGED)
        color = cv2.cvtColor(cv2.imread(str(folder / "color" / f"{name}.png")), cv2.COLOR_BGR2RGB)
        assert gray.shape == shape and gray.dtype == np.uint8 and gray.max() < CLASSES
        assert np.array_equal(color, np.array(COLORS, np.uint8)[gray])
    rows = check_csv_against_pngs(folder, experiment)
    printed = capsys.readouterr().out
    assert "mIoU" in printed and "allAcc" in printed and f"{float(rows[4][1]):.4f}" in printed
    (log,) = (experiment / "exp" / "result").glob("test-*.log")
    assert "allAcc" in log.read_text()
    # has_prediction scores the PNGs that are there, without a checkpoint
    (folder / "metrics.csv").unlink()
    assert run(experiment, "has_prediction", "true", "model_path", str(experiment / "nothing.pth")) == 0
    check_csv_against_pngs(folder, experiment)


def publication_camvid_scores(pairs, classes=CLASSES):
    """The publication's CamVid scoring, restated: void (here 255) as the label value ``classes``,
    histogrammed into ``classes`` bins whose last one is closed."""
    edges = np.arange(classes + 1)
    intersection, union, target = np.zeros(classes), np.zeros(classes), np.zeros(classes)
    for prediction, label in pairs:
        prediction, label = prediction.ravel().astype(np.int64), label.ravel().astype(np.int64)
        label = np.where(label == 255, classes, label)
        area_intersection = np.histogram(prediction[prediction == label], bins=edges)[0]
        area_output, area_target = np.histogram(prediction, bins=edges)[0], np.histogram(label, bins=edges)[0]
        intersection += area_intersection
        union += area_output + area_target - area_intersection
        target += area_target
    return np.mean(intersection / union), np.mean(intersection / target), intersection.sum() / target.sum()


def test_void_as_last_class_also_writes_the_publications_camvid_scores_of_the_same_predictions(experiment, capsys):
    assert run(experiment, "void_as_last_class", "true") == 0
    folder = experiment / "exp" / "result" / "val" / "ss"
    check_csv_against_pngs(folder, experiment)  # the usual scores are unchanged
    rows = {row[0]: row[1:] for row in read_csv(folder / "metrics_void_as_last_class.csv")}
    miou, macc, allacc = publication_camvid_scores(gray_and_labels(folder, experiment))
    assert float(rows["mIoU"][0]) == pytest.approx(miou, abs=1e-6)
    assert float(rows["mAcc"][1]) == pytest.approx(macc, abs=1e-6)
    assert float(rows["allAcc"][1]) == pytest.approx(allacc, abs=1e-6)
    usual = {row[0]: row[1:] for row in read_csv(folder / "metrics.csv")}
    assert float(rows["mIoU"][0]) < float(usual["mIoU"][0])  # void pixels are never right
    assert "the publication's CamVid metric" in capsys.readouterr().out
    (folder / "metrics_void_as_last_class.csv").unlink()


def test_index_start_and_index_step_select_a_slice(experiment):
    # img1 alone, with every label of class 2 turned into 255: class 2 may be absent
    assert run(experiment, "index_start", "1", "index_step", "1", "save_folder", str(experiment / "one")) == 0
    rows = read_csv(experiment / "one" / "val" / "ss" / "metrics.csv")
    assert len(rows) == 7
    assert sorted(path.name for path in (experiment / "one" / "val" / "ss" / "gray").iterdir()) == ["img1.png"]


def test_multi_scale_flip_and_test_split(experiment):
    images = experiment / "images.txt"
    images.write_text("images/img0.jpg\nimages/img2.jpg\n")
    folder = experiment / "ms_out"
    status = run(
        experiment,
        *("split", "test", "test_list", str(images), "scales", "[0.75, 1.0, 1.25]", "flip", "false"),
        *("save_folder", str(folder)),
    )
    assert status == 0
    assert sorted(path.name for path in (folder / "test" / "ms" / "gray").iterdir()) == ["img0.png", "img2.png"]
    assert sorted(path.name for path in (folder / "test" / "ms" / "color").iterdir()) == ["img0.png", "img2.png"]
    assert not (folder / "test" / "ms" / "metrics.csv").exists()


def test_a_missing_image_is_reported_the_others_evaluated_and_the_exit_is_nonzero(experiment, capsys):
    listing = experiment / "with_missing.txt"
    lines = (experiment / "val.txt").read_text().splitlines()
    listing.write_text("\n".join([lines[0], "images/gone.jpg labels/img1.png", lines[2]]) + "\n")
    folder = experiment / "missing_out"
    assert run(experiment, "test_list", str(listing), "save_folder", str(folder)) == 1
    printed = capsys.readouterr().out
    assert str(experiment / "data" / "images" / "gone.jpg") in printed and "1 image(s) failed" in printed
    result = folder / "val" / "ss"
    assert sorted(path.name for path in (result / "gray").iterdir()) == ["img0.png", "img2.png"]
    check_csv_against_pngs(result, experiment, names=("img0", "img2"))


def test_a_checkpoint_or_list_that_cannot_be_used_stops_with_status_2(experiment, capsys):
    model = build_model(ARCH)
    state = model.state_dict()
    state["dec1.1.weight"] = torch.zeros(5, 8, 3, 3)  # a classifier for 5 classes
    state.pop("enc1.0.1.running_var")
    bad = experiment / "bad.pth"
    save_checkpoint({"state_dict": state, "arch": ARCH}, bad)
    assert run(experiment, "model_path", str(bad)) == 2
    printed = capsys.readouterr().out
    assert "missing keys: enc1.0.1.running_var" in printed and "wrong shapes: dec1.1.weight" in printed
    assert run(experiment, "model_path", str(experiment / "nothing.pth")) == 2
    assert f"checkpoint {experiment / 'nothing.pth'} does not exist" in capsys.readouterr().out
    assert run(experiment, "test_list", str(experiment / "no_list.txt")) == 2
    assert f"{experiment / 'no_list.txt'}: list file not found" in capsys.readouterr().out
    assert run(experiment, "index_start", "3") == 2
    assert "index_start 3 is outside the list's 3 entries" in capsys.readouterr().out


def test_test_sh_finds_the_experiment_and_reports_bad_arguments(experiment, tmp_path):
    environment = {**os.environ, "PYTHON": sys.executable}
    result = subprocess.run(
        ["sh", "tool/test.sh", "nowhere", "segnet"], cwd=ROOT, env=environment, capture_output=True, text=True
    )
    assert result.returncode == 2 and "config/nowhere/nowhere_segnet.yaml not found" in result.stderr
    assert subprocess.run(["sh", "tool/test.sh"], cwd=ROOT, capture_output=True, text=True).returncode == 2


def _repository_copy(experiment: Path, tmp_path: Path, experiments: tuple[str, ...] = ("segnet",)) -> Path:
    """A copy of the repository with config/tiny/tiny_segnet.yaml and the checkpoint in exp/tiny/<name>/model,
    so that config/ and exp/ of the experiment live in a throwaway tree (tool/test.sh runs the tree's own
    semseg, whose ROOT is the tree, before any installed one)."""
    tree = tmp_path / "repo"
    for folder in ("acosp", "semseg", "tool", "dataset"):
        shutil.copytree(ROOT / folder, tree / folder, ignore=shutil.ignore_patterns("__pycache__"))
    config = yaml.safe_load((experiment / "tiny_segnet.yaml").read_text())
    del config["TRAIN"]["save_path"], config["TEST"]["save_folder"]
    (tree / "config" / "tiny").mkdir(parents=True)
    (tree / "config" / "tiny" / "tiny_segnet.yaml").write_text(yaml.safe_dump(config))
    for name in experiments:
        (tree / "exp" / "tiny" / name / "model").mkdir(parents=True)
        shutil.copy(experiment / "exp" / "model" / "final.pth", tree / "exp" / "tiny" / name / "model")
    return tree


@pytest.mark.slow
def test_test_sh_writes_the_results_beside_an_overridden_save_path(experiment, tmp_path):
    tree = _repository_copy(experiment, tmp_path, ("segnet", "other"))
    environment = {**os.environ, "PYTHON": sys.executable, "DEVICE": "cpu"}
    command = ["sh", "tool/test.sh", "tiny", "segnet", "save_path", "exp/tiny/other/model"]
    result = subprocess.run(command, cwd=tree, env=environment, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tree / "exp" / "tiny" / "other" / "result" / "val" / "ss" / "metrics.csv").is_file()
    assert not (tree / "exp" / "tiny" / "segnet" / "result").exists()  # the experiment's own results stay


@pytest.mark.slow
def test_two_processes_through_test_sh_give_the_single_process_results(experiment, tmp_path):
    tree = _repository_copy(experiment, tmp_path)
    environment = {
        **os.environ,
        "PYTHON": sys.executable,
        "NPROC": "2",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(tree),
    }
    result = subprocess.run(
        ["sh", "tool/test.sh", "tiny", "segnet", "batch_size_test", "4"],
        cwd=tree,
        env=environment,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    folder = tree / "exp" / "tiny" / "segnet" / "result" / "val" / "ss"
    assert sorted(path.name for path in (folder / "gray").iterdir()) == ["img0.png", "img1.png", "img2.png"]
    assert run(experiment, "save_folder", str(tmp_path / "single")) == 0
    single = read_csv(tmp_path / "single" / "val" / "ss" / "metrics.csv")
    assert read_csv(folder / "metrics.csv") == single


def test_demo_writes_colour_and_overlay_pictures_and_reports_bad_files(experiment, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("img0.jpg", "img1.jpg"):
        shutil.copy(experiment / "data" / "images" / name, photos / name)
    (photos / "broken.png").write_bytes(b"not a png")
    (photos / "notes.txt").write_text("not an image")
    output = tmp_path / "demo"
    status = demo_tool.main(
        ["--config", str(experiment / "tiny_segnet.yaml"), "--image", str(photos), "--output", str(output)]
        + ["--alpha", "0.25", "scales", "[0.75, 1.0]"]
    )
    assert status == 1
    assert str(photos / "broken.png") in capsys.readouterr().err
    names = sorted(path.name for path in output.iterdir())
    assert names == ["img0_color.png", "img0_overlay.png", "img1_color.png", "img1_overlay.png"]
    color = cv2.imread(str(output / "img0_color.png"))
    image = cv2.imread(str(photos / "img0.jpg"))
    assert {tuple(pixel) for pixel in color.reshape(-1, 3)} <= {tuple(c[::-1]) for c in COLORS}
    blended = np.rint(0.75 * image.astype(np.float32) + 0.25 * color.astype(np.float32))
    assert np.abs(cv2.imread(str(output / "img0_overlay.png")).astype(int) - blended).max() <= 1


def test_demo_from_a_checkpoint_alone_uses_the_config_saved_in_it(experiment, tmp_path, capsys):
    from semseg.config import load_config

    cfg = load_config(experiment / "tiny_segnet.yaml")
    checkpoint = torch.load(experiment / "exp" / "model" / "final.pth", weights_only=True)
    save_checkpoint({**checkpoint, "config": cfg.to_dict()}, tmp_path / "with_config.pth")
    image = experiment / "data" / "images" / "img1.jpg"
    arguments = ["--checkpoint", str(tmp_path / "with_config.pth"), "--image", str(image)]
    assert demo_tool.main([*arguments, "--output", str(tmp_path / "out"), "flip", "false"]) == 0
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["img1_color.png", "img1_overlay.png"]
    assert cv2.imread(str(tmp_path / "out" / "img1_color.png")).shape == (36, 30, 3)
    # without a config anywhere, the error says what to give
    assert demo_tool.main(["--checkpoint", str(experiment / "exp" / "model" / "final.pth"), "--image", str(image)]) == 2
    assert "holds no config; give --config" in capsys.readouterr().err


def test_a_class_absent_from_prediction_and_labels_is_excluded_or_zero(experiment, tmp_path, capsys):
    # predictions and labels of classes 0 and 1 only, scored with has_prediction
    (tmp_path / "labels").mkdir()
    gray = tmp_path / "result" / "val" / "ss" / "gray"
    gray.mkdir(parents=True)
    label = np.array([[0, 0, 1, 1], [0, 1, 1, 255]], np.uint8)
    cv2.imwrite(str(tmp_path / "labels" / "a.png"), label)
    cv2.imwrite(str(gray / "a.png"), np.array([[0, 1, 1, 1], [0, 1, 0, 0]], np.uint8))
    (tmp_path / "list.txt").write_text("images/a.jpg labels/a.png\n")
    common = ["has_prediction", "true", "data_root", str(tmp_path), "test_list", str(tmp_path / "list.txt")]
    common += ["save_folder", str(tmp_path / "result")]
    metrics = tmp_path / "result" / "val" / "ss" / "metrics.csv"
    assert run(experiment, *common) == 0
    rows = {row[0]: row[1:] for row in read_csv(metrics)}
    assert rows["sky"] == ["nan", "nan"] and float(rows["mIoU"][0]) == pytest.approx((2 / 4 + 3 / 5) / 2)
    assert "mIoU leaves out 1 of 3 classes" in capsys.readouterr().out
    assert run(experiment, *common, "absent_classes", "zero") == 0
    rows = {row[0]: row[1:] for row in read_csv(metrics)}
    assert rows["sky"] == ["0.000000", "0.000000"] and float(rows["mIoU"][0]) == pytest.approx((2 / 4 + 3 / 5) / 3)
    assert float(rows["allAcc"][1]) == pytest.approx(5 / 7)
