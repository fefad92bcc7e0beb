"""The evaluate / report / explain commands end to end on a real tiny model (cnn-small 64 px + bert-tiny)."""

import json

import pytest
import torch

from helpers.eval_stub import make_folder
from helpers.eval_stub import run_command as _run
from reclf.evaluate import cli as eval_cli
from reclf.evaluate import explain as explain_cli
from reclf.evaluate import report as report_cli


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from reclf.methods import create_model

    root = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    model = create_model("reclf", image_encoder={"name": "cnn-small", "image_size": 64},
                         text_encoder={"name": "bert-tiny"})
    model.save_pretrained(root / "model")
    return root, make_folder(root / "data", n=16)


def test_tasks_write_results_and_report(setup):
    root, data = setup
    common = ["--model", str(root / "model"), "--data", str(data), "--n-boot", "20",
              "--cache-dir", str(root / "cache")]
    _run(eval_cli, ["zeroshot", *common, "--out", str(root / "runs/zs"), "--prompts", "chexpert",
                    "--prompts-per-class", "2"])
    _run(eval_cli, ["retrieve", *common, "--out", str(root / "runs/ret")])
    _run(eval_cli, ["relations", *common, "--out", str(root / "runs/rel")])
    _run(eval_cli, ["grounding", *common, "--out", str(root / "runs/gr")])
    _run(eval_cli, ["linear", *common, "--out", str(root / "runs/lin"), "--fractions", "50,100", "--seeds", "0,1",
                    "--max-steps", "20"])
    _run(eval_cli, ["segment", *common, "--out", str(root / "runs/seg"), "--fractions", "100", "--seeds", "0",
                    "--epochs", "1", "--min-steps", "2"])
    _run(eval_cli, ["baseline", "--kind", "random", "--model", str(root / "model"), "--out", str(root / "floor"),
                    "--seed", "1"])
    _run(eval_cli, ["zeroshot", "--model", str(root / "floor"), "--data", str(data), "--n-boot", "20",
                    "--cache-dir", "", "--out", str(root / "runs/zs_floor"), "--prompts", "chexpert",
                    "--prompts-per-class", "2"])
    sha = json.loads((root / "runs/zs/results.json").read_text())["model"]["sha256"]
    for name in ("zs", "ret", "rel", "gr", "lin", "seg"):
        saved = json.loads((root / "runs" / name / "results.json").read_text())
        assert saved["metrics"] and saved["model"]["sha256"] == sha and len(sha) == 64
    floor = json.loads((root / "runs/zs_floor/results.json").read_text())
    assert floor["model"]["label"].startswith("floor:random") and floor["model"]["sha256"] != sha

    _run(report_cli, [str(root / "runs"), "--out", str(root / "report"), "--samples", "1"])
    text = (root / "report" / "report.md").read_text()
    for task in ("zeroshot", "linear", "segment", "retrieve", "relations", "grounding"):
        assert f"## {task}" in text
    assert "floor:random" in text
    assert list((root / "report" / "figures").glob("*.png"))
    assert list((root / "report" / "figures" / "explain").glob("*relations.png"))  # RECLF has SRM


def test_explain_writes_the_pictures(setup):
    root, data = setup
    _run(explain_cli, ["--model", str(root / "model"), "--image", str(data / "images" / "s0.png"),
                       "--report", "small right pleural effusion. no pneumothorax.", "--out", str(root / "ex")])
    info = json.loads((root / "ex" / "explanation.json").read_text())
    assert set(info["figures"]) == {"attention", "importance", "relations"}
    assert info["words"][:4] == ["small", "right", "pleural", "effusion"]
    assert len(info["word_weights"]) == len(info["words"])


