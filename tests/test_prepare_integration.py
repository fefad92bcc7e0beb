"""Issue #6 end to end: tables written by `reclf prepare` feed `reclf pretrain` and `reclf evaluate` as they are.

Each data set is built as a tiny tree in its distributed layout, prepared through the CLI at 64 px, then used
without any conversion: MIMIC-CXR, IU X-ray and pairs-csv for pretraining (2 ConVIRT steps, exported model);
CheXpert 5x200 for zero-shot, RSNA and COVIDx (multi-class) for the linear probe, SIIM and RSNA for segmentation.
"""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from helpers.image_files import gradient, write_dicom, write_jpeg, write_png
from reclf.cli import main
from reclf.data.sources.chexpert import ZEROSHOT_CLASSES
from reclf.data.sources.masks import rle_encode
from reclf.data.studies import CHEXPERT_LABELS, read_studies

CONFIG = "demo_convirt"  # a shipped preset, by name
REPORT = "FINDINGS: The lungs are clear. Heart size is normal. IMPRESSION: No acute disease."


@pytest.fixture(autouse=True)
def _tracebacks(monkeypatch):
    """Let `reclf.cli.main` raise instead of turning an error into exit code 1 (the failure names the cause)."""
    monkeypatch.setenv("RECLF_TRACEBACK", "1")


def _prepare(source: str, root: Path, out: Path, *extra: str) -> dict:
    argv = ["prepare", source, "--root", str(root), "--out", str(out), "--size", "64", "--no-progress", *extra]
    assert main(argv) == 0
    return json.loads((out / "prepare_report.json").read_text())


# ------------------------------------------------------------------------------------------ tiny trees


def _mimic_tree(root: Path) -> list[str]:
    meta, split, labels = [], [], []
    splits = ["train"] * 8 + ["validate"] * 2 + ["test"] * 2
    for i, sp in enumerate(splits):
        subject, study, dicom = f"1000{i:04d}", f"5{i:07d}", f"dcm{i}"
        meta.append((dicom, subject, study, "PA" if i % 2 else "AP"))
        split.append((dicom, study, subject, sp))
        labels.append((subject, study, *["1.0" if j == i % 14 else "" for j in range(14)]))
        folder = root / "files" / f"p{subject[:2]}" / f"p{subject}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"s{study}.txt").write_text(f" FINAL REPORT\n INDICATION: cough {i}\n {REPORT}\n")
        write_jpeg(folder / f"s{study}" / f"{dicom}.jpg", gradient(80, 72, seed=i))
    with gzip.open(root / "mimic-cxr-2.0.0-metadata.csv.gz", "wt") as fh:
        pd.DataFrame(meta, columns=["dicom_id", "subject_id", "study_id", "ViewPosition"]).to_csv(fh, index=False)
    pd.DataFrame(split, columns=["dicom_id", "study_id", "subject_id", "split"]).to_csv(
        root / "mimic-cxr-2.0.0-split.csv", index=False
    )
    pd.DataFrame(labels, columns=["subject_id", "study_id", *CHEXPERT_LABELS]).to_csv(
        root / "mimic-cxr-2.0.0-chexpert.csv", index=False
    )
    return []


def _iu_tree(root: Path) -> list[str]:
    (root / "ecgen-radiology").mkdir(parents=True)
    for n in range(1, 15):
        image = f"CXR{n}_1_IM-{n:04d}-1001"
        xml = (
            f'<?xml version="1.0" encoding="utf-8"?><eCitation><uId id="CXR{n}"/><MedlineCitation><Article><Abstract>'
            f'<AbstractText Label="FINDINGS">Heart size normal {n}. Lungs are clear.</AbstractText>'
            f'<AbstractText Label="IMPRESSION">No acute disease.</AbstractText></Abstract></Article>'
            f"</MedlineCitation><MeSH><major>{'normal' if n % 2 else 'Cardiomegaly/mild'}</major></MeSH>"
            f'<parentImage id="{image}"><url>/x/{image}.jpg</url></parentImage></eCitation>'
        )
        (root / "ecgen-radiology" / f"{n}.xml").write_text(xml)
        write_png(root / "NLMCXR_png" / f"{image}.png", gradient(70, 80, seed=n))
    return []


def _pairs_tree(root: Path) -> list[str]:
    root.mkdir(parents=True)
    rows = []
    for i in range(12):
        text = REPORT if i % 2 else f"Small left pleural effusion {i}. No pneumothorax."  # no headers: findings
        rows.append((f"img/{i}.png", text, f"pt{i}"))
        write_png(root / "img" / f"{i}.png", gradient(60, 50, seed=i))
    pd.DataFrame(rows, columns=["path", "text", "patient"]).to_csv(root / "pairs.csv", index=False)
    return ["--image-column", "path", "--report-column", "text", "--patient-column", "patient"]


