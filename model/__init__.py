"""Network definitions of the research repository; run from the repository root, not installed.

``build_model(cfg)`` makes the network a config names; ``describe_arch(cfg)`` is the small dict a
checkpoint stores so that ``build_model`` can make the same network again without the config.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from model.cifar_resnet import CifarResNet18
from model.pspnet import PSPNet
from model.segnet import SegNet

ARCHS = ("psp", "segnet", "resnet18")
# Config keys that shape each network (and so go into a checkpoint's arch), with their defaults.
ARCH_KEYS = {
    "psp": {"layers": 50, "classes": 19, "zoom_factor": 8, "deep_base": True, "ignore_label": 255},
    "segnet": {"classes": 11, "ignore_label": 255, "width": 1.0, "blocks": 5},
    "resnet18": {"classes": 10, "width": 1.0},
}


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    if isinstance(cfg, Mapping):
        return cfg.get(key, default)
    return getattr(cfg, key, default)


def describe_arch(cfg: Any) -> dict[str, Any]:
    """``{"arch": ..., <the keys that shape that network>}``: plain values a checkpoint can hold."""
    arch = _get(cfg, "arch")
    if arch not in ARCH_KEYS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    description = {"arch": arch}
    for key, default in ARCH_KEYS[arch].items():
        value = _get(cfg, key)
        description[key] = default if value is None else value
    return description


def build_model(cfg: Any, pretrained_weights: str | None = None) -> nn.Module:
    """The network of a config (or of a checkpoint's arch dict).

    ``pretrained_weights`` (or the config key of that name) initialises the backbone from a file.
    """
    description = describe_arch(cfg)
    arch = description.pop("arch")
    weights = pretrained_weights or _get(cfg, "pretrained_weights")
    if arch == "psp":
        return PSPNet(**description, pretrained_weights=weights)
    if arch == "segnet":
        return SegNet(**description, pretrained_weights=weights)
    if weights:
        raise ValueError("arch resnet18 has no pretrained_weights to load; leave the key empty")
    return CifarResNet18(**description)
