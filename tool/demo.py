"""Colour predictions and overlays of one image or a folder of images, from a checkpoint.

    python tool/demo.py --config config/cityscapes/cityscapes_pspnet50.yaml --image photo.jpg [key value ...]
    python tool/demo.py --checkpoint exp/cityscapes/pspnet50/model/final.pth --image photos/

With ``--config`` the checkpoint is ``model_path`` (default: ``final.pth`` in ``save_path``); with
only ``--checkpoint`` the settings are the config saved in it. The TEST keys (``scales``, ``flip``,
``base_size``, ``test_h``, ``test_w`` ...) apply as in tool/test.py and can be overridden the same
way. Writes ``<name>_color.png`` and ``<name>_overlay.png`` to ``--output`` (default:
``<save_folder>/demo``); exits 1 when an image failed, 2 when the setup cannot be used.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from semseg.config import ConfigError, build_config, load_config, repo_path
from semseg.data.images import read_image
from semseg.data.palette import colorize, overlay, read_colors
from semseg.evaluation.evaluate import write_png
from semseg.evaluation.inference import SlidingWindowPredictor
from semseg.training.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
from semseg.training.distributed import choose_device

logger = logging.getLogger("demo")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def image_paths(path: str | os.PathLike) -> list[Path]:
    """``path`` itself, or the images in the folder ``path`` (sorted, each once, not recursive)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such image or folder")
    images = sorted(child for child in path.iterdir() if child.is_file() and child.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise FileNotFoundError(f"{path}: the folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return images


def output_names(paths: Sequence[Path]) -> list[str]:
    """The file stem of each image; ``stem_suffix`` where two images share a stem (a.jpg, a.png)."""
    stems = [path.stem for path in paths]
    return [f"{path.stem}_{path.suffix.lstrip('.')}" if stems.count(path.stem) > 1 else path.stem for path in paths]


def predict_images(
    predictor: SlidingWindowPredictor,
    paths: Sequence[Path],
    output: str | os.PathLike,
    colors: np.ndarray,
    alpha: float = 0.5,
) -> tuple[list[Path], list[str]]:
    """Write ``<name>_color.png`` and ``<name>_overlay.png`` per image; (files written, failures)."""
    written, failures = [], []
    output = Path(output)
    for path, name in zip(paths, output_names(paths)):
        try:
            image = read_image(str(path))
            color = colorize(predictor.predict(image), colors)
            for suffix, picture in (("color", color), ("overlay", overlay(image, color, alpha))):
                target = output / f"{name}_{suffix}.png"
                write_png(target, picture)
                written.append(target)
        except (OSError, ValueError) as error:
            message = str(error) if str(path) in str(error) else f"{path}: {error}"
            failures.append(message)
            logger.error("%s", message)
    return written, failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="the experiment's YAML file")
    parser.add_argument("--checkpoint", help="the checkpoint (default: the config's model_path or final.pth)")
    parser.add_argument("--image", required=True, help="an image, or a folder of images")
    parser.add_argument("--output", help="folder for the PNGs (default: <save_folder>/demo)")
    parser.add_argument("--alpha", type=float, default=0.5, help="weight of the colours in the overlay")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="'key value' pairs that override the config")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S", force=True
    )
    if args.config is None and args.checkpoint is None:
        parser.error("give --config, --checkpoint or both")
    if not 0 <= args.alpha <= 1:
        parser.error(f"--alpha must be in [0, 1], got {args.alpha}")
    try:
        if args.config is not None:
            cfg = load_config(args.config, args.opts)
            checkpoint = args.checkpoint or cfg.model_path or str(Path(cfg.save_path) / "final.pth")
        else:
            checkpoint = args.checkpoint
            saved = load_checkpoint(repo_path(checkpoint)).get("config")
            if not saved:
                raise CheckpointError(f"checkpoint {checkpoint} holds no config; give --config")
            cfg = build_config(saved, source=f"{checkpoint} (its config)", overrides=args.opts)
        paths = image_paths(args.image)
        device = choose_device(args.device)
        model = model_from_checkpoint(repo_path(checkpoint), cfg, map_location=device)
        predictor = SlidingWindowPredictor.from_config(model, cfg, device)
        colors = read_colors(repo_path(cfg.colors_path))
    except (CheckpointError, ConfigError, OSError, ValueError) as error:
        logger.error("%s", error)
        return 2
    output = Path(args.output) if args.output else repo_path(cfg.save_folder) / "demo"
    logger.info(
        "%d image(s) from %s, checkpoint %s, scales %s, flip %s",
        len(paths),
        args.image,
        checkpoint,
        cfg.scales,
        cfg.flip,
    )
    written, failures = predict_images(predictor, paths, output, colors, args.alpha)
    for path in written:
        print(path)
    if failures:
        logger.error("%d of %d image(s) failed", len(failures), len(paths))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
