"""Preparing the downloaded datasets: train-id labels and list files that SemData then reads."""

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from tool import convert_cityscapes, make_lists
from util.dataset import SemData
from util.prepare_data import CITYSCAPES_TRAIN_IDS, prepare_ade20k, prepare_camvid, prepare_voc2012

ROOT = Path(__file__).resolve().parents[1]


def image(path, shape=(4, 9)):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((*shape, 3), 80, np.uint8))


def label(path, values):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.asarray(values, np.uint8))


def run_tool(*args):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True)


@pytest.mark.filterwarnings("error")
def test_cityscapes_label_ids_become_the_19_train_ids(tmp_path):
    ids = np.array([list(range(0, 18)), [*range(18, 34), 255, 255]], np.uint8).repeat(2, axis=0)  # 255: -1
    for split, city in (("train", "aachen"), ("train", "bremen"), ("val", "lindau")):
        stem = f"{city}_000000_000019"
        image(tmp_path / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", ids.shape)
        label(tmp_path / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", ids)
    result = run_tool("tool/convert_cityscapes.py", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "fine_train.txt: 2 samples" in result.stdout and "fine_val.txt: 1 samples" in result.stdout
    lines = (tmp_path / "fine_train.txt").read_text().splitlines()
    assert lines[0] == (
        "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png "
        "gtFine/train/aachen/aachen_000000_000019_gtFine_labelTrainIds.png"
    )
    converted = cv2.imread(str(tmp_path / lines[0].split()[1]), cv2.IMREAD_UNCHANGED)
    expected = np.vectorize(lambda i: CITYSCAPES_TRAIN_IDS.get(int(i), 255))(ids)
    assert converted.dtype == np.uint8 and np.array_equal(converted, expected)
    assert sorted(set(np.unique(converted).tolist()) - {255}) == list(range(19))
    assert converted[0, 7] == 0 and converted[0, 0] == 255 and converted[2, -1] == 255  # road; unlabeled; plate
    data = SemData("val", tmp_path, tmp_path / "fine_val.txt", classes=19)
    assert np.array_equal(data[0][1], expected)


def test_cityscapes_without_images_or_labels_is_an_error(tmp_path, capsys):
    assert convert_cityscapes.main([str(tmp_path)]) == 1
    assert "gtFine/train: folder not found" in capsys.readouterr().err
    label(tmp_path / "gtFine" / "train" / "a" / "a_1_gtFine_labelIds.png", [[7]])
    assert convert_cityscapes.main([str(tmp_path), "--splits", "train"]) == 1
    assert "a_1_leftImg8bit.png: not found" in capsys.readouterr().err


def test_ade20k_labels_shift_to_0_149_with_other_as_ignore(tmp_path):
    for split, name in (("training", "ADE_train_00000001"), ("validation", "ADE_val_00000001")):
        image(tmp_path / "images" / split / f"{name}.jpg", (2, 3))
        label(tmp_path / "annotations" / split / f"{name}.png", [[0, 1, 2], [75, 149, 150]])
    assert prepare_ade20k(tmp_path) == {"training.txt": 1, "validation.txt": 1}
    assert (tmp_path / "validation.txt").read_text() == (
        "images/validation/ADE_val_00000001.jpg annotations_trainids/validation/ADE_val_00000001.png\n"
    )
    data = SemData("train", tmp_path, tmp_path / "training.txt", classes=150)
    assert data[0][1].tolist() == [[255, 0, 1], [74, 148, 149]]


def test_voc2012_train_aug_is_every_augmented_label_except_val(tmp_path):
    for sample in ("2007_000032", "2007_000033", "2008_000001", "2011_003276"):
        image(tmp_path / "JPEGImages" / f"{sample}.jpg", (2, 2))
        label(tmp_path / "SegmentationClassAug" / f"{sample}.png", [[0, 20], [255, 3]])
    (tmp_path / "ImageSets" / "Segmentation").mkdir(parents=True)
    (tmp_path / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_000033\n2011_003276\n")
    assert prepare_voc2012(tmp_path) == {"train_aug.txt": 2, "val.txt": 2}
    assert (tmp_path / "train_aug.txt").read_text().splitlines() == [
        "JPEGImages/2007_000032.jpg SegmentationClassAug/2007_000032.png",
        "JPEGImages/2008_000001.jpg SegmentationClassAug/2008_000001.png",
    ]
    assert len(SemData("val", tmp_path, tmp_path / "val.txt", classes=21)) == 2


def test_camvid_lists_pair_each_image_with_its_annotation(tmp_path):
    for split in ("train", "val", "test"):
        for name in ("0001TP_006690.png", "Seq05VD_f00000.png"):
            image(tmp_path / split / name, (2, 2))
            label(tmp_path / f"{split}annot" / name, [[0, 11], [10, 5]])
    result = run_tool("tool/make_lists.py", "camvid", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "test.txt").read_text().splitlines()[1] == "test/Seq05VD_f00000.png testannot/Seq05VD_f00000.png"
    data = SemData("train", tmp_path, tmp_path / "train.txt", classes=11, ignore_label=11)
    assert data[0][1].tolist() == [[0, 11], [10, 5]]
    (tmp_path / "valannot" / "Seq05VD_f00000.png").unlink()
    with pytest.raises(FileNotFoundError, match="valannot/Seq05VD_f00000.png: not found"):
        prepare_camvid(tmp_path)


def test_make_lists_reports_a_missing_layout_as_an_error_message(tmp_path, capsys):
    assert make_lists.main(["voc2012", str(tmp_path)]) == 1
    assert "error: " + str(tmp_path / "ImageSets/Segmentation/val.txt") + ": not found" in capsys.readouterr().err
