"""Paired image/label augmentation on numpy arrays (OpenCV), in the style of hszhao/semseg.

Every transform takes and returns ``(image, label)``: an HxWxC float32 image on the 0-255 scale
and an HxW uint8 label (``label`` may be None for classification data such as CIFAR-10). Geometric
transforms move image and label together; a label value only ever changes to the ignore label
(pixels that come from outside the image). Randomness comes from one module-level generator:
``seed(n)`` makes a run repeatable and ``worker_init_fn`` gives each DataLoader worker its own
stream, so workers do not repeat each other's augmentations. At the end, the recipes that the
configs train with: ``segmentation_transforms`` and ``cifar_transforms``.
"""

from __future__ import annotations

import math
import numbers
import random
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
import torch

_rng = np.random.default_rng()


def seed(value: int) -> None:
    """Make the random transforms repeatable (also seeds Python's ``random`` and NumPy's legacy generator)."""
    global _rng
    _rng = np.random.default_rng(value)
    random.seed(value)
    np.random.seed(value % 2**32)


def worker_init_fn(worker_id: int) -> None:
    """DataLoader hook: seed this worker from its torch seed, which differs per worker and per epoch."""
    seed(torch.initial_seed() % 2**63)


def rng() -> np.random.Generator:
    """The generator the random transforms draw from."""
    return _rng


def _pair(value, name: str, kind=numbers.Real) -> tuple:
    """A (low, high) range or (h, w) size from a pair, or from one number for both."""
    if isinstance(value, kind) and not isinstance(value, bool):
        return (value, value)
    if isinstance(value, Sequence) and len(value) == 2 and all(isinstance(v, kind) for v in value):
        return tuple(value)
    raise ValueError(f"{name} must be a number or a pair of numbers, got {value!r}")


def _probability(p, name: str = "p") -> float:
    if not isinstance(p, numbers.Real) or not 0 <= p <= 1:
        raise ValueError(f"{name} must be a probability in [0, 1], got {p!r}")
    return float(p)


def _check_pair(image: np.ndarray, label: np.ndarray | None) -> None:
    if not isinstance(image, np.ndarray) or image.ndim not in (2, 3):
        raise TypeError(f"image must be an HxW or HxWxC numpy array, got {type(image).__name__}")
    if label is not None and (not isinstance(label, np.ndarray) or label.shape != image.shape[:2]):
        shape = getattr(label, "shape", type(label).__name__)
        raise ValueError(f"label must be a numpy array of the image's size {image.shape[:2]}, got {shape}")


def _fill(padding: Sequence[float] | float, image: np.ndarray):
    """``padding`` as a border value for cv2: one number per channel."""
    channels = 1 if image.ndim == 2 else image.shape[2]
    if isinstance(padding, numbers.Real):
        return [float(padding)] * channels  # cv2 would fill only the first channel with a bare number
    if len(padding) != channels:
        raise ValueError(f"padding has {len(padding)} values but the image has {channels} channels")
    return [float(v) for v in padding]


def _like(result: np.ndarray, original: np.ndarray) -> np.ndarray:
    """OpenCV drops a single channel axis; put it back so HxWx1 stays HxWx1."""
    return result[:, :, None] if original.ndim == 3 and result.ndim == 2 else result


def _check_padding(padding, ignore_label, allow_none: bool) -> None:
    if padding is None:
        if not allow_none:
            raise ValueError("padding (the image's fill value, usually the mean) is required")
    elif not isinstance(padding, numbers.Real) and not (
        isinstance(padding, Sequence) and all(isinstance(v, numbers.Real) for v in padding)
    ):
        raise ValueError(f"padding must be a number or one number per channel, got {padding!r}")
    if not isinstance(ignore_label, numbers.Integral) or not 0 <= ignore_label <= 255:
        raise ValueError(f"ignore_label must be an integer in 0..255, got {ignore_label!r}")


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence):
        if not all(callable(t) for t in transforms):
            raise ValueError("Compose takes a list of callables (image, label) -> (image, label)")
        self.transforms = list(transforms)

    def __call__(self, image, label=None):
        for transform in self.transforms:
            image, label = transform(image, label)
        return image, label


class ToTensor:
    """HxWxC numpy image -> CxHxW float32 tensor (values unchanged, no division by 255); label -> int64."""

    def __call__(self, image, label=None):
        _check_pair(image, label)
        if image.ndim == 2:
            image = image[:, :, None]
        image = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float()
        if label is not None:
            label = torch.from_numpy(np.ascontiguousarray(label)).long()
        return image, label