def test_protocol_options_from_the_command_line(setup):
    root, data = setup
    common = ["--model", str(root / "model"), "--data", str(data), "--n-boot", "10", "--cache-dir", ""]
    _run(eval_cli, ["segment", *common, "--out", str(root / "runs/seg_mgca"), "--preset", "mgca", "--epochs", "1",
                    "--image-size", "64", "--fractions", "100", "--seeds", "0", "--decoder-channels", "32,16,8,8,4"])
    cfg = json.loads((root / "runs/seg_mgca/results.json").read_text())["config"]
    assert cfg["preset"] == "mgca" and cfg["epochs"] == 1 and cfg["loss"] == "focal_dice" and cfg["freeze_encoder"]
    _run(eval_cli, ["linear", *common, "--out", str(root / "runs/lin"), "--uncertain", "zeros", "--label-set", "all",
                    "--fractions", "100", "--seeds", "0", "--max-steps", "5"])
    cfg = json.loads((root / "runs/lin/results.json").read_text())["config"]
    assert cfg["uncertain_policy"] == "zeros" and cfg["label_set"] == "all" and cfg["recipe"] == "cached"


def lightning_checkpoint(folder, path):
    """The checkpoint `reclf pretrain` writes for the model in ``folder`` (state_dict + the "reclf" entry)."""
    from reclf.config import Config, to_dict
    from reclf.methods import from_pretrained
    from reclf.train.module import PretrainModule

    cfg = Config(name="ckpt", method={"name": "reclf"})
    cfg.image_encoder.name, cfg.image_encoder.image_size = "cnn-small", 64
    module = PretrainModule(from_pretrained(folder), cfg.train, run_config=to_dict(cfg))
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, path)
    return path


def test_a_checkpoint_is_a_model_for_evaluate_and_explain(setup, tmp_path):
    """`--model run.ckpt` gives the same scores as the exported folder (one route, the stored run config)."""
    root, data = setup
    ckpt = lightning_checkpoint(root / "model", tmp_path / "last.ckpt")
    common = ["--data", str(data), "--n-boot", "10", "--cache-dir", "", "--prompts", "chexpert",
              "--prompts-per-class", "2"]
    _run(eval_cli, ["zeroshot", "--model", str(ckpt), "--out", str(tmp_path / "zs_ckpt"), *common])
    _run(eval_cli, ["zeroshot", "--model", str(root / "model"), "--out", str(tmp_path / "zs_dir"), *common])
    a = json.loads((tmp_path / "zs_ckpt" / "results.json").read_text())
    b = json.loads((tmp_path / "zs_dir" / "results.json").read_text())
    assert a["metrics"] == b["metrics"] and a["model"]["weights"] == str(ckpt) and a["model"]["method"] == "reclf"
    for model, out in ((ckpt, "ex_ckpt"), (root / "model", "ex_dir")):
        _run(explain_cli, ["--model", str(model), "--image", str(data / "images" / "s0.png"),
                           "--report", "small right pleural effusion.", "--out", str(tmp_path / out)])
    info = json.loads((tmp_path / "ex_ckpt" / "explanation.json").read_text())
    ref = json.loads((tmp_path / "ex_dir" / "explanation.json").read_text())
    assert set(info["figures"]) == {"attention", "importance", "relations"}
    assert info["global_score"] == ref["global_score"] and info["word_weights"] == ref["word_weights"]


def test_a_checkpoint_that_does_not_fit_is_refused_with_its_path(setup, tmp_path):
    from reclf.evaluate.loading import NotAModelError, load_model

    root, _ = setup
    ckpt = lightning_checkpoint(root / "model", tmp_path / "good.ckpt")
    checkpoint = torch.load(ckpt, weights_only=True)
    no_config = dict(checkpoint, reclf={"epoch": 0})
    torch.save(no_config, tmp_path / "no_config.ckpt")
    extra = dict(checkpoint, state_dict={**checkpoint["state_dict"], "model.extra.weight": torch.zeros(2)})
    torch.save(extra, tmp_path / "extra.ckpt")
    for name, why in (("no_config.ckpt", "holds no run config"), ("extra.ckpt", "unexpected ['extra.weight']")):
        with pytest.raises(NotAModelError, match="not a reclf model or checkpoint") as err:
            load_model(tmp_path / name)
        assert str(tmp_path / name) in str(err.value) and why in str(err.value)
