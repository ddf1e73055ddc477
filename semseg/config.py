"""Experiment configs: one YAML file plus ``key value`` overrides, flattened and validated.

A config file has the sections DATA, TRAIN and TEST (the layout of the original publication's
and hszhao/semseg's configs; their Distributed section loads too, its keys ignored: see
``IGNORED_KEYS``). Their keys form one namespace with attribute access, ``cfg.base_lr``.
``SCHEMA`` below is the single list of known keys, with their types and defaults.
Every mistake (an unknown key, a wrong type, an impossible value, a missing or malformed file) is a
``ConfigError`` whose message names the file and the key, so a run fails before it starts.
"""

from __future__ import annotations

import copy
import difflib
import math
import re
import warnings
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from acosp.pruner import SELECTIONS
from semseg.atomic import atomic_path
from semseg.models import ARCHITECTURES, ARCHS
from semseg.models import NETWORK_DEFAULTS as NET

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("DATA", "TRAIN", "Distributed", "TEST")
PSP_LAYERS = (50, 101, 152)
_APEX = "mixed precision is the key amp"
_TORCHRUN = "processes and devices come from torchrun's environment (NPROC in tool/train.sh)"
IGNORED_KEYS = {
    "use_apex": _APEX,
    "opt_level": _APEX,
    "keep_batchnorm_fp32": _APEX,
    "loss_scale": _APEX,
    "train_gpu": _TORCHRUN + "; a single process uses the first visible GPU (CUDA_VISIBLE_DEVICES)",
    "dist_url": _TORCHRUN,
    "dist_backend": _TORCHRUN + ": nccl on CUDA, gloo on the CPU",
    "multiprocessing_distributed": _TORCHRUN,
    "world_size": _TORCHRUN,
    "rank": _TORCHRUN,
}
"""semseg's keys that nothing here reads: accepted so its configs load, dropped with a note saying why."""


class IgnoredKeyWarning(UserWarning):
    """A semseg key that this repository accepts and ignores (``IGNORED_KEYS`` says why)."""


def _note_ignored(where: str, key: str) -> None:
    warnings.warn(f"{where}: {key} is ignored: {IGNORED_KEYS[key]}", IgnoredKeyWarning, stacklevel=3)


class ConfigError(ValueError):
    """A config that cannot be used; the message names the file and the key at fault."""


class _Required:
    def __repr__(self) -> str:
        return "required"


REQUIRED = _Required()


@dataclass(frozen=True)
class Key:
    """One known config key: its section, type (int, float, bool, str or list), default and meaning."""

    section: str
    kind: type
    default: Any
    doc: str
    nullable: bool = False
    item: type | None = None  # element type of a list


def _keys(section: str, *rows: tuple) -> dict[str, Key]:
    """Rows of (name, type, default, meaning[, element type of a list]); a null default makes a key nullable."""
    out = {}
    for name, kind, default, doc, *options in rows:
        out[name] = Key(section, kind, default, doc, nullable=default is None, item=options[0] if options else None)
    return out


