import json

import numpy as np
import torch

from helpers.eval_stub import StubModel, make_folder
from reclf.data.prompts import expand, load_prompts, sample_prompts
from reclf.evaluate.loading import wrap_model
from reclf.evaluate.tasks.zeroshot import ZeroShotConfig, class_scores, run_zeroshot


def test_prompt_combinations_and_sampling():
    prompts = expand({"severity": ["", "small"], "subtype": ["effusion"], "location": ["left", "right"]}, "t")
    assert prompts == ["effusion left", "effusion right", "small effusion left", "small effusion right"]
    assert sample_prompts(prompts, 2, seed=1) == sample_prompts(prompts, 2, seed=1)
    assert len(sample_prompts(prompts, 2, seed=1)) == 2
    ps = load_prompts("chexpert")
    assert len(ps.classes) == 5 and all(ps.classes.values()) and "Pneumothorax" in ps.binary


def test_class_scores_mean_and_max():
    s = torch.tensor([[0.1, 0.9, 0.3], [0.5, 0.2, 0.4]])
    owner = np.array([0, 0, 1])
    assert torch.allclose(class_scores(s, owner, 2, "max"), torch.tensor([[0.9, 0.3], [0.5, 0.4]]))
    assert torch.allclose(class_scores(s, owner, 2, "mean"), torch.tensor([[0.5, 0.3], [0.35, 0.4]]))


def test_zeroshot_end_to_end(tmp_path):
    torch.manual_seed(0)
    data = make_folder(tmp_path / "data", n=10)
    cfg = ZeroShotConfig(prompts="chexpert", prompts_per_class=3, binary=True, n_boot=50,
                         cache_dir=str(tmp_path / "cache"))
    res = run_zeroshot(wrap_model(StubModel()), data, tmp_path / "out", cfg)
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    for mode in ("global", "local", "fused", "method"):
        m = saved["metrics"][f"{mode}/accuracy"]
        assert 0.0 <= m["ci_low"] <= m["value"] <= m["ci_high"] <= 1.0
    assert saved["config"]["prompt_file"]["version"] == 2
    assert saved["data"]["used"] == 10
    assert np.asarray(res.extra["confusion"]["global"]).sum() == 10
    assert any(k.startswith("binary/global/") for k in saved["metrics"])


def test_auto_prompt_file_follows_the_table_source():
    from reclf.evaluate.tasks.zeroshot import pick_prompt_file

    classes = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"]
    assert pick_prompt_file("auto", classes, "synthcxr").name != pick_prompt_file("auto", classes, "chexpert").name
    assert "chexpert" in pick_prompt_file("auto", classes, "").name.lower()


def test_prompt_sampling_is_recorded_and_seeded(tmp_path):
    from reclf.data.prompts import load_prompts

    ps = load_prompts("chexpert")
    assert ps.version == 2 and len(ps.classes["Atelectasis"]) == 5 * 7 * 10  # severity x subtype x location
    torch.manual_seed(0)
    data = make_folder(tmp_path / "data", n=10)
    runs = []
    for seed in (0, 0, 1):
        cfg = ZeroShotConfig(prompts="chexpert", prompts_per_class=3, reduce="max", n_boot=20, seed=seed)
        runs.append(run_zeroshot(wrap_model(StubModel()), data, None, cfg))
    assert runs[0].extra["prompts"] == runs[1].extra["prompts"] != runs[2].extra["prompts"]
    assert all(len(v) == 3 for v in runs[0].extra["prompts"].values())
    assert runs[0].config["prompt_file_version"] == 2 and runs[0].config["reduce"] == "max"


def test_length_bias_is_the_rank_correlation_of_prompt_length_and_mean_score():
    import torch

    from reclf.evaluate.tasks.zeroshot import length_bias

    prompts = ["a", "a b", "a b c", "a b c d"]
    growing = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 0.5, 0.7, 2.0]])  # log-sum-exp-like: more words, more score
    free = torch.tensor([[0.3, 0.1, 0.4, 0.2], [0.3, 0.1, 0.4, 0.2]])
    assert length_bias(prompts, {"lse": growing, "free": free, "inverse": -growing}) == {
        "lse": 1.0, "free": 0.0, "inverse": -1.0}
    assert length_bias(["a b", "c d"], {"x": growing[:, :2]}) == {}  # one length: no correlation to speak of