PRETRAIN_SOURCES = {"mimic-cxr": _mimic_tree, "iu-xray": _iu_tree, "pairs-csv": _pairs_tree}  # -> extra CLI args


# ------------------------------------------------------------------------------------------ pretraining


@pytest.mark.parametrize("source", list(PRETRAIN_SOURCES))
def test_prepared_table_feeds_pretrain(tmp_path, source):
    from reclf.methods import from_pretrained

    root, out, runs = tmp_path / "raw", tmp_path / "prepared", tmp_path / "runs"
    extra = PRETRAIN_SOURCES[source](root)
    report = _prepare(source, root, out, *extra)
    assert report["dropped_total"] == 0 and report["splits"]["train"] >= 4, report["splits"]
    argv = [
        "pretrain",
        str(CONFIG),
        "name=prepared",
        f"data.root={out}",
        f"train.runs_dir={runs}",
        "train.max_steps=2",
        "train.max_epochs=1",
        "data.batch_size=4",
        "image_encoder.image_size=64",
        "text_encoder.max_tokens=32",
        "train.progress=false",
        "train.log_every_n_steps=1",
    ]
    assert main(argv) == 0
    (run,) = (runs / "prepared").iterdir()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 2, summary
    assert summary["bad_rows"]["pre_scan"]["train"]["bad"] == 0
    assert summary["bad_rows"]["load_failures_train_total"] == 0
    model = from_pretrained(run / "export")
    assert model.encode_image(torch.zeros(1, 1, 64, 64)).global_.isfinite().all()


# ------------------------------------------------------------------------------------------ evaluation


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from reclf.methods import create_model

    torch.manual_seed(0)
    model = create_model("gloria", image_encoder={"name": "cnn-small", "image_size": 64},
                         text_encoder={"name": "bert-tiny"})
    folder = tmp_path_factory.mktemp("model") / "gloria"
    model.save_pretrained(folder)
    return folder


def _evaluate(task: str, model: Path, data: Path, out: Path, *opts: str) -> dict:
    argv = ["evaluate", task, "--model", str(model), "--data", str(data), "--out", str(out), "--n-boot", "10",
            "--cache-dir", "", "--batch-size", "16", *opts]
    assert main(argv) == 0
    result = json.loads((out / "results.json").read_text())
    assert result["metrics"] and result["data"]["bad_rows"] == 0
    values = {k: m["value"] for k, m in result["metrics"].items()}
    assert all(math.isfinite(v) for v in values.values()), values
    return result


def _chexpert_tree(root: Path) -> None:
    base = root / "CheXpert-v1.0-small"
    header = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_LABELS]
    rows, n = [], 0

    def add(part: str, positive: str | None) -> None:
        nonlocal n
        n += 1
        rel = f"{part}/patient{n:05d}/study1/view1_frontal.jpg"
        labels = ["1.0" if c == positive else ("0.0" if c in ZEROSHOT_CLASSES else "") for c in CHEXPERT_LABELS]
        rows.append((f"CheXpert-v1.0-small/{rel}", "F", "60", "Frontal", "PA", *labels))
        write_jpeg(base / rel, gradient(72, 64, seed=n))

    for cls in ZEROSHOT_CLASSES:
        for _ in range(3):
            add("train", cls)
    for _ in range(4):
        add("train", "No Finding")
    train = rows[:]
    rows.clear()
    add("valid", "No Finding")
    pd.DataFrame(train, columns=header).to_csv(base / "train.csv", index=False)
    pd.DataFrame(rows, columns=header).to_csv(base / "valid.csv", index=False)


def test_chexpert_5x200_feeds_zeroshot(tmp_path, tiny_model):
    root, out = tmp_path / "raw", tmp_path / "prepared"
    _chexpert_tree(root)
    report = _prepare("chexpert", root / "CheXpert-v1.0-small", out, "--zeroshot-per-class", "2",
                      "--retrieval-per-class", "1")
    assert report["dropped"]["zeroshot_patient"]["count"] == 10
    # 8x200 (1 per class here) from what is left: the classes that still have an exclusive positive
    rt = read_studies(out / "retrieval_8x200")
    assert sorted(rt["class"]) == ["Atelectasis", "Cardiomegaly", "Edema", "No Finding", "Pleural Effusion"]
    assert report["dropped"]["retrieval_patient"]["count"] == 5
    ret = _evaluate("retrieve", tiny_model, out / "retrieval_8x200", tmp_path / "rt", "--modes", "global")
    assert ret["data"]["used"] == 5 and {"global/t2i/P@5", "global/i2t/R@1"} <= set(ret["metrics"])
    zs = read_studies(out / "zeroshot_5x200")
    assert zs["class"].value_counts().to_dict() == {c: 2 for c in ZEROSHOT_CLASSES}
    result = _evaluate("zeroshot", tiny_model, out / "zeroshot_5x200", tmp_path / "zs", "--prompts", "chexpert",
                       "--prompts-per-class", "2")
    assert result["extra"]["classes"] == sorted(ZEROSHOT_CLASSES) and result["data"]["used"] == 10
    assert {"global/accuracy", "local/accuracy", "fused/accuracy", "method/macro_f1"} <= set(result["metrics"])