SCHEMA: dict[str, Key] = {
    **_keys(
        "DATA",
        ("dataset", str, REQUIRED, "dataset name: exp/<dataset>/ and dataset/<dataset>/ hold its runs and classes"),
        ("data_root", str, REQUIRED, "folder the list files' paths are relative to"),
        ("train_list", str, None, "list file of 'image label' lines for training (psp and segnet need it)"),
        ("val_list", str, None, "list file for evaluation during training"),
        ("classes", int, REQUIRED, "number of classes; label values are 0..classes-1 or ignore_label"),
        ("mean", list, [123.675, 116.28, 103.53], "per-channel RGB mean on the 0-255 scale", float),
        ("std", list, [58.395, 57.12, 57.375], "per-channel RGB standard deviation on the 0-255 scale", float),
        ("ignore_unknown_labels", bool, False, "map label values outside the classes to ignore_label, not an error"),
    ),
    **_keys(
        "TRAIN",
        ("arch", str, REQUIRED, "network: psp, segnet or resnet18"),
        ("layers", int, NET["layers"], "ResNet depth of PSPNet: 50, 101 or 152"),
        ("deep_base", bool, NET["deep_base"], "PSPNet's ResNet starts with three 3x3 convs instead of one 7x7"),
        ("width", float, NET["width"], "channel multiplier of SegNet and ResNet18 in (0, 1]; 1: the published network"),
        ("blocks", int, NET["blocks"], "SegNet's encoder blocks (poolings), 1-5; 5: published, fewer: small inputs"),
        ("pretrained_weights", str, None, "ImageNet weights of the backbone (a file), or null"),
        ("sync_bn", bool, True, "synchronise BatchNorm statistics across CUDA processes (several, with torchrun)"),
        ("train_h", int, 473, "crop height for training"),
        ("train_w", int, 473, "crop width for training"),
        ("scale_min", float, 0.5, "smallest random scale factor"),
        ("scale_max", float, 2.0, "largest random scale factor"),
        ("rotate_min", float, -10.0, "smallest random rotation, degrees"),
        ("rotate_max", float, 10.0, "largest random rotation, degrees"),
        ("zoom_factor", int, NET["zoom_factor"], "PSPNet's upsampling of its 1/8-resolution logits: 1, 2, 4 or 8"),
        ("ignore_label", int, NET["ignore_label"], "label value that is not a class and not scored"),
        ("aux_weight", float, 0.4, "weight of PSPNet's auxiliary loss (0: none)"),
        ("workers", int, 8, "data loader processes per training process"),
        ("batch_size", int, 16, "training batch size, summed over all processes"),
        ("batch_size_val", int, 8, "evaluation batch size during training, summed over all processes"),
        ("base_lr", float, 0.01, "learning rate of the backbone; the head's is head_lr_factor times larger"),
        ("head_lr_factor", float, 10.0, "learning-rate multiplier of the layers that are not the backbone"),
        ("optimizer", str, "sgd", "sgd (with momentum) or adam"),
        ("lr_schedule", str, "poly", "poly: base_lr * (1 - iter/max_iter) ** power; cosine: cosine annealing"),
        ("lr_update", str, "iteration", "the learning rate changes every iteration or every epoch"),
        ("epochs", int, 100, "training epochs"),
        ("start_epoch", int, 0, "first epoch (a resumed run takes it from the checkpoint)"),
        ("power", float, 0.9, "exponent of the poly schedule"),
        ("momentum", float, 0.9, "SGD momentum"),
        ("weight_decay", float, 0.0001, "SGD weight decay"),
        ("amp", bool, False, "mixed precision on CUDA: training with a gradient scaler, and testing"),
        ("manual_seed", int, None, "seed of every random generator; null: not seeded"),
        ("print_freq", int, 10, "log every this many iterations"),
        ("save_freq", int, 1, "write a checkpoint every this many epochs"),
        ("keep_checkpoints", int, None, "keep only this many recent epoch checkpoints; null: keep all"),
        ("save_path", str, None, "checkpoint folder; null: exp/<dataset>/<config name without dataset>/model"),
        ("weight", str, None, "a checkpoint to start from (weights only)"),
        (
            "resume",
            str,
            None,
            "a checkpoint to resume training from (weights, optimizer, epoch, pruner); auto: last.pth",
        ),
        (
            "resume_pruning",
            str,
            "check",
            "a resumed checkpoint pruned otherwise than the config: check (stop, naming both) or checkpoint (follow)",
        ),
        ("overwrite", bool, False, "start afresh over the checkpoints of an earlier run in save_path"),
        ("evaluate", bool, False, "evaluate on val_list after every epoch"),
        ("sparsity", float, 0.0, "fraction of each layer's channels ACoSP removes, in [0, 1); 0: dense"),
        ("starting_epoch", int, 0, "the mask temperature starts falling after this epoch"),
        ("ending_epoch", int, 30, "pruning ends here: the masks become binary before this epoch trains"),
        ("learnable_weights", bool, True, "the mask logits are trained (false: random, fixed)"),
        ("initial_temp", float, 1.0, "mask temperature at starting_epoch"),
        ("final_temp", float, 0.001, "mask temperature at ending_epoch"),
        ("min_remaining_elements", int, 8, "a pruned layer keeps at least this many channels"),
        ("round_to", int, 1, "hard masks keep k rounded up to a multiple of this (8: widths that suit the hardware)"),
        ("coupled_masks", bool, False, "convs summed into one residual stream share a mask, so the stream narrows too"),
        (
            "selection",
            str,
            "logits",
            "which channels hard masks keep: logits (ACoSP) or l1 (train dense until ending_epoch, then keep "
            "each layer's k filters of largest L1 norm)",
        ),
    ),
    **_keys(
        "TEST",
        ("test_list", str, None, "list file to test on"),
        ("split", str, "val", "val: the list has labels and is scored; test: images only"),
        ("base_size", int, 512, "the longer image side is resized to base_size * scale before testing"),
        ("test_h", int, 473, "height of the sliding-window crops at test time"),
        ("test_w", int, 473, "width of the sliding-window crops at test time"),
        ("scales", list, [1.0], "test scales whose predictions are averaged", float),
        ("flip", bool, True, "also average the prediction of the horizontally flipped image"),
        ("batch_size_test", int, 1, "sliding windows per forward pass at test time (each with its flip)"),
        ("has_prediction", bool, False, "predictions already exist in save_folder: only score them"),
        ("index_start", int, 0, "first list entry to test"),
        ("index_step", int, 0, "number of list entries to test from index_start; 0: all"),
        ("test_gpu", list, [0], "a single-process CUDA test runs on the first of these (torchrun: local rank)", int),
        ("model_path", str, None, "checkpoint to test; null: the final checkpoint in save_path"),
        ("save_folder", str, None, "predictions and scores; null: result/ beside save_path"),
        ("colors_path", str, None, "class colours; null: dataset/<dataset>/<dataset>_colors.txt"),
        ("names_path", str, None, "class names; null: dataset/<dataset>/<dataset>_names.txt"),
        (
            "absent_classes",
            str,
            "exclude",
            "a class absent from prediction and ground truth: exclude (NaN, left out of mIoU) or zero (semseg)",
        ),
        (
            "void_as_last_class",
            bool,
            False,
            "also score as the publication's CamVid test did: ignore_label pixels are ground truth of the last "
            "class and never right (metrics_void_as_last_class.csv)",
        ),
    ),
}


