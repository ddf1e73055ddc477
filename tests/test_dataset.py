"""List-file segmentation data and CIFAR-10 batches: read back exactly, and every bad file named."""

import pickle

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from semseg.config import ROOT, build_config, load_config
from semseg.data import dataset
from semseg.data import transform as T
from semseg.data.dataset import Cifar10, ListEntry, SemData, read_cifar10_batch, read_list
from semseg.data.images import DatasetError
from semseg.data.transform import segmentation_transforms
from semseg.evaluation.evaluate import read_entries

CLASSES = 4


def make_dataset(root, count=3, size=(6, 8), seed=0):
    """PNG images and labels (values 0..3 and 255) under root, and a list file; returns the arrays written."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(exist_ok=True)
    samples, lines = [], []
    for i in range(count):
        image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)  # RGB
        label = rng.choice(np.array([0, 1, 2, 3, 255], np.uint8), size)
        cv2.imwrite(str(root / "images" / f"{i}.png"), image[:, :, ::-1])
        cv2.imwrite(str(root / "labels" / f"{i}.png"), label)
        samples.append((image, label))
        lines.append(f"images/{i}.png labels/{i}.png")
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    return samples


def test_a_dataset_on_disk_reads_back_exactly(tmp_path):
    samples = make_dataset(tmp_path)
    data = SemData("train", tmp_path, tmp_path / "train.txt", classes=CLASSES)
    assert len(data) == 3
    for (image, label), (read_image, read_label) in zip(samples, data):
        assert read_image.dtype == np.float32 and np.array_equal(read_image, image.astype(np.float32))
        assert read_label.dtype == np.uint8 and np.array_equal(read_label, label)


def test_absolute_paths_blank_lines_and_the_one_column_test_split(tmp_path):
    samples = make_dataset(tmp_path)
    (tmp_path / "abs.txt").write_text(f"\n{tmp_path}/images/1.png {tmp_path}/labels/1.png\n\n")
    data = SemData("val", "/nonexistent", tmp_path / "abs.txt")
    assert len(data) == 1 and np.array_equal(data[0][1], samples[1][1])
    (tmp_path / "test.txt").write_text("images/0.png\nimages/2.png\n")
    data = SemData("test", tmp_path, tmp_path / "test.txt", ignore_label=255)
    image, label = data[1]
    assert np.array_equal(image, samples[2][0]) and (label == 255).all() and label.shape == (6, 8)


def test_a_dataloader_yields_normalised_tensor_batches(tmp_path):
    make_dataset(tmp_path, count=4, size=(20, 24))
    transform = T.Compose([T.Crop(17, "rand", [0, 0, 0], 255), T.ToTensor(), T.Normalize([1, 2, 3], [2, 2, 2])])
    data = SemData("train", tmp_path, tmp_path / "train.txt", transform, classes=CLASSES)
    images, labels = next(iter(DataLoader(data, batch_size=4, worker_init_fn=T.worker_init_fn)))
    assert images.shape == (4, 3, 17, 17) and images.dtype == torch.float32
    assert labels.shape == (4, 17, 17) and labels.dtype == torch.int64
    assert set(labels.unique().tolist()) <= {0, 1, 2, 3, 255}


def test_from_config_resolves_paths_and_label_options(tmp_path):
    make_dataset(tmp_path)
    values = dict(dataset="toy", data_root=str(tmp_path), train_list=str(tmp_path / "train.txt"), classes=3)
    cfg = build_config({**values, "arch": "segnet", "save_path": str(tmp_path / "exp")})
    with pytest.raises(DatasetError, match=r"label values \[3\] are neither class ids \(0..2\)"):
        SemData.from_config(cfg, "train_list")[0]
    cfg.ignore_unknown_labels = True
    _, label = SemData.from_config(cfg, "train_list")[0]
    assert set(np.unique(label).tolist()) <= {0, 1, 2, 255}
    with pytest.raises(ValueError, match="val_list is not set"):
        SemData.from_config(cfg, "val_list")


def test_stray_label_values_name_the_file_and_values_or_become_ignore(tmp_path):
    make_dataset(tmp_path)
    label = np.array([[0, 1, 7], [9, 255, 2]], np.uint8)
    cv2.imwrite(str(tmp_path / "labels" / "1.png"), np.pad(label, ((0, 4), (0, 5))))
    data = SemData("train", tmp_path, tmp_path / "train.txt", classes=CLASSES)
    with pytest.raises(DatasetError, match=r"labels/1.png: label values \[7, 9\] are neither class ids"):
        data[1]
    mapped = SemData("train", tmp_path, tmp_path / "train.txt", classes=CLASSES, ignore_unknown_labels=True)[1][1]
    assert mapped[:2, :3].tolist() == [[0, 1, 255], [255, 255, 2]]
    unchecked = SemData("train", tmp_path, tmp_path / "train.txt")[1][1]  # classes unknown: nothing checked
    assert unchecked[0, 2] == 7


def test_the_list_is_checked_when_the_dataset_is_built(tmp_path):
    make_dataset(tmp_path)
    with pytest.raises(FileNotFoundError, match="nope.txt: list file not found"):
        SemData("train", tmp_path, tmp_path / "nope.txt")
    (tmp_path / "bad.txt").write_text("images/0.png labels/0.png\nimages/1.png\n")
    with pytest.raises(DatasetError, match=r"bad.txt, line 2: expected 'image label', got 1 fields"):
        SemData("train", tmp_path, tmp_path / "bad.txt")
    (tmp_path / "bad.txt").write_text("images/0.png labels/0.png extra\n")
    with pytest.raises(DatasetError, match="line 1: expected 'image label', got 3 fields"):
        SemData("val", tmp_path, tmp_path / "bad.txt")
    (tmp_path / "bad.txt").write_text("images/0.png labels/0.png\nimages/5.png labels/1.png\nimages/1.png x.png\n")
    with pytest.raises(FileNotFoundError, match="2 listed files do not exist") as error:
        SemData("train", tmp_path, tmp_path / "bad.txt")
    assert "line 2: " + str(tmp_path / "images" / "5.png") in str(error.value)
    assert "line 3: " + str(tmp_path / "x.png") in str(error.value)
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(DatasetError, match="empty.txt: the list file has no entries"):
        SemData("train", tmp_path, tmp_path / "empty.txt")
    with pytest.raises(ValueError, match="split must be one of"):
        SemData("training", tmp_path, tmp_path / "train.txt")


def test_training_and_testing_read_list_files_with_one_reader(tmp_path):
    make_dataset(tmp_path, count=2)
    absolute = tmp_path / "images" / "1.png"
    lines = f"images/0.png labels/0.png\n\n{absolute} labels/1.png\nimages/9.png labels/9.png\n"
    (tmp_path / "mixed.txt").write_text(lines)
    with pytest.raises(FileNotFoundError, match="2 listed files do not exist"):
        read_list("train", tmp_path, tmp_path / "mixed.txt")  # training: every file checked up front
    entries = read_entries("val", tmp_path, tmp_path / "mixed.txt")  # testing: a missing image fails alone later
    assert entries == [
        ListEntry(1, str(tmp_path / "images" / "0.png"), str(tmp_path / "labels" / "0.png"), "0"),
        ListEntry(3, str(absolute), str(tmp_path / "labels" / "1.png"), "1"),
        ListEntry(4, str(tmp_path / "images" / "9.png"), str(tmp_path / "labels" / "9.png"), "9"),
    ]
    (tmp_path / "test.txt").write_text("images/0.png\nimages/1.png labels/1.png\n")
    assert [entry.label for entry in read_list("test", tmp_path, tmp_path / "test.txt")] == [None, None]
    (tmp_path / "twice.txt").write_text("images/0.png labels/0.png\nlabels/0.png labels/1.png\n")
    with pytest.raises(DatasetError, match="twice.txt, lines 1 and 2: two images are named '0'"):
        read_entries("val", tmp_path, tmp_path / "twice.txt")
    with pytest.raises(DatasetError, match="line 1: expected 'image label', got 1 fields"):
        read_entries("val", tmp_path, tmp_path / "test.txt")


def test_unreadable_files_and_mismatched_sizes_name_the_file(tmp_path):
    make_dataset(tmp_path)
    (tmp_path / "images" / "0.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    cv2.imwrite(str(tmp_path / "labels" / "1.png"), np.zeros((5, 8), np.uint8))
    cv2.imwrite(
        str(tmp_path / "labels" / "2.png"), np.dstack([np.zeros((6, 8), np.uint8), np.ones((6, 8), np.uint8)] * 2)
    )
    data = SemData("train", tmp_path, tmp_path / "train.txt", classes=CLASSES)
    with pytest.raises(DatasetError, match="images/0.png: cannot read the image"):
        data[0]
    with pytest.raises(DatasetError, match=r"labels/1.png: the label is 5x8 but its image .*images/1.png is 6x8"):
        data[1]
    with pytest.raises(DatasetError, match="labels/2.png: the label is a RGBA image with different colour channels"):
        data[2]


def test_every_label_format_a_real_dataset_uses_gives_the_same_train_ids(tmp_path):
    """8-bit grey, palette (VOC), 16-bit, grey saved as RGB or RGBA; odd sizes; images grey, RGBA or 16-bit."""
    ids = np.random.default_rng(1).choice(np.array([0, 1, 2, 3, 255], np.uint8), (7, 11))  # odd sizes
    palette = np.random.default_rng(2).integers(0, 256, 768).astype(np.uint8).tolist()
    as_palette = Image.fromarray(ids, mode="P")
    as_palette.putpalette(palette)
    labels = {
        "grey.png": Image.fromarray(ids),
        "palette.png": as_palette,
        "sixteen.png": Image.fromarray(ids.astype(np.uint16)),
        "rgb.png": Image.fromarray(np.dstack([ids] * 3)),
        "rgba.png": Image.fromarray(np.dstack([ids] * 3 + [np.full_like(ids, 7)])),
    }
    rows, columns = np.mgrid[0:7, 0:11]
    colour = np.dstack([rows * 30, columns * 20, np.full((7, 11), 90)]).astype(np.uint8)  # smooth: JPEG keeps it
    images = {
        "grey.png": (np.dstack([colour[:, :, 0]] * 3), colour[:, :, 0]),
        "rgba.png": (colour, np.dstack([colour[:, :, ::-1], np.zeros((7, 11), np.uint8)])),
        "sixteen.png": (colour, colour[:, :, ::-1].astype(np.uint16) * 257),  # 16-bit scaled back to 8
        "sixteen.jpg": (None, colour[:, :, ::-1]),
    }
    (tmp_path / "labels").mkdir()
    (tmp_path / "images").mkdir()
    for name, picture in labels.items():
        picture.save(tmp_path / "labels" / name)
    assert Image.open(tmp_path / "labels" / "palette.png").mode == "P"
    assert Image.open(tmp_path / "labels" / "sixteen.png").mode.startswith("I")
    for name, (_, stored) in images.items():
        cv2.imwrite(str(tmp_path / "images" / name), stored)
    lines = [f"images/{image} labels/{label}" for image, label in zip([*images, "grey.png"], labels)]
    (tmp_path / "list.txt").write_text("# a comment line\n" + "\n".join(lines) + "\n")
    data = SemData("train", tmp_path, tmp_path / "list.txt", classes=CLASSES)
    assert len(data) == len(labels)
    for index, (image, label) in enumerate(data):
        assert label.dtype == np.uint8 and np.array_equal(label, ids), lines[index]
        assert image.shape == (7, 11, 3) and image.dtype == np.float32
    for index, (expected, _) in enumerate(images.values()):
        if expected is not None:
            assert np.array_equal(data[index][0], expected.astype(np.float32)), lines[index]
    assert np.abs(data[3][0] - colour).mean() < 8  # JPEG: close to what was written


def test_labels_that_cannot_be_train_ids_are_errors_that_name_the_file(tmp_path):
    (tmp_path / "x").mkdir()
    wide = tmp_path / "x" / "wide.png"
    cv2.imwrite(str(wide), np.array([[0, 300]], np.uint16))
    with pytest.raises(DatasetError, match=r"wide.png: label values must fit in 0..255, found 0..300 \(I;16"):
        dataset.read_label(str(wide))
    coloured = tmp_path / "x" / "coloured.png"
    Image.fromarray(np.array([[[128, 64, 128], [0, 0, 142]]], np.uint8)).save(coloured)  # Cityscapes colours
    with pytest.raises(DatasetError, match="coloured.png: the label is a RGB image with different colour channels"):
        dataset.read_label(str(coloured))
    broken = tmp_path / "x" / "broken.png"
    broken.write_bytes(wide.read_bytes()[:40])
    with pytest.raises(DatasetError, match="broken.png: cannot read the label"):
        dataset.read_label(str(broken))


def write_batch(path, images, labels, protocol=2):
    """A batch as the CIFAR-10 download has it: written by Python 2 and NumPy 1 (numpy.core.multiarray)."""
    data = images.transpose(0, 3, 1, 2).reshape(len(images), -1)  # rows of R, G, B planes
    batch = {b"batch_label": b"x", b"data": data, b"labels": [int(label) for label in labels]}
    pickled = pickle.dumps(batch, protocol=protocol).replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    path.write_bytes(pickled)


def make_cifar(root, per_batch=2):
    rng = np.random.default_rng(0)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        images = rng.integers(0, 256, (per_batch, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, 10, per_batch)
        write_batch(root / name, images, labels)
        written[name] = (images, labels)
    return written


def test_cifar10_batches_read_back_exactly(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    written = make_cifar(root)
    train = Cifar10(tmp_path, train=True)  # the parent folder works too
    assert len(train) == 10 and Cifar10.classes == 10
    image, label = train[3]  # data_batch_2, second image
    assert image.dtype == np.float32 and np.array_equal(image, written["data_batch_2"][0][1])
    assert label == written["data_batch_2"][1][1]
    test = Cifar10(root, train=False, transform=T.Compose([T.ToTensor()]))
    tensor, label = test[0]
    assert tensor.shape == (3, 32, 32) and torch.equal(
        tensor, torch.from_numpy(written["test_batch"][0][0]).permute(2, 0, 1).float()
    )


def test_bad_cifar10_files_are_named(tmp_path):
    make_cifar(tmp_path)
    (tmp_path / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3: CIFAR-10 batch file not found"):
        Cifar10(tmp_path)
    (tmp_path / "test_batch").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="test_batch: not a readable CIFAR-10 python batch"):
        Cifar10(tmp_path, train=False)
    write_batch(tmp_path / "test_batch", np.zeros((2, 32, 32, 3), np.uint8), [1, 12])
    with pytest.raises(DatasetError, match=r"test_batch: label values \[12\] are not CIFAR-10 classes"):
        read_cifar10_batch(tmp_path / "test_batch")
    with open(tmp_path / "test_batch", "wb") as handle:
        pickle.dump({b"data": np.zeros((2, 10), np.uint8), b"labels": [1, 2]}, handle)
    with pytest.raises(DatasetError, match="must be an N x 3072 uint8 array"):
        read_cifar10_batch(tmp_path / "test_batch")


class Payload:
    def __reduce__(self):
        return (print, ("this must not run",))


def test_a_cifar10_batch_cannot_run_code(tmp_path, capsys):
    with open(tmp_path / "test_batch", "wb") as handle:
        pickle.dump({b"data": Payload(), b"labels": []}, handle)
    with pytest.raises(DatasetError, match="refusing to load builtins.print"):
        read_cifar10_batch(tmp_path / "test_batch")
    assert "must not run" not in capsys.readouterr().out


def test_odd_sized_frames_come_out_of_the_cpu_recipes_transforms_at_its_crop(tmp_path):
    cfg = load_config(ROOT / "config" / "camvid" / "camvid_segnet_cpu.yaml")
    rng = np.random.default_rng(4)
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    lines = []
    for index, size in enumerate([(361, 479), (97, 133), (720, 960)]):  # odd, smaller than the crop, larger
        cv2.imwrite(str(tmp_path / "images" / f"{index}.png"), rng.integers(0, 256, (*size, 3), dtype=np.uint8))
        cv2.imwrite(str(tmp_path / "labels" / f"{index}.png"), rng.integers(0, 12, size, dtype=np.uint8))
        lines.append(f"images/{index}.png labels/{index}.png")
    (tmp_path / "train.txt").write_text("\n".join(lines) + "\n")
    transform = segmentation_transforms(cfg, train=True)
    data = SemData("train", tmp_path, tmp_path / "train.txt", transform, classes=11, ignore_label=11)
    for image, label in data:
        assert image.shape == (3, 180, 240) and label.shape == (180, 240)
        assert set(label.unique().tolist()) <= set(range(12))  # padding is the ignore label 11