def _rsna_tree(root: Path, n: int = 30) -> None:
    (root / "stage_2_train_images").mkdir(parents=True)
    lines = ["patientId,x,y,width,height,Target"]
    for i in range(n):
        pid = f"rsna{i:03d}"
        lines.append(f"{pid},8,12,24,20,1" if i % 2 == 0 else f"{pid},,,,,0")
        write_dicom(root / "stage_2_train_images" / f"{pid}.dcm", gradient(64, 64, seed=i), bits=8, view="PA")
    (root / "stage_2_train_labels.csv").write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def rsna(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("rsna")
    _rsna_tree(tmp / "raw")
    _prepare("rsna", tmp / "raw", tmp / "prepared")
    return tmp / "prepared"


def _both_classes(df: pd.DataFrame, column: str, splits=("train", "test")) -> None:
    for s in splits:
        assert df.loc[df["split"] == s, column].nunique() == 2, f"{s} split lacks a class of {column}"


def test_rsna_feeds_linear_probe(tmp_path, tiny_model, rsna):
    _both_classes(read_studies(rsna), "Pneumonia")
    result = _evaluate("linear", tiny_model, rsna, tmp_path / "lin", "--fractions", "100", "--seeds", "0",
                       "--max-steps", "10")
    assert result["config"]["target_kind"] == "labels" and "Pneumonia" in result["config"]["targets"]
    assert "100%/auroc" in result["metrics"]


def test_rsna_feeds_segmentation(tmp_path, tiny_model, rsna):
    df = read_studies(rsna)
    assert (df["mask_path"].str.len() > 0).all()  # negatives have an (empty) mask too
    _both_classes(df, "Pneumonia")
    result = _evaluate("segment", tiny_model, rsna, tmp_path / "seg", "--fractions", "100", "--seeds", "0",
                       "--epochs", "1", "--min-steps", "2")
    assert {"100%/dice", "100%/iou", "100%/dice_pos", "100%/iou_pos"} <= set(result["metrics"])


def _siim_tree(root: Path, n: int = 20) -> None:
    root.mkdir(parents=True)
    ramp = np.tile(np.linspace(0.0, 1.0, 1024, dtype=np.float32), (1024, 1))  # SIIM images are 1024 x 1024
    lines = ["ImageId, EncodedPixels"]
    for i in range(n):
        image_id = f"1.2.276.0.7230010.3.1.4.{i}"
        mask = np.zeros((1024, 1024), bool)
        if i % 3:  # two thirds positive
            mask[300:600, 200 + 10 * i : 500 + 10 * i] = True
        lines.append(f"{image_id},{rle_encode(mask)}")
        write_png(root / "png_images" / f"{image_id}.png", ramp)
    (root / "train-rle.csv").write_text("\n".join(lines) + "\n")


def test_siim_feeds_segmentation(tmp_path, tiny_model):
    root, out = tmp_path / "raw", tmp_path / "prepared"
    _siim_tree(root)
    report = _prepare("siim", root, out)
    assert report["dropped_total"] == 0
    df = read_studies(out)
    _both_classes(df, "Pneumothorax", splits=("train",))
    assert (df.loc[df["split"] == "test", "Pneumothorax"] == 1).any()
    result = _evaluate("segment", tiny_model, out, tmp_path / "seg", "--fractions", "100", "--seeds", "0",
                       "--epochs", "1", "--min-steps", "2")
    assert result["config"]["test_counts"]["all"]["test_positives"] > 0


def _covidx_tree(root: Path) -> None:
    classes = ["COVID-19", "normal", "pneumonia"]
    root.mkdir(parents=True)
    for part, n in (("train", 30), ("test", 9)):
        lines = []
        for i in range(n):
            name = f"{part}{i}.png"
            lines.append(f"{part}P{i} {name} {classes[i % 3]} cohen")
            write_png(root / part / name, gradient(48, 48, seed=i))
        (root / f"{part}_COVIDx9A.txt").write_text("\n".join(lines) + "\n")


def test_covidx_feeds_multiclass_linear_probe(tmp_path, tiny_model):
    root, out = tmp_path / "raw", tmp_path / "prepared"
    _covidx_tree(root)
    report = _prepare("covidx", root, out)
    assert report["release"] == "COVIDx9A" and report["dropped_total"] == 0
    result = _evaluate("linear", tiny_model, out, tmp_path / "lin", "--target", "class", "--fractions", "100",
                       "--seeds", "0", "--max-steps", "10")
    assert result["config"]["target_kind"] == "class"
    assert result["config"]["targets"] == ["COVID-19", "normal", "pneumonia"]
    assert {"100%/accuracy", "100%/macro_f1"} <= set(result["metrics"])
