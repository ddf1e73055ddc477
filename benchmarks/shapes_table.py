"""A miniature of the publication's table: SegNet on 'shapes' at several sparsities, one fixed budget.

    python benchmarks/shapes_table.py                    # train and test all five, then write the table
    python benchmarks/shapes_table.py --skip-training    # rebuild the table from the runs in exp/shapes/
    python benchmarks/shapes_table.py epochs 4           # key value pairs override every run's config
    OMP_NUM_THREADS=1 python benchmarks/shapes_table.py --jobs 2   # two runs at a time, one thread each

Each sparsity runs ``sh tool/train.sh shapes segnet[_S]`` (training, then the test on test.txt)
with the same config but for the sparsity. The table (mIoU, mAcc, parameters counted as the
compressed network has them, and the compression ratio as the publication defines it, 1 / (1 - s),
and as counted, dense parameters / kept parameters) goes into docs/shapes.md between the markers
``<!-- shapes-table:start -->`` and ``<!-- shapes-table:end -->``, with this command and its run
time; the numbers also go to benchmarks/shapes_table.json, which tool/report.py reads.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from util.atomic import atomic_path  # noqa: E402
from util.config import load_config  # noqa: E402
from util.run_summary import format_count, paper_ratio, run_result  # noqa: E402

SPARSITIES = (0.0, 0.5, 0.75, 0.875, 0.9375)
START, END = "<!-- shapes-table:start -->", "<!-- shapes-table:end -->"


def experiment(sparsity: float) -> str:
    return "segnet" if sparsity == 0 else f"segnet_{sparsity:g}"


def machine() -> str:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{platform.machine()} CPU, {cores} cores, {platform.system()}"


def run_options(folder: Path, name: str, opts: list[str]) -> list[str]:
    """The overrides of one run: the user's, and its folders under ``folder``."""
    run = folder / name
    return [*opts, "save_path", str(run / "model"), "save_folder", str(run / "result")]


def train_and_test(folder: Path, name: str, opts: list[str]) -> float:
    """``sh tool/train.sh shapes NAME`` on the CPU, its output in FOLDER/NAME/table.log; seconds taken."""
    log = folder / name / "table.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHON": sys.executable, "DEVICE": os.environ.get("DEVICE", "cpu")}
    start = time.perf_counter()
    with open(log, "w", encoding="utf-8") as handle:
        result = subprocess.run(
            ["sh", "tool/train.sh", "shapes", name, *run_options(folder, name, opts)],
            cwd=ROOT,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    if result.returncode != 0:
        raise RuntimeError(f"sh tool/train.sh shapes {name} failed with exit code {result.returncode}; see {log}")
    seconds = time.perf_counter() - start
    (log.parent / "table_seconds.txt").write_text(f"{seconds:.1f}\n", encoding="utf-8")
    return seconds


def recorded_seconds(folder: Path, name: str) -> float:
    """The run time train_and_test recorded for a run, for --skip-training; NaN if none."""
    path = folder / name / "table_seconds.txt"
    return float(path.read_text(encoding="utf-8")) if path.is_file() else float("nan")


def _minutes(seconds: float) -> str:
    return "n/a" if seconds != seconds else f"{seconds / 60:.1f} min"


def markdown(rows: list[dict], command: str, minutes: float | None, where: str) -> str:
    dense = next((row for row in rows if row["sparsity"] == 0), None)
    lines = [
        "| sparsity | ACoSP-N (1/(1-s)) | mIoU | mAcc | parameters | counted ratio | kept channels | run time |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        counted = "n/a"
        if dense is not None and dense["parameters"] and row["parameters"]:
            counted = f"{dense['parameters'] / row['parameters']:.2f}"
        lines.append(
            f"| {row['sparsity']:g} | {paper_ratio(row['sparsity']):g} | {100 * row['mIoU']:.2f} | "
            f"{100 * row['mAcc']:.2f} | {format_count(row['parameters'])} | {counted} | "
            f"{row['kept_channels']} / {row['channels']} | {_minutes(row['seconds'])} |"
        )
    made = f"made by `{command}` in {minutes:.0f} minutes" if minutes is not None else f"written by `{command}`"
    lines += [
        "",
        f"*Table {made}; each run is `sh tool/train.sh shapes EXP` (training, then the test), its wall time in "
        f"the last column, on {where}. mIoU and mAcc (%) on the 200 test images, one scale with flips; "
        "parameters as the compressed network has them (acosp.compress.model_statistics).*",
    ]
    return "\n".join(lines)


def write_table(document: Path, table: str) -> None:
    text = document.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(START) + r".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        raise ValueError(f"{document}: the markers {START} and {END} are missing")
    with atomic_path(document) as temporary:
        temporary.write_text(pattern.sub(lambda _: f"{START}\n{table}\n{END}", text), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-training", action="store_true", help="use the runs already in --folder")
    parser.add_argument("--folder", type=Path, default=Path("exp/shapes"), help="where the runs go (exp/shapes)")
    parser.add_argument("--sparsities", type=float, nargs="+", default=list(SPARSITIES))
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (give each OMP_NUM_THREADS cores)")
    parser.add_argument("--document", type=Path, default=ROOT / "docs" / "shapes.md", help="where the table goes")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "shapes_table.json")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="'key value' overrides for every run")
    args = parser.parse_args(argv)
    given = argv if argv is not None else sys.argv[1:]
    command = " ".join(["python benchmarks/shapes_table.py", *map(shlex.quote, given)])
    start = time.perf_counter()
    names = [experiment(sparsity) for sparsity in args.sparsities]
    folder = args.folder if args.folder.is_absolute() else ROOT / args.folder
    seconds = {name: recorded_seconds(folder, name) for name in names}
    if not args.skip_training:
        print(f"training and testing {', '.join(names)}, {args.jobs} at a time ...", flush=True)
        with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
            seconds = dict(zip(names, pool.map(lambda name: train_and_test(folder, name, args.opts), names)))
    rows = []
    for name in names:
        cfg = load_config(ROOT / "config" / "shapes" / f"shapes_{name}.yaml", run_options(folder, name, args.opts))
        row = {**run_result(cfg), "seconds": seconds[name]}
        print(f"{name}: mIoU {row['mIoU']:.4f} mAcc {row['mAcc']:.4f} parameters {format_count(row['parameters'])}")
        rows.append(row)
    minutes = (time.perf_counter() - start) / 60
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    where = (
        f"{machine()} ({args.jobs} run(s) at a time, OMP_NUM_THREADS={threads}, "
        f"torch {__import__('torch').__version__}, {time.strftime('%Y-%m-%d')})"
    )
    table = markdown(rows, command, None if args.skip_training else minutes, where)
    print(table)
    record = {"command": command, "machine": where, "date": time.strftime("%Y-%m-%d"), "minutes": minutes, "rows": rows}
    with atomic_path(args.json) as temporary:
        temporary.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    write_table(args.document, table)
    print(f"wrote {args.json} and {args.document}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
