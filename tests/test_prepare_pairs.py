"""pairs-csv and the `reclf prepare` command line (argument parsing, errors, resumed runs)."""

import argparse
import json

import pandas as pd
import pytest

from helpers.image_files import gradient, write_png
from reclf.data.sources import cli
from reclf.data.studies import read_studies


def _parser():
    p = argparse.ArgumentParser()
    cli.add_arguments(p)
    return p


def _tree(root):
    rows = [
        ("a.png", "FINDINGS: clear. IMPRESSION: normal.", "p1", "train"),
        ("b.png", "Heart is enlarged.", "p2", "validate"),
        ("c.png", "", "p3", "test"),  # empty report
        ("missing.png", "x", "p4", "train"),
        ("d.png", "ok", "p5", "holdout"),
    ]  # unknown split
    pd.DataFrame(rows, columns=["file", "text", "pid", "fold"]).to_csv(root / "pairs.csv", index=False)
    for f in ("a.png", "b.png", "c.png", "d.png"):
        write_png(root / f, gradient(40, 50))


def test_pairs_csv_through_cli(tmp_path, capsys):
    root, out = tmp_path / "data", tmp_path / "out"
    root.mkdir()
    _tree(root)
    argv = [
        "pairs-csv",
        "--root",
        str(root),
        "--out",
        str(out),
        "--size",
        "20",
        "--workers",
        "1",
        "--no-progress",
        "--image-column",
        "file",
        "--report-column",
        "text",
        "--patient-column",
        "pid",
        "--split-column",
        "fold",
    ]
    assert cli.run(_parser().parse_args(argv)) == 0
    df = read_studies(out).set_index("patient_id")
    assert sorted(df.index) == ["p1", "p2"]
    assert df.loc["p1", "impression"] == "normal." and df.loc["p2", "findings"] == "Heart is enlarged."
    assert df.loc["p2", "split"] == "valid"
    rep = json.loads((out / "prepare_report.json").read_text())
    assert {k: v["count"] for k, v in rep["dropped"].items()} == {
        "report_no_sections": 1,
        "unknown_split": 1,
        "missing_image": 1,
    }
    assert rep["arguments"]["image_column"] == "file" and rep["cache"]["written"] == 2
    # A second run reuses the cache.
    assert cli.run(_parser().parse_args(argv)) == 0
    assert json.loads((out / "prepare_report.json").read_text())["cache"] == {**rep["cache"], "written": 0, "reused": 2}
    assert "dropped" in capsys.readouterr().out


def test_cli_errors(tmp_path):
    args = _parser().parse_args(["siim", "--root", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    with pytest.raises(FileNotFoundError, match="not a folder"):
        cli.run(args)
    args = _parser().parse_args(["siim", "--root", str(tmp_path), "--out", str(tmp_path / "o")])
    with pytest.raises(FileNotFoundError, match="train-rle.csv"):
        cli.run(args)
    with pytest.raises(SystemExit):
        _parser().parse_args(["nosuch", "--root", "x", "--out", "y"])
