"""ACoSP: Auto-Compressing Subset Pruning of convolutional networks during training."""

from acosp import compress, coupling, inject, masks, stats
from acosp.inject import UnprunableConv2d, hard_to_conv, soft_to_hard_k
from acosp.masks import ChannelMask, SigmoidSoftTopK, sigmoid_soft_top_k
from acosp.pruner import SoftTopKPruner

__version__ = "0.1.0"

__all__ = [
    "ChannelMask",
    "SigmoidSoftTopK",
    "SoftTopKPruner",
    "UnprunableConv2d",
    "compress",
    "coupling",
    "hard_to_conv",
    "inject",
    "masks",
    "sigmoid_soft_top_k",
    "soft_to_hard_k",
    "stats",
]
