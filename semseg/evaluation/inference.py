"""semseg's test-time inference: multi-scale, sliding windows, horizontal flips, averaged softmax.

Training crops are ``train_h x train_w``; a network then sees test images of any size through
windows of about that size. For each scale the image's long side becomes ``scale * base_size``;
windows of ``test_h x test_w`` slide with a stride of ceil(2/3 of the window), the image padded
with the mean where it is smaller than a window. The softmax probabilities of each window (and of
its mirror image) are averaged where windows overlap, brought back to the original size, and
averaged over the scales. Windows go through the network in batches.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


def window_starts(size: int, crop: int, stride: int) -> list[int]:
    """Start offsets of the windows along one side; the last window ends at the border."""
    count = math.ceil(max(size - crop, 0) / stride) + 1
    return [min(index * stride, size - crop) for index in range(count)]


def scaled_size(height: int, width: int, long_side: int) -> tuple[int, int]:
    """(height, width) with the longer side ``long_side`` and the aspect ratio kept (semseg's rounding)."""
    if height > width:
        return long_side, round(long_side / height * width)
    return round(long_side / width * height), long_side


@contextlib.contextmanager
def _evaluating(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


class SlidingWindowPredictor:
    """Class probabilities and predictions of a segmentation network for whole images.

    ``model(x)`` must return logits (N x classes x h x w; a different h x w is resized). Images are
    HxWx3 RGB arrays on the 0-255 scale; ``mean`` and ``std`` are on that scale too. ``amp`` runs
    the network in float16 autocast on CUDA (the probabilities are summed in float32); it has no
    effect on the CPU.
    """

    def __init__(
        self,
        model: nn.Module,
        classes: int,
        crop_size: int | Sequence[int] = 473,
        base_size: int = 512,
        scales: Sequence[float] = (1.0,),
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] | None = IMAGENET_STD,
        flip: bool = True,
        batch_size: int = 1,
        device: str | torch.device | None = None,
        amp: bool = False,
        stride_rate: float = 2 / 3,
    ):
        crop_h, crop_w = (crop_size, crop_size) if isinstance(crop_size, int) else tuple(crop_size)
        for name, value in (("crop height", crop_h), ("crop width", crop_w), ("base_size", base_size)):
            if int(value) < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if not scales or any(scale <= 0 for scale in scales):
            raise ValueError(f"scales must be a non-empty list of positive numbers, got {list(scales)}")
        if not 0 < stride_rate <= 1:
            raise ValueError(f"stride_rate must be in (0, 1], got {stride_rate}")
        self.model, self.classes = model, int(classes)
        self.crop_h, self.crop_w, self.base_size = int(crop_h), int(crop_w), int(base_size)
        self.scales, self.flip, self.batch_size = [float(scale) for scale in scales], bool(flip), int(batch_size)
        if device is None:
            parameter = next(model.parameters(), None)
            device = parameter.device if parameter is not None else "cpu"
        self.device = torch.device(device)
        self.amp = bool(amp) and self.device.type == "cuda"
        self.mean = torch.tensor(list(mean), dtype=torch.float32, device=self.device).view(3, 1, 1)
        std = [1.0, 1.0, 1.0] if std is None else list(std)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device).view(3, 1, 1)
        self.stride_h = math.ceil(self.crop_h * stride_rate)
        self.stride_w = math.ceil(self.crop_w * stride_rate)

    @classmethod
    def from_config(
        cls, model: nn.Module, cfg: Any, device: str | torch.device | None = None
    ) -> SlidingWindowPredictor:
        """The predictor of a config's TEST section (classes, test_h, test_w, base_size, scales, ...)."""
        return cls(
            model,
            cfg.classes,
            (cfg.test_h, cfg.test_w),
            base_size=cfg.base_size,
            scales=cfg.scales,
            mean=cfg.mean,
            std=cfg.std,
            flip=cfg.flip,
            batch_size=cfg.batch_size_test,
            device=device,
            amp=cfg.amp,
        )

    def normalize(self, image: np.ndarray) -> torch.Tensor:
        """An HxWx3 RGB 0-255 array as a normalised 3xHxW float tensor on the device."""
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an HxWx3 RGB image, got an array of shape {image.shape}")
        tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).to(self.device)
        return (tensor.permute(2, 0, 1) - self.mean) / self.std

    def _forward(self, crops: torch.Tensor) -> torch.Tensor:
        """Softmax probabilities of a batch of crops, averaged with their mirror images."""
        count = len(crops)
        if self.flip:
            crops = torch.cat([crops, crops.flip(3)])
        with torch.autocast("cuda", dtype=torch.float16, enabled=self.amp):
            logits = self.model(crops)
        if not isinstance(logits, torch.Tensor) or logits.dim() != 4 or logits.shape[1] != self.classes:
            shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise ValueError(f"the network returned {shape}; expected logits of N x {self.classes} x H x W")
        logits = logits.float()
        if logits.shape[2:] != crops.shape[2:]:
            logits = F.interpolate(logits, size=crops.shape[2:], mode="bilinear", align_corners=True)
        probabilities = logits.softmax(1)
        if self.flip:
            probabilities = (probabilities[:count] + probabilities[count:].flip(3)) / 2
        return probabilities

    def window_probabilities(self, image: torch.Tensor) -> torch.Tensor:
        """classes x H x W probabilities of one normalised 3xHxW image by sliding windows."""
        _, height, width = image.shape
        pad_h, pad_w = max(self.crop_h - height, 0), max(self.crop_w - width, 0)
        top, left = pad_h // 2, pad_w // 2
        # Zero after normalisation is the mean: semseg pads the raw image with the mean.
        image = F.pad(image, (left, pad_w - left, top, pad_h - top))
        _, padded_h, padded_w = image.shape
        windows = [
            (row, column)
            for row in window_starts(padded_h, self.crop_h, self.stride_h)
            for column in window_starts(padded_w, self.crop_w, self.stride_w)
        ]
        total = torch.zeros(self.classes, padded_h, padded_w, device=self.device)
        count = torch.zeros(1, padded_h, padded_w, device=self.device)
        for first in range(0, len(windows), self.batch_size):
            batch = windows[first : first + self.batch_size]
            crops = torch.stack([image[:, r : r + self.crop_h, c : c + self.crop_w] for r, c in batch])
            for (row, column), probabilities in zip(batch, self._forward(crops)):
                total[:, row : row + self.crop_h, column : column + self.crop_w] += probabilities
                count[:, row : row + self.crop_h, column : column + self.crop_w] += 1
        return (total / count)[:, top : top + height, left : left + width]

    @torch.no_grad()
    def probabilities(self, image: np.ndarray) -> torch.Tensor:
        """classes x H x W probabilities of an HxWx3 RGB 0-255 image, averaged over scales (on the device)."""
        height, width = np.asarray(image).shape[:2]
        total = torch.zeros(self.classes, height, width, device=self.device)
        with _evaluating(self.model):
            for scale in self.scales:
                new_h, new_w = scaled_size(height, width, round(scale * self.base_size))
                resized = image
                if (new_h, new_w) != (height, width):
                    resized = cv2.resize(np.asarray(image, np.float32), (new_w, new_h), interpolation=cv2.INTER_LINEAR)
                probabilities = self.window_probabilities(self.normalize(resized))
                if probabilities.shape[1:] != (height, width):
                    probabilities = F.interpolate(
                        probabilities[None], size=(height, width), mode="bilinear", align_corners=False
                    )[0]
                total += probabilities
        return total / len(self.scales)

    def predict(self, image: np.ndarray) -> np.ndarray:
        """The HxW map of class ids (uint8 when the classes fit, as the gray PNGs store them)."""
        prediction = self.probabilities(image).argmax(0).cpu().numpy()
        return prediction.astype(np.uint8) if self.classes <= 256 else prediction
