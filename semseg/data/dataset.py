"""The training data: segmentation images listed in a list file, and the CIFAR-10 python batches.

Both check what they can when they are built (the list, every file's existence), so a broken
dataset stops a run in seconds rather than after an epoch; what needs the pixels (a corrupt image,
sizes, label values) is checked when a sample is read. Every error names the file at fault.
"""

from __future__ import annotations

import codecs
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from semseg.data.images import DatasetError, read_image, read_label
from semseg.data.prepare_data import PREPARE
from semseg.data.transform import cifar_transforms, segmentation_transforms
from semseg.models import is_classification

SPLITS = ("train", "val", "test")
CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST = ("test_batch",)


def _join(root: str | os.PathLike, path: str) -> str:
    return path if os.path.isabs(path) else os.path.join(root, path)


@dataclass(frozen=True)
class ListEntry:
    """One line of a list file: the image, its label (None for split 'test') and the name its outputs get."""

    line: int
    image: str
    label: str | None
    name: str


def read_list(
    split: str, data_root: str | os.PathLike, list_path: str | os.PathLike, check_files: bool = True
) -> list[ListEntry]:
    """The entries of a list file of 'image label' lines ('image' alone is allowed for split 'test'), in order.

    The one reader of list files, for training and testing; empty lines and lines that start with
    '#' are skipped. Paths are relative to ``data_root`` unless absolute. With ``check_files`` every
    listed file must exist (training: a missing file stops the run before it starts); without, a
    missing file fails alone when it is read (testing).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if not os.path.isfile(list_path):
        raise FileNotFoundError(f"{list_path}: list file not found")
    with open(list_path, encoding="utf-8-sig") as handle:  # -sig: a byte-order mark is not part of a path
        lines = handle.read().splitlines()
    entries, missing = [], []
    for number, line in enumerate(lines, 1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        if len(fields) != 2 and not (split == "test" and len(fields) == 1):
            wanted = "'image' or 'image label'" if split == "test" else "'image label'"
            raise DatasetError(f"{list_path}, line {number}: expected {wanted}, got {len(fields)} fields: {line!r}")
        image = _join(data_root, fields[0])
        label = _join(data_root, fields[1]) if split != "test" else None
        if check_files:
            missing += [f"line {number}: {path}" for path in (image, label) if path and not os.path.isfile(path)]
        entries.append(ListEntry(number, image, label, Path(image).stem))
    if missing:
        shown = "\n  ".join(missing[:5]) + (f"\n  ... and {len(missing) - 5} more" if len(missing) > 5 else "")
        count = len(missing)
        raise FileNotFoundError(f"{list_path}: {count} listed files do not exist (data_root {data_root}):\n  {shown}")
    if not entries:
        raise DatasetError(f"{list_path}: the list file has no entries")
    return entries


def config_list_path(cfg: Any, list_key: str) -> Path:
    """The list file a config names under ``list_key``; when it is missing, an error that says how to write it."""
    if cfg[list_key] is None:
        raise ValueError(f"{cfg.source}: {list_key} is not set")
    path = cfg.path(list_key)
    if not path.is_file():
        hint = ""
        if cfg.dataset in PREPARE:
            hint = f"; python tool/make_lists.py {cfg.dataset} {cfg.data_root} writes the lists of {cfg.dataset}"
        raise FileNotFoundError(f"{path}: list file not found ({list_key} of {cfg.source}){hint}")
    return path


class SemData(Dataset):
    """Segmentation samples from a list file: ``(image, label)`` after ``transform``.

    With ``classes`` given, a label value that is neither a class id nor ``ignore_label`` is an error
    naming the file and the values, or, with ``ignore_unknown_labels``, becomes ``ignore_label``.
    For split ``test`` the list holds images only and the label is all ``ignore_label``.
    """

    def __init__(
        self,
        split: str = "train",
        data_root: str | os.PathLike = "",
        data_list: str | os.PathLike = "",
        transform: Callable | None = None,
        classes: int | None = None,
        ignore_label: int = 255,
        ignore_unknown_labels: bool = False,
    ):
        if classes is not None and not 2 <= classes <= 256:
            raise ValueError(f"classes must be in 2..256, got {classes}")
        self.split, self.transform = split, transform
        self.classes, self.ignore_label, self.ignore_unknown_labels = classes, ignore_label, ignore_unknown_labels
        self.list_path = str(data_list)
        self.data_list = read_list(split, data_root, data_list)

    @classmethod
    def from_config(cls, cfg, list_key: str, transform: Callable | None = None) -> SemData:
        """The dataset of ``cfg[list_key]`` ('train_list', 'val_list' or 'test_list'); paths from the repo root."""
        split = {"train_list": "train", "val_list": "val"}.get(list_key, cfg.split)
        return cls(
            split,
            cfg.path("data_root"),
            config_list_path(cfg, list_key),
            transform,
            classes=cfg.classes,
            ignore_label=cfg.ignore_label,
            ignore_unknown_labels=cfg.ignore_unknown_labels,
        )

    def __len__(self) -> int:
        return len(self.data_list)

    def __getitem__(self, index: int):
        entry = self.data_list[index]
        image_path, label_path = entry.image, entry.label
        image = read_image(image_path)
        if label_path is None:
            label = np.full(image.shape[:2], self.ignore_label, np.uint8)
        else:
            label = read_label(label_path)
            if label.shape != image.shape[:2]:
                raise DatasetError(
                    f"{label_path}: the label is {label.shape[0]}x{label.shape[1]} but its image {image_path} "
                    f"is {image.shape[0]}x{image.shape[1]}"
                )
            label = self._check_values(label, label_path)
        if self.transform is not None:
            image, label = self.transform(image, label)
        return image, label

    def _check_values(self, label: np.ndarray, path: str) -> np.ndarray:
        if self.classes is None:
            return label
        unknown = (label >= self.classes) & (label != self.ignore_label)
        if not unknown.any():
            return label
        if self.ignore_unknown_labels:
            return np.where(unknown, np.uint8(self.ignore_label), label)
        values = np.unique(label[unknown]).tolist()
        raise DatasetError(
            f"{path}: label values {values} are neither class ids (0..{self.classes - 1}) nor the ignore label "
            f"{self.ignore_label}; set ignore_unknown_labels to map them to the ignore label"
        )


def _numpy_reconstructors() -> dict[str, object]:
    """The numpy functions a pickled array needs, whichever module name (numpy 1 or 2) the file uses."""
    return {
        "_reconstruct": np.zeros(1).__reduce__()[0],
        "scalar": np.float64(0).__reduce__()[0],
        "_frombuffer": np.zeros(1).__reduce_ex__(5)[0],
    }


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists and numpy arrays only: a batch file cannot run code."""

    def find_class(self, module: str, name: str):
        numpy_core = ("numpy.core.multiarray", "numpy._core.multiarray", "numpy.core.numeric", "numpy._core.numeric")
        if module in numpy_core and name in ("_reconstruct", "scalar", "_frombuffer"):
            return _numpy_reconstructors()[name]
        if (module, name) == ("_codecs", "encode"):  # bytes pickled by Python 3 at protocol 2
            return codecs.encode
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        if module in ("numpy.core.multiarray", "numpy._core.multiarray", "numpy.dtypes") and name == "dtype":
            return np.dtype
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a CIFAR-10 batch holds only arrays")


