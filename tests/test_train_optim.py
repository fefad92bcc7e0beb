"""Optimiser groups: one learning rate per part (text encoder, image encoder, heads), frozen parts left out."""

from __future__ import annotations

import torch

from reclf.config import ImageEncoderConfig, TextEncoderConfig, TrainConfig
from reclf.methods import create_model
from reclf.train.module import PretrainModule


def _model(text: TextEncoderConfig):
    torch.manual_seed(0)
    return create_model("gloria", image_encoder=ImageEncoderConfig(name="cnn-small", image_size=64), text_encoder=text)


def test_each_part_gets_its_learning_rate_and_frozen_parameters_are_left_out() -> None:
    text = TextEncoderConfig(name="bert-tiny", hidden_size=32, num_layers=2, num_heads=2, freeze_layers=1)
    model = _model(text)
    module = PretrainModule(model, TrainConfig(lr=1e-3, lr_text=2e-5, lr_image=3e-4, weight_decay=0.1))
    groups = {g["name"]: g for g in module.param_groups()}
    assert set(groups) == {"text", "text/no_decay", "image", "image/no_decay", "heads", "heads/no_decay"}
    assert groups["text"]["lr"] == 2e-5 and groups["image"]["lr"] == 3e-4 and groups["heads"]["lr"] == 1e-3
    assert groups["heads"]["weight_decay"] == 0.1 and groups["heads/no_decay"]["weight_decay"] == 0.0
    ids = {id(p) for g in groups.values() for p in g["params"]}
    for name, p in model.named_parameters():
        assert (id(p) in ids) == p.requires_grad, name
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen and all(
        n.startswith(("text_encoder.backbone.embeddings", "text_encoder.backbone.encoder.layer.0.")) for n in frozen
    )
    # every parameter in exactly one group
    assert sum(len(g["params"]) for g in groups.values()) == len(ids)


def test_a_frozen_text_encoder_has_no_group_and_unset_rates_fall_back_to_lr() -> None:
    text = TextEncoderConfig(name="bert-tiny", hidden_size=32, num_layers=1, num_heads=2, freeze=True)
    module = PretrainModule(_model(text), TrainConfig(lr=5e-4))
    groups = module.param_groups()
    assert not any(g["name"].startswith("text") for g in groups)
    assert {g["lr"] for g in groups} == {5e-4}
