"""Draw a run's pruning schedule from its tensorboard events: temperature, undecided channels, val mIoU.

    python tool/plot_schedule.py exp/shapes/segnet_0.75 [--output figures/shapes_schedule.png]

Reads ``acosp/temperature/mean`` and ``acosp/undecided/mean`` (the fraction of channels whose mask
is neither within 0.01 of 0 nor of 1), logged after every epoch, and ``val/mIoU`` where the run
validated. Drawn with OpenCV.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

from semseg.reporting.plot import Panel, save_png, text
from semseg.training.tensorboard import read_scalars

BLUE, GREEN, RED = (200, 120, 40), (40, 160, 60), (60, 40, 200)  # BGR


def draw(scalars: dict, title: str) -> np.ndarray:
    for tag in ("acosp/temperature/mean", "acosp/undecided/mean"):
        if tag not in scalars:
            raise ValueError(f"the events hold no {tag}: was the run pruned (sparsity > 0)?")
    temperature = sorted(scalars["acosp/temperature/mean"])
    undecided = sorted(scalars["acosp/undecided/mean"])
    miou = sorted(scalars.get("val/mIoU", []))
    last = max(step for step, _ in temperature + undecided + miou)
    image = np.full((640, 900, 3), 255, np.uint8)
    text(image, title, (70, 28), 0.55)
    low, high = min(value for _, value in temperature), max(value for _, value in temperature)
    top_range = (10 ** math.floor(math.log10(min(low, 1.0))), 10 ** math.ceil(math.log10(high)))
    if top_range[0] == top_range[1]:  # one temperature only: show a decade below it
        top_range = (top_range[0] / 10, top_range[1])
    upper = Panel(image, (80, 60, 870, 280), (0, last), top_range, log_y=True)
    exponents = range(round(math.log10(top_range[0])), round(math.log10(top_range[1])) + 1)
    ticks = range(0, last + 1, max(1, last // 10))
    upper.frame(ticks, [10.0**e for e in exponents], "", "mask temperature T (log scale), after each epoch")
    upper.line(*zip(*temperature), BLUE, dots=True)
    lower = Panel(image, (80, 340, 870, 560), (0, last), (0.0, 1.0))
    lower.frame(ticks, [0, 0.25, 0.5, 0.75, 1.0], "epoch", "fraction of channels undecided; validation mIoU")
    lower.line(*zip(*undecided), RED, dots=True)
    entries = [("undecided (mask between 0.01 and 0.99)", RED)]
    if miou:
        lower.line(*zip(*miou), GREEN, dots=True)
        entries.append(("validation mIoU", GREEN))
    lower.legend(entries, (lower.right - 390, lower.top + 25))
    return image


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="the experiment folder with the events, e.g. exp/shapes/segnet_0.75")
    parser.add_argument("--output", type=Path, default=Path("figures/shapes_schedule.png"))
    args = parser.parse_args(argv)
    try:
        image = draw(read_scalars(args.run), f"ACoSP schedule of {args.run}")
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    save_png(image, args.output)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