class Normalize:
    """(image - mean) / std per channel, on a CxHxW tensor; mean and std on the image's (0-255) scale."""

    def __init__(self, mean: Sequence[float], std: Sequence[float] | None = None):
        std = [1.0] * len(mean) if std is None else std
        if len(mean) != len(std) or not len(mean):
            raise ValueError(f"mean and std need one value per channel, got {list(mean)} and {list(std)}")
        if any(s <= 0 for s in std):
            raise ValueError(f"std must be positive, got {list(std)}")
        self.mean = torch.tensor(mean, dtype=torch.float32)[:, None, None]
        self.std = torch.tensor(std, dtype=torch.float32)[:, None, None]

    def __call__(self, image, label=None):
        if not isinstance(image, torch.Tensor) or image.dim() != 3 or image.shape[0] != len(self.mean):
            raise ValueError(f"Normalize expects a {len(self.mean)}xHxW tensor (after ToTensor)")
        return (image - self.mean) / self.std, label


class Resize:
    """Resize to a fixed (h, w): image bilinear, label nearest."""

    def __init__(self, size):
        self.h, self.w = _pair(size, "size", numbers.Integral)
        if self.h < 1 or self.w < 1:
            raise ValueError(f"size must be positive, got {size!r}")

    def __call__(self, image, label=None):
        _check_pair(image, label)
        image = _like(cv2.resize(image, (self.w, self.h), interpolation=cv2.INTER_LINEAR), image)
        if label is not None:
            label = cv2.resize(label, (self.w, self.h), interpolation=cv2.INTER_NEAREST_EXACT)
        return image, label


class RandScale:
    """Scale by a random factor from ``scale``; ``aspect_ratio`` (a range) stretches one side against the other."""

    def __init__(self, scale, aspect_ratio=None):
        self.scale = _pair(scale, "scale")
        if not 0 < self.scale[0] <= self.scale[1]:
            raise ValueError(f"scale must be a range (low, high) with 0 < low <= high, got {scale!r}")
        self.aspect_ratio = None if aspect_ratio is None else _pair(aspect_ratio, "aspect_ratio")
        if self.aspect_ratio is not None and not 0 < self.aspect_ratio[0] <= self.aspect_ratio[1]:
            raise ValueError(f"aspect_ratio must be a range (low, high) with 0 < low <= high, got {aspect_ratio!r}")

    def __call__(self, image, label=None):
        _check_pair(image, label)
        factor = rng().uniform(*self.scale)
        ratio = 1.0 if self.aspect_ratio is None else math.sqrt(rng().uniform(*self.aspect_ratio))
        fx, fy = factor * ratio, factor / ratio
        h, w = image.shape[:2]
        size = (max(1, round(w * fx)), max(1, round(h * fy)))
        image = _like(cv2.resize(image, size, interpolation=cv2.INTER_LINEAR), image)
        if label is not None:
            label = cv2.resize(label, size, interpolation=cv2.INTER_NEAREST_EXACT)
        return image, label