class CfgNode(dict):
    """The flattened config: a dict whose keys are also attributes (``cfg.base_lr``)."""

    def __init__(self, values: Mapping[str, Any] = (), source: str = "<config>"):
        super().__init__(values)
        object.__setattr__(self, "source", source)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"config has no key {name!r}{_suggest(name)}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __deepcopy__(self, memo) -> CfgNode:
        return CfgNode(copy.deepcopy(dict(self), memo), self.source)

    def to_dict(self) -> dict[str, Any]:
        """A plain flat dict, for checkpoints that ``torch.load(..., weights_only=True)`` reads."""
        return copy.deepcopy(dict(self))

    def path(self, key: str) -> Path | None:
        """The value of a path key as an absolute path (relative paths are relative to the repository root)."""
        return repo_path(self[key])


def repo_path(value: str | Path | None) -> Path | None:
    """``value`` relative to the repository root unless absolute; None stays None."""
    if value is None:
        return None
    path = Path(value).expanduser()
    return path if path.is_absolute() else ROOT / path


def _suggest(key: str) -> str:
    close = difflib.get_close_matches(key, list(SCHEMA) + list(SECTIONS), n=3, cutoff=0.6)
    if close:
        return "; closest known keys: " + ", ".join(close)
    return "; the known keys and their meaning are in SCHEMA in semseg/config.py"


