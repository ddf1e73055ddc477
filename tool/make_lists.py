"""Write the list files of a dataset folder (and its train-id labels where they need converting).

    python tool/make_lists.py voc2012 data/voc2012      # train_aug.txt, val.txt
    python tool/make_lists.py ade20k data/ade20k        # annotations_trainids/, training.txt, validation.txt
    python tool/make_lists.py camvid data/camvid        # train.txt, val.txt, test.txt
    python tool/make_lists.py cityscapes data/cityscapes  # same as tool/convert_cityscapes.py

The expected folder layouts are described in FAQ.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from util.prepare_data import PREPARE, run_and_report  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", choices=sorted(PREPARE))
    parser.add_argument("root", type=Path, help="the dataset's folder, the data_root of its configs")
    args = parser.parse_args(argv)
    return run_and_report(lambda: PREPARE[args.dataset](args.root), args.root)


if __name__ == "__main__":
    sys.exit(main())
