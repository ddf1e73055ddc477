"""The results table: the publication's numbers beside the measured ones, and the document it lands in."""

import pytest

from benchmarks import results_table
from semseg.reporting.published import published


def row(sparsity, miou, parameters, paper):
    return dict(sparsity=sparsity, mIoU=miou, mAcc=miou + 0.1, parameters=parameters, macs=2.5e9, latency=0.0123,
                seconds=600.0, crop="180x240", published=paper)  # fmt: skip


def test_camvid_rows_quote_the_publication_beside_the_measured_numbers():
    assert published("camvid", "segnet_cpu", 0.75) == (50.10, 59.79)  # the CPU recipe reproduces SegNet's rows
    assert published("camvid", "segnet", 0) == (55.49, 65.44) and published("shapes", "segnet", 0) is None
    rows = [row(0.0, 0.4, 1000, published("camvid", "segnet_cpu", 0.0)), row(0.75, 0.3, 100, (50.10, 59.79))]
    table = results_table.markdown(
        "camvid", "segnet_cpu", rows, "python benchmarks/results_table.py camvid", 61, "here"
    )
    lines = table.splitlines()
    assert lines[0].startswith("| sparsity | ACoSP-N (1/(1-s)) | mIoU | mAcc | publication mIoU / mAcc | parameters")
    assert lines[2] == "| 0 | 1 | 40.00 | 50.00 | 55.49 / 65.44 | 1,000 | 1.00 | 2.500 | 12.3 ms | 10.0 min |"
    assert lines[3].startswith("| 0.75 | 4 | 30.00 | 40.00 | 50.10 / 59.79 | 100 | 10.00 |")
    assert "in 61 minutes" in table and "`sh tool/train.sh camvid segnet_cpu[_S]`" in table
    assert "the 233 test images" in table and "at 180x240" in table and "quoted from it" in table


def test_runs_scored_also_the_publications_camvid_way_get_that_column_beside_the_usual_one():
    rows = [{**row(0.0, 0.4, 1000, (55.49, 65.44)), "void_mIoU": 0.35}, row(0.75, 0.3, 100, (50.10, 59.79))]
    lines = results_table.markdown("camvid", "segnet_cpu", rows, "command", None, "here").splitlines()
    assert lines[0].startswith("| sparsity | ACoSP-N (1/(1-s)) | mIoU | mAcc | mIoU, void as last class | publication")
    assert lines[2].startswith("| 0 | 1 | 40.00 | 50.00 | 35.00 | 55.49 / 65.44 |")
    assert lines[3].startswith("| 0.75 | 4 | 30.00 | 40.00 | n/a | 50.10 / 59.79 |")
    assert "void pixels count as ground truth of the last class" in lines[-1]


def test_the_table_replaces_only_what_lies_between_its_dataset_markers(tmp_path):
    document = tmp_path / "README.md"
    document.write_text(
        "a\n<!-- camvid-table:start -->\nold\n<!-- camvid-table:end -->\nb\n<!-- shapes-table:start -->\n"
    )
    results_table.write_table("camvid", document, "| new |")
    assert document.read_text() == "a\n<!-- camvid-table:start -->\n| new |\n<!-- camvid-table:end -->\nb\n" + (
        "<!-- shapes-table:start -->\n"
    )
    with pytest.raises(ValueError, match="the markers <!-- voc2012-table:start -->"):
        results_table.write_table("voc2012", document, "| new |")


def test_a_dataset_without_a_default_recipe_asks_for_one(capsys):
    with pytest.raises(SystemExit):
        results_table.main(["ade20k"])
    assert "--network" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        results_table.main(["camvid", "--network", "unet"])
    assert "no config config/camvid/camvid_unet.yaml" in capsys.readouterr().err