class _Loader(yaml.SafeLoader):
    """YAML 1.1 with two fixes: ``1e-4`` is a float, not a string, and a repeated key is an error."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def _construct_mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if not isinstance(key, Hashable):
            continue  # SafeLoader reports an unhashable key itself
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"the key {key!r} appears twice in one mapping", key_node.start_mark
            )
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def parse_value(text: str) -> Any:
    """A command-line value as a YAML scalar or list: '0.02' -> 0.02, '[0,1]' -> [0, 1], 'null' -> None."""
    return yaml.load(text, Loader=_Loader)


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    return f"{type(value).__name__} {value!r}"


def _kind_name(spec: Key) -> str:
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    if spec.kind is list:
        return "a list of integers, like [0, 1]" if spec.item is int else "a list of numbers, like [1.0]"
    return names[spec.kind]


def _convert(value: Any, kind: type) -> Any:
    """``value`` as ``kind``; an int may become a float; None if the type does not fit."""
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    return None


def check_value(key: str, value: Any, where: str) -> Any:
    """``value`` converted to the type of ``key``, or a ConfigError naming ``where``, the key and the value."""
    if key not in SCHEMA:
        raise ConfigError(f"{where}: unknown key {key!r}{_suggest(key)}")
    spec = SCHEMA[key]
    if value is None:
        if spec.nullable:
            return None
        raise ConfigError(f"{where}: {key} must be {_kind_name(spec)}, not null")
    if spec.kind is list:
        if isinstance(value, list):
            items = [_convert(item, spec.item) for item in value]
            if all(item is not None for item in items):
                return items
        raise ConfigError(f"{where}: {key} must be {_kind_name(spec)}, got {_describe(value)}")
    converted = _convert(value, spec.kind)
    if converted is None:
        raise ConfigError(f"{where}: {key} must be {_kind_name(spec)}, got {_describe(value)}")
    return converted


def read_yaml(path: str | Path) -> Any:
    """The parsed YAML file; a missing file or a syntax error is a ConfigError with the file and line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found" + (" (it is a directory)" if path.is_dir() else ""))
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
        line = f", line {mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error)
        raise ConfigError(f"{path}{line}: malformed YAML: {problem}") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not a text file ({error.reason})") from None


def _flatten(data: Any, where: str) -> dict[str, Any]:
    """The file's sections merged into one dict of checked values."""
    if data is None:
        raise ConfigError(f"{where}: the config file is empty")
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: a config must be a mapping of sections {', '.join(SECTIONS)}")
    flat: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for name, content in data.items():
        if name in SECTIONS:
            if content is None:
                continue
            if not isinstance(content, dict):
                raise ConfigError(f"{where}: section {name} must hold 'key: value' lines, got {_describe(content)}")
            entries = content.items()
        elif name in SCHEMA or name in IGNORED_KEYS:
            entries = [(name, content)]
        else:
            raise ConfigError(f"{where}: unknown section or key {name!r}{_suggest(str(name))}")
        for key, value in entries:
            key = str(key)
            if key in IGNORED_KEYS:
                _note_ignored(where, key)
                continue
            if key in flat:
                raise ConfigError(f"{where}: key {key} is set twice, in {origin[key]} and in {name}")
            flat[key] = check_value(key, value, f"{where} [{name}]" if name in SECTIONS else where)
            origin[key] = name
    return flat


