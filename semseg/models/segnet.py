"""SegNet: a VGG16-BN encoder and a mirrored decoder that unpools by the encoder's max-pool indices.

The published network has five blocks, so its deepest map is 1/32 of the input. ``blocks`` < 5
keeps only the first blocks and their mirrors, for small images: at 64x64 the fifth pooling would
leave a 2x2 map, through which the whole image has to pass (it then learns almost nothing).

The encoder initialises from a torchvision-format VGG16 state dict (``features.N.weight``), with
BatchNorm (``vgg16_bn``) or without (``vgg16``: the convs load, BatchNorm starts fresh).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch
from torch import nn

from acosp.inject import unprunable
from semseg.models.pretrained import load_weight_file, read_state_dict

logger = logging.getLogger(__name__)

# Output widths of the encoder's convs, block by block (VGG16's configuration D).
ENCODER_WIDTHS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
# Output widths of the decoder's convs, from the deepest block up; the last one gives the classes.
DECODER_WIDTHS = ((512, 512, 512), (512, 512, 256), (256, 256, 128), (128, 64), (64, None))


def scaled(channels: int, width: float) -> int:
    """A layer's width in a network ``width`` times as wide (a small SegNet for CPUs and tests)."""
    return max(1, round(channels * width))


def conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def _vgg_feature_names(with_batchnorm: bool) -> dict[int, tuple[str, str]]:
    """``features`` index in torchvision's VGG16 -> (encoder conv name, its BatchNorm name)."""
    names, index = {}, 0
    for block, widths in enumerate(ENCODER_WIDTHS, start=1):
        for position in range(len(widths)):
            names[index] = (f"enc{block}.{position}.0", f"enc{block}.{position}.1")
            index += 3 if with_batchnorm else 2
        index += 1  # the max-pool
    return names


class SegNet(nn.Module):
    """SegNet for ``classes`` classes; logits at the input resolution, any input size."""

    def __init__(
        self,
        classes: int = 11,
        ignore_label: int = 255,
        pretrained_weights: str | Path | None = None,
        width: float = 1.0,
        blocks: int = 5,
    ):
        """``width`` < 1 makes every layer that much narrower, ``blocks`` < 5 the network shallower (small inputs)."""
        super().__init__()
        if classes < 2:
            raise ValueError(f"SegNet needs at least 2 classes, got {classes}")
        if not 0 < width <= 1:
            raise ValueError(f"SegNet width must be in (0, 1], got {width}")
        if not 1 <= blocks <= len(ENCODER_WIDTHS):
            raise ValueError(f"SegNet blocks must be in 1..{len(ENCODER_WIDTHS)}, got {blocks}")
        if width != 1 and pretrained_weights:
            raise ValueError("VGG16 weights fit only the full-width SegNet (width 1)")
        self.blocks = blocks
        self.criterion = nn.CrossEntropyLoss(ignore_index=ignore_label)
        in_channels = 3
        for block, widths in enumerate(ENCODER_WIDTHS[:blocks], start=1):
            convs = []
            for channels in widths:
                convs.append(conv_bn_relu(in_channels, scaled(channels, width)))
                in_channels = scaled(channels, width)
            self.add_module(f"enc{block}", nn.Sequential(*convs))
        for block, widths in zip(range(blocks, 0, -1), DECODER_WIDTHS[-blocks:]):
            convs = []
            for channels in widths:
                if channels is None:
                    convs.append(unprunable(nn.Conv2d(in_channels, classes, kernel_size=3, padding=1)))
                else:
                    convs.append(conv_bn_relu(in_channels, scaled(channels, width)))
                    in_channels = scaled(channels, width)
            self.add_module(f"dec{block}", nn.Sequential(*convs))
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2, return_indices=True)
        self.unpool = nn.MaxUnpool2d(kernel_size=2, stride=2)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if pretrained_weights:
            self.load_vgg16(pretrained_weights)
        else:
            logger.info("no pretrained_weights given: the SegNet encoder starts from its random initialisation")

    def load_vgg16(self, path: str | Path) -> None:
        """Initialise the encoder from a torchvision VGG16 or VGG16-BN state dict; ``classifier.*`` is unused.

        A SegNet of fewer blocks takes the file's first blocks and leaves the rest of it unused.
        """
        with_batchnorm = any(key.endswith("running_mean") for key in read_state_dict(path))
        names = _vgg_feature_names(with_batchnorm)
        batchnorm_of = {conv + 1: bn for conv, (_, bn) in names.items()} if with_batchnorm else {}

        def rename(key: str) -> str:
            match = re.fullmatch(r"features\.(\d+)\.(\w+)", key)
            if match is None:
                return key
            index, parameter = int(match.group(1)), match.group(2)
            if index in names:
                return f"{names[index][0]}.{parameter}"  # enc<block>.<position>.0.<parameter>
            return f"{batchnorm_of[index]}.{parameter}" if index in batchnorm_of else key

        def unused(key: str) -> bool:
            if not key.startswith("enc") and not key.startswith("features."):
                return True  # the decoder, and the file's classifier
            if key.startswith("enc") and int(key[3]) > self.blocks:
                return True  # VGG blocks deeper than this SegNet
            return not with_batchnorm and key.split(".")[2:3] == ["1"]  # BatchNorm of a plain VGG16

        load_weight_file(self, path, unused=unused, rename=rename)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None):
        """Logits; in training with labels ``y``, ``(prediction, main_loss, aux_loss)`` (aux_loss is 0)."""
        sizes, indices = [], []
        for block in range(1, self.blocks + 1):
            x = getattr(self, f"enc{block}")(x)
            sizes.append(x.shape[-2:])
            x, index = self.pool(x)
            indices.append(index)
        for block in range(self.blocks, 0, -1):
            x = self.unpool(x, indices.pop(), output_size=sizes.pop())
            x = getattr(self, f"dec{block}")(x)
        if not (self.training and y is not None):
            return x
        return x.argmax(1), self.criterion(x, y), x.new_zeros(())
