"""Small networks and data that the tests share."""

import pytest
import torch
from torch import nn

from acosp.inject import UnprunableConv2d


class SmallCNN(nn.Module):
    """Convs with and without bias, a transposed conv, BatchNorm and an unprunable classifier."""

    def __init__(self, classes: int = 3):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
        )
        self.up = nn.ConvTranspose2d(32, 24, 2, stride=2, bias=False)
        self.up_bn = nn.BatchNorm2d(24)
        self.classifier = UnprunableConv2d(24, classes, 1)

    def forward(self, x):
        return self.classifier(torch.relu(self.up_bn(self.up(self.features(x)))))


def make_batches(count: int = 4, batch: int = 4, size: int = 8, classes: int = 3, seed: int = 0):
    """A fixed list of (image, label) batches whose label depends on the image, so there is something to learn."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):
        images = torch.randn(batch, 3, size, size, generator=generator)
        labels = (images[:, 0] > 0).long() + (images[:, 1] > 0.5).long()
        batches.append((images, labels.clamp_max(classes - 1)))
    return batches


@pytest.fixture
def small_cnn():
    torch.manual_seed(0)
    return SmallCNN()


@pytest.fixture(autouse=True)
def seeded():
    """Every test starts from the same random state, whatever ran before it."""
    torch.manual_seed(0)
