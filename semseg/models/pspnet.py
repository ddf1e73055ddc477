"""PSPNet: a dilated ResNet (output stride 8), pyramid pooling, and an auxiliary head on layer3.

Parameter and buffer names are those of hszhao/semseg's PSPNet, so its published checkpoints load
strictly. The classifier convs are plain ``nn.Conv2d`` marked ``unprunable``: ACoSP leaves them at
full width.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from acosp.inject import unprunable
from semseg.models.resnet import resnet

PPM_BINS = (1, 2, 3, 6)
ZOOM_FACTORS = (1, 2, 4, 8)


def check_input_size(height: int, width: int) -> None:
    """PSPNet maps a side of 8n+1 pixels to n+1 features and back; other sizes do not line up."""
    if (height - 1) % 8 or (width - 1) % 8:
        raise ValueError(
            f"PSPNet needs input sides of the form 8*n+1 (473, 713, 65, ...), got {height}x{width}; "
            "choose crop/test sizes accordingly"
        )


class PPM(nn.Module):
    """Pyramid pooling: the features, concatenated with their pooled, projected and upsampled versions."""

    def __init__(self, in_channels: int, reduction_channels: int, bins=PPM_BINS):
        super().__init__()
        self.features = nn.ModuleList(
            nn.Sequential(
                nn.AdaptiveAvgPool2d(bin_size),
                nn.Conv2d(in_channels, reduction_channels, kernel_size=1, bias=False),
                nn.BatchNorm2d(reduction_channels),
                nn.ReLU(inplace=True),
            )
            for bin_size in bins
        )

    def forward(self, x):
        size = x.shape[2:]
        pooled = [F.interpolate(branch(x), size, mode="bilinear", align_corners=True) for branch in self.features]
        return torch.cat([x, *pooled], dim=1)


def _head(in_channels: int, hidden: int, classes: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, hidden, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(hidden),
        nn.ReLU(inplace=True),
        nn.Dropout2d(p=dropout),
        unprunable(nn.Conv2d(hidden, classes, kernel_size=1)),
    )


def _dilate(stage: nn.Sequential, dilation: int) -> None:
    """Trade the stage's stride for dilation, so the resolution stays and the receptive field grows."""
    for name, module in stage.named_modules():
        if name.endswith("conv2"):
            module.dilation, module.padding, module.stride = (dilation, dilation), (dilation, dilation), (1, 1)
        elif name.endswith("downsample.0"):
            module.stride = (1, 1)


class PSPNet(nn.Module):
    """PSPNet for ``classes`` classes; logits come out ``zoom_factor`` times the stride-8 feature size."""

    # Trained from scratch, so at a higher learning rate than the ImageNet backbone (head_lr_factor).
    heads = ("ppm", "cls", "aux")

    def __init__(
        self,
        layers: int = 50,
        classes: int = 19,
        zoom_factor: int = 8,
        bins=PPM_BINS,
        dropout: float = 0.1,
        ignore_label: int = 255,
        deep_base: bool = True,
        pretrained_weights: str | Path | None = None,
    ):
        super().__init__()
        if classes < 2:
            raise ValueError(f"PSPNet needs at least 2 classes, got {classes}")
        if zoom_factor not in ZOOM_FACTORS:
            raise ValueError(f"PSPNet zoom_factor must be one of {ZOOM_FACTORS}, got {zoom_factor!r}")
        self.zoom_factor = zoom_factor
        self.criterion = nn.CrossEntropyLoss(ignore_index=ignore_label)
        backbone = resnet(layers, deep_base=deep_base, weights_path=pretrained_weights)
        self.layer0 = backbone.stem()
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            backbone.layer1,
            backbone.layer2,
            backbone.layer3,
            backbone.layer4,
        )
        _dilate(self.layer3, 2)
        _dilate(self.layer4, 4)
        features = 2048
        self.ppm = PPM(features, features // len(bins), bins)
        self.cls = _head(2 * features, 512, classes, dropout)
        self.aux = _head(1024, 256, classes, dropout)

    def _zoom(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if self.zoom_factor == 1:
            return x
        return F.interpolate(x, size=size, mode="bilinear", align_corners=True)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None):
        """Logits; in training with labels ``y``, ``(prediction, main_loss, aux_loss)`` instead."""
        height, width = x.shape[2:]
        check_input_size(height, width)
        size = ((height - 1) // 8 * self.zoom_factor + 1, (width - 1) // 8 * self.zoom_factor + 1)
        x = self.layer2(self.layer1(self.layer0(x)))
        stage3 = self.layer3(x)
        x = self._zoom(self.cls(self.ppm(self.layer4(stage3))), size)
        if not (self.training and y is not None):
            return x
        aux = self._zoom(self.aux(stage3), size)
        if y.shape[-2:] != x.shape[-2:]:  # zoom_factor < 8: compare at the logits' size
            y = F.interpolate(y[:, None].float(), size=x.shape[-2:], mode="nearest")[:, 0].long()
        return x.argmax(1), self.criterion(x, y), self.criterion(aux, y)
