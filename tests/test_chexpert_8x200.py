"""CheXpert 8x200: exclusive positives, seeded draws, patients kept out of training, query text written."""

import pandas as pd

from reclf.data.sources import prepare
from reclf.data.sources.chexpert_8x200 import RETRIEVAL_CLASSES, build_retrieval, query_sentences
from reclf.data.sources.common import DropLog, PrepareOptions
from reclf.data.studies import CHEXPERT_LABELS, read_studies
from test_prepare_chexpert import _row, _write


def _frame(n_per=6):
    rows = []
    for ci, c in enumerate(RETRIEVAL_CLASSES):
        for i in range(n_per):
            labels = dict.fromkeys(CHEXPERT_LABELS, float("nan")) | {c: 1.0, "Support Devices": 1.0}
            if i == 0:  # a second finding positive: not exclusive
                labels["Lung Opacity" if c != "Lung Opacity" else "Edema"] = 1.0
            if i == 1:  # another finding uncertain: not exclusive
                labels["Consolidation"] = -1.0
            rows.append({"study_id": f"s{ci}_{i}", "patient_id": f"p{ci}_{i}", **labels})
    return pd.DataFrame(rows)


def test_exclusive_seeded_draws():
    df = _frame()
    a = build_retrieval(df, 3, seed=0, drops=DropLog())
    b = build_retrieval(df, 3, seed=0, drops=DropLog())
    c = build_retrieval(df, 3, seed=1, drops=DropLog())
    assert a["study_id"].tolist() == b["study_id"].tolist() and a["study_id"].tolist() != c["study_id"].tolist()
    assert a.groupby("class").size().to_dict() == dict.fromkeys(RETRIEVAL_CLASSES, 3)
    assert not a["study_id"].str.endswith(("_0", "_1")).any()  # non-exclusive rows never drawn
    queries, version = query_sentences()
    assert (a["report"] == a["class"].map(queries)).all() and version
    assert (a["split"] == "test").all()


def test_prepare_writes_8x200_and_excludes_patients(tmp_path):
    base = tmp_path / "CheXpert-v1.0-small"
    base.mkdir()
    pre = "CheXpert-v1.0-small/train"
    rows = []
    for k, c in enumerate(RETRIEVAL_CLASSES * 2):
        p = f"{pre}/patient{k:05d}/study1"
        rows += [_row(f"{p}/view1_frontal.jpg", **{c.replace(" ", "_"): "1.0"}),
                 _row(f"{p}/view2_lateral.jpg", frontal=False)]
    rows.append(_row(f"{pre}/patient00099/study1/view1_frontal.jpg", Edema="1.0", Fracture="1.0"))
    _write(base / "train.csv", rows)
    out = tmp_path / "out"
    report = prepare("chexpert", PrepareOptions(root=tmp_path, out=out, size=32, progress=False, metadata_only=True,
                                                extra={"zeroshot_per_class": 0, "retrieval_per_class": 1}))
    rt = read_studies(out / "retrieval_8x200")
    assert sorted(rt["class"]) == sorted(RETRIEVAL_CLASSES) and rt["report"].str.len().gt(0).all()
    main = read_studies(out)
    assert not main["patient_id"].isin(rt["patient_id"]).any()  # laterals of those patients left too
    assert report["dropped"]["retrieval_patient"]["count"] == 16
    assert len((out / "retrieval_8x200.txt").read_text().splitlines()) == 8
