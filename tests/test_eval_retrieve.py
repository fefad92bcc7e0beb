import json

import torch

from helpers.eval_stub import StubModel, make_folder
from reclf.evaluate.loading import wrap_model
from reclf.evaluate.tasks.retrieve import RetrieveConfig, run_retrieve


def test_retrieve_end_to_end(tmp_path):
    torch.manual_seed(0)
    data = make_folder(tmp_path / "data", n=12)
    cfg = RetrieveConfig(precision_ks=[5, 10], n_boot=30, chunk=5)
    run_retrieve(wrap_model(StubModel()), data, tmp_path / "out", cfg)
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    m = saved["metrics"]
    for mode in ("global", "method"):
        for d in ("i2t", "t2i"):
            r1, r5, r10 = (m[f"{mode}/{d}/R@{k}"]["value"] for k in (1, 5, 10))
            assert 0 <= r1 <= r5 <= r10 <= 1  # recall grows with k
            assert 0 <= m[f"{mode}/{d}/P@5"]["value"] <= 1
            assert m[f"{mode}/{d}/median_rank"]["value"] >= 1
    # duplicates: "no acute findings." (studies 3, 7, 11) and "there is a right atelectasis." (0, 10)
    assert saved["extra"]["n_instances"] == 12 - 2 - 1
    assert 0 < m["chance/R@1"]["value"] < m["chance/R@10"]["value"] <= 1


def _tiny(method: str = "gloria"):
    from reclf.methods import create_model

    torch.manual_seed(0)
    return create_model(method, image_encoder={"name": "cnn-small", "image_size": 64},
                        text_encoder={"name": "bert-tiny", "max_tokens": 32})


def test_fused_retrieval_is_identical_for_every_chunk_size(tmp_path):
    """Issue 10 §3: the fused (method) score used to be standardised per chunk, so R@1 moved with --chunk."""
    data = make_folder(tmp_path / "data", n=12)
    loaded = wrap_model(_tiny("gloria"))
    runs = [run_retrieve(loaded, data, None, RetrieveConfig(modes=["method"], chunk=c, n_boot=5)).metrics
            for c in (1, 7, 12)]
    for other in runs[1:]:
        assert {k: v.value for k, v in other.items()} == {k: v.value for k, v in runs[0].items()}


def test_retrieval_reads_the_training_sections(tmp_path):
    """Retrieval scores findings + impression as the training dataset builds them, never the raw report."""

    from reclf.data.datasets import StudyDataset
    from reclf.data.studies import read_studies, write_studies
    from reclf.data.transforms import build_transform

    data = make_folder(tmp_path / "data", n=12)
    df = read_studies(data)
    df["impression"] = ["normal heart size." if i % 2 else "" for i in range(len(df))]
    df["report"] = [f"EXAMINATION: chest pa. INDICATION: cough. FINDINGS: {f} IMPRESSION: {m}"
                    for f, m in zip(df["findings"], df["impression"])]
    write_studies(df, data)

    class Recorder(StubModel):
        seen: list[str] = []

        def encode_text(self, reports):
            Recorder.seen += list(reports)
            return super().encode_text(reports)

    run_retrieve(wrap_model(Recorder()), data, None, RetrieveConfig(modes=["global"], n_boot=5))
    train_texts = StudyDataset(read_studies(data), data, build_transform(64, train=False)).reports
    assert Recorder.seen == train_texts
    assert not any("EXAMINATION" in t or "INDICATION" in t for t in Recorder.seen)
