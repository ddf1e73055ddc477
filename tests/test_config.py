"""Experiment configs: sections flattened, overrides typed, every mistake a ConfigError naming key and file."""

import pickle
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from semseg.config import (
    SCHEMA,
    CfgNode,
    ConfigError,
    IgnoredKeyWarning,
    build_config,
    load_cfg_from_cfg_file,
    load_config,
    merge_cfg_from_list,
    save_config,
)

ROOT = Path(__file__).resolve().parents[1]
MINIMAL = """\
DATA:
  dataset: toy
  data_root: data/toy
  train_list: data/toy/train.txt
  classes: 5
TRAIN:
  arch: psp
  weight_decay: 1e-4
  epochs: 20
  ending_epoch: 10
TEST:
  split: val
"""


def write(tmp_path, text=MINIMAL, name="toy_pspnet50.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_sections_flatten_into_one_namespace_with_defaults(tmp_path):
    cfg = load_config(write(tmp_path))
    assert isinstance(cfg, CfgNode)
    assert cfg.classes == 5 and cfg["arch"] == "psp" and cfg.split == "val"
    assert cfg.weight_decay == 0.0001 and isinstance(cfg.weight_decay, float)  # 1e-4 is a number, not a string
    assert cfg.base_lr == 0.01 and cfg.mean == [123.675, 116.28, 103.53] and cfg.resume is None
    assert set(cfg) == set(SCHEMA)
    # derived defaults: exp/<dataset>/<file name without the dataset>/model, and the class files
    assert cfg.save_path == "exp/toy/pspnet50/model" and cfg.save_folder == "exp/toy/pspnet50/result"
    assert cfg.names_path == "dataset/toy/toy_names.txt" and cfg.colors_path == "dataset/toy/toy_colors.txt"
    assert cfg.path("data_root") == ROOT / "data" / "toy"
    with pytest.raises(AttributeError, match="base_lr"):
        _ = cfg.base_lrr


def test_overrides_are_typed_yaml_values(tmp_path):
    path = write(tmp_path)
    cfg = load_config(
        path,
        ["base_lr", "0.02", "TEST.base_size", "1024", "resume", "exp/x/model/last.pth", "test_gpu", "[0,1]"]
        + ["manual_seed", "3", "weight_decay", "1", "amp", "true", "scales", "[0.5, 1, 2]"],
    )
    assert cfg.base_lr == 0.02 and cfg.base_size == 1024 and cfg.resume == "exp/x/model/last.pth"
    assert cfg.test_gpu == [0, 1] and cfg.manual_seed == 3 and cfg.amp is True
    assert cfg.weight_decay == 1.0 and isinstance(cfg.weight_decay, float)  # an int may become a float
    assert cfg.scales == [0.5, 1.0, 2.0]
    assert load_config(path, ["TRAIN.base_lr", "0.5"]).base_lr == 0.5
    assert load_config(path, ["resume", "exp/a", "resume", "null"]).resume is None
    # merge_cfg_from_list leaves the original alone
    base = load_cfg_from_cfg_file(path)
    merged = merge_cfg_from_list(base, ["epochs", "7"])
    assert merged.epochs == 7 and base.epochs == 20


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["epochs", "1.5"], "epochs must be an integer, got float 1.5"),
        (["epochs", "many"], "epochs must be an integer, got str 'many'"),
        (["amp", "1"], "amp must be true or false, got int 1"),
        (["classes", "true"], "classes must be an integer, got bool True"),
        (["test_gpu", "0"], r"test_gpu must be a list of integers, like \[0, 1\], got int 0"),
        (["base_lr", "null"], "base_lr must be a number, not null"),
        (["arch", "[psp]"], "arch must be a string"),
        (["base_lrr", "0.1"], "unknown key 'base_lrr'; closest known keys: base_lr"),
        (["DATA.base_lr", "0.1"], "base_lr belongs to section TRAIN, not DATA"),
        (["epochs"], "'epochs' has no value"),
        (["scales", "[1.0"], "scales: cannot parse"),
    ],
)
def test_bad_overrides_name_the_key_and_the_file(tmp_path, overrides, message):
    path = write(tmp_path)
    with pytest.raises(ConfigError, match=message) as error:
        load_config(path, overrides)
    assert str(path) in str(error.value) and "command-line override" in str(error.value)