def read_cifar10_batch(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Images (N x 32 x 32 x 3 uint8 RGB) and labels (N int64) of one CIFAR-10 python batch file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: CIFAR-10 batch file not found")
    try:
        with open(path, "rb") as handle:
            batch = _ArrayUnpickler(handle, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as error:
        raise DatasetError(f"{path}: not a readable CIFAR-10 python batch ({error})") from None
    if not isinstance(batch, dict):
        raise DatasetError(f"{path}: a CIFAR-10 batch is a dict with b'data' and b'labels', got {type(batch).__name__}")
    data, labels = batch.get(b"data", batch.get("data")), batch.get(b"labels", batch.get("labels"))
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.dtype != np.uint8:
        shape = getattr(data, "shape", None)
        raise DatasetError(f"{path}: b'data' must be an N x 3072 uint8 array, got {shape}")
    if labels is None or len(labels) != len(data):
        raise DatasetError(f"{path}: b'labels' must hold one label per image ({len(data)})")
    labels = np.asarray(labels, dtype=np.int64)
    bad = np.unique(labels[(labels < 0) | (labels > 9)])
    if bad.size:
        raise DatasetError(f"{path}: label values {bad.tolist()} are not CIFAR-10 classes 0..9")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


class Cifar10(Dataset):
    """CIFAR-10 from its python batches in ``root``: ``(image, label)`` with the image HxWx3 float32 (0-255).

    ``transform`` is a paired transform of this package, called as ``transform(image, None)``.
    """

    classes = 10

    def __init__(self, root: str | os.PathLike, train: bool = True, transform: Callable | None = None):
        root = Path(root)
        if not (root / "test_batch").exists() and (root / "cifar-10-batches-py").is_dir():
            root = root / "cifar-10-batches-py"
        batches = [read_cifar10_batch(root / name) for name in (CIFAR10_TRAIN if train else CIFAR10_TEST)]
        self.images = np.concatenate([images for images, _ in batches])
        self.labels = np.concatenate([labels for _, labels in batches])
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        image = self.images[index].astype(np.float32)
        if self.transform is not None:
            image, _ = self.transform(image, None)
        return image, int(self.labels[index])


def build_datasets(cfg: Any) -> tuple[Dataset, Dataset | None]:
    """The training set, and the validation set when ``evaluate`` asks for one; list errors surface here."""
    if is_classification(cfg):
        root = cfg.path("data_root")
        train = Cifar10(root, train=True, transform=cifar_transforms(cfg, True))
        val = Cifar10(root, train=False, transform=cifar_transforms(cfg, False)) if cfg.evaluate else None
        return train, val
    train = SemData.from_config(cfg, "train_list", segmentation_transforms(cfg, True))
    val = None
    if cfg.evaluate:
        if cfg.val_list is None:
            raise ValueError(f"{cfg.source}: evaluate is true but val_list is not set")
        val = SemData.from_config(cfg, "val_list", segmentation_transforms(cfg, False))
    for dataset in (train, val):
        if dataset is not None and len(dataset):
            dataset[0]  # a first sample through reading and augmentation: label or size errors show now
    return train, val
