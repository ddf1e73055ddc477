"""How fast tool/test.py's sliding-window evaluation runs: windows per second and seconds per image.

    python benchmarks/sliding_window_speed.py [--config config/cityscapes/cityscapes_pspnet50.yaml]
                                              [--device cuda] [--images 3] [--size 1024x2048] [key value ...]

Builds the config's network (random weights: ``pretrained_weights`` is not read) and runs
``semseg.evaluation.inference.SlidingWindowPredictor``, configured from the config's TEST keys (``base_size``,
``test_h``/``test_w``, ``scales``, ``flip``, ``batch_size_test``, ``amp``) exactly as tool/test.py
does, on random images of ``--size`` (default: Cityscapes' 1024x2048), after one untimed image.
A window is one crop of the image at one scale; with ``flip`` it goes through the network twice.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from semseg.config import load_config
from semseg.evaluation.inference import SlidingWindowPredictor, scaled_size, window_starts
from semseg.models import build_model

ROOT = Path(__file__).resolve().parents[1]


def windows_per_image(predictor: SlidingWindowPredictor, height: int, width: int) -> int:
    """The crops ``predictor.probabilities`` runs for one image of this size, over all scales."""
    count = 0
    for scale in predictor.scales:
        new_h, new_w = scaled_size(height, width, round(scale * predictor.base_size))
        padded_h, padded_w = max(new_h, predictor.crop_h), max(new_w, predictor.crop_w)
        rows = window_starts(padded_h, predictor.crop_h, predictor.stride_h)
        columns = window_starts(padded_w, predictor.crop_w, predictor.stride_w)
        count += len(rows) * len(columns)
    return count


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "config" / "cityscapes" / "cityscapes_pspnet50.yaml")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    parser.add_argument("--images", type=int, default=3, help="timed images")
    parser.add_argument("--size", default="1024x2048", help="HxW of the random images")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="'key value' overrides of the config")
    args = parser.parse_args(argv)
    height, width = (int(side) for side in args.size.lower().split("x"))
    cfg = load_config(args.config, [*args.opts, "pretrained_weights", "null"])
    device = torch.device(args.device)
    model = build_model(cfg).to(device).eval()
    predictor = SlidingWindowPredictor.from_config(model, cfg, device)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (height, width, 3)).astype(np.uint8) for _ in range(args.images + 1)]
    predictor.predict(images[0])  # untimed: cudnn's choices, the allocator
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for image in images[1:]:
        predictor.predict(image)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / args.images
    windows = windows_per_image(predictor, height, width)
    where = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(
        f"{cfg.source}: {height}x{width} images, {len(cfg.scales)} scale(s), flip {cfg.flip}, crops "
        f"{cfg.test_h}x{cfg.test_w}, batch_size_test {cfg.batch_size_test}, amp {cfg.amp}, {where}, "
        f"torch {torch.__version__}"
    )
    print(f"{windows} windows per image, {seconds:.3f} s per image, {windows / seconds:.1f} windows/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
