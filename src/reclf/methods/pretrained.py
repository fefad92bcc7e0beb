"""Loading a model folder (``model.safetensors`` + ``config.json``) written by ``save_pretrained``.

Untrusted files stay data: weights are safetensors (no pickle), the config is JSON validated against
the typed dataclasses. The writing side is :mod:`reclf.methods.saving`; it does not import the model
class, so ``VLModel.save_pretrained`` can call it without an import circle.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from reclf.config import BUILTIN_TEXT_ENCODERS, ImageEncoderConfig, TextEncoderConfig, from_dict
from reclf.methods.model import VLModel
from reclf.methods.params import method_params
from reclf.methods.saving import FORMAT_VERSION, OWN_FILES, is_model_folder, save_pretrained

__all__ = ["FORMAT_VERSION", "OWN_FILES", "from_pretrained", "is_model_folder", "save_pretrained"]

def _read_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a saved reclf model (no config.json); export one with `reclf export`")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"not a reclf model: {path} is not valid JSON ({exc})") from exc
    if not isinstance(config, dict):
        raise ValueError(f"not a reclf model: {path} holds no mapping; it was not written by reclf's save_pretrained")
    for key in ("method", "image_encoder", "text_encoder"):
        if key not in config:
            raise ValueError(f"{path} lacks the key {key!r}; it was not written by reclf's save_pretrained")
    return config


def _text_encoder_from_folder(text_dir: Path, cfg: TextEncoderConfig, need_attention: bool):
    """Rebuild a Hugging Face text encoder from its saved config (weights come from the safetensors)."""
    from transformers import AutoConfig, AutoModel

    from reclf.data.tokenization import WordTokenizer
    from reclf.models.text import TextEncoder, _fast_tokenizer
    from reclf.utils.console import library_quiet

    with library_quiet():
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
    if text_cfg.name not in BUILTIN_TEXT_ENCODERS:
        text_dir = folder / text_cfg.name
        if not text_dir.is_dir():
            raise FileNotFoundError(f"{folder}: the text encoder folder {text_dir} is missing")
        text_encoder = _text_encoder_from_folder(text_dir, text_cfg, need_attention=params.token_weight > 0)
    model = VLModel(params, image_cfg, text_cfg, text_encoder=text_encoder)
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"{folder} has no model.safetensors")
    try:
        state = load_file(str(weights), device=map_location)
    except Exception as exc:  # safetensors' own error type: truncated, or not a safetensors file at all
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(f"not a reclf model: {weights} is not a readable safetensors file ({first})") from exc
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # tensors whose shapes do not fit the config
        first = str(exc).strip().splitlines()[0]
        raise ValueError(
            f"not a reclf model: {weights} does not fit the {name} model its config describes ({first})"
        ) from exc
    if missing or unexpected:
        raise ValueError(
            f"{weights} does not fit the {name} model it describes: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    model.eval()
    return model

