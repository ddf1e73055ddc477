"""tool/study.py: the grid, the summary's mean ± std, skipping finished runs, resuming interrupted ones."""

import csv
import json
import math
import statistics

import pytest
from train_helpers import load_tool

from semseg.data.shapes import generate
from semseg.reporting import experiment
from semseg.reporting.studies import camvid_cpu, small_dense_width
from semseg.reporting.study import Cell, Run, Study, matched_width, mean_std, parameter_count, summarize

study_tool = load_tool("study")


def test_the_grid_has_every_cell_and_seed_seeds_first():
    cells = [Cell("a", "A", "x", 0.0, (1, 2, 3)), Cell("b", "B", "y", 0.5, (1, 2), ("width", "0.5"))]
    runs = Study("s", "shapes", cells).runs()
    assert [run.name for run in runs] == ["a/seed1", "b/seed1", "a/seed2", "b/seed2", "a/seed3"]
    assert runs[1].options == ["width", "0.5", "manual_seed", "1", "resume", "auto"]


@pytest.mark.slow
def test_the_camvid_study_compares_acosp_with_four_baselines_at_the_same_k_and_epochs():
    study = camvid_cpu(sparsities=(0.875, 0.9375), seeds=(1, 2, 3))
    names = [cell.name for cell in study.cells]
    assert names[0] == "dense" and len(names) == 1 + 2 * 5 and len(study.runs()) == 33
    cells = {cell.name: cell for cell in study.cells}
    assert cells["acosp_0.875"].experiment == cells["l1_0.875"].experiment == "segnet_cpu_study_0.875"
    assert cells["fixed_logits_0.875"].overrides == ("learnable_weights", "false")
    assert cells["l1_0.9375"].overrides == ("selection", "l1")
    assert cells["random_subset_0.875"].overrides == ("ending_epoch", "0")
    assert cells["small_dense_0.875"].experiment == "segnet_cpu_study"
    study.check()  # every config exists and takes its overrides
    # the small dense width the recorded runs used, so that a rerun repeats them; the note gives today's match
    assert cells["small_dense_0.875"].overrides == ("width", "0.03418")
    (note,) = [note for note in study.notes if note.startswith("small_dense_0.875")]
    matched, matched_parameters, _ = small_dense_width("camvid", "segnet_cpu_study", 0.875)
    assert note.startswith("small_dense_0.875: width 0.03418 gives 37,235 parameters")
    assert f"the recorded runs used; width {matched:g} matches today's compression with {matched_parameters:,})" in note


def test_mean_and_sample_standard_deviation_count_only_finite_values():
    assert mean_std([0.2, 0.4, 0.6]) == (pytest.approx(0.4), pytest.approx(0.2), 3)
    mean, std, n = mean_std([0.3, float("nan"), None])
    assert (mean, n) == (0.3, 1) and math.isnan(std)
    assert math.isnan(mean_std([])[0])
    cell = Cell("a", "A", "x", 0.5, (1, 2, 4))
    records = {f"a/seed{seed}": {"seed": seed, "mIoU": value} for seed, value in ((1, 0.30), (4, 0.36))}
    (row,) = summarize(Study("s", "shapes", [cell]), records)
    assert row["n"] == 2 and row["seeds"] == [1, 4]
    assert row["mIoU"] == pytest.approx(0.33) and row["mIoU_std"] == pytest.approx(statistics.stdev([0.30, 0.36]))
    assert math.isnan(row["mAcc"])


def test_the_width_search_finds_the_closest_count_in_few_digits():
    width = matched_width(lambda width: round(1000 * width**2), 250)
    assert round(1000 * width**2) == 250 and len(repr(width)) <= 12
    assert matched_width(lambda width: 10 if width < 0.3 else 1000, 400) < 0.3
    assert matched_width(lambda width: 10 if width < 0.3 else 1000, 600) == 0.3
    assert matched_width(lambda width: 10, 600) == 1.0


@pytest.mark.slow
def test_the_small_dense_segnet_has_the_compressed_acosp_8_networks_parameters_within_5_percent():
    width, parameters, target = small_dense_width("camvid", "segnet_cpu_study", 0.875)
    assert abs(parameters - target) <= 0.05 * target and 0 < width < 0.25
    cfg = experiment.run_config("camvid", "segnet_cpu_study", experiment.ROOT / "exp" / "x", ["width", str(width)])
    assert parameter_count(cfg) == parameters
    # at ACoSP-16 the narrowest layers change in steps of one channel: the study says how far off it is
    width, parameters, target = small_dense_width("camvid", "segnet_cpu_study", 0.9375)
    gap = (parameters - target) / target
    assert abs(gap) < 0.1
    (note,) = [note for note in camvid_cpu(sparsities=(0.9375,)).notes if note.startswith("small_dense_0.9375")]
    assert f"width {width:g} gives {parameters:,} parameters" in note and f"({100 * gap:+.1f} %" in note
    assert ("the closest any width comes" in note) == (abs(gap) > 0.05)


