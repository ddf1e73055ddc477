"""Cityscapes: convert the fine labels to the 19 train ids and write the lists fine_train.txt, fine_val.txt.

    python tool/convert_cityscapes.py data/cityscapes [--splits train val]

``data/cityscapes`` holds leftImg8bit/ and gtFine/ as downloaded. Every
gtFine/<split>/<city>/*_gtFine_labelIds.png gets a *_gtFine_labelTrainIds.png beside it (classes
0..18, everything else 255); the lists go to data/lists/cityscapes/ (or --lists DIR).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from semseg.data.prepare_data import prepare_cityscapes, run_and_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="the Cityscapes folder with leftImg8bit/ and gtFine/")
    parser.add_argument("--splits", nargs="+", default=["train", "val"], choices=["train", "val", "test"])
    parser.add_argument("--lists", type=Path, help="where the list files go (default: data/lists/cityscapes)")
    args = parser.parse_args(argv)
    return run_and_report(lambda: prepare_cityscapes(args.root, args.lists, args.splits))


if __name__ == "__main__":
    sys.exit(main())
