"""ImageNet initialisation from a weight file on disk: strict, and loud about what does not fit.

Nothing is downloaded here (``tool/download.py`` fetches the publication's files). A file that
fits only partly would silently leave layers at their random initialisation (semseg's
``strict=False``), so every missing, unexpected or mis-shaped key is an error naming the file,
except the keys the caller says the network does not use (the ImageNet classifier) and
BatchNorm's ``num_batches_tracked``, which older files do not have.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

logger = logging.getLogger(__name__)

# How many mismatching keys an error message lists before it says "and N more".
SHOWN_KEYS = 5


class WeightFileError(ValueError):
    """A weight file that is missing, unreadable, or does not fit the network."""


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a weight file: a state dict, or a checkpoint holding one; ``module.`` prefixes removed."""
    path = Path(path)
    if not path.is_file():
        raise WeightFileError(
            f"pretrained_weights: weight file {path} does not exist; 'python tool/download.py' lists the "
            "publication's ImageNet weights and fetches them (vgg16) or says where they are published, or set "
            "pretrained_weights null to train from scratch"
        )
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise WeightFileError(f"weight file {path} cannot be read as a torch state dict: {error}") from error
    if isinstance(content, Mapping) and isinstance(content.get("state_dict"), Mapping):
        content = content["state_dict"]
    if not isinstance(content, Mapping) or not all(isinstance(v, torch.Tensor) for v in content.values()):
        raise WeightFileError(f"weight file {path} does not hold a state dict of tensors")
    return {key.removeprefix("module."): value for key, value in content.items()}


def _listed(keys: Iterable[str]) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:SHOWN_KEYS])
    return shown + (f" and {len(keys) - SHOWN_KEYS} more" if len(keys) > SHOWN_KEYS else "")


def load_weight_file(
    module: nn.Module,
    path: str | Path,
    unused: Callable[[str], bool] = lambda key: False,
    rename: Callable[[str], str] = lambda key: key,
) -> None:
    """Load ``path`` into ``module`` strictly, except for the keys ``unused(key)`` marks (the classifier).

    ``rename`` maps a key of the file to the module's name for it; ``unused`` sees the module's names.
    """
    path = Path(path)
    renamed = {rename(key): value for key, value in read_state_dict(path).items()}
    loaded = {key: value for key, value in renamed.items() if not unused(key)}
    expected = {key: value for key, value in module.state_dict().items() if not unused(key)}
    optional = {key for key in expected if key.endswith("num_batches_tracked")}
    missing = set(expected) - set(loaded) - optional
    unexpected = set(loaded) - set(expected)
    wrong_shape = {
        f"{key} (file {tuple(value.shape)}, network {tuple(expected[key].shape)})"
        for key, value in loaded.items()
        if key in expected and value.shape != expected[key].shape
    }
    problems = []
    if missing:
        problems.append(f"missing keys: {_listed(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listed(unexpected)}")
    if wrong_shape:
        problems.append(f"wrong shapes: {_listed(wrong_shape)}")
    if problems:
        raise WeightFileError(f"weight file {path} does not fit {type(module).__name__}: " + "; ".join(problems))
    module.load_state_dict(loaded, strict=False)
    logger.info("initialised %s from %s", type(module).__name__, path)
