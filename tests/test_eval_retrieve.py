import json

import torch

from reclf.evaluate.loading import wrap_model
from reclf.evaluate.retrieve import RetrieveConfig, run_retrieve
from test_eval_stub import StubModel, make_folder


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
