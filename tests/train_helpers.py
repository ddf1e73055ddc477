"""A tiny segmentation dataset and experiment config on disk, and the training script as a function."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import cv2
import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
CIFAR_MEAN, CIFAR_STD = [125.307, 122.961, 113.8575], [51.5865, 50.847, 51.255]


def load_tool(name: str):
    """``tool/<name>.py`` as a module, so tests call its ``main(argv)`` in-process."""
    spec = importlib.util.spec_from_file_location(f"tool_{name}", ROOT / "tool" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def make_segmentation_data(root: Path, count: int = 6, size: tuple[int, int] = (40, 48), seed: int = 0) -> None:
    """Images with a bright square (class 1) and a dark disc (class 2) on noise (class 0); list files."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(exist_ok=True)
    lines = []
    for i in range(count):
        h, w = size
        image = rng.integers(80, 170, (h, w, 3)).astype(np.uint8)
        label = np.zeros((h, w), np.uint8)
        top, left = rng.integers(0, h - 14), rng.integers(0, w - 14)
        image[top : top + 12, left : left + 12] = (250, 250, 60)
        label[top : top + 12, left : left + 12] = 1
        centre = (int(rng.integers(8, w - 8)), int(rng.integers(8, h - 8)))
        cv2.circle(image, centre, 6, (10, 10, 120), -1)
        cv2.circle(label, centre, 6, 2, -1)
        label[0, :] = 255  # an ignored row
        cv2.imwrite(str(root / "images" / f"{i}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(root / "labels" / f"{i}.png"), label)
        lines.append(f"images/{i}.png labels/{i}.png")
    (root / "train.txt").write_text("\n".join(lines[: count - 2]) + "\n")
    (root / "val.txt").write_text("\n".join(lines[count - 2 :]) + "\n")


def write_config(tmp_path: Path, **overrides) -> Path:
    """An experiment of a narrow SegNet on the tiny dataset: 3 epochs, pruning ends before epoch 3."""
    data = tmp_path / "data"
    if not (data / "train.txt").exists():
        make_segmentation_data(data)
    train = {
        "arch": "segnet",
        "width": 0.125,
        "train_h": 32,
        "train_w": 32,
        "workers": 0,
        "batch_size": 2,
        "batch_size_val": 2,
        "epochs": 3,
        "sparsity": 0.5,
        "ending_epoch": 2,
        "min_remaining_elements": 2,
        "evaluate": True,
        "manual_seed": 1,
        "base_lr": 0.01,
        "head_lr_factor": 1.0,
        "aux_weight": 0.0,
        "print_freq": 1,
        "save_path": str(tmp_path / "exp" / "model"),
    }
    test = {"test_list": str(data / "val.txt"), "base_size": 48, "test_h": 32, "test_w": 32}
    sections = {
        "DATA": {"dataset": "tiny", "data_root": str(data), "train_list": str(data / "train.txt"), "classes": 3},
        "TRAIN": train,
        "TEST": test,
    }
    sections["DATA"]["val_list"] = str(data / "val.txt")
    for key, value in overrides.items():
        section = next((name for name, values in sections.items() if key in values), "TRAIN")
        sections[section][key] = value
    path = tmp_path / "tiny_segnet.yaml"
    path.write_text(yaml.safe_dump(sections, sort_keys=False))
    return path


def make_cifar10_batches(root: Path, per_batch: int = 8, seed: int = 0) -> None:
    """CIFAR-10 python batch files (data_batch_1..5, test_batch) of a few images each; class = brightest channel."""
    import pickle

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = rng.integers(0, 3, per_batch)
        images = rng.integers(0, 100, (per_batch, 3, 32, 32)).astype(np.uint8)
        images[np.arange(per_batch), labels] += 150
        batch = {b"data": images.reshape(per_batch, -1), b"labels": labels.tolist()}
        (root / name).write_bytes(pickle.dumps(batch, protocol=2))


def write_cifar_config(tmp_path: Path, **overrides) -> Path:
    """CIFAR-10 with a narrow ResNet18: one epoch on the fabricated batches, pruning at sparsity 0.5."""
    make_cifar10_batches(tmp_path / "cifar")
    train = {
        "arch": "resnet18",
        "width": 0.125,
        "optimizer": "adam",
        "lr_schedule": "cosine",
        "lr_update": "epoch",
        "workers": 0,
        "batch_size": 16,
        "batch_size_val": 16,
        "epochs": 2,
        "sparsity": 0.5,
        "ending_epoch": 1,
        "min_remaining_elements": 2,
        "evaluate": True,
        "manual_seed": 1,
        "head_lr_factor": 1.0,
        "aux_weight": 0.0,
        "save_path": str(tmp_path / "exp" / "model"),
        **overrides,
    }
    data = {
        "dataset": "cifar10",
        "data_root": str(tmp_path / "cifar"),
        "classes": 10,
        "mean": CIFAR_MEAN,
        "std": CIFAR_STD,
    }
    sections = {"DATA": data, "TRAIN": train}
    path = tmp_path / "cifar10_resnet18.yaml"
    path.write_text(yaml.safe_dump(sections, sort_keys=False))
    return path
