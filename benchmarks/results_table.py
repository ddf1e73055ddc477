"""The publication's table, measured here: one recipe trained and tested at every sparsity, one budget.

    python benchmarks/results_table.py shapes                    # the built-in dataset: docs/shapes.md
    python benchmarks/results_table.py camvid                    # CamVid, the CPU recipe (segnet_cpu): docs/camvid.md
    python benchmarks/results_table.py camvid --sparsities 0 0.75 --skip-finished   # add runs, keep finished ones
    python benchmarks/results_table.py camvid --network segnet   # the publication's recipe (a GPU job)
    python benchmarks/results_table.py shapes --skip-training    # rebuild the table from the runs in exp/shapes/
    python benchmarks/results_table.py shapes epochs 4           # key value pairs override every run's config
    OMP_NUM_THREADS=1 python benchmarks/results_table.py shapes --jobs 2   # two runs at a time, one thread each

Each sparsity runs ``sh tool/train.sh DATASET NETWORK[_S]`` (training, then the test) with the
same config but for the sparsity. The table gives mIoU and mAcc, the publication's numbers for the
same row where it has them (semseg/reporting/published.py), parameters and MACs as the compressed network has
them, the compression ratio as the publication defines it, 1 / (1 - s), and as counted (dense
parameters / kept parameters), the compressed network's CPU latency (batch 1, at the test crop
size, median of 10 runs) and each run's wall time. It goes into the document between the markers
``<!-- DATASET-table:start -->`` and ``<!-- DATASET-table:end -->``, with this command, the machine
and the total time; the numbers also go to benchmarks/DATASET_table.json (tool/report.py reads the
shapes one).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import os
import shlex
import sys
import time
from pathlib import Path

import torch

from semseg.atomic import atomic_path
from semseg.reporting.experiment import (
    compressed_macs,
    config_path,
    is_finished,
    machine,
    recorded_seconds,
    run_config,
    train_and_test,
    write_table,
)
from semseg.reporting.latency import median_latency
from semseg.reporting.published import published
from semseg.reporting.run_summary import format_count, paper_ratio, run_result

ROOT = Path(__file__).resolve().parents[1]
SPARSITIES = (0.0, 0.5, 0.75, 0.875, 0.9375)
# The recipe a dataset's table trains unless --network says otherwise, and where its table goes.
DEFAULT_NETWORK = {"shapes": "segnet", "camvid": "segnet_cpu"}
DOCUMENT = {"shapes": ROOT / "docs" / "shapes.md", "camvid": ROOT / "docs" / "camvid.md"}
TEST_IMAGES = {"shapes": "the 200 test images", "camvid": "the 233 test images"}


def experiment(network: str, sparsity: float) -> str:
    return network if sparsity == 0 else f"{network}_{sparsity:g}"


def compressed_cost(cfg) -> dict[str, float]:
    """MACs per image and median CPU seconds per forward pass of the run's network, compressed, at the test crop."""
    network, x, macs = compressed_macs(cfg)
    return {"macs": macs, "latency": median_latency(network, x, runs=10)}


def _minutes(seconds: float) -> str:
    return "n/a" if math.isnan(seconds) else f"{seconds / 60:.1f} min"


def _percent(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.2f}"


