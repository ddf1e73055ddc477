"""Draw segmentation maps side by side: input, ground truth, then the prediction of each experiment.

    python tool/plot_segmentation.py shapes segnet segnet_0.5 segnet_0.75 segnet_0.875 segnet_0.9375
    python tool/plot_segmentation.py camvid segnet_cpu segnet_cpu_0.75 --count 3 --step 100 --height 180

Each EXP is config/DATASET/DATASET_EXP.yaml with its checkpoint exp/DATASET/EXP/model/final.pth
(--folder replaces exp/DATASET; --set KEY VALUE ... overrides every config, e.g. its test_list);
the images are --count entries of the first config's test_list (with labels), every --step-th from
the top, predicted as tool/test.py predicts them (the config's scales and flips); ignored pixels of
the ground truth are black. Drawn with OpenCV, written to --output (figures/DATASET_segmentation.png).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from semseg.config import ConfigError, load_config, repo_path
from semseg.data.images import read_image, read_label
from semseg.data.palette import colorize, read_colors
from semseg.evaluation.evaluate import read_entries
from semseg.evaluation.inference import SlidingWindowPredictor
from semseg.reporting.plot import labelled_grid, save_png
from semseg.training.checkpoint import CheckpointError, model_from_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def title(cfg) -> str:
    if cfg.sparsity == 0:
        return "dense"
    return f"ACoSP-{1 / (1 - cfg.sparsity):g} (s={cfg.sparsity:g})"


def draw(
    dataset: str,
    experiments: list[str],
    count: int,
    height: int,
    folder: Path,
    opts: list[str],
    device: str = "cpu",
    step: int = 1,
) -> np.ndarray:
    configs = [
        load_config(
            ROOT / "config" / dataset / f"{dataset}_{exp}.yaml", opts + ["save_path", str(folder / exp / "model")]
        )
        for exp in experiments
    ]
    first = configs[0]
    if first.test_list is None:
        raise ConfigError(f"{first.source}: test_list is not set")
    entries = read_entries("val", repo_path(first.data_root), repo_path(first.test_list))[::step][:count]
    colours = read_colors(repo_path(first.colors_path))
    rows = [[read_image(e.image).astype(np.uint8), colorize(read_label(e.label), colours)] for e in entries]
    for cfg in configs:
        path = repo_path(cfg.model_path) if cfg.model_path else repo_path(cfg.save_path) / "final.pth"
        predictor = SlidingWindowPredictor.from_config(model_from_checkpoint(path, cfg), cfg, device)
        with torch.no_grad():
            for row, entry in zip(rows, entries):
                row.append(colorize(predictor.predict(read_image(entry.image)), colours))
    return labelled_grid(["input", "ground truth", *map(title, configs)], rows, height)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset")
    parser.add_argument("experiments", nargs="+", help="EXP names as for tool/train.sh, e.g. segnet segnet_0.75")
    parser.add_argument("--count", type=int, default=4, help="images, from the top of test_list (default 4)")
    parser.add_argument("--step", type=int, default=1, help="take every STEP-th image of test_list (default 1)")
    parser.add_argument("--height", type=int, default=128, help="pixel height of every cell (default 128)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--folder", type=Path, help="the experiments' folders are FOLDER/EXP (default exp/DATASET)")
    parser.add_argument("--output", type=Path, help="the PNG (default figures/DATASET_segmentation.png)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY VALUE", help="config overrides for every EXP")
    args = parser.parse_args(argv)
    if args.count < 1 or args.step < 1:
        parser.error(f"--count and --step must be at least 1, got {args.count} and {args.step}")
    folder = args.folder if args.folder is not None else Path("exp") / args.dataset
    output = args.output or ROOT / "figures" / f"{args.dataset}_segmentation.png"
    try:
        image = draw(args.dataset, args.experiments, args.count, args.height, folder, args.set, args.device, args.step)
    except (ConfigError, CheckpointError, OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    save_png(image, output, rgb=True)
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
