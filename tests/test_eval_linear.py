import json

import numpy as np
import pandas as pd
import torch

from helpers.eval_stub import StubModel, make_folder
from reclf.evaluate.common import patient_subset
from reclf.evaluate.loading import wrap_model
from reclf.evaluate.tasks.linear import LinearConfig, run_linear


def test_patient_subsets_are_patient_level_and_seeded():
    df = pd.DataFrame({"patient_id": [f"p{i // 3}" for i in range(300)]})  # 100 patients x 3 images
    a = patient_subset(df, 0.1, seed=0)
    assert len(a) == 30  # 10 patients, all their images
    chosen = set(df.iloc[a]["patient_id"])
    assert len(chosen) == 10
    assert set(df.index[df["patient_id"].isin(chosen)]) == set(a)  # no patient split
    assert np.array_equal(a, patient_subset(df, 0.1, seed=0))
    assert not np.array_equal(a, patient_subset(df, 0.1, seed=1))
    assert len(patient_subset(df, 0.001, seed=0)) == 3  # at least one patient
    assert len(patient_subset(df, 1.0, seed=5)) == 300


def test_linear_end_to_end_caches_features(tmp_path):
    torch.manual_seed(0)
    data = make_folder(tmp_path / "data", n=32)
    cfg = LinearConfig(fractions=[0.5, 1.0], seeds=[0, 1, 2], max_steps=30, n_boot=50,
                       cache_dir=str(tmp_path / "cache"))
    run_linear(wrap_model(StubModel()), data, tmp_path / "out", cfg)
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["config"]["target_kind"] == "labels"
    m = saved["metrics"]["100%/auroc"]
    assert m["seeds"] == 3 and m["std"] is not None and 0 <= m["value"] <= 1
    assert saved["seeds"] == [0, 1, 2]
    runs = saved["extra"]["runs"]
    assert runs["0.5/0"]["train_rows"] < runs["1/0"]["train_rows"]


def test_linear_multiclass_target(tmp_path):
    torch.manual_seed(0)
    data = make_folder(tmp_path / "data", n=20)
    loaded = wrap_model(StubModel())
    loaded.sha256 = "stub-hash"  # enables the feature cache
    cfg = LinearConfig(fractions=[1.0], seeds=[0], target="class", max_steps=20, n_boot=20,
                       cache_dir=str(tmp_path / "cache"))
    res = run_linear(loaded, data, None, cfg)
    assert "100%/accuracy" in res.metrics and "100%/macro_f1" in res.metrics
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 1
    res2 = run_linear(loaded, data, None, cfg)  # from the cache: same numbers
    assert res2.metrics["100%/accuracy"].value == res.metrics["100%/accuracy"].value


def test_label_set_uncertain_policy_and_mgca_recipe(tmp_path):
    from reclf.evaluate.common import COMPETITION_LABELS, label_targets
    from reclf.evaluate.loading import wrap_model

    df = pd.DataFrame({"Atelectasis": [1.0, -1.0, np.nan], "Cardiomegaly": [-1.0, 0.0, 1.0]})
    labs = ["Atelectasis", "Cardiomegaly"]
    assert np.isnan(label_targets(df, labs, "ignore")[1, 0]) and label_targets(df, labs, "ignore")[2, 0] == 0
    assert label_targets(df, labs, "ones")[1, 0] == 1 and label_targets(df, labs, "zeros")[0, 1] == 0
    g = label_targets(df, labs, "gloria")
    assert g[1, 0] == 1 and g[0, 1] == 0  # U-Ones for Atelectasis, U-Zeros for Cardiomegaly
    torch.manual_seed(0)
    data = make_folder(tmp_path / "data", n=32)
    studies = pd.read_csv(data / "studies.csv")
    studies["source"] = "chexpert"
    studies.to_csv(data / "studies.csv", index=False)
    cfg = LinearConfig(fractions=[1.0], seeds=[0], recipe="mgca", epochs=3, n_boot=20, uncertain="gloria")
    res = run_linear(wrap_model(StubModel()), data, tmp_path / "out", cfg)
    saved = json.loads((tmp_path / "out" / "results.json").read_text())["config"]
    assert saved["recipe"] == "mgca" and saved["label_set"] == "competition" and saved["uncertain_policy"] == "gloria"
    assert set(saved["targets"]) <= set(COMPETITION_LABELS) and 0 <= res.metrics["100%/auroc"].value <= 1
    cfg_all = LinearConfig(fractions=[1.0], seeds=[0], max_steps=10, n_boot=20, label_set="all")
    assert set(run_linear(wrap_model(StubModel()), data, None, cfg_all).config["targets"]) - set(COMPETITION_LABELS)
