"""Whether a short pruned run on one device ends where the same run on another does: masks and mIoU.

    python benchmarks/device_agreement.py [--devices cpu cuda] [--folder exp/device_agreement] [key value ...]

Trains the built-in shapes experiment (SegNet, sparsity 0.75, ``sync_bn true``) with the same seed
once per device, through the hard conversion (``epochs 4 ending_epoch 2`` unless overridden), each
with ``sh tool/train.sh``'s training script, then prints per run the best validation mIoU and the
kept channels, and how far the hard masks agree between the first device and each other: the
share of layers whose kept channels are the same set, and the share of mask entries that are
equal. Float rounding differs between devices, so the masks of a layer whose logits lie close
together may differ while the accuracy stays comparable; exit status 1 when the best mIoU of two
runs differs by more than ``--tolerance`` points.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "config" / "shapes" / "shapes_segnet_0.75.yaml"
SHORT = ["epochs", "4", "ending_epoch", "2", "evaluate", "true", "sync_bn", "true", "manual_seed", "1"]


def train(device: str, folder: Path, overrides: list[str]) -> dict:
    """The final checkpoint of one run on ``device``."""
    model_dir = folder / device / "model"
    command = [sys.executable, str(ROOT / "tool" / "train.py"), "--config", str(CONFIG), "--device", device]
    command += [*SHORT, "save_path", str(model_dir), *overrides]
    subprocess.run(command, cwd=ROOT, check=True)
    return torch.load(model_dir / "final.pth", weights_only=True)


def masks(state: dict) -> dict[str, torch.Tensor]:
    return {key: value.bool() for key, value in state["state_dict"].items() if key.endswith(".1.mask")}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", nargs="+", default=["cpu", "cuda"], choices=("cpu", "cuda"))
    parser.add_argument("--folder", type=Path, default=ROOT / "exp" / "device_agreement")
    parser.add_argument("--tolerance", type=float, default=5.0, help="mIoU points two runs may differ by")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="'key value' overrides for every run")
    args = parser.parse_args(argv)
    runs = {}
    for device in dict.fromkeys(args.devices):  # each device once
        runs[device] = train(device, args.folder, args.opts)
    print("| device | best val mIoU (epoch) | kept channels | layers with the same kept set | equal mask entries |")
    print("| --- | ---: | ---: | ---: | ---: |")
    reference = next(iter(runs.values()))
    first = masks(reference)
    worst = 0.0
    for device, final in runs.items():
        mine = masks(final)
        same_layers = sum(torch.equal(mine[key], first[key]) for key in first) / len(first)
        equal = sum(int((mine[key] == first[key]).sum()) for key in first) / sum(m.numel() for m in first.values())
        kept = sum(int(m.sum()) for m in mine.values())
        total = sum(m.numel() for m in mine.values())
        best = final["best"]
        miou = 100 * best["mIoU"]
        worst = max(worst, abs(miou - 100 * reference["best"]["mIoU"]))
        print(f"| {device} | {miou:.2f} ({best['epoch']}) | {kept} / {total} | {same_layers:.0%} | {equal:.1%} |")
    if worst > args.tolerance:
        print(f"the best mIoU differs by {worst:.2f} points, more than {args.tolerance}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