def test_unknown_key_in_the_file_names_key_file_and_closest_keys(tmp_path):
    path = write(tmp_path, MINIMAL.replace("  epochs: 20", "  epoch: 20"))
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert str(path) in message and "'epoch'" in message and "epochs" in message
    path = write(tmp_path, MINIMAL + "TRAINING:\n  epochs: 3\n")
    with pytest.raises(ConfigError, match="unknown section or key 'TRAINING'; closest known keys: TRAIN"):
        load_config(path)


def test_missing_required_key_can_come_from_the_command_line(tmp_path):
    path = write(tmp_path, MINIMAL.replace("  classes: 5\n", ""))
    with pytest.raises(ConfigError, match=r"missing required key classes \(section DATA\)") as error:
        load_config(path)
    assert str(path) in str(error.value)
    assert load_config(path, ["classes", "7"]).classes == 7


@pytest.mark.parametrize(
    "text, message",
    [
        ("DATA:\n  classes: 5\n   bad: [\n", "line 3"),
        ("DATA:\n  classes: 5\nTRAIN:\n  arch: psp\n\tepochs: 3\n", "line 5"),
        ("DATA:\n  classes: 5\n  classes: 6\n", "line 3: malformed YAML: the key 'classes' appears twice"),
        ("", "the config file is empty"),
        ("- a\n- b\n", "must be a mapping of sections"),
        ("DATA: 5\n", "section DATA must hold 'key: value' lines"),
        ("DATA:\n  classes: 5\nTRAIN:\n  classes: 6\n", "key classes is set twice, in DATA and in TRAIN"),
        (MINIMAL.replace("classes: 5", "classes: five"), r"\[DATA\]: classes must be an integer, got str 'five'"),
    ],
)
def test_malformed_files_are_config_errors_with_file_and_line(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as error:
        load_config(path)
    assert str(error.value).startswith(str(path))


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="it is a directory"):
        load_config(tmp_path)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["classes", "1"], "classes must be at least 2, got 1"),
        (["zoom_factor", "3"], "zoom_factor must be 1, 2, 4 or 8, got 3"),
        (["train_h", "474"], r"train_h must be 8\*n \+ 1 for PSPNet \(like 473 or 713\), got 474"),
        (["test_w", "512"], "test_w must be 8"),
        (["sparsity", "1"], r"sparsity must be in \[0, 1\), got 1.0"),
        (["sparsity", "-0.5"], r"sparsity must be in \[0, 1\), got -0.5"),
        (["arch", "unet"], "arch must be one of psp, segnet, resnet18, got 'unet'"),
        (["blocks", "6"], r"blocks must be in 1..5, got 6"),
        (["layers", "34"], r"layers must be one of \(50, 101, 152\) for psp, got 34"),
        (["ignore_label", "3"], "ignore_label 3 is a class id"),
        (["ignore_label", "300"], "ignore_label must be in 0..255"),
        (["scale_min", "3"], "need 0 < scale_min <= scale_max"),
        (["lr_schedule", "step"], "lr_schedule must be poly or cosine"),
        (["sparsity", "0.5", "ending_epoch", "30"], "ending_epoch \\(30\\) is after the last epoch \\(20\\)"),
        (["starting_epoch", "11"], "starting_epoch \\(11\\) must not come after ending_epoch \\(10\\)"),
        (["selection", "l2"], "selection must be one of logits, l1, got 'l2'"),
        (["keep_checkpoints", "0"], "keep_checkpoints must be at least 1 or null"),
        (["std", "[1.0, 0, 1.0]"], "std must be positive"),
        (["mean", "[1.0, 2.0]"], "mean must have 3 values"),
        (["batch_size", "0"], "batch_size must be at least 1"),
        (["train_list", "null"], "train_list is required for arch psp"),
    ],
)
def test_impossible_values_are_config_errors(tmp_path, overrides, message):
    path = write(tmp_path)
    with pytest.raises(ConfigError, match=message) as error:
        load_config(path, overrides)
    assert str(path) in str(error.value)


