"""Write the list files of a dataset (and its train-id labels where they need converting).

    python tool/make_lists.py camvid data/camvid        # data/lists/camvid/{train,val,test}.txt
    python tool/make_lists.py voc2012 data/voc2012      # data/lists/voc2012/{train_aug,val}.txt
    python tool/make_lists.py ade20k data/ade20k        # data/lists/ade20k/{training,validation}.txt, labels
    python tool/make_lists.py cityscapes data/cityscapes  # same as tool/convert_cityscapes.py
    python tool/make_lists.py camvid data/camvid --lists my_lists   # the lists elsewhere

The lists go to data/lists/DATASET/, where the shipped configs look for them, never into the
dataset's folder, and no file is overwritten that this tool did not write. The expected folder
layouts are described in FAQ.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from semseg.data.prepare_data import PREPARE, run_and_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", choices=sorted(PREPARE))
    parser.add_argument("root", type=Path, help="the dataset's folder, the data_root of its configs")
    parser.add_argument("--lists", type=Path, help="where the list files go (default: data/lists/DATASET)")
    args = parser.parse_args(argv)
    return run_and_report(lambda: PREPARE[args.dataset](args.root, args.lists))


if __name__ == "__main__":
    sys.exit(main())
