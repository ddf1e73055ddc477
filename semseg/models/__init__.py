"""The networks of the publication, one per file.

``ARCHITECTURES`` is the one table of the networks a config's ``arch`` can name: how to build each,
the config keys that shape it, and whether it classifies images or labels pixels. ``build_model(cfg)``
makes the network a config names; ``describe_arch(cfg)`` is the small dict a checkpoint stores so
that ``build_model`` can make the same network again without the config.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from semseg.models.cifar_resnet import CifarResNet18
from semseg.models.pspnet import PSPNet
from semseg.models.segnet import SegNet


@dataclass(frozen=True)
class Architecture:
    """One network a config can name."""

    build: Callable[..., nn.Module]
    # Config keys that shape the network (and so go into a checkpoint's arch).
    keys: tuple[str, ...]
    classes: int  # the published network's, for an arch dict without them
    # Images -> one class each (CIFAR-10: accuracy, no ignore label, 32x32 inputs), not per-pixel labels.
    classification: bool = False
    pretrained: bool = True  # takes ImageNet weights through pretrained_weights


# The defaults of the keys that shape the networks: the published networks. semseg.config's SCHEMA
# takes its defaults of these keys from here.
NETWORK_DEFAULTS = {"layers": 50, "zoom_factor": 8, "deep_base": True, "ignore_label": 255, "width": 1.0, "blocks": 5}

ARCHITECTURES = {
    "psp": Architecture(PSPNet, ("layers", "classes", "zoom_factor", "deep_base", "ignore_label"), 19),
    "segnet": Architecture(SegNet, ("classes", "ignore_label", "width", "blocks"), 11),
    "resnet18": Architecture(CifarResNet18, ("classes", "width"), 10, classification=True, pretrained=False),
}
ARCHS = tuple(ARCHITECTURES)


def is_classification(cfg: Any) -> bool:
    """Whether the config's network classifies whole images (its metrics, losses and inputs differ)."""
    return ARCHITECTURES[_get(cfg, "arch")].classification


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    if isinstance(cfg, Mapping):
        return cfg.get(key, default)
    return getattr(cfg, key, default)


def describe_arch(cfg: Any) -> dict[str, Any]:
    """``{"arch": ..., <the keys that shape that network>}``: plain values a checkpoint can hold."""
    arch = _get(cfg, "arch")
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    description = {"arch": arch}
    architecture = ARCHITECTURES[arch]
    for key in architecture.keys:
        value = _get(cfg, key)
        default = architecture.classes if key == "classes" else NETWORK_DEFAULTS[key]
        description[key] = default if value is None else value
    return description


def build_model(cfg: Any, pretrained_weights: str | Path | None = None) -> nn.Module:
    """The network of a config (or of a checkpoint's arch dict).

    ``pretrained_weights`` (or the config key of that name) initialises the backbone from a file.
    """
    description = describe_arch(cfg)
    arch = description.pop("arch")
    weights = pretrained_weights or _get(cfg, "pretrained_weights")
    architecture = ARCHITECTURES[arch]
    if architecture.pretrained:
        return architecture.build(**description, pretrained_weights=weights)
    if weights:
        raise ValueError(f"arch {arch} has no pretrained_weights to load; set pretrained_weights null")
    return architecture.build(**description)
