"""Channel splits and shuffles (ShuffleNetV2): chunks keep equal parts, a shuffle permutes channels exactly."""

import torch
from test_compress import random_batch_norm
from torch import nn

from acosp.compress import compress, compression_report, model_statistics, relative_error
from acosp.inject import inject_soft_masks, soft_to_hard_k


def channel_shuffle(x, groups):
    n, c, h, w = x.shape
    x = x.view(n, groups, c // groups, h, w)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(n, -1, h, w)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2's stride-1 unit: half the channels pass, half go through a branch, then shuffle."""

    def __init__(self, channels=16, split_sizes=False):
        super().__init__()
        half = channels // 2
        self.split_sizes = half if split_sizes else None  # split(8): a size in the code, not a share
        self.branch = nn.Sequential(
            nn.Conv2d(half, half, 1, bias=False),
            nn.BatchNorm2d(half),
            nn.ReLU(),
            nn.Conv2d(half, half, 3, padding=1, groups=half, bias=False),
            nn.BatchNorm2d(half),
            nn.Conv2d(half, half, 1, bias=False),
            nn.BatchNorm2d(half),
            nn.ReLU(),
        )

    def forward(self, x):
        x1, x2 = x.chunk(2, dim=1) if self.split_sizes is None else x.split(self.split_sizes, dim=1)
        return channel_shuffle(torch.cat((x1, self.branch(x2)), dim=1), 2)


class Shuffled(nn.Module):
    def __init__(self, after_split=None, split_sizes=False):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.units = nn.Sequential(ShuffleUnit(split_sizes=split_sizes), ShuffleUnit(split_sizes=split_sizes))
        self.head = nn.Conv2d(16, 5, 1)
        self.after_split = after_split

    def forward(self, x):
        x = self.stem(x)
        if self.after_split is not None:
            n, c, h, w = x.shape
            x = self.after_split(x.view(n, 2, c // 2, h, w)).view(n, c, h, w)
        return self.head(self.units(x))


def hard_masked(network, sparsity=0.5):
    torch.manual_seed(0)
    random_batch_norm(network)
    inject_soft_masks(network, sparsity, min_remaining_elements=1)
    return soft_to_hard_k(network).eval()


def test_a_channel_shuffle_and_chunks_compress_exactly_and_narrow():
    network = hard_masked(Shuffled())
    x = torch.randn(2, 3, 10, 10)
    compressed = compress(network, x)
    assert relative_error(network(x), compressed(x)) < 1e-5
    before = model_statistics(network, x, as_compressed=False)["macs"]
    assert model_statistics(compressed, x)["macs"] < 0.75 * before


def test_a_split_by_sizes_keeps_its_tensor_whole_and_exact():
    network = hard_masked(Shuffled(split_sizes=True))
    x = torch.randn(2, 3, 10, 10)
    compressed = compress(network, x)
    with torch.no_grad():
        assert compressed.stem(x).shape[1] == 16
    assert relative_error(network(x), compressed(x)) < 1e-5


def test_chunks_of_a_tensor_keep_equal_parts():
    """A stem that keeps channels only in its first half still hands the chunk two equal halves."""
    network = hard_masked(Shuffled())
    mask = torch.zeros(16)
    mask[[0, 1, 2]] = 1.0
    network.stem[0][1].mask.copy_(mask)
    x = torch.randn(2, 3, 10, 10)
    compressed = compress(network, x)
    with torch.no_grad():
        assert compressed.stem(x).shape[1] % 2 == 0
    assert relative_error(network(x), compressed(x)) < 1e-5


def test_other_uses_of_split_channels_keep_the_tensor_whole_and_say_so():
    network = hard_masked(Shuffled(after_split=lambda x: x.cumsum(2)))
    x = torch.randn(2, 3, 10, 10)
    compressed = compress(network, x)  # a view holds what the network computed: exact on the whole tensor
    with torch.no_grad():
        assert compressed.stem(x).shape[1] == 16
    assert relative_error(network(x), compressed(x)) < 1e-5
    assert "'cumsum' (called in the network (Shuffled)) uses channels split into groups" in compression_report(
        compressed
    )