class Crop:
    """Crop to ``size`` (h, w) at the centre or a random place; pad first if smaller (image: padding, label: ignore)."""

    def __init__(self, size, crop_type: str = "center", padding=None, ignore_label: int = 255):
        self.h, self.w = _pair(size, "size", numbers.Integral)
        if self.h < 1 or self.w < 1:
            raise ValueError(f"size must be positive, got {size!r}")
        if crop_type not in ("center", "rand"):
            raise ValueError(f"crop_type must be 'center' or 'rand', got {crop_type!r}")
        _check_padding(padding, ignore_label, allow_none=True)
        self.crop_type, self.padding, self.ignore_label = crop_type, padding, ignore_label

    def __call__(self, image, label=None):
        _check_pair(image, label)
        h, w = image.shape[:2]
        pad_h, pad_w = max(self.h - h, 0), max(self.w - w, 0)
        if pad_h or pad_w:
            if self.padding is None:
                raise ValueError(f"image {h}x{w} is smaller than the crop {self.h}x{self.w} and padding is None")
            border = (pad_h // 2, pad_h - pad_h // 2, pad_w // 2, pad_w - pad_w // 2)
            image = _pad(image, border, _fill(self.padding, image))
            if label is not None:
                label = _pad(label, border, self.ignore_label)
            h, w = image.shape[:2]
        if self.crop_type == "rand":
            top, left = int(rng().integers(0, h - self.h + 1)), int(rng().integers(0, w - self.w + 1))
        else:
            top, left = (h - self.h) // 2, (w - self.w) // 2
        image = image[top : top + self.h, left : left + self.w]
        if label is not None:
            label = label[top : top + self.h, left : left + self.w]
        return image, label


def _pad(array: np.ndarray, border: tuple[int, int, int, int], value) -> np.ndarray:
    return _like(cv2.copyMakeBorder(array, *border, cv2.BORDER_CONSTANT, value=value), array)


class RandRotate:
    """With probability ``p``, rotate by a random angle from ``rotate`` (degrees) about the centre.

    The image is interpolated linearly and filled with ``padding`` (the mean) where the rotation
    leaves it; the label is taken nearest-neighbour and filled with ``ignore_label``.
    """

    def __init__(self, rotate, padding, ignore_label: int = 255, p: float = 0.5):
        self.rotate = _pair(rotate, "rotate")
        if self.rotate[0] > self.rotate[1]:
            raise ValueError(f"rotate must be a range (low, high) with low <= high, got {rotate!r}")
        _check_padding(padding, ignore_label, allow_none=False)
        self.padding, self.ignore_label, self.p = padding, ignore_label, _probability(p)

    def __call__(self, image, label=None):
        _check_pair(image, label)
        if rng().random() >= self.p:
            return image, label
        angle = rng().uniform(*self.rotate)
        h, w = image.shape[:2]
        matrix = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), angle, 1.0)
        constant, fill = cv2.BORDER_CONSTANT, _fill(self.padding, image)
        rotated = cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=constant, borderValue=fill)
        if label is not None:
            label = cv2.warpAffine(
                label, matrix, (w, h), flags=cv2.INTER_NEAREST, borderMode=constant, borderValue=self.ignore_label
            )
        return _like(rotated, image), label


class RandomGaussianBlur:
    """With probability ``p``, blur the image (not the label) with an odd ``radius`` x ``radius`` Gaussian kernel."""

    def __init__(self, radius: int = 5, p: float = 0.5):
        if not isinstance(radius, numbers.Integral) or radius < 1 or radius % 2 == 0:
            raise ValueError(f"radius must be an odd positive integer, got {radius!r}")
        self.radius, self.p = int(radius), _probability(p)

    def __call__(self, image, label=None):
        _check_pair(image, label)
        if rng().random() < self.p:
            image = _like(cv2.GaussianBlur(image, (self.radius, self.radius), 0), image)
        return image, label


class RandomHorizontalFlip:
    """With probability ``p``, mirror image and label left to right."""

    def __init__(self, p: float = 0.5):
        self.p = _probability(p)

    def __call__(self, image, label=None):
        _check_pair(image, label)
        if rng().random() < self.p:
            image = np.ascontiguousarray(image[:, ::-1])
            if label is not None:
                label = np.ascontiguousarray(label[:, ::-1])
        return image, label


# --- the recipes ---------------------------------------------------------------------------------------------


def segmentation_transforms(cfg: Any, train: bool) -> Compose:
    """semseg's recipe: scale, rotate, blur, flip, crop for training; a centre crop for validation."""
    pad = [float(value) for value in cfg.mean]
    crop = [cfg.train_h, cfg.train_w]
    steps = []
    if train:
        steps += [
            RandScale([cfg.scale_min, cfg.scale_max]),
            RandRotate([cfg.rotate_min, cfg.rotate_max], padding=pad, ignore_label=cfg.ignore_label),
            RandomGaussianBlur(),
            RandomHorizontalFlip(),
        ]
    steps += [
        Crop(crop, crop_type="rand" if train else "center", padding=pad, ignore_label=cfg.ignore_label),
        ToTensor(),
        Normalize(cfg.mean, cfg.std),
    ]
    return Compose(steps)


def cifar_transforms(cfg: Any, train: bool) -> Compose:
    """A random 32x32 crop of the image padded by 4 black pixels, and a horizontal flip, for training."""
    steps = []
    if train:
        steps += [
            Crop([40, 40], padding=0.0),  # pads 4 on every side
            Crop([32, 32], crop_type="rand"),
            RandomHorizontalFlip(),
        ]
    return Compose([*steps, ToTensor(), Normalize(cfg.mean, cfg.std)])
