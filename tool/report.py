"""Say where a finished run's files are and compare its network with the dense one.

    python tool/report.py shapes segnet_0.75                # after sh tool/train.sh shapes segnet_0.75
    python tool/report.py shapes segnet_0.75 --dense segnet  # the dense experiment to compare with (default)

Prints the checkpoint, predictions, metrics CSV and tensorboard folder of exp/DATASET/EXP, then
mIoU, mAcc, parameters (counted as the compressed network has them) and kept channels of the run
and of the dense network. The dense scores come from exp/DATASET/DENSE when that run was tested on
this machine, otherwise from the reference results of ``benchmarks/results_table.py shapes``
(shapes only).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from semseg.config import ConfigError, load_config
from semseg.models import build_model, describe_arch
from semseg.reporting.run_summary import (
    RunFiles,
    example_input,
    format_run_comparison,
    network_size,
    read_metrics,
    run_result,
)

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "benchmarks" / "shapes_table.json"


def _relative(path: Path) -> str:
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def dense_row(dataset: str, dense_exp: str, opts: list[str]) -> tuple[dict, str]:
    """The dense network's size, and its scores from a local run or the stored reference; and where they came from."""
    cfg = load_config(ROOT / "config" / dataset / f"{dataset}_{dense_exp}.yaml", opts)
    row = network_size(build_model(describe_arch(cfg)), example_input(cfg))
    files = RunFiles.of(cfg)
    if files.metrics.is_file():
        return {**row, **read_metrics(files.metrics)}, f"dense scores from the run {_relative(files.metrics)}"
    if dataset == "shapes" and REFERENCE.is_file():
        reference = json.loads(REFERENCE.read_text(encoding="utf-8"))
        dense = next((r for r in reference["rows"] if r["sparsity"] == 0), None)
        if dense is not None:
            source = (
                f"dense scores from the reference run in {_relative(REFERENCE)} ({reference['machine']}, "
                f"{reference['date']}); sh tool/train.sh {dataset} {dense_exp} trains your own"
            )
            return {**row, "mIoU": dense["mIoU"], "mAcc": dense["mAcc"]}, source
    return row, f"dense scores: not run yet (sh tool/train.sh {dataset} {dense_exp})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset")
    parser.add_argument("exp", help="the experiment, as for tool/train.sh: config/DATASET/DATASET_EXP.yaml")
    parser.add_argument("--dense", default=None, help="the dense experiment (default: EXP without its sparsity)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="the 'key value' overrides the run was trained with")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(ROOT / "config" / args.dataset / f"{args.dataset}_{args.exp}.yaml", args.opts)
        files = RunFiles.of(cfg)
        result = run_result(cfg)
        dense_exp = args.dense or args.exp.split("_")[0]
        # The dense run shares data and budget overrides, not the pruned run's folders.
        shared = [
            item
            for key, value in zip(args.opts[::2], args.opts[1::2])
            if key not in ("save_path", "save_folder", "model_path", "sparsity")
            for item in (key, value)
        ]
        dense, source = dense_row(args.dataset, dense_exp, shared)
    except (ConfigError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    logdir = _relative(files.folder.parent)
    print(f"\nACoSP run {_relative(files.folder)} (sparsity {cfg.sparsity:g}):")
    print(f"  checkpoint   {_relative(files.checkpoint)}")
    print(f"  predictions  {_relative(files.predictions)}/ (class ids; colour pictures in ../color/)")
    print(f"  metrics CSV  {_relative(files.metrics)}")
    events = files.events()
    print(f"  tensorboard  {_relative(files.folder)}/ ({len(events)} event file(s)): tensorboard --logdir {logdir}")
    print()
    print(format_run_comparison([("dense", dense), (f"ACoSP, sparsity {cfg.sparsity:g}", result)]))
    print(f"({source})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