def test_all_problems_are_reported_together(tmp_path):
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path), ["classes", "1", "zoom_factor", "3"])
    assert "classes must be at least 2" in str(error.value) and "zoom_factor must be" in str(error.value)


def test_errors_are_value_errors_not_asserts():
    assert issubclass(ConfigError, ValueError)
    source = (ROOT / "semseg" / "config.py").read_text()
    assert "assert " not in source


def test_classes_must_match_the_dataset_names_file(tmp_path):
    text = MINIMAL.replace("dataset: toy", "dataset: cityscapes")
    with pytest.raises(ConfigError, match="classes is 5 but dataset/cityscapes/cityscapes_names.txt names 19"):
        load_config(write(tmp_path, text))


def test_segnet_and_resnet18_need_no_pspnet_crop_sizes(tmp_path):
    cfg = load_config(write(tmp_path), ["arch", "segnet", "train_h", "360", "train_w", "480", "layers", "16"])
    assert cfg.train_h == 360
    cfg = load_config(write(tmp_path), ["arch", "resnet18", "train_list", "null", "train_h", "32", "train_w", "32"])
    assert cfg.arch == "resnet18"


def test_semseg_apex_keys_are_accepted_and_dropped(tmp_path):
    with pytest.warns(IgnoredKeyWarning) as notes:
        cfg = load_config(write(tmp_path, MINIMAL + "  use_apex: True\n  opt_level: 'O0'\n  loss_scale:\n"))
    assert "use_apex" not in cfg and "opt_level" not in cfg
    assert [str(note.message).split(": ", 1)[1] for note in notes] == [
        f"{key} is ignored: mixed precision is the key amp" for key in ("use_apex", "opt_level", "loss_scale")
    ]


def test_semseg_distributed_keys_load_with_a_note_that_they_are_ignored(tmp_path):
    semseg = MINIMAL + "  train_gpu: [0, 1]\nDistributed:\n  dist_url: tcp://127.0.0.1:6789\n  world_size: 1\n"
    path = write(tmp_path, semseg)
    with pytest.warns(IgnoredKeyWarning) as notes:
        cfg = load_config(path, ["rank", "0"])
    messages = [str(note.message) for note in notes]
    assert any(str(path) in m and "train_gpu is ignored" in m and "torchrun" in m for m in messages)
    assert any("dist_url is ignored" in m for m in messages) and any("rank is ignored" in m for m in messages)
    assert not {"train_gpu", "dist_url", "world_size", "rank"} & set(cfg)
    assert not {"train_gpu", "dist_url", "dist_backend", "world_size", "rank"} & set(SCHEMA)
    # a checkpoint of an earlier version holds them in its resolved config: dropped without a note
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert "world_size" not in build_config({**cfg, "world_size": 1, "train_gpu": [0]}, source="checkpoint")


def test_resolved_config_is_written_atomically_and_loads_back(tmp_path):
    cfg = load_config(write(tmp_path), ["base_lr", "0.02", "save_path", str(tmp_path / "exp" / "model")])
    written = save_config(cfg)
    assert written == tmp_path / "exp" / "model" / "config.yaml"
    assert [p.name for p in written.parent.iterdir()] == ["config.yaml"]
    assert list(yaml.safe_load(written.read_text())) == ["DATA", "TRAIN", "TEST"]
    again = load_config(written)
    assert dict(again) == dict(cfg)


