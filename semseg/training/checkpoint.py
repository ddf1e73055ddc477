"""Checkpoints: plain dicts of tensors and Python values, written atomically, read with weights_only.

A training checkpoint (built in one place, ``training_checkpoint``) holds ``state_dict`` (the
network, no ``module.`` prefix; semseg's key), ``arch`` (what ``model.build_model`` needs to make
the network again), ``pruner`` (the ``SoftTopKPruner`` state, or None for a dense run), ``epoch``
(epochs finished), ``config`` (the resolved config as a dict) and, for resuming, ``optimizer``,
``scaler``, ``rng`` and ``best``.
``model_from_checkpoint`` rebuilds the network from any of them, dense, soft, hard or compressed,
and from semseg's own checkpoints when a config says which network they hold. Beside them: the
random state a resumed run restores, and the check that the folder can hold the checkpoints at all.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from acosp.inject import prepare_for_state_dict, unwrap
from acosp.pruner import SoftTopKPruner
from semseg.atomic import atomic_path


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, or does not fit the network it describes."""


CHECKSUM = "checksum"  # the entry of a checkpoint that holds the SHA-256 of its tensors


def _tensors(value: Any, name: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor inside nested dicts, lists and tuples, with a path naming it (``optimizer.state.0.exp_avg``)."""
    if isinstance(value, torch.Tensor):
        yield name, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _tensors(item, f"{name}.{key}" if name else str(key))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _tensors(item, f"{name}.{index}" if name else str(index))


def tensor_checksum(state: Mapping[str, Any]) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of every tensor in ``state`` (its checksum entry aside)."""
    digest = hashlib.sha256()
    tensors = sorted(_tensors({key: value for key, value in state.items() if key != CHECKSUM}), key=lambda t: t[0])
    for name, tensor in tensors:
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def non_finite_tensors(state: Mapping[str, Any]) -> list[str]:
    """The names of the floating-point tensors in ``state`` that hold an inf or a NaN."""
    return [
        name
        for name, tensor in _tensors(state)
        if tensor.is_floating_point() and tensor.numel() and not bool(torch.isfinite(tensor).all())
    ]


def size_text(count: float) -> str:
    """Bytes as GiB, or MiB below one GiB (so small runs do not read '0.00 GiB')."""
    return f"{count / 2**30:.2f} GiB" if count >= 2**30 else f"{count / 2**20:.1f} MiB"


def save_checkpoint(state: Mapping[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` through a temporary file, so a crash never leaves half a checkpoint.

    Refuses (CheckpointError, nothing written) a state with a non-finite tensor, so that the last
    checkpoint on disk is always a good one; adds the checksum ``load_checkpoint`` verifies. A full
    disk is an error that names the file and the space left.
    """
    path = Path(path)
    bad = non_finite_tensors(state)
    if bad:
        listed = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise CheckpointError(
            f"not writing {path}: non-finite values in {listed} (the training diverged); the checkpoints "
            "already there are the last good ones. Try a lower base_lr, or amp false."
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {**state, CHECKSUM: tensor_checksum(state)}
    try:
        with atomic_path(path) as temporary:
            torch.save(state, temporary)
            with open(temporary, "rb") as written:
                os.fsync(written.fileno())
    except (OSError, RuntimeError) as error:  # torch reports a full disk as a RuntimeError of its stream writer
        free = shutil.disk_usage(path.parent).free
        raise CheckpointError(
            f"cannot write checkpoint {path}: {error} ({size_text(free)} free on that disk); the checkpoints "
            "already there are untouched"
        ) from error
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The dict saved at ``path``; tensors only, no pickled code (``weights_only=True``).

    A checkpoint written by ``save_checkpoint`` carries a checksum of its tensors: a mismatch (bytes
    changed on disk) is an error naming the file. Checkpoints without one (the publication's,
    semseg's) load unchecked.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        content = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        raise CheckpointError(f"checkpoint {path} cannot be read: {error}") from error
    if not isinstance(content, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(content).__name__}, not a dict")
    expected = content.pop(CHECKSUM, None)
    if isinstance(expected, str) and tensor_checksum(content) != expected:
        raise CheckpointError(
            f"checkpoint {path} is damaged: its tensors do not match the checksum written with them "
            "(the file changed on disk); use another checkpoint, e.g. an earlier train_epoch_*.pth"
        )
    return content


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the temporary files that writes killed midway left in ``folder`` (``.last.pth.XXXXXXXX.pth``).

    Only call this while holding the folder (semseg.training.experiment_lock): another run's save in progress
    looks the same.
    """
    removed = []
    for path in folder.glob(".*"):
        match = re.fullmatch(r"\.(.+)\.[a-z0-9_]{8}(\.\w+)", path.name)  # semseg.atomic's naming
        if path.is_file() and match and match.group(1).endswith(match.group(2)):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def network_state(checkpoint: Mapping[str, Any], path: str | Path = "checkpoint") -> dict[str, torch.Tensor]:
    """The network's tensors, whichever key holds them; DataParallel's ``module.`` prefix removed."""
    for key in ("state_dict", "model"):
        if isinstance(checkpoint.get(key), Mapping):
            return {name.removeprefix("module."): value for name, value in checkpoint[key].items()}
    if checkpoint and all(isinstance(value, torch.Tensor) for value in checkpoint.values()):
        return {name.removeprefix("module."): value for name, value in checkpoint.items()}  # a bare state dict
    raise CheckpointError(f"{path} holds no network weights (no 'state_dict' entry)")


def _has_masks(state: Mapping[str, torch.Tensor]) -> bool:
    return any(key.endswith(".1.mask") for key in state)


def _pruner_for(checkpoint: Mapping[str, Any], cfg: Any) -> SoftTopKPruner | None:
    if checkpoint.get("pruner"):
        pruner = SoftTopKPruner()
        pruner.load_state_dict(checkpoint["pruner"])
        # A group of coupled convs saved one copy of its mask per conv: separate masks load it exactly,
        # and only training needs them shared.
        pruner.coupled_masks = False
        return pruner
    sparsity = getattr(cfg, "sparsity", None) if cfg is not None else None
    if sparsity:
        return SoftTopKPruner(final_sparsity=sparsity, min_remaining_elements=getattr(cfg, "min_remaining_elements", 8))
    return None


def load_network_state(model: nn.Module, state: Mapping[str, torch.Tensor], path: str | Path) -> None:
    """``load_state_dict`` strictly, with an error that names the checkpoint and the keys that differ."""
    expected = unwrap(model).state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(key for key in set(expected) & set(state) if expected[key].shape != state[key].shape)
    if missing or unexpected or wrong:
        parts = [
            f"{label}: {', '.join(keys[:5])}{f' and {len(keys) - 5} more' if len(keys) > 5 else ''}"
            for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong))
            if keys
        ]
        raise CheckpointError(f"checkpoint {path} does not fit the network it names: " + "; ".join(parts))
    unwrap(model).load_state_dict(state, strict=True)


def model_from_checkpoint(path: str | Path, cfg: Any = None, map_location: str | torch.device = "cpu") -> nn.Module:
    """The network saved at ``path``, with its weights, in eval mode.

    The checkpoint's ``arch`` says which network it is; without one (semseg's checkpoints) the
    config's ``arch``, ``layers``, ``classes``... do. Masked checkpoints get their masks back (soft
    or hard, from the saved pruner state or the config's ``sparsity``); compressed ones their widths.
    """
    from semseg.models import build_model, describe_arch

    checkpoint = load_checkpoint(path, map_location)
    state = network_state(checkpoint, path)
    arch = checkpoint.get("arch")
    if arch is None:
        if cfg is None:
            raise CheckpointError(f"checkpoint {path} has no 'arch' entry; give the config of the network it holds")
        arch = describe_arch(cfg)  # the network's shape; its weights come from the checkpoint, not pretrained_weights
    classes = cfg.get("classes") if isinstance(cfg, Mapping) else getattr(cfg, "classes", None)
    if classes is not None and arch.get("classes") not in (None, classes):
        raise CheckpointError(
            f"checkpoint {path} holds a network of {arch['classes']} classes, but the config has {classes} "
            "(classes); test it with its own dataset's config"
        )
    model = build_model(arch)
    if isinstance(checkpoint.get("compression"), Mapping):
        from acosp.compress import apply_compression_spec

        model = apply_compression_spec(model, checkpoint["compression"])
    elif _has_masks(state):
        pruner = _pruner_for(checkpoint, cfg)
        if pruner is None:
            raise CheckpointError(f"checkpoint {path} holds masks but no pruner state; give the config's sparsity")
        model = pruner.configure_model(model)
        prepare_for_state_dict(model, state)
    load_network_state(model, state, path)
    return model.to(map_location).eval()


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any] | None) -> None:
    """Torch's generators as they were; the per-epoch seeding makes the rest exact for seeded runs."""
    if not state:
        return
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def check_free_space(folder: Path, model: nn.Module, checkpoints_in_flight: int = 2) -> None:
    """An unwritable folder or a disk too small for two checkpoints is an error before training, not after."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{time.time_ns()}"
        probe.write_bytes(b"0")
        probe.unlink()
    except OSError as error:
        raise CheckpointError(f"cannot write to the experiment folder {folder}: {error}") from error
    # Weights plus optimizer state (momentum or Adam's two moments): at most three copies of the parameters.
    needed = 3 * sum(p.numel() * p.element_size() for p in model.parameters()) * checkpoints_in_flight
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise CheckpointError(
            f"{folder} has {size_text(free)} free, but checkpoints of this network need about {size_text(needed)}"
        )


def network_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The network's state dict without DDP's ``module.`` prefix, on the CPU."""
    return {key: value.detach().cpu() for key, value in unwrap(model).state_dict().items()}


def training_checkpoint(
    cfg: Any,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    pruner: SoftTopKPruner,
    epoch: int,
    best: dict[str, Any],
    interrupted: bool = False,
) -> dict[str, Any]:
    """What rebuilding the network and resuming its training need, after ``epoch`` epochs (the layout above)."""
    from semseg.models import describe_arch

    return {
        "epoch": epoch,
        "state_dict": network_state_dict(model),
        "arch": describe_arch(cfg),
        "pruner": pruner.state_dict() if pruner.active or pruner.finished else None,
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": rng_state(),
        "config": cfg.to_dict(),
        "best": best,
        "interrupted": interrupted,
    }
