"""ResNet18 for 32x32 CIFAR-10 images: a 3x3 stride-1 stem, no max-pool, BasicBlocks 2-2-2-2.

Every conv is prunable (shortcut convs included); the final ``nn.Linear`` is not a conv, so ACoSP
leaves it alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    """Two 3x3 convs plus the shortcut (a strided 1x1 conv where the shape changes)."""

    def __init__(self, in_channels: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or in_channels != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, planes, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x):
        shortcut = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += shortcut  # in place: no new tensor of the stream's width per block
        return F.relu(out, inplace=True)


class CifarResNet18(nn.Module):
    """ResNet18 for small images; train mode with labels returns ``(prediction, loss, aux_loss=0)``."""

    def __init__(self, classes: int = 10, width: float = 1.0):
        super().__init__()
        if classes < 2:
            raise ValueError(f"ResNet18 needs at least 2 classes, got {classes}")
        if not 0 < width <= 1:
            raise ValueError(f"ResNet18 width must be in (0, 1], got {width}")
        self.criterion = nn.CrossEntropyLoss()
        stem = max(1, round(64 * width))
        self.conv1 = nn.Conv2d(3, stem, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        stages, in_channels = [], stem
        for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            planes = max(1, round(planes * width))
            stages.append(nn.Sequential(BasicBlock(in_channels, planes, stride), BasicBlock(planes, planes)))
            in_channels = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = nn.Linear(in_channels, classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None):
        """Class logits; in training with labels ``y``, ``(prediction, loss, aux_loss)``."""
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        logits = self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))
        if not (self.training and y is not None):
            return logits
        return logits.argmax(1), self.criterion(logits, y), logits.new_zeros(())
