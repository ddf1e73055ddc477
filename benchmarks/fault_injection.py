"""Kill a short training run at random moments, resume it each time, and compare with an uninterrupted run.

    python benchmarks/fault_injection.py                 # 10 runs, kills until each finishes
    python benchmarks/fault_injection.py --runs 20 --sigterm 0.3

Each run is a few epochs of the shapes SegNet (seeded, no worker processes, so an uninterrupted run
is reproducible bit for bit). While it trains it is stopped at a random moment after its first
iteration, by SIGKILL (or, with probability --sigterm, by SIGTERM, which saves the iteration it
reached), then started again with ``resume auto``, until it finishes. Some kills fall into a
checkpoint write. Prints how many runs ended with weights bit-identical to the uninterrupted
run's, and how many files were left behind that a run does not write (temporary files of
interrupted saves). The goal is N of N and none.
"""

from __future__ import annotations

import argparse
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from semseg.data.shapes import generate
from semseg.training.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
EXPECTED = ("config.yaml", "final.pth", "last.pth", ".lock")  # and train_epoch_*.pth, train-*.log


def options(data: Path, folder: Path, epochs: int) -> list[str]:
    opts = ["data_root", str(data), "epochs", str(epochs), "ending_epoch", str(epochs // 2), "workers", "0"]
    opts += ["batch_size", "4", "evaluate", "false", "manual_seed", "1", "print_freq", "1", "keep_checkpoints", "2"]
    for split in ("train", "val", "test"):
        opts += [f"{split}_list", str(data / f"{split}.txt")]
    return [*opts, "save_path", str(folder / "model"), "save_folder", str(folder / "result"), "resume", "auto"]


def start(data: Path, folder: Path, epochs: int, log) -> subprocess.Popen:
    command = [sys.executable, "tool/train.py", "--config", "config/shapes/shapes_segnet_0.75.yaml", "--device", "cpu"]
    return subprocess.Popen([*command, *options(data, folder, epochs)], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)


def iterations_logged(path: Path) -> int:
    return path.read_text(encoding="utf-8", errors="replace").count(" iteration ") if path.is_file() else 0


def left_behind(model_dir: Path) -> list[str]:
    names = [p.name for p in model_dir.iterdir()]
    return [n for n in names if n not in EXPECTED and not n.startswith(("train_epoch_", "train-"))]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--sigterm", type=float, default=0.25, help="share of the stops sent as SIGTERM")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    chooser = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="fault-injection-"))
    data = work / "shapes"
    generate(data, {"train": 16, "val": 2, "test": 2})

    reference = work / "reference"
    with open(work / "reference.log", "w") as log:
        began = time.perf_counter()
        if start(data, reference, args.epochs, log).wait() != 0:
            print(f"the uninterrupted run failed: see {work / 'reference.log'}")
            return 1
        duration = time.perf_counter() - began
    expected = load_checkpoint(reference / "model" / "final.pth")["state_dict"]
    print(f"uninterrupted run: {duration:.1f} s; {args.runs} runs follow, each stopped until it finishes", flush=True)

    identical, leftovers, kills, terms, mid_save = 0, 0, 0, 0, 0
    for number in range(args.runs):
        folder = work / f"run{number}"
        log_path = folder / "output.log"
        folder.mkdir()
        stops = 0
        for _ in range(50):
            with open(log_path, "a") as log:
                process = start(data, folder, args.epochs, log)
                seen = iterations_logged(log_path)
                while process.poll() is None and iterations_logged(log_path) == seen:
                    time.sleep(0.02)  # wait for the first iteration of this attempt: past the start-up
                time.sleep(chooser.uniform(0, duration / 2))
                if process.poll() is not None:
                    break
                sigterm = chooser.random() < args.sigterm
                process.send_signal(signal.SIGTERM if sigterm else signal.SIGKILL)
                process.wait()
                stops += 1
                terms, kills = terms + sigterm, kills + (not sigterm)
        if process.returncode != 0:
            print(f"run {number}: ended with status {process.returncode}; see {log_path}")
            continue
        final = load_checkpoint(folder / "model" / "final.pth")["state_dict"]
        same = final.keys() == expected.keys() and all(torch.equal(final[k], expected[k]) for k in final)
        extra = left_behind(folder / "model")
        # a kill inside a checkpoint write leaves a temporary file, which the next attempt removes and logs
        mid_save += log_path.read_text(encoding="utf-8", errors="replace").count(
            "temporary file(s) that an interrupted"
        )
        identical += same
        leftovers += len(extra)
        print(f"run {number}: {stops} stop(s), {'bit-identical' if same else 'DIFFERENT'}, left behind: {extra}")
    print(
        f"{identical} of {args.runs} resumed runs bit-identical to the uninterrupted one; {leftovers} file(s) left "
        f"behind; {kills} SIGKILLs and {terms} SIGTERMs in all, {mid_save} of them inside a checkpoint write "
        f"(work folder {work})"
    )
    return 0 if identical == args.runs and leftovers == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