def test_config_travels_in_checkpoints_and_to_workers(tmp_path):
    cfg = load_config(write(tmp_path))
    torch.save({"config": cfg.to_dict()}, tmp_path / "c.pth")
    restored = torch.load(tmp_path / "c.pth", weights_only=True)["config"]
    assert build_config(restored, source="checkpoint") == cfg
    assert build_config(restored, "checkpoint", ["epochs", "5"]).epochs == 5
    copied = pickle.loads(pickle.dumps(cfg))
    assert copied == cfg and copied.source == cfg.source and copied.base_lr == cfg.base_lr


SHIPPED = sorted((ROOT / "config").glob("*/*.yaml"))


def test_every_dataset_and_network_is_shipped_dense_and_at_four_sparsities():
    names = {path.relative_to(ROOT / "config").as_posix() for path in SHIPPED}
    for experiment in ("ade20k/ade20k_pspnet50", "voc2012/voc2012_pspnet50", "cityscapes/cityscapes_pspnet50"):
        for suffix in ("", "_0.5", "_0.75", "_0.875", "_0.9375"):
            assert f"{experiment}{suffix}.yaml" in names
    for experiment in (
        "cityscapes/cityscapes_segnet",
        "camvid/camvid_segnet",
        "camvid/camvid_segnet_cpu",
        "camvid/camvid_segnet_cpu_study",
    ):
        for suffix in ("", "_0.5", "_0.75", "_0.875", "_0.9375"):
            assert f"{experiment}{suffix}.yaml" in names
    for suffix in ("", "_0.5", "_0.75", "_0.875", "_0.9375"):
        assert f"cifar10/cifar10_resnet18{suffix}.yaml" in names
        assert f"shapes/shapes_segnet{suffix}.yaml" in names
    assert len(names) == 45


@pytest.mark.parametrize("path", SHIPPED, ids=lambda path: path.stem)
def test_shipped_config_validates(path):
    cfg = load_config(path)
    suffix = path.stem.rsplit("_", 1)[-1]
    assert cfg.sparsity == (float(suffix) if suffix[0].isdigit() else 0.0)
    assert path.parent.name == cfg.dataset and path.stem.startswith(cfg.dataset + "_")
    assert cfg.save_path == f"exp/{cfg.dataset}/{path.stem.removeprefix(cfg.dataset + '_')}/model"
    assert cfg.names_path == f"dataset/{cfg.dataset}/{cfg.dataset}_names.txt"
    assert cfg.path("names_path").is_file() and cfg.path("colors_path").is_file()
    assert cfg.data_root == f"data/{cfg.dataset}"
    if cfg.arch != "resnet18":  # CIFAR-10 reads its batch files, no list
        lists = "data/shapes" if cfg.dataset == "shapes" else f"data/lists/{cfg.dataset}"  # as the tools write them
        assert all(cfg[key].startswith(f"{lists}/") for key in ("train_list", "val_list", "test_list"))
    assert cfg.momentum == 0.9 and cfg.power == 0.9 and cfg.scales == [1.0]
    if cfg.dataset != "shapes" and "_cpu" not in path.stem:  # CPU-sized recipes have their own
        assert cfg.base_lr == 0.01


def test_the_default_experiment_is_sized_for_a_cpu():
    cfg = load_config(ROOT / "config" / "shapes" / "shapes_segnet_0.75.yaml")
    assert (cfg.arch, cfg.width, cfg.blocks, cfg.classes, cfg.sparsity) == ("segnet", 0.25, 3, 6, 0.75)
    assert (cfg.train_h, cfg.test_h, cfg.base_size) == (64, 64, 64) and cfg.evaluate and cfg.manual_seed == 1
    assert cfg.ending_epoch < cfg.epochs  # training goes on after the hard conversion


def test_shipped_recipes_are_the_publications():
    def cfg(name):
        return load_config(ROOT / "config" / name.split("_")[0] / f"{name}.yaml")

    ade, voc, city = cfg("ade20k_pspnet50"), cfg("voc2012_pspnet50"), cfg("cityscapes_pspnet50_0.75")
    segnet, camvid = cfg("cityscapes_segnet"), cfg("camvid_segnet_0.5")
    assert (ade.classes, ade.train_h, ade.epochs, ade.ending_epoch, ade.base_size) == (150, 473, 100, 30, 512)
    assert (voc.classes, voc.train_w, voc.epochs, voc.ending_epoch) == (21, 473, 50, 20)
    assert voc.train_list.endswith("train_aug.txt") and voc.val_list.endswith("val.txt")
    assert (city.classes, city.train_h, city.epochs, city.ending_epoch, city.manual_seed) == (19, 713, 200, 50, 1)
    assert city.base_size == 2048 and city.head_lr_factor == 10 and city.aux_weight == 0.4
    assert (segnet.train_h, segnet.train_w, segnet.scale_min, segnet.scale_max) == (512, 1024, 0.25, 1.0)
    assert segnet.aux_weight == 0 and segnet.head_lr_factor == 1 and segnet.epochs == 200
    assert (camvid.classes, camvid.ignore_label, camvid.train_h, camvid.train_w) == (11, 11, 360, 480)
    assert (camvid.batch_size, camvid.weight_decay, camvid.lr_schedule) == (8, 0.0005, "cosine")
    assert (camvid.epochs, camvid.ending_epoch, camvid.base_size, camvid.manual_seed) == (450, 300, 480, 1)
    assert (ade.scale_min, ade.scale_max, ade.rotate_min, ade.rotate_max, ade.batch_size) == (0.5, 2.0, -10, 10, 16)


def test_shipped_configs_say_only_what_makes_them_special():
    """Each file sets only values its base (or the schema's defaults) does not already give; each
    sparsity is its dense recipe plus the sparsity; every one loads and validates."""
    from semseg.config import REQUIRED, SCHEMA, read_config_file, read_yaml

    defaults = {key: spec.default for key, spec in SCHEMA.items() if spec.default is not REQUIRED}
    files = sorted((ROOT / "config").glob("*/*.yaml"))
    assert len(files) == 45
    for path in files:
        load_config(path)
        data = read_yaml(path)
        base = data.pop("base", None)
        inherited = {**defaults, **(read_config_file(path.parent / base) if base else {})}
        repeated = [key for key, value in data.items() if key in inherited and inherited[key] == value]
        assert not repeated, f"{path.name} repeats {repeated}"
        if path.stem.rsplit("_", 1)[-1].replace(".", "").isdigit():
            assert base == path.stem.rsplit("_", 1)[0] + ".yaml" and list(data) == ["sparsity"], path.name


def test_a_config_inherits_its_base_and_overrides_it(tmp_path):
    write(tmp_path, MINIMAL.replace("  epochs: 20", "  epochs: 20\n  base_lr: 0.05"), "recipe.yaml")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "toy_pruned.yaml").write_text("base: ../recipe.yaml\nsparsity: 0.75\n")
    cfg = load_config(tmp_path / "sub" / "toy_pruned.yaml", ["epochs", "30"])
    assert (cfg.sparsity, cfg.base_lr, cfg.epochs, cfg.classes) == (0.75, 0.05, 30, 5)
    assert cfg.save_path == "exp/toy/pruned/model"  # from this file's name, not its base's
    (tmp_path / "loop.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "loop.yaml")
    (tmp_path / "orphan.yaml").write_text("base: missing.yaml\nsparsity: 0.5\n")
    with pytest.raises(ConfigError, match="orphan.yaml: its base missing.yaml is not a file"):
        load_config(tmp_path / "orphan.yaml")
    (tmp_path / "typo.yaml").write_text("base: recipe.yaml\nbase_rl: 0.5\n")
    with pytest.raises(ConfigError, match="typo.yaml: unknown section or key 'base_rl'"):
        load_config(tmp_path / "typo.yaml")
