"""The repository's own pieces: atomic writes, the figure script, what ``pip install .`` ships."""

import ast
import os
import re
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import cv2
import pytest

from semseg.atomic import atomic_path

ROOT = Path(__file__).resolve().parents[1]


def test_atomic_path_replaces_only_on_success(tmp_path):
    target = tmp_path / "sub" / "result.csv"
    with atomic_path(target) as temporary:
        temporary.write_text("first")
    assert target.read_text() == "first"
    with pytest.raises(RuntimeError), atomic_path(target) as temporary:
        temporary.write_text("half")
        raise RuntimeError("killed while writing")
    assert target.read_text() == "first"
    assert sorted(path.name for path in target.parent.iterdir()) == ["result.csv"]
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask  # not mkstemp's private 0600


@pytest.mark.slow
def test_plot_soft_mask_writes_a_png(tmp_path):
    output = tmp_path / "mask.png"
    result = subprocess.run(
        [sys.executable, "figures/plot_soft_mask.py", "--output", str(output), "--channels", "32", "--keep", "8"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    image = cv2.imread(str(output))
    assert image is not None and image.shape == (520, 900, 3)
    assert (image < 250).any()  # something was drawn


@pytest.mark.slow
def test_plot_soft_mask_rejects_impossible_keep(tmp_path):
    result = subprocess.run(
        [sys.executable, "figures/plot_soft_mask.py", "--output", str(tmp_path / "x.png"), "--keep", "64"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "--keep" in result.stderr
    assert not (tmp_path / "x.png").exists()


@pytest.mark.slow
def test_the_wheel_ships_the_library_and_the_pipeline_it_runs(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    (wheel,) = tmp_path.glob("acosp-*.whl")
    files = set(zipfile.ZipFile(wheel).namelist())
    top_level = {name.split("/")[0] for name in files}
    assert {"acosp", "semseg"} <= top_level
    assert not top_level & {"tool", "tests", "config", "benchmarks", "data"}
    stages = ("data/images.py", "models/segnet.py", "training/epoch.py", "evaluation/metrics.py", "reporting/study.py")
    assert {f"semseg/{path}" for path in stages} <= files  # every stage, not only the top package
    with zipfile.ZipFile(wheel) as archive:
        metadata = archive.read(next(name for name in archive.namelist() if name.endswith("METADATA"))).decode()
    requirements = [
        line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Requires-Dist:")
    ]
    names = {re.split(r"[<>=; \[]", requirement)[0] for requirement in requirements}
    assert {"torch", "numpy", "opencv-python-headless", "pillow", "pyyaml", "tensorboardX", "tqdm", "pytest"} <= names
    assert "torchvision" not in names


@pytest.mark.slow
def test_mask_overhead_benchmark_runs():
    result = subprocess.run(
        [sys.executable, "benchmarks/mask_overhead.py", "--steps", "1", "--batch", "2", "--size", "16"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    rows = [line[:13].strip() for line in result.stdout.splitlines()[2:]]
    assert rows == ["dense", "soft", "soft literal", "hard", "hard literal"]
    dense_ratios = result.stdout.splitlines()[2].split()[2::2]
    assert dense_ratios == ["1.000", "1.000"]


@pytest.mark.slow
def test_train_step_overhead_benchmark_runs():
    command = ["benchmarks/train_step_overhead.py", "--pairs", "1", "--sizes", "33", "--networks", "SegNet"]
    result = subprocess.run([sys.executable, *command], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in result.stdout.splitlines()[-3:]]
    assert [row[:3] for row in rows] == [["SegNet", "33x33", kind] for kind in ("dense", "soft", "hard")]
    assert all(float(row[4]) > 0 for row in rows) and rows[0][5] == "1.000"


def test_quick_start_is_two_commands_and_ci_runs_the_second():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```shell\n(.*?)```", section, re.S)
    assert len(blocks) == 1
    commands = [line.split("#")[0].strip() for line in blocks[0].splitlines() if line.strip()]
    assert commands == ["sh tool/quickstart.sh", "sh tests/run.sh"]
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    # the command as the README writes it, pytest options after it allowed
    runs = [n for n, line in enumerate(ci) if line == commands[1] or line.startswith(commands[1] + " ")]
    assert runs and runs[0] > ci.index("ruff format --check .")
    for script in ("tool/quickstart.sh", "tests/run.sh"):
        assert (ROOT / script).is_file()


@pytest.mark.slow
def test_training_memory_estimate_runs_on_the_cpu():
    result = subprocess.run(
        [sys.executable, "benchmarks/training_memory.py", "config/shapes/shapes_segnet_0.75.yaml", "--batch", "1", "4"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "activations kept for backward" in result.stdout and "4 image(s) per GPU" in result.stdout


def test_the_fast_tier_touches_every_test_module():
    """``sh tests/run.sh -m "not slow"``, the edit loop, runs at least one test of every module."""
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        fast = [
            node.name
            for node in tree.body
            if isinstance(node, ast.FunctionDef)
            and node.name.startswith("test_")
            and not any("mark.slow" in ast.unparse(decorator) for decorator in node.decorator_list)
        ]
        assert fast, f"{path.name}: every test is marked slow, so the fast tier skips the module"
