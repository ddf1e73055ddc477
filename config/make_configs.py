"""Write the experiment configs in config/ from the publication's recipes, so they cannot drift apart.

    python config/make_configs.py           # (re)write config/<dataset>/<dataset>_<network>[_<sparsity>].yaml
    python config/make_configs.py --check   # exit 1 if a shipped config differs from what this writes

Each recipe is written dense (no suffix, sparsity 0) and at every sparsity in SPARSITIES. Change a
recipe here and rerun, rather than editing the YAML files by hand.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from semseg.atomic import atomic_path
from semseg.config import ROOT, build_config, to_yaml

SPARSITIES = (0.5, 0.75, 0.875, 0.9375)
HEADER = "# Written by config/make_configs.py from its recipe: change the recipe there and rerun it.\n"

COMMON = dict(
    base_lr=0.01,
    momentum=0.9,
    weight_decay=0.0001,
    power=0.9,
    lr_schedule="poly",
    scale_min=0.5,
    scale_max=2.0,
    rotate_min=-10.0,
    rotate_max=10.0,
    batch_size=16,
    batch_size_val=8,
    ignore_label=255,
    scales=[1.0],
    starting_epoch=0,
    evaluate=False,
)
PSPNET = dict(arch="psp", layers=50, zoom_factor=8, aux_weight=0.4, head_lr_factor=10.0)
PSPNET["pretrained_weights"] = "data/pretrained/resnet50_v2.pth"
SEGNET = dict(arch="segnet", aux_weight=0.0, head_lr_factor=1.0, scale_min=0.25, scale_max=1.0)
SEGNET["pretrained_weights"] = "data/pretrained/vgg16.pth"  # torchvision's ImageNet VGG16, as the publication

CAMVID_SEGNET = dict(
    **SEGNET,
    classes=11,
    ignore_label=11,
    train_h=360,
    train_w=480,
    batch_size=8,
    weight_decay=0.0005,
    lr_schedule="cosine",
    epochs=450,
    ending_epoch=300,
    manual_seed=1,
    base_size=480,
    test_h=360,
    test_w=480,
    train_list="data/lists/camvid/train.txt",
    val_list="data/lists/camvid/val.txt",
    test_list="data/lists/camvid/test.txt",
    void_as_last_class=True,  # scored both ways: the publication's test counted void pixels (label 11)
)
# CamVid on a laptop: the SegNet above at a quarter of its width, trained from random weights (the
# ImageNet VGG16 fits only the full width) on half-size images (180x240, scale 0.4-0.6 of the 360x480
# frames) for 16 epochs with Adam, tested at half size too; train and test take about 20 minutes on
# two CPU cores (docs/camvid.md). No validation during training: the test follows it in tool/train.sh.
CAMVID_SEGNET_CPU = dict(
    CAMVID_SEGNET,
    pretrained_weights=None,
    width=0.25,
    min_remaining_elements=4,
    optimizer="adam",
    base_lr=0.003,
    weight_decay=0.0001,
    scale_min=0.4,
    scale_max=0.6,
    train_h=180,
    train_w=240,
    workers=2,
    epochs=16,
    ending_epoch=8,
    print_freq=20,
    keep_checkpoints=1,
    base_size=240,
    test_h=180,
    test_w=240,
)
# The CamVid study (tool/study.py camvid_cpu): the recipe above at a third of the frame size
# (120x160 crops at scale 0.27-0.4, tested at a long side of 160) and a longer pruning phase, 14 of
# 20 epochs (the publication prunes over 300 of 450), so that one run takes about 10 minutes on one core.
CAMVID_SEGNET_STUDY = dict(
    CAMVID_SEGNET_CPU,
    scale_min=0.27,
    scale_max=0.4,
    train_h=120,
    train_w=160,
    workers=1,
    epochs=20,
    ending_epoch=14,
    base_size=160,
    test_h=120,
    test_w=160,
)

RECIPES = {
    ("ade20k", "pspnet50"): dict(
        **PSPNET,
        classes=150,
        train_h=473,
        train_w=473,
        epochs=100,
        ending_epoch=30,
        base_size=512,
        test_h=473,
        test_w=473,
        train_list="data/lists/ade20k/training.txt",
        val_list="data/lists/ade20k/validation.txt",
        test_list="data/lists/ade20k/validation.txt",
    ),
    ("voc2012", "pspnet50"): dict(
        **PSPNET,
        classes=21,
        train_h=473,
        train_w=473,
        epochs=50,
        ending_epoch=20,
        base_size=512,
        test_h=473,
        test_w=473,
        train_list="data/lists/voc2012/train_aug.txt",
        val_list="data/lists/voc2012/val.txt",
        test_list="data/lists/voc2012/val.txt",
    ),
    ("cityscapes", "pspnet50"): dict(
        **PSPNET,
        classes=19,
        train_h=713,
        train_w=713,
        epochs=200,
        ending_epoch=50,
        manual_seed=1,
        base_size=2048,
        test_h=713,
        test_w=713,
        train_list="data/lists/cityscapes/fine_train.txt",
        val_list="data/lists/cityscapes/fine_val.txt",
        test_list="data/lists/cityscapes/fine_val.txt",
    ),
    ("cityscapes", "segnet"): dict(
        **SEGNET,
        classes=19,
        train_h=512,
        train_w=1024,
        epochs=200,
        ending_epoch=50,
        base_size=2048,
        test_h=512,
        test_w=1024,
        train_list="data/lists/cityscapes/fine_train.txt",
        val_list="data/lists/cityscapes/fine_val.txt",
        test_list="data/lists/cityscapes/fine_val.txt",
    ),
    ("camvid", "segnet"): CAMVID_SEGNET,
    ("camvid", "segnet_cpu"): CAMVID_SEGNET_CPU,
    ("camvid", "segnet_cpu_study"): CAMVID_SEGNET_STUDY,
    ("cifar10", "resnet18"): dict(
        arch="resnet18",
        classes=10,
        mean=[125.307, 122.961, 113.8575],
        std=[51.5865, 50.847, 51.255],
        optimizer="adam",
        base_lr=0.01,
        weight_decay=0.0001,
        lr_schedule="cosine",
        lr_update="epoch",
        head_lr_factor=1.0,
        aux_weight=0.0,
        epochs=50,
        ending_epoch=10,
        batch_size=512,
        batch_size_val=512,
        manual_seed=1,
        evaluate=True,
    ),
    # The built-in default: a quarter-width SegNet on 64x64 synthetic images (semseg/data/shapes.py), sized so
    # that training and testing take a few minutes on two CPU cores. Three blocks, not five: the fifth
    # pooling would leave a 2x2 map at 64x64, and through it that SegNet learns little more than background.
    ("shapes", "segnet"): dict(
        SEGNET,
        pretrained_weights=None,
        classes=6,
        width=0.25,
        blocks=3,
        min_remaining_elements=4,
        optimizer="adam",
        base_lr=0.006,
        weight_decay=0.0001,
        scale_min=0.75,
        scale_max=1.25,
        train_h=64,
        train_w=64,
        batch_size=4,
        batch_size_val=25,
        workers=0,
        epochs=30,
        ending_epoch=15,
        manual_seed=1,
        evaluate=True,
        print_freq=25,
        keep_checkpoints=1,
        base_size=64,
        test_h=64,
        test_w=64,
        train_list="data/shapes/train.txt",
        val_list="data/shapes/val.txt",
        test_list="data/shapes/test.txt",
    ),
}


def experiments() -> dict[Path, str]:
    """Every shipped config: its path and its YAML text."""
    out = {}
    for (dataset, network), recipe in RECIPES.items():
        for sparsity in (0.0, *SPARSITIES):
            name = network if sparsity == 0 else f"{network}_{sparsity}"
            values = {**COMMON, **recipe, "dataset": dataset, "data_root": f"data/{dataset}", "sparsity": sparsity}
            values["save_path"] = f"exp/{dataset}/{name}/model"
            path = ROOT / "config" / dataset / f"{dataset}_{name}.yaml"
            cfg = build_config(values, source=str(path))
            out[path] = HEADER + to_yaml({**cfg, "save_folder": None})  # follows save_path when that is overridden
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the shipped configs instead of writing")
    args = parser.parse_args(argv)
    stale = []
    for path, text in experiments().items():
        current = path.read_text(encoding="utf-8") if path.is_file() else None
        if current == text:
            continue
        if args.check:
            stale.append(path.relative_to(ROOT))
            continue
        with atomic_path(path) as temporary:
            temporary.write_text(text, encoding="utf-8")
        print(f"wrote {path.relative_to(ROOT)}")
    if stale:
        print("out of date (run python config/make_configs.py):", *stale, sep="\n  ", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
