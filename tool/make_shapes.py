"""Generate the synthetic 'shapes' segmentation dataset (semseg/data/shapes.py) in the semseg layout.

    python tool/make_shapes.py                          # data/shapes: 800 train, 100 val, 200 test images
    python tool/make_shapes.py data/shapes_big --train 5000 --seed 3

Writes images/<split>/*.png (RGB), labels/<split>/*.png (train ids, 255 on edges) and the lists
train.txt, val.txt, test.txt. The same seed and sizes give the same files on every machine.
``sh tool/train.sh shapes ...`` runs this by itself when data/shapes has no lists yet.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from semseg.data.shapes import DEFAULT_SEED, DEFAULT_SIZES, generate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", nargs="?", type=Path, default=Path("data/shapes"), help="default: data/shapes")
    for split, count in DEFAULT_SIZES.items():
        parser.add_argument(f"--{split}", type=int, default=count, help=f"{split} images (default {count})")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"default {DEFAULT_SEED}")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        sizes = generate(args.root, {split: getattr(args, split) for split in DEFAULT_SIZES}, args.seed, args.size)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for split, count in sizes.items():
        print(f"{args.root / f'{split}.txt'}: {count} images")
    print(f"done in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
