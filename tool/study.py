"""Run a study, a grid of experiments (config x overrides x seeds), and summarise it: mean ± std per cell.

    python tool/study.py camvid_cpu --dry-run              # the runs, and which are finished
    python tool/study.py camvid_cpu                        # run what is missing, one at a time
    python tool/study.py camvid_cpu --jobs 2               # two at a time (one core each by default)
    python tool/study.py camvid_cpu --sparsities 0.875 0.9375 --seeds 1 2 3 4 5
    python tool/study.py camvid_cpu --cells dense acosp_0.875 l1_0.875
    python tool/study.py camvid_cpu --summary-only         # the table from the runs there are
    python tool/study.py camvid_publication --dry-run      # the publication's study (a GPU job)

Every run is ``sh tool/train.sh DATASET EXPERIMENT`` (training, then the test) with the cell's
overrides and ``manual_seed SEED``, in ``<folder>/<cell>/seed<seed>/`` (``exp/study/STUDY``). A rerun
skips finished runs and resumes an interrupted one from its last epoch (``resume auto``). After
each run the summary is rewritten: ``--results`` (``benchmarks/study_STUDY.json``, every run's
record and the cells' mean, sample standard deviation and n) and the same path with ``.csv``; a
run recorded there counts as finished even where its folder is gone. The table goes into the
document between ``<!-- study-STUDY-table:start -->`` and ``<!-- study-STUDY-table:end -->``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import math
import os
import shlex
import sys
import threading
import time
from pathlib import Path

import torch

from semseg.reporting.experiment import (
    SECONDS,
    compressed_macs,
    is_finished,
    machine,
    markers,
    recorded_seconds,
    run_config,
    train_and_test,
    write_table,
)
from semseg.reporting.run_summary import format_count, run_result
from semseg.reporting.studies import PRESETS
from semseg.reporting.study import Run, Study, read_records, run_folder, write_summary

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", choices=sorted(PRESETS), help="which study")
    parser.add_argument("--sparsities", type=float, nargs="+", help="the sparsities of the pruned cells")
    parser.add_argument("--seeds", type=int, nargs="+", help="the seeds of every cell")
    parser.add_argument("--cells", nargs="+", help="run only these cells (names as --dry-run lists them)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time")
    parser.add_argument("--folder", type=Path, help="where the runs go (exp/study/STUDY)")
    parser.add_argument("--results", type=Path, help="the summary, JSON and CSV (benchmarks/study_STUDY.json)")
    parser.add_argument("--document", type=Path, help="where the table goes (README.md); 'none': nowhere")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and their state, run nothing")
    parser.add_argument("--summary-only", action="store_true", help="run nothing, summarise the runs there are")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    return args


def build_study(args: argparse.Namespace) -> Study:
    options = {}
    if args.sparsities:
        options["sparsities"] = tuple(args.sparsities)
    if args.seeds:
        options["seeds"] = tuple(args.seeds)
    study = PRESETS[args.study](**options)
    if args.cells:
        unknown = sorted(set(args.cells) - {cell.name for cell in study.cells})
        if unknown:
            names = ", ".join(cell.name for cell in study.cells)
            raise ValueError(f"study {study.name} has no cells {unknown}; it has {names}")
    study.check()
    return study


def collect(study: Study, run: Run, folder: Path) -> dict:
    """A finished run's record: scores (also the publication's CamVid metric when tested so), sizes, MACs, time."""
    cfg = run_config(study.dataset, run.cell.experiment, folder, run.options)
    record = {"cell": run.cell.name, "seed": run.seed, **run_result(cfg)}
    record["macs"] = compressed_macs(cfg)[2]
    record["seconds"] = recorded_seconds(folder)
    record["date"] = time.strftime("%Y-%m-%d", time.localtime((folder / SECONDS).stat().st_mtime))
    return record


def state_of(study: Study, run: Run, folder: Path, records: dict) -> str:
    if run.name in records:
        return "finished"
    cfg = run_config(study.dataset, run.cell.experiment, folder, run.options)
    if is_finished(cfg, folder):
        return "finished"
    return "interrupted" if (folder / "model" / "last.pth").is_file() else "to run"


def _percent(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "n/a"
    return f"{100 * mean:.2f}" + ("" if math.isnan(std) else f" ± {100 * std:.2f}")


def markdown(study: Study, rows: list[dict], command: str, caption: str) -> str:
    voided = any(not math.isnan(row["void_mIoU"]) for row in rows)
    head = ["method", "sparsity", "n", "mIoU", "mAcc"] + (["mIoU, void as last class"] if voided else [])
    head += ["parameters", "GMACs", "minutes per run"]
    lines = ["| " + " | ".join(head) + " |", "| --- | " + " | ".join("---:" for _ in head[1:]) + " |"]
    for row in rows:
        cells = [row["method"], f"{row['sparsity']:g}", str(row["n"])]
        cells += [_percent(row["mIoU"], row["mIoU_std"]), _percent(row["mAcc"], row["mAcc_std"])]
        if voided:
            cells.append(_percent(row["void_mIoU"], row["void_mIoU_std"]))
        missing = math.isnan(row["parameters"])
        cells += [
            "n/a" if missing else format_count(round(row["parameters"])),
            "n/a" if missing else f"{row['macs'] / 1e9:.3f}",
            "n/a" if math.isnan(row["seconds"]) else f"{row['seconds'] / 60:.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines + ["", f"*Table written by `{command}`: {caption}*"])


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        study = build_study(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    folder = args.folder or Path("exp") / "study" / study.name
    folder = folder if folder.is_absolute() else ROOT / folder
    results = args.results or ROOT / "benchmarks" / f"study_{study.name}.json"
    document = None if str(args.document) == "none" else (args.document or ROOT / "README.md")
    if document is not None and markers(f"study-{study.name}")[0] not in document.read_text(encoding="utf-8"):
        start = markers(f"study-{study.name}")[0]
        print(f"error: {document} has no {start} marker (--document none: no table)", file=sys.stderr)
        return 2
    try:
        records = read_records(results)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    # --cells runs a part of the grid; the summary and the table still cover all of it
    runs = [run for run in study.runs() if not args.cells or run.cell.name in args.cells]
    states = {run.name: state_of(study, run, run_folder(folder, run), records) for run in runs}
    for note in study.notes:
        print(note)
    for run in runs:
        command = " ".join(["sh tool/train.sh", study.dataset, run.cell.experiment, *map(shlex.quote, run.options)])
        print(f"{states[run.name]:>11}  {run.name:<28} {command}")
    if args.dry_run:
        return 0

    lock = threading.Lock()
    given = argv if argv is not None else sys.argv[1:]
    command = " ".join(["python tool/study.py", *map(shlex.quote, given)])
    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, len(os.sched_getaffinity(0)) // args.jobs))

    def summary() -> list[dict]:
        extra = {"command": command, "description": study.description, "notes": study.notes, "machine": machine()}
        return write_summary(results, study, records, extra)

    for run in runs:  # finished runs whose folder is here but whose record is not (an earlier summary was lost)
        if states[run.name] == "finished" and run.name not in records:
            records[run.name] = collect(study, run, run_folder(folder, run))
    failed = []

    def execute(run: Run) -> None:
        where = run_folder(folder, run)
        print(f"{time.strftime('%H:%M:%S')} {run.name}: training and testing ({where})", flush=True)
        try:
            train_and_test(study.dataset, run.cell.experiment, where, run.options, {"OMP_NUM_THREADS": threads})
            with lock:
                records[run.name] = collect(study, run, where)
                summary()
            record = records[run.name]
            minutes = record["seconds"] / 60
            print(f"{time.strftime('%H:%M:%S')} {run.name}: mIoU {record['mIoU']:.4f} in {minutes:.1f} min", flush=True)
        except (RuntimeError, OSError, ValueError) as error:
            failed.append(run.name)
            print(f"{run.name} failed: {error}", file=sys.stderr, flush=True)

    pending = [run for run in runs if states[run.name] != "finished"]
    if pending and not args.summary_only:
        print(f"{len(pending)} run(s), {args.jobs} at a time, OMP_NUM_THREADS={threads} ...", flush=True)
        with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(execute, pending))
    rows = summary()
    finished = [records[run.name] for run in study.runs() if run.name in records]
    run_minutes = sum(record["seconds"] for record in finished) / 60
    dates = sorted({record.get("date", "") for record in finished} - {""})
    when = dates[0] if len(dates) == 1 else f"{dates[0]} to {dates[-1]}" if dates else "no date"
    caption = (
        f"{study.description}; mean ± sample standard deviation over n seeds; mIoU and mAcc (%) on the test "
        f"list as tool/test.py scores it (void ignored)"
        + (
            ", and as the publication's CamVid test did (void pixels as the last class)"
            if study.dataset == "camvid"
            else ""
        )
        + f"; parameters and MACs of the compressed network. {len(finished)} runs, {run_minutes:.0f} minutes of "
        f"run time, on {machine()} (torch {torch.__version__}, {when}). "
        f"Every run's numbers: {results.relative_to(ROOT) if results.is_relative_to(ROOT) else results}."
    )
    table = markdown(study, rows, command, caption)
    print(table)
    if document is not None and finished:
        write_table(f"study-{study.name}", document, table)
        print(f"wrote {results}, {results.with_suffix('.csv')} and {document}")
    if failed:
        print(f"error: {len(failed)} run(s) failed: {', '.join(failed)}; each one's run.log says why", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
