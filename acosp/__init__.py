"""ACoSP: Auto-Compressing Subset Pruning of convolutional networks during training.

``import acosp`` loads the core alone (masks, injection, the pruner, mask statistics). The
compression layer (``acosp.compress``, built on ``acosp.compression``) traces networks and is
loaded on first use.
"""

import importlib

from acosp import inject, masks, stats
from acosp.inject import UnprunableConv2d, hard_to_conv, soft_to_hard_k, unprunable, unprunable_outputs
from acosp.masks import ChannelMask, GatheredMask, SigmoidSoftTopK, sigmoid_soft_top_k
from acosp.pruner import SoftTopKPruner

__version__ = "0.1.0"

_LAZY_MODULES = ("compress", "compression")

__all__ = [
    "ChannelMask",
    "GatheredMask",
    "SigmoidSoftTopK",
    "SoftTopKPruner",
    "UnprunableConv2d",
    "compress",
    "compression",
    "hard_to_conv",
    "inject",
    "masks",
    "sigmoid_soft_top_k",
    "soft_to_hard_k",
    "stats",
    "unprunable",
    "unprunable_outputs",
]


def __getattr__(name: str):
    if name in _LAZY_MODULES:
        return importlib.import_module(f"acosp.{name}")
    raise AttributeError(f"module 'acosp' has no attribute '{name}'")
