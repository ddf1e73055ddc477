"""What a training run shows in tensorboard: losses, metrics, every pruning statistic, logits, images.

Only the main process writes; on the others ``RunLog`` is a quiet stand-in, so the training loop
never asks which rank it is on. ``read_scalars`` reads the scalars back without tensorboard, for
figures and tests.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import torch
from torch import nn

from acosp.inject import named_mask_layers
from acosp.masks import SigmoidSoftTopK
from semseg.data.palette import colorize, read_colors


def read_palette(path: str | Path | None, classes: int) -> np.ndarray:
    """The dataset's colours, or a fixed random palette where it has no colours file (or too few colours)."""
    if path is not None and Path(path).is_file():
        colours = read_colors(path)
        if len(colours) >= classes:
            return colours
    return np.random.default_rng(0).integers(0, 256, (classes, 3), dtype=np.uint8)


class RunLog:
    """tensorboardX events in the experiment folder, written by the main process only."""

    def __init__(self, folder: str | Path | None):
        self.writer = None
        if folder is not None:
            from tensorboardX import SummaryWriter

            self.writer = SummaryWriter(str(folder))

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        if self.writer is not None:
            self.writer.add_scalar(tag, value, step)

    def epoch(self, split: str, loss: float, metrics: dict[str, float], epoch: int) -> None:
        self.add_scalar(f"{split}/loss", loss, epoch)
        for name, value in metrics.items():
            if np.isscalar(value):
                self.add_scalar(f"{split}/{name}", float(value), epoch)

    def mask_logits(self, model: nn.Module, epoch: int) -> None:
        """A histogram of the (normalised) logits of every soft mask: how decided each layer is."""
        if self.writer is None:
            return
        for name, layer in named_mask_layers(model):
            if isinstance(layer, SigmoidSoftTopK):
                self.writer.add_histogram(f"acosp/logits/{name}", layer.weight.detach().float().cpu().numpy(), epoch)

    def images(self, samples, palette: np.ndarray, mean, std, epoch: int) -> None:
        """Each sample as one picture: the image, its ground truth and the prediction side by side."""
        if self.writer is None or not samples:
            return
        mean = torch.tensor(mean, dtype=torch.float32)[:, None, None]
        std = torch.tensor(std, dtype=torch.float32)[:, None, None]
        rows = []
        for image, label, prediction in samples:
            rgb = (image.float() * std + mean).clamp(0, 255).byte().permute(1, 2, 0).numpy()
            truth, predicted = colorize(label.numpy(), palette), colorize(prediction.numpy(), palette)
            rows.append(np.concatenate([rgb, truth, predicted], 1))
        grid = np.concatenate(rows, 0)
        self.writer.add_image("val/image_truth_prediction", grid, epoch, dataformats="HWC")

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_scalars(folder: str | Path) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value), ...]}`` from every ``events.out.tfevents.*`` file in ``folder`` (TFRecord framing)."""
    from tensorboardX.proto.event_pb2 import Event

    folder = Path(folder)
    paths = sorted(folder.glob("events.out.tfevents.*"))
    if not paths:
        raise FileNotFoundError(f"{folder}: no tensorboard event files (events.out.tfevents.*)")
    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in paths:
        data = path.read_bytes()
        offset = 0
        while offset + 12 <= len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            if offset + 12 + length > len(data):
                break  # a record still being written
            event = Event.FromString(data[offset + 12 : offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars
