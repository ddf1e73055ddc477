"""The zoo benchmark's memory-traffic figure (``benchmarks/zoo.py``), which needs torch alone."""

import torch
from torch import nn

from benchmarks.zoo import bytes_moved

FLOAT = 4


def test_a_conv_moves_its_input_weights_bias_and_output():
    conv = nn.Conv2d(3, 8, 1).eval()
    assert bytes_moved(conv, torch.randn(1, 3, 4, 4)) == (48 + 24 + 8 + 128) * FLOAT


def test_views_move_nothing_and_an_in_place_op_counts_its_tensor_once():
    network = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(inplace=True), nn.Flatten()).eval()
    assert bytes_moved(network, torch.randn(1, 3, 4, 4)) == (48 + 24 + 8 + 128 + 128) * FLOAT


def test_a_quarter_of_the_channels_moves_about_a_quarter_of_the_bytes():
    def network(width):
        return nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 1)).eval()

    wide, narrow = (bytes_moved(network(c), torch.randn(1, c, 32, 32)) for c in (64, 16))
    assert 3.5 < wide / narrow < 4.5  # while the MACs fall 16-fold
