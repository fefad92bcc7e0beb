"""The canonical study table: round trip, validation messages, patient-level splits."""

import numpy as np
import pandas as pd
import pytest

from reclf.data.studies import (
    CHEXPERT_LABELS,
    StudyTableError,
    patient_split,
    read_studies,
    write_studies,
)


def _table(n=6):
    rows = []
    for i in range(n):
        row = {
            "study_id": f"s{i}",
            "patient_id": f"p{i // 2}",
            "image_path": f"images/s{i}.png",
            "view": "PA",
            "report": "FINDINGS: clear. IMPRESSION: normal.",
            "findings": "clear.",
            "impression": "normal.",
            "split": "train" if i < 4 else "test",
        }
        row.update({name: np.nan for name in CHEXPERT_LABELS})
        row["No Finding"] = 1.0
        row["Pneumothorax"] = -1.0 if i == 1 else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def test_round_trip_and_split_lists(tmp_path):
    write_studies(_table(), tmp_path)
    df = read_studies(tmp_path)
    assert list(df["study_id"]) == [f"s{i}" for i in range(6)]
    assert df.loc[1, "Pneumothorax"] == -1.0 and np.isnan(df.loc[0, "Pneumothorax"])
    assert (tmp_path / "splits" / "train.txt").read_text().split() == ["s0", "s1", "s2", "s3"]
    assert (tmp_path / "splits" / "valid.txt").read_text() == ""


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda df: df.drop(columns=["report"]), r"missing column\(s\) \['report'\]"),
        (lambda df: df.assign(split=["train", "train", "dev", "test", "test", "test"]), "row 2 has split 'dev'"),
        (lambda df: df.assign(study_id=["a", "b", "c", "a", "e", "f"]), "duplicate study_id 'a' at row 3"),
        (lambda df: df.assign(view=["PA"] * 5 + ["sideways"]), "row 5 has view 'sideways'"),
    ],
)
def test_broken_tables_are_named(tmp_path, edit, message):
    df = edit(_table())
    df.to_csv(tmp_path / "studies.csv", index=False)
    with pytest.raises(StudyTableError, match=message):
        read_studies(tmp_path)


def test_bad_label_value_names_column_and_row(tmp_path):
    df = _table()
    df["Edema"] = df["Edema"].astype(object)
    df.loc[3, "Edema"] = "yes"
    df.to_csv(tmp_path / "studies.csv", index=False)
    with pytest.raises(StudyTableError, match=r"'Edema' row 3"):
        read_studies(tmp_path)
    df.loc[3, "Edema"] = 2
    df.to_csv(tmp_path / "studies.csv", index=False)
    with pytest.raises(StudyTableError, match=r"'Edema' row 3 holds 2"):
        read_studies(tmp_path)


def test_no_table_is_a_clear_error(tmp_path):
    with pytest.raises(StudyTableError, match="holds no study table"):
        read_studies(tmp_path)


def test_patient_split_is_seeded_and_disjoint():
    patients = [f"p{i}" for i in range(100)]
    a = patient_split(patients, seed=3)
    assert a == patient_split(list(reversed(patients)), seed=3)
    assert a != patient_split(patients, seed=4)
    counts = pd.Series(a).value_counts()
    assert counts["train"] == 70 and counts["valid"] == 15 and counts["test"] == 15
