"""The declared method interface (reclf.methods.interface): the real model and the test stubs conform to it."""

import pytest
import torch

from helpers import eval_stub, train_stub
from reclf.data.tokenization import Tokenizer
from reclf.methods import create_model, list_methods
from reclf.methods.interface import EvaluableModel, MethodModel, TrainableModel, missing_members


@pytest.mark.parametrize("method", ["convirt", "reclf"])
def test_every_method_model_implements_the_whole_interface(method):
    model = create_model(method, image_encoder={"name": "cnn-small", "image_size": 64},
                         text_encoder={"name": "bert-tiny", "max_tokens": 16})
    assert isinstance(model, MethodModel) and isinstance(model.tokenizer, Tokenizer)
    assert model.has_local == (method == "reclf")
    assert method in list_methods()


def test_a_model_without_the_interface_is_told_apart():
    assert not isinstance(torch.nn.Linear(2, 2), EvaluableModel)
    assert not isinstance(torch.nn.Linear(2, 2), TrainableModel)
    missing = missing_members(torch.nn.Linear(2, 2), TrainableModel)
    assert {"loss", "tokenizer", "method", "on_train_epoch_start", "save_pretrained"} <= set(missing)
    assert "eval" not in missing_members(torch.nn.Linear(2, 2), EvaluableModel)  # nn.Module has it
    assert missing_members(train_stub.StubModel(), TrainableModel) == []


def test_training_refuses_a_model_without_the_interface_and_names_what_is_missing():
    from reclf.config import TrainConfig
    from reclf.train.module import PretrainModule

    with pytest.raises(TypeError, match="Linear lacks .*loss.*TrainableModel"):
        PretrainModule(torch.nn.Linear(2, 2), TrainConfig())
    with pytest.raises(TypeError, match="is not a torch.nn.Module"):
        PretrainModule(object(), TrainConfig())
    assert PretrainModule(train_stub.StubModel(), TrainConfig()).model.method == "stub"


def test_eval_stub_is_an_evaluable_model_and_follows_its_shapes():
    torch.manual_seed(0)
    m = eval_stub.StubModel().eval()
    assert isinstance(m, EvaluableModel) and m.has_local
    img = m.encode_image(torch.rand(3, 1, 64, 64))
    txt = m.encode_text(["left lower lobe opacity", "no effusion"])
    assert img.global_.shape == (3, 16) and img.local.shape == (3, 64, 16) and img.grid == (8, 8)
    assert txt.words.shape[:2] == txt.word_mask.shape
    assert m.similarity(img, txt).shape == (3, 2)
    ex = m.explain(torch.rand(1, 1, 64, 64), "small left effusion")
    assert ex.attention.shape == (3, 8, 8) and ex.words == ["small", "left", "effusion"]


def test_train_stub_is_a_trainable_model(tmp_path):
    model = train_stub.StubModel(dropout=0.0)
    assert isinstance(model, TrainableModel) and isinstance(model.tokenizer, Tokenizer)
    images = torch.rand(3, 1, 32, 32)
    reports = ["left opacity", "right effusion", "no finding"]
    terms = model.loss({"images": images, "reports": reports})
    assert set(terms) == {"global", "loss"} and terms["loss"].ndim == 0
    sim = model.similarity(model.encode_image(images), model.encode_text(reports))
    assert sim.shape == (3, 3)
    model.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").is_file()


def test_make_table_writes_a_valid_table(tmp_path):
    from reclf.data.studies import read_studies

    train_stub.make_table(tmp_path, n_train=4, n_valid=2, missing=1, empty_report=1)
    df = read_studies(tmp_path)
    assert len(df) == 6 and (df["split"] == "train").sum() == 4
    assert not (tmp_path / df.loc[0, "image_path"]).exists()