@pytest.fixture
def tiny_study(tmp_path, monkeypatch):
    """The shapes recipe cut to a few images and one epoch, dense and ACoSP-4, two seeds each."""
    data = tmp_path / "shapes"
    generate(data, {"train": 4, "val": 2, "test": 2})
    shared = ["data_root", str(data), "epochs", "2", "ending_epoch", "1", "batch_size", "2", "workers", "0"]
    for split in ("train", "val", "test"):
        shared += [f"{split}_list", str(data / f"{split}.txt")]
    shared += ["evaluate", "false", "blocks", "2", "width", "0.125"]
    cells = [
        Cell("dense", "dense", "segnet", 0.0, (1, 2), tuple(shared)),
        Cell("acosp_0.75", "ACoSP", "segnet_0.75", 0.75, (1, 2), tuple(shared)),
    ]
    study = Study("tiny", "shapes", cells, "a tiny study")
    monkeypatch.setitem(study_tool.PRESETS, "tiny", lambda **options: study)
    document = tmp_path / "doc.md"
    document.write_text("head\n<!-- study-tiny-table:start -->\nold\n<!-- study-tiny-table:end -->\ntail\n")
    options = [
        "--folder",
        str(tmp_path / "runs"),
        "--results",
        str(tmp_path / "tiny.json"),
        "--document",
        str(document),
    ]
    return study, options, tmp_path


@pytest.mark.slow
def test_a_study_runs_summarises_skips_what_is_finished_and_resumes_what_was_interrupted(
    tiny_study, monkeypatch, capsys
):
    study, options, tmp_path = tiny_study
    assert study_tool.main(["tiny", *options]) == 0
    summary = json.loads((tmp_path / "tiny.json").read_text())
    assert set(summary["runs"]) == {"dense/seed1", "acosp_0.75/seed1", "dense/seed2", "acosp_0.75/seed2"}
    for cell in summary["cells"]:
        scores = [summary["runs"][f"{cell['cell']}/seed{seed}"]["mIoU"] for seed in (1, 2)]
        assert cell["n"] == 2 and cell["mIoU"] == pytest.approx(statistics.fmean(scores))
        assert cell["mIoU_std"] == pytest.approx(statistics.stdev(scores))
    acosp_run = summary["runs"]["acosp_0.75/seed1"]
    dense_run = summary["runs"]["dense/seed1"]
    assert acosp_run["parameters"] < dense_run["parameters"] and acosp_run["macs"] < dense_run["macs"]
    with open(tmp_path / "tiny.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["cell"] for row in rows] == ["dense", "acosp_0.75"] and rows[0]["n"] == "2"
    text = (tmp_path / "doc.md").read_text()
    assert text.startswith("head\n") and text.endswith("tail\n") and "\nold\n" not in text
    assert "| ACoSP | 0.75 | 2 |" in text and "python tool/study.py tiny" in text
    seed1 = tmp_path / "runs" / "acosp_0.75" / "seed1"
    assert (seed1 / "model" / "final.pth").is_file() and (seed1 / "run.log").is_file()

    # A rerun trains nothing; a run recorded in the summary counts as finished without its folder.
    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    original = study_tool.train_and_test
    monkeypatch.setattr(study_tool, "train_and_test", no_training)
    for path in sorted((tmp_path / "runs" / "dense" / "seed2").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    capsys.readouterr()
    assert study_tool.main(["tiny", *options, "--dry-run"]) == 0
    assert capsys.readouterr().out.count("   finished  ") == 4
    assert study_tool.main(["tiny", *options]) == 0
    monkeypatch.setattr(study_tool, "train_and_test", original)

    # An interrupted run (a checkpoint after epoch 1, no test) continues from it.
    (seed1 / experiment.SECONDS).unlink()
    (seed1 / "model" / "final.pth").unlink()
    for path in (seed1 / "result").rglob("metrics*.csv"):
        path.unlink()
    summary["runs"].pop("acosp_0.75/seed1")
    (tmp_path / "tiny.json").write_text(json.dumps(summary))
    run = Run(study.cells[1], 1)
    experiment.train_and_test("shapes", "segnet_0.75", seed1 / "again", [*run.options, "epochs", "1"])
    (seed1 / "model" / "last.pth").unlink()
    (seed1 / "again" / "model" / "last.pth").rename(seed1 / "model" / "last.pth")
    capsys.readouterr()
    assert study_tool.main(["tiny", *options, "--cells", "acosp_0.75", "--dry-run"]) == 0
    assert "interrupted  acosp_0.75/seed1" in capsys.readouterr().out
    assert study_tool.main(["tiny", *options, "--cells", "acosp_0.75"]) == 0
    assert "resumed from" in (seed1 / "run.log").read_text() and (seed1 / "model" / "final.pth").is_file()
    assert "acosp_0.75/seed1" in json.loads((tmp_path / "tiny.json").read_text())["runs"]


def test_bad_requests_fail_before_any_run(tiny_study, capsys):
    study, options, tmp_path = tiny_study
    assert study_tool.main(["tiny", *options, "--cells", "l1_0.75"]) == 2
    assert "study tiny has no cells ['l1_0.75']; it has dense, acosp_0.75" in capsys.readouterr().err
    (tmp_path / "doc.md").write_text("no markers\n")
    assert study_tool.main(["tiny", *options]) == 2
    assert "has no <!-- study-tiny-table:start --> marker" in capsys.readouterr().err
    (tmp_path / "tiny.json").write_text("[1, 2]")
    assert study_tool.main(["tiny", *options, "--document", "none"]) == 2
    assert "tiny.json: not a study summary" in capsys.readouterr().err
    study.cells.append(Cell("broken", "x", "segnet", 0.0, (1,), ("sparsity", "2")))
    (tmp_path / "tiny.json").unlink()
    assert study_tool.main(["tiny", *options, "--document", "none"]) == 2
    assert "sparsity must be in [0, 1)" in capsys.readouterr().err
