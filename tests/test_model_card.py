"""The model card (README.md) that save_pretrained and `reclf export` write beside the weights."""

from __future__ import annotations

import json

import torch

import reclf
from reclf.config import load_config, to_dict
from reclf.evaluate.results import TaskResult, refresh_model_card, write_results
from reclf.evaluate.stats import Estimate
from reclf.methods import build_model, create_model, from_pretrained
from reclf.methods.model_card import read_card_training
from reclf.train.export import export_checkpoint

IMAGE = {"name": "cnn-small", "image_size": 64}
TEXT = {"name": "bert-tiny", "max_tokens": 32, "freeze": True}


def test_save_pretrained_writes_a_card_that_from_pretrained_ignores(tmp_path):
    model = create_model("gloria", image_encoder=IMAGE, text_encoder=TEXT).eval()
    folder = model.save_pretrained(tmp_path / "m") or tmp_path / "m"
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: reclf\n")
    assert "# gloria (reclf " + reclf.__version__ + ")" in card
    assert "| image encoder | cnn-small" in card and "| image size | 64 px |" in card
    assert "| text encoder | bert-tiny, 2 layers" in card
    assert "| text encoder frozen layers | all 2 layers frozen |" in card
    assert "Not recorded" in card and "No evaluation results" in card
    assert 'from_pretrained("path/to/m")' in card  # the final name, not the temporary folder's
    # documentation only: an edited (even broken) card changes nothing
    (folder / "README.md").write_text("---\n: not yaml [\n")
    again = from_pretrained(folder)
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(model.encode_image(x).global_, again.encode_image(x).global_)


def test_export_card_has_the_run_data_steps_seed_and_later_the_results(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "studies.csv").write_text(
        'study_id,report,split\ns1,"FINDINGS: a,\nb",train\ns2,x,train\ns3,y,train\ns4,z,valid\n'
    )
    cfg = load_config("demo_convirt", [f"data.root={data}", "seed=7", "image_encoder.image_size=64",
                                       "text_encoder.max_tokens=32", "text_encoder.freeze=false", "name=tiny"])
    model = build_model(cfg)
    ckpt = tmp_path / "last.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, "global_step": 12,
                "epoch": 2, "reclf": {"config": to_dict(cfg)}}, ckpt)
    out = export_checkpoint(ckpt, tmp_path / "export")
    card = (out / "README.md").read_text()
    assert f"| study table | {data / 'studies.csv'} |" in card
    assert "| rows | 4 (train 3, valid 1) |" in card  # the quoted newline is one row
    assert "| steps | 12 |" in card and "| seed | 7 |" in card
    assert "| run | tiny |" in card and "| text encoder frozen layers | none (fine-tuned) |" in card
    from_pretrained(out)
    # a partly frozen text encoder (text_encoder.freeze_layers, where the config has it) is described too
    from reclf.methods.model_card import render_model_card

    cfg_json = json.loads((out / "config.json").read_text())
    cfg_json["text_encoder"]["freeze_layers"] = 1
    assert "| text encoder frozen layers | embeddings + layers 1-1 of 6 frozen |" in render_model_card(out, cfg_json)

    # an evaluation written under the folder appears when the card is refreshed; the run facts stay
    est = Estimate(0.8125, 0.75, 0.875, 100)
    write_results(TaskResult("zeroshot", {"auroc": est}, {}, {}, {}, [0]), out / "eval" / "zeroshot")
    refresh_model_card(out)
    card = (out / "README.md").read_text()
    assert "| zeroshot | auroc | 0.812 [0.750, 0.875] | eval/zeroshot/results.json |" in card
    assert "| steps | 12 |" in card and read_card_training(out).data_rows == 4
    assert json.loads((out / "config.json").read_text())["method"]["name"] == "convirt"
