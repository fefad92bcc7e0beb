"""Saving and loading a model as a folder: ``model.safetensors`` + ``config.json``.

Untrusted files stay data: weights are safetensors (no pickle), the config is JSON validated against
the typed dataclasses. A text encoder that is not built in (a Hugging Face name or folder) has its
tokenizer and architecture config saved beside the weights (``text_encoder/``), so the folder
rebuilds offline without the original download.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from reclf.config import ImageEncoderConfig, TextEncoderConfig, from_dict
from reclf.methods.model import VLModel
from reclf.methods.model_card import write_model_card
from reclf.methods.params import method_params
from reclf.utils.io import atomic_dir, atomic_write_json

FORMAT_VERSION = 1
BUILTIN_TEXT = ("bert-tiny", "minilm")


def save_pretrained(model: VLModel, folder: str | Path) -> Path:
    """Write ``folder/model.safetensors`` and ``folder/config.json`` atomically (replacing the folder)."""
    from safetensors.torch import save_file

    import reclf

    folder = Path(folder)
    config: dict[str, Any] = {"format": FORMAT_VERSION, "reclf_version": reclf.__version__, **model.config}
    with atomic_dir(folder, overwrite=True) as tmp:
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"), metadata={"method": model.method})
        if model.text_cfg.name not in BUILTIN_TEXT:
            text_dir = tmp / "text_encoder"
            model.tokenizer.hf_tokenizer.save_pretrained(str(text_dir))
            model.text_encoder.backbone.config.save_pretrained(str(text_dir))
            config["text_encoder"]["name"] = "text_encoder"  # relative: resolved at load time
        atomic_write_json(tmp / "config.json", config)
        write_model_card(tmp, name=folder.name)  # README.md: documentation only, from_pretrained ignores it
    return folder


def _read_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a saved reclf model (no config.json); export one with `reclf export`")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc
    for key in ("method", "image_encoder", "text_encoder"):
        if key not in config:
            raise ValueError(f"{path} lacks the key {key!r}; it was not written by reclf's save_pretrained")
    return config


def _text_encoder_from_folder(text_dir: Path, cfg: TextEncoderConfig, need_attention: bool):
    """Rebuild a Hugging Face text encoder from its saved config (weights come from the safetensors)."""
    from transformers import AutoConfig, AutoModel

    from reclf.data.tokenization import WordTokenizer
    from reclf.models.text import TextEncoder, _fast_tokenizer

    hf_config = AutoConfig.from_pretrained(str(text_dir), local_files_only=True)
    if need_attention:
        hf_config._attn_implementation = "eager"
    backbone = AutoModel.from_config(hf_config)
    hf_tok = _fast_tokenizer(text_dir)
    tokenizer = WordTokenizer(hf_tok, cfg.max_tokens)
    return TextEncoder(
        backbone, tokenizer, cfg.last_n_layers, cfg.word_merge, cfg.freeze, name=str(text_dir), pooling=cfg.pooling
    )


def from_pretrained(folder: str | Path, map_location: str = "cpu") -> VLModel:
    """Rebuild the model saved in ``folder`` (by ``save_pretrained`` / ``reclf export``)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    config = _read_config(folder)
    params_in = dict(config["method"])
    name = params_in.pop("name")
    params = method_params(name, **params_in)
    image_cfg = from_dict(ImageEncoderConfig, {**config["image_encoder"], "weights": None}, prefix="image_encoder.")
    text_cfg = from_dict(TextEncoderConfig, config["text_encoder"], prefix="text_encoder.")
    text_encoder = None
    if text_cfg.name not in BUILTIN_TEXT:
        text_dir = folder / text_cfg.name
        if not text_dir.is_dir():
            raise FileNotFoundError(f"{folder}: the text encoder folder {text_dir} is missing")
        text_encoder = _text_encoder_from_folder(text_dir, text_cfg, need_attention=params.token_weight > 0)
    model = VLModel(params, image_cfg, text_cfg, text_encoder=text_encoder)
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"{folder} has no model.safetensors")
    state = load_file(str(weights), device=map_location)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{weights} does not fit the {name} model it describes: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    model.eval()
    return model

