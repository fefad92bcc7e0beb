"""CheXpert: a small tree (frontal filter, uncertain policy, seeded 5x200 with patient exclusion) and the real
train.csv parsed in full."""

import gzip
import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers.image_files import gradient, write_jpeg
from reclf.data.sources import prepare
from reclf.data.sources.chexpert import ZEROSHOT_CLASSES, build_zeroshot, parse, parse_policy
from reclf.data.sources.chexpert_8x200 import RETRIEVAL_CLASSES
from reclf.data.sources.common import DropLog, PrepareOptions, SourceLayoutError
from reclf.data.studies import CHEXPERT_LABELS, read_studies

HEADER = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_LABELS]


def xrv_data() -> Path:
    spec = importlib.util.find_spec("torchxrayvision")
    assert spec is not None and spec.submodule_search_locations, "torchxrayvision missing: run `make setup`"
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def _row(path, frontal=True, ap="PA", **labels):
    vals = {c: "" for c in CHEXPERT_LABELS}
    vals.update({k.replace("_", " "): str(v) for k, v in labels.items()})
    return [path, "F", "50", "Frontal" if frontal else "Lateral", ap if frontal else "", *vals.values()]


def _write(path: Path, rows):
    pd.DataFrame(rows, columns=HEADER).to_csv(path, index=False)


def test_small_tree(tmp_path):
    base = tmp_path / "CheXpert-v1.0-small"
    pre = "CheXpert-v1.0-small/train"
    rows = [
        _row(f"{pre}/patient00001/study1/view1_frontal.jpg", Atelectasis="1.0", Fracture="-1.0", Cardiomegaly="0.0"),
        _row(f"{pre}/patient00001/study1/view2_lateral.jpg", frontal=False),
        _row(f"{pre}/patient00002/study1/view1_frontal.jpg", ap="AP", Edema="1.0", Pleural_Effusion="0.0"),
        _row(f"{pre}/patient00003/study1/view1_frontal.jpg", Edema="1.0", Atelectasis="-1.0"),  # uncertain other
        _row(f"{pre}/patient00004/study1/view1_frontal.jpg", No_Finding="1.0"),
        _row(f"{pre}/patient00005/study1/view1_frontal.jpg", No_Finding="1.0"),  # image missing
        _row(f"{pre}/patient00006/study1/view1_frontal.jpg", No_Finding="1.0"),  # corrupt JPEG
        _row("not/a/chexpert/path.jpg"),
        _row(f"{pre}/patient00007/study1/view1_frontal.jpg", Edema="2.0"),  # bad label
    ]
    base.mkdir()
    _write(base / "train.csv", rows)
    _write(base / "valid.csv", [_row("CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg", Edema="1.0")])
    for p in [
        "train/patient00001/study1/view1_frontal",
        "train/patient00001/study1/view2_lateral",
        "train/patient00002/study1/view1_frontal",
        "train/patient00003/study1/view1_frontal",
        "train/patient00004/study1/view1_frontal",
        "valid/patient64541/study1/view1_frontal",
    ]:
        write_jpeg(base / f"{p}.jpg", gradient(80, 70))
    (base / "train/patient00006/study1").mkdir(parents=True)
    (base / "train/patient00006/study1/view1_frontal.jpg").write_bytes(b"\xff\xd8\xff garbage")
    out = tmp_path / "out"
    report = prepare(
        "chexpert",
        PrepareOptions(
            root=tmp_path, out=out, size=32, progress=False, extra={"uncertain": "gloria", "zeroshot_per_class": 1,
                                                                  "retrieval_per_class": 0}
        ),
    )
    df = read_studies(out).set_index("study_id")
    zs = read_studies(out / "zeroshot_5x200").set_index("study_id")
    # 5x200 (1 per class here): only patient00001 (Atelectasis) and patient00002 (Edema) qualify.
    assert dict(zip(zs.index, zs["class"])) == {
        "train/patient00001/study1/view1_frontal": "Atelectasis",
        "train/patient00002/study1/view1_frontal": "Edema",
    }
    assert (zs["split"] == "test").all() and (out / "zeroshot_5x200" / zs["image_path"].iloc[0]).is_file()
    assert (out / "zeroshot_5x200.txt").read_text().splitlines()[0].split("\t")[1] in ZEROSHOT_CLASSES
    assert not df["patient_id"].isin(zs["patient_id"]).any()  # whole patients excluded, lateral included
    d = report["dropped"]
    assert d["zeroshot_patient"]["count"] == 3 and d["malformed_csv_row"]["count"] == 2
    assert d["missing_image"]["count"] == 1 and d["unreadable_image"]["count"] == 1
    assert sorted(df.index) == [
        "train/patient00003/study1/view1_frontal",
        "train/patient00004/study1/view1_frontal",
        "valid/patient64541/study1/view1_frontal",
    ]
    assert df.loc["valid/patient64541/study1/view1_frontal", "split"] == "test"
    assert set(df["split"]) <= {"train", "valid", "test"}
    assert df.loc["train/patient00004/study1/view1_frontal", "view"] == "PA"
    assert df.loc["train/patient00003/study1/view1_frontal", "Atelectasis"] == 1.0  # GLoRIA U-ones


def test_uncertain_policy_and_lateral(tmp_path):
    rows = [
        _row(
            f"CheXpert-v1.0/train/patient{i:05d}/study1/view1_frontal.jpg",
            Atelectasis="-1.0",
            Cardiomegaly="-1.0",
            Fracture="-1.0",
        )
        for i in range(1, 6)
    ]
    rows.append(_row("CheXpert-v1.0/train/patient00009/study1/view2_lateral.jpg", frontal=False))
    _write(tmp_path / "train.csv", rows)
    opts = dict(root=tmp_path, out=tmp_path / "o", metadata_only=True)
    t = parse(PrepareOptions(**opts, extra={"uncertain": "gloria", "zeroshot_per_class": 0}))
    assert (t.studies["Atelectasis"] == 1).all() and (t.studies["Cardiomegaly"] == 0).all()
    assert (t.studies["Fracture"] == -1).all() and len(t.studies) == 5
    assert t.drops.filters["view_lateral"].count == 1
    t = parse(PrepareOptions(**opts, extra={"views": "PA,AP,LATERAL", "uncertain": "Fracture=0"}))
    assert len(t.studies) == 6 and (t.studies["Fracture"].dropna() == 0).all()
    assert (t.studies["Atelectasis"].dropna() == -1).all()
    with pytest.raises(ValueError, match="LABEL"):
        parse_policy("Foo=1")


def test_layout_error(tmp_path):
    with pytest.raises(SourceLayoutError, match="train.csv"):
        parse(PrepareOptions(root=tmp_path, out=tmp_path / "o"))


def test_real_train_csv_in_full(tmp_path):
    src = xrv_data() / "chexpert_train.csv.gz"
    (tmp_path / "train.csv.gz").symlink_to(src)
    with gzip.open(src, "rt") as fh:
        raw = pd.read_csv(fh)
    frontal = raw[raw["Frontal/Lateral"] == "Frontal"]
    frontal_other = (raw["Frontal/Lateral"] == "Frontal") & ~raw["AP/PA"].isin(["PA", "AP"])  # LL/RL codes
    t = parse(PrepareOptions(root=tmp_path, out=tmp_path / "o", metadata_only=True, seed=0))
    assert t.rows_read == len(raw) == 223414 and "malformed_csv_row" not in t.drops.filters
    zs = t.extra_tables["zeroshot_5x200"]
    assert zs["class"].value_counts().to_dict() == {c: 200 for c in ZEROSHOT_CLASSES}
    assert zs["study_id"].is_unique
    for c in ZEROSHOT_CLASSES:  # the rule: that class 1, the other four 0 or blank
        sub = zs[zs["class"] == c]
        others = [o for o in ZEROSHOT_CLASSES if o != c]
        assert (sub[c] == 1).all() and sub[others].isin([0.0]).where(sub[others].notna(), True).all().all()
    main = t.studies
    assert not main["patient_id"].isin(set(zs["patient_id"])).any()
    patient = raw["Path"].str.extract(r"(patient\d+)")[0]
    excluded = patient.isin(set(zs["patient_id"]))
    assert t.drops.filters["zeroshot_patient"].count == int(excluded.sum())
    rt = t.extra_tables["retrieval_8x200"]  # CheXpert 8x200: 200 per class, disjoint patients, out of training
    assert rt["class"].value_counts().to_dict() == {c: 200 for c in RETRIEVAL_CLASSES}
    assert not rt["patient_id"].isin(set(zs["patient_id"])).any()
    assert not main["patient_id"].isin(rt["patient_id"]).any()
    in_rt = patient.isin(set(rt["patient_id"]))
    assert t.drops.filters["retrieval_patient"].count == int(in_rt.sum())
    excluded = excluded | in_rt
    pa_ap = (raw["Frontal/Lateral"] == "Frontal") & raw["AP/PA"].isin(["PA", "AP"])
    assert len(main) == int((~excluded & pa_ap).sum())
    assert t.drops.filters["view_unknown"].count == int((~excluded & frontal_other).sum()) > 0
    assert t.drops.filters["view_lateral"].count == int((~excluded & (raw["Frontal/Lateral"] == "Lateral")).sum())
    assert len(frontal) > len(main) and set(main["split"]) == {"train", "valid"}
    # Labels survive unchanged under the default "keep" policy.
    one = main.iloc[0]
    src_row = raw[raw["Path"].str.endswith(one["study_id"] + ".jpg")].iloc[0]
    assert np.allclose(
        one[list(CHEXPERT_LABELS)].astype(float), src_row[list(CHEXPERT_LABELS)].astype(float), equal_nan=True
    )


def test_zeroshot_draw_is_seeded():
    n = 50
    df = pd.DataFrame({"study_id": [f"s{i:03d}" for i in range(n)], "patient_id": [f"p{i}" for i in range(n)]})
    for c in ZEROSHOT_CLASSES:
        df[c] = np.nan
    df["Edema"] = 1.0
    a = build_zeroshot(df, 5, seed=0, drops=DropLog())
    b = build_zeroshot(df.sample(frac=1.0, random_state=1), 5, seed=0, drops=DropLog())  # row order irrelevant
    c = build_zeroshot(df, 5, seed=1, drops=DropLog())
    assert a["study_id"].tolist() == b["study_id"].tolist() != c["study_id"].tolist()
    log = DropLog()
    build_zeroshot(df, 200, seed=0, drops=log)
    assert (
        log.notes["zeroshot_5x200"]["Edema"] == {"candidates": 50, "drawn": 50} and "zeroshot_5x200_short" in log.notes
    )