def read_config_file(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The file's checked values over those of the file it names as its ``base`` (relative to it), if any.

    So an experiment's file holds only what makes it special: ``base: cityscapes_pspnet50.yaml`` and
    ``sparsity: 0.75``; every other value comes from its base, and from the schema's defaults.
    """
    path = Path(path)
    data = read_yaml(path)
    base = data.pop("base", None) if isinstance(data, dict) else None
    values = _flatten(data, str(path)) if data or base is None else {}
    if base is None:
        return values
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{path}: base must name a config file, got {_describe(base)}")
    base_path = (path.parent / base).resolve()
    if base_path in _seen or base_path == path.resolve():
        chain = " -> ".join(str(p) for p in (*_seen, path.resolve(), base_path))
        raise ConfigError(f"{path}: its bases form a cycle: {chain}")
    if not base_path.is_file():
        raise ConfigError(f"{path}: its base {base} is not a file ({base_path})")
    return {**read_config_file(base_path, (*_seen, path.resolve())), **values}


def load_cfg_from_cfg_file(path: str | Path) -> CfgNode:
    """The file's values (over its bases') over the schema's defaults, checked for unknown keys and
    types (not yet validated)."""
    values = read_config_file(path)
    defaults = {key: copy.deepcopy(spec.default) for key, spec in SCHEMA.items() if spec.default is not REQUIRED}
    return CfgNode({**defaults, **values}, source=str(path))


def merge_cfg_from_list(cfg: CfgNode, overrides: Sequence[str]) -> CfgNode:
    """A copy of ``cfg`` with ``key value`` pairs applied (``TRAIN.base_lr 0.02`` also works)."""
    overrides = list(overrides)
    where = f"{cfg.source} (command-line override)"
    if len(overrides) % 2:
        raise ConfigError(f"{where}: overrides come in 'key value' pairs; {overrides[-1]!r} has no value")
    merged = copy.deepcopy(cfg)
    for full_key, text in zip(overrides[::2], overrides[1::2]):
        section, _, key = full_key.rpartition(".")
        if key in IGNORED_KEYS:
            _note_ignored(where, key)
            continue
        if key not in SCHEMA:
            raise ConfigError(f"{where}: unknown key {full_key!r}{_suggest(key)}")
        if section and section != SCHEMA[key].section:
            raise ConfigError(f"{where}: {full_key}: {key} belongs to section {SCHEMA[key].section}, not {section}")
        try:
            value = parse_value(text)
        except yaml.YAMLError as error:
            raise ConfigError(f"{where}: {full_key}: cannot parse {text!r}: {error.problem}") from None
        merged[key] = check_value(key, value, where)
    return merged


def _problems(cfg: CfgNode) -> list[str]:
    """Everything impossible about a config whose keys and types are already right."""
    problems = []

    def need(condition: bool, message: str) -> None:
        if not condition:
            problems.append(message)

    missing = [key for key, spec in SCHEMA.items() if spec.default is REQUIRED and key not in cfg]
    if missing:
        return [f"missing required key {key} (section {SCHEMA[key].section}): {SCHEMA[key].doc}" for key in missing]
    arch = cfg.arch
    need(arch in ARCHS, f"arch must be one of {', '.join(ARCHS)}, got {arch!r}")
    need(cfg.classes >= 2, f"classes must be at least 2, got {cfg.classes}")
    need(0 <= cfg.ignore_label <= 255, f"ignore_label must be in 0..255 (labels are uint8), got {cfg.ignore_label}")
    need(
        not 0 <= cfg.ignore_label < cfg.classes,
        f"ignore_label {cfg.ignore_label} is a class id (classes is {cfg.classes}); it must be >= classes",
    )
    classification = arch in ARCHITECTURES and ARCHITECTURES[arch].classification
    need(cfg.classes <= 255 or classification, f"classes must be at most 255 for uint8 labels, got {cfg.classes}")
    need(cfg.zoom_factor in (1, 2, 4, 8), f"zoom_factor must be 1, 2, 4 or 8, got {cfg.zoom_factor}")
    if arch == "psp":
        need(cfg.layers in PSP_LAYERS, f"layers must be one of {PSP_LAYERS} for psp, got {cfg.layers}")
        for key in ("train_h", "train_w", "test_h", "test_w"):
            need(
                cfg[key] > 0 and (cfg[key] - 1) % 8 == 0,
                f"{key} must be 8*n + 1 for PSPNet (like 473 or 713), got {cfg[key]}",
            )
    if arch in ("psp", "segnet"):
        need(cfg.train_list is not None, f"train_list is required for arch {arch}")
    for key in ("train_h", "train_w", "test_h", "test_w", "base_size", "epochs", "batch_size", "batch_size_val"):
        need(cfg[key] >= 1, f"{key} must be at least 1, got {cfg[key]}")
    for key in ("batch_size_test", "print_freq", "save_freq", "min_remaining_elements"):
        need(cfg[key] >= 1, f"{key} must be at least 1, got {cfg[key]}")
    for key in ("workers", "start_epoch", "starting_epoch", "index_start", "index_step", "weight_decay"):
        need(cfg[key] >= 0, f"{key} must not be negative, got {cfg[key]}")
    need(0 <= cfg.sparsity < 1, f"sparsity must be in [0, 1), got {cfg.sparsity}")
    need(0 < cfg.scale_min <= cfg.scale_max, f"need 0 < scale_min <= scale_max, got {cfg.scale_min}, {cfg.scale_max}")
    need(cfg.rotate_min <= cfg.rotate_max, f"need rotate_min <= rotate_max, got {cfg.rotate_min}, {cfg.rotate_max}")
    need(cfg.aux_weight >= 0, f"aux_weight must not be negative, got {cfg.aux_weight}")
    need(cfg.base_lr > 0, f"base_lr must be positive, got {cfg.base_lr}")
    need(cfg.head_lr_factor > 0, f"head_lr_factor must be positive, got {cfg.head_lr_factor}")
    need(cfg.power > 0, f"power must be positive, got {cfg.power}")
    need(0 <= cfg.momentum < 1, f"momentum must be in [0, 1), got {cfg.momentum}")
    need(cfg.lr_schedule in ("poly", "cosine"), f"lr_schedule must be poly or cosine, got {cfg.lr_schedule!r}")
    need(cfg.optimizer in ("sgd", "adam"), f"optimizer must be sgd or adam, got {cfg.optimizer!r}")
    need(cfg.lr_update in ("iteration", "epoch"), f"lr_update must be iteration or epoch, got {cfg.lr_update!r}")
    need(0 < cfg.width <= 1, f"width must be in (0, 1], got {cfg.width}")
    need(1 <= cfg.blocks <= 5, f"blocks must be in 1..5, got {cfg.blocks}")
    if arch == "segnet" and 1 <= cfg.blocks <= 5:  # each block halves the size: a side below 2**blocks pools to 0
        for key in ("train_h", "train_w", "test_h", "test_w"):
            need(
                cfg[key] >= 2**cfg.blocks,
                f"{key} must be at least {2**cfg.blocks} for SegNet with {cfg.blocks} blocks, got {cfg[key]}",
            )
    need(cfg.round_to >= 1, f"round_to must be at least 1, got {cfg.round_to}")
    need(cfg.start_epoch <= cfg.epochs, f"start_epoch {cfg.start_epoch} is after the last epoch ({cfg.epochs})")
    need(
        cfg.keep_checkpoints is None or cfg.keep_checkpoints >= 1,
        f"keep_checkpoints must be at least 1 or null (keep all), got {cfg.keep_checkpoints}",
    )
    need(cfg.initial_temp > 0 and cfg.final_temp > 0, "initial_temp and final_temp must be positive")
    need(
        cfg.starting_epoch <= cfg.ending_epoch,
        f"starting_epoch ({cfg.starting_epoch}) must not come after ending_epoch ({cfg.ending_epoch})",
    )
    need(
        cfg.resume_pruning in ("check", "checkpoint"),
        f"resume_pruning must be check or checkpoint, got {cfg.resume_pruning!r}",
    )
    need(cfg.selection in SELECTIONS, f"selection must be one of {', '.join(SELECTIONS)}, got {cfg.selection!r}")
    if cfg.sparsity > 0:
        need(
            cfg.ending_epoch <= cfg.epochs,
            f"ending_epoch ({cfg.ending_epoch}) is after the last epoch ({cfg.epochs}): pruning would never end",
        )
    for key in ("mean", "std"):
        need(len(cfg[key]) == 3, f"{key} must have 3 values (R, G, B), got {cfg[key]}")
    need(all(value > 0 for value in cfg.std), f"std must be positive, got {cfg.std}")
    need(len(cfg.scales) >= 1 and all(s > 0 for s in cfg.scales), f"scales must be positive, got {cfg.scales}")
    need(all(math.isfinite(v) for v in cfg.values() if isinstance(v, float)), "numbers must be finite")
    need(cfg.split in ("train", "val", "test"), f"split must be train, val or test, got {cfg.split!r}")
    need(
        cfg.absent_classes in ("exclude", "zero"),
        f"absent_classes must be exclude or zero, got {cfg.absent_classes!r}",
    )
    need(bool(re.fullmatch(r"[\w.-]+", cfg.dataset)), f"dataset must be a plain name, got {cfg.dataset!r}")
    return problems


def _experiment_name(cfg: CfgNode) -> str | None:
    """'pspnet50_0.75' for config/cityscapes/cityscapes_pspnet50_0.75.yaml; None without a file."""
    if not cfg.source.endswith((".yaml", ".yml")):
        return None
    stem = Path(cfg.source).stem
    return stem.removeprefix(f"{cfg.dataset}_") if stem != cfg.dataset else stem


def validate(cfg: CfgNode) -> CfgNode:
    """Check every value against what the tools can use and fill the defaults derived from others."""
    problems = _problems(cfg)
    if problems:
        head = f"{cfg.source}: " + ("invalid config:\n  " if len(problems) > 1 else "")
        raise ConfigError(head + "\n  ".join(problems))
    if cfg.save_path is None:
        name = _experiment_name(cfg)
        if name is None:
            raise ConfigError(f"{cfg.source}: save_path is not set and there is no config file name to derive it from")
        cfg.save_path = f"exp/{cfg.dataset}/{name}/model"
    if cfg.save_folder is None:
        cfg.save_folder = str(Path(cfg.save_path).parent / "result")
    for kind in ("names", "colors"):
        if cfg[f"{kind}_path"] is None:
            cfg[f"{kind}_path"] = f"dataset/{cfg.dataset}/{cfg.dataset}_{kind}.txt"
    names = repo_path(cfg.names_path)
    if names.is_file():
        count = sum(1 for line in names.read_text(encoding="utf-8").splitlines() if line.strip())
        if count != cfg.classes:
            raise ConfigError(f"{cfg.source}: classes is {cfg.classes} but {cfg.names_path} names {count} classes")
    return cfg


def build_config(values: Mapping[str, Any], source: str = "<config>", overrides: Sequence[str] = ()) -> CfgNode:
    """A validated config from a flat dict (a checkpoint's resolved config), with optional overrides.

    Ignored keys, which checkpoints of earlier versions hold, are dropped without a note.
    """
    checked = {key: check_value(key, value, source) for key, value in values.items() if key not in IGNORED_KEYS}
    defaults = {key: copy.deepcopy(spec.default) for key, spec in SCHEMA.items() if spec.default is not REQUIRED}
    return validate(merge_cfg_from_list(CfgNode({**defaults, **checked}, source), overrides))


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> CfgNode:
    """The one call the tools make: read ``path``, apply ``key value`` overrides, validate."""
    return validate(merge_cfg_from_list(load_cfg_from_cfg_file(path), overrides))


class _Dumper(yaml.SafeDumper):
    """Block-style mappings with each list on one line, as in hand-written configs."""


_Dumper.add_representer(list, lambda dumper, data: dumper.represent_sequence("tag:yaml.org,2002:seq", data, True))


def to_yaml(values: Mapping[str, Any]) -> str:
    """The config as YAML in sections, keys in schema order, lists on one line."""
    sections: dict[str, dict[str, Any]] = {section: {} for section in SECTIONS}
    for key in SCHEMA:
        if key in values:
            sections[SCHEMA[key].section][key] = values[key]
    unknown = set(values) - set(SCHEMA)
    if unknown:
        raise ConfigError(f"cannot write unknown keys {sorted(unknown)}")
    return "\n".join(
        yaml.dump({section: content}, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=120)
        for section, content in sections.items()
        if content
    )


def save_config(cfg: CfgNode, path: str | Path | None = None) -> Path:
    """Write the resolved config, atomically, to ``path`` (default: ``config.yaml`` in save_path)."""
    target = repo_path(path) if path is not None else repo_path(cfg.save_path) / "config.yaml"
    with atomic_path(target) as temporary:
        temporary.write_text(to_yaml(cfg), encoding="utf-8")
    return target
