"""The ImageNet ResNet that PSPNet is built on: bottleneck blocks, deep or standard stem.

Names follow hszhao/semseg's ``resnet.py`` (``conv1``, ``bn1``, ``conv2``, ..., ``layer1.0.conv1``,
``fc``), so its ``resnet50_v2.pth`` loads into the deep-stem network, and torchvision's ResNet state
dicts into the standard 7x7 stem (``deep_base=False``).
"""

from __future__ import annotations

import logging
from pathlib import Path

from torch import nn

from semseg.models.pretrained import load_weight_file

logger = logging.getLogger(__name__)

BLOCKS_PER_STAGE = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carries the stride and any dilation), 1x1 expand by 4, plus the shortcut."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += shortcut  # in place: no new tensor of the stream's width per block
        return self.relu(out)


class ResNet(nn.Module):
    """ResNet-50/101/152 for 224x224 ImageNet images; PSPNet takes its stem and stages."""

    def __init__(self, layers: int = 50, num_classes: int = 1000, deep_base: bool = True):
        super().__init__()
        if layers not in BLOCKS_PER_STAGE:
            raise ValueError(f"ResNet layers must be one of {sorted(BLOCKS_PER_STAGE)}, not {layers!r}")
        self.deep_base = deep_base
        if deep_base:
            self.conv1 = conv3x3(3, 64, stride=2)
            self.bn1 = nn.BatchNorm2d(64)
            self.conv2 = conv3x3(64, 64)
            self.bn2 = nn.BatchNorm2d(64)
            self.conv3 = conv3x3(64, 128)
            self.bn3 = nn.BatchNorm2d(128)
            self.in_channels = 128
        else:
            self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.in_channels = 64
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        blocks = BLOCKS_PER_STAGE[layers]
        self.layer1 = self._stage(64, blocks[0])
        self.layer2 = self._stage(128, blocks[1], stride=2)
        self.layer3 = self._stage(256, blocks[2], stride=2)
        self.layer4 = self._stage(512, blocks[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512 * Bottleneck.expansion, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def _stage(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        out_channels = planes * Bottleneck.expansion
        if stride != 1 or self.in_channels != out_channels:
            downsample = nn.Sequential(
                nn.Conv2d(self.in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        stage = [Bottleneck(self.in_channels, planes, stride, downsample)]
        self.in_channels = out_channels
        stage += [Bottleneck(out_channels, planes) for _ in range(1, blocks)]
        return nn.Sequential(*stage)

    def stem(self) -> nn.Sequential:
        """The layers before ``layer1``, in the order (and so with the indices) of semseg's ``layer0``."""
        if self.deep_base:
            return nn.Sequential(
                self.conv1, self.bn1, nn.ReLU(inplace=True),
                self.conv2, self.bn2, nn.ReLU(inplace=True),
                self.conv3, self.bn3, nn.ReLU(inplace=True),
                self.maxpool,
            )  # fmt: skip
        return nn.Sequential(self.conv1, self.bn1, nn.ReLU(inplace=True), self.maxpool)

    def forward(self, x):
        x = self.stem()(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))


def resnet(layers: int = 50, deep_base: bool = True, weights_path: str | Path | None = None) -> ResNet:
    """A ResNet, initialised from ``weights_path`` (every key but ``fc`` must fit) or at random."""
    network = ResNet(layers, deep_base=deep_base)
    if weights_path:
        load_weight_file(network, weights_path, unused=lambda key: key.startswith("fc."))
    else:
        logger.info("no pretrained_weights given: ResNet%d starts from its random initialisation", layers)
    return network