def markdown(dataset: str, network: str, rows: list[dict], command: str, minutes: float | None, where: str) -> str:
    dense = next((row for row in rows if row["sparsity"] == 0), None)
    quoted = any(row["published"] for row in rows)
    voided = any("void_mIoU" in row for row in rows)
    head = ["sparsity", "ACoSP-N (1/(1-s))", "mIoU", "mAcc"]
    head += ["mIoU, void as last class"] if voided else []
    head += ["publication mIoU / mAcc"] if quoted else []
    head += ["parameters", "counted ratio", "GMACs", "latency", "run time"]
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join("---:" for _ in head) + " |"]
    for row in rows:
        counted = "n/a"
        if dense is not None and dense["parameters"] and row["parameters"]:
            counted = f"{dense['parameters'] / row['parameters']:.2f}"
        cells = [f"{row['sparsity']:g}", f"{paper_ratio(row['sparsity']):g}"]
        cells += [_percent(row["mIoU"]), _percent(row["mAcc"])]
        if voided:
            cells.append(_percent(row.get("void_mIoU")))
        if quoted:
            paper = row["published"]
            cells.append("n/a" if paper is None else " / ".join("n/a" if v is None else f"{v:.2f}" for v in paper))
        cells += [
            format_count(row["parameters"]),
            counted,
            f"{row['macs'] / 1e9:.3f}",
            f"{1000 * row['latency']:.1f} ms",
            _minutes(row["seconds"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    made = f"made by `{command}` in {minutes:.0f} minutes" if minutes is not None else f"written by `{command}`"
    crop = rows[0]["crop"] if rows else "the test crop"
    lines += [
        "",
        f"*Table {made}; each run is `sh tool/train.sh {dataset} {experiment(network, 0)}[_S]` (training, then "
        f"the test), its wall time in the last column, on {where}. mIoU and mAcc (%) on "
        f"{TEST_IMAGES.get(dataset, 'the test list')}, as the run's config tests (scales, flips); parameters "
        f"and MACs as the compressed network has them (acosp.compress), latency of the compressed network on "
        f"the CPU at {crop}, batch 1, median of 10 runs."
        + (
            " mIoU, void as last class: the same predictions scored as the publication's CamVid test did "
            "(void pixels count as ground truth of the last class, never right)."
            if voided
            else ""
        )
        + (" The publication's numbers are quoted from it (its full recipe)." if quoted else "")
        + "*",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--network", help="the recipe, config/DATASET/DATASET_NETWORK[_S].yaml (segnet_cpu for camvid)")
    parser.add_argument("--skip-training", action="store_true", help="use the runs already in --folder")
    parser.add_argument("--skip-finished", action="store_true", help="train only the runs not finished in --folder")
    parser.add_argument("--folder", type=Path, help="where the runs go (exp/DATASET)")
    parser.add_argument("--sparsities", type=float, nargs="+", default=list(SPARSITIES))
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (give each OMP_NUM_THREADS cores)")
    parser.add_argument("--document", type=Path, help="where the table goes (docs/DATASET.md, else README.md)")
    parser.add_argument("--json", type=Path, help="where the numbers go (benchmarks/DATASET_table.json)")
    parser.add_argument(
        "run", nargs="+", help="DATASET (a folder of config/), then 'key value' overrides for every run"
    )
    args = parser.parse_intermixed_args(argv)
    dataset, args.opts = args.run[0], args.run[1:]
    network = args.network or DEFAULT_NETWORK.get(dataset)
    if network is None:
        parser.error(f"say which recipe with --network (config/{dataset}/{dataset}_NETWORK.yaml)")
    sparsities = sorted(set(args.sparsities))  # the table's rows, dense first
    names = {sparsity: experiment(network, sparsity) for sparsity in sparsities}
    configs = {s: config_path(dataset, name) for s, name in names.items()}
    missing = [str(path.relative_to(ROOT)) for path in configs.values() if not path.is_file()]
    if missing:
        parser.error(f"no config {', '.join(missing)}")
    document = args.document or DOCUMENT.get(dataset, ROOT / "README.md")
    record_path = args.json or ROOT / "benchmarks" / f"{dataset}_table.json"
    folder = args.folder or Path("exp") / dataset
    folder = folder if folder.is_absolute() else ROOT / folder
    given = argv if argv is not None else sys.argv[1:]
    command = " ".join(["python benchmarks/results_table.py", *map(shlex.quote, given)])
    cfgs = {s: run_config(dataset, name, folder / name, args.opts) for s, name in names.items()}

    start = time.perf_counter()
    to_train = [] if args.skip_training else list(names.values())
    if args.skip_finished:  # tested, and timed by this script
        done = {name for s, name in names.items() if is_finished(cfgs[s], folder / name)}
        to_train = [name for name in to_train if name not in done]
    if to_train:
        print(f"training and testing {', '.join(to_train)}, {args.jobs} at a time ...", flush=True)
        with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(lambda name: train_and_test(dataset, name, folder / name, args.opts), to_train))
    rows = []
    for sparsity, name in names.items():
        cfg = cfgs[sparsity]
        row = {
            **run_result(cfg),
            **compressed_cost(cfg),
            "seconds": recorded_seconds(folder / name),
            "crop": f"{cfg.test_h}x{cfg.test_w}",
            "published": published(dataset, network, sparsity),
        }
        print(
            f"{name}: mIoU {row['mIoU']:.4f} mAcc {row['mAcc']:.4f} parameters {format_count(row['parameters'])} "
            f"GMACs {row['macs'] / 1e9:.3f} latency {1000 * row['latency']:.1f} ms",
            flush=True,
        )
        rows.append(row)
    minutes = (time.perf_counter() - start) / 60
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    where = (
        f"{machine()} ({args.jobs} run(s) at a time, OMP_NUM_THREADS={threads}, "
        f"torch {torch.__version__}, {time.strftime('%Y-%m-%d')})"
    )
    table = markdown(dataset, network, rows, command, minutes if len(to_train) == len(names) else None, where)
    print(table)
    record = {
        "command": command,
        "dataset": dataset,
        "network": network,
        "machine": where,
        "date": time.strftime("%Y-%m-%d"),
        "minutes": minutes,
        "rows": rows,
    }
    with atomic_path(record_path) as temporary:
        temporary.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    write_table(dataset, document, table)
    print(f"wrote {record_path} and {document}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
