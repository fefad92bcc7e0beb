"""Saving and loading a model as a folder: ``model.safetensors`` + ``config.json``.

Untrusted files stay data: weights are safetensors (no pickle), the config is JSON validated against
the typed dataclasses. A text encoder that is not built in (a Hugging Face name or folder) has its
tokenizer and architecture config saved beside the weights (``text_encoder/``), so the folder
rebuilds offline without the original download.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from reclf.config import ImageEncoderConfig, TextEncoderConfig, from_dict
from reclf.methods.model import VLModel
from reclf.methods.model_card import write_model_card
from reclf.methods.params import method_params
from reclf.utils.io import atomic_dir, atomic_write_json

FORMAT_VERSION = 1
BUILTIN_TEXT = ("bert-tiny", "minilm")


#: The files and folders ``save_pretrained`` writes; nothing else in a model folder is ever touched.
OWN_FILES = ("model.safetensors", "config.json", "text_encoder", "README.md")  # README.md: the model card


def is_model_folder(folder: str | Path) -> bool:
    """A folder that ``save_pretrained`` wrote: ``config.json`` with reclf's keys beside ``model.safetensors``."""
    folder = Path(folder)
    path = folder / "config.json"
    if not path.is_file() or not (folder / "model.safetensors").is_file():
        return False
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and all(k in config for k in ("format", "method", "image_encoder"))


def save_pretrained(model: VLModel, folder: str | Path, overwrite: bool = False) -> Path:
    """Write ``folder/model.safetensors``, ``folder/config.json`` (and ``text_encoder/``); never anything else.

    Only the model's own files (:data:`OWN_FILES`) are written or replaced, each atomically (built under a
    temporary name, then renamed), so other files in ``folder`` (a model card, ``baseline.json``, the user's
    notes) stay as they are. A non-empty folder that is not a reclf model folder is refused unless
    ``overwrite=True`` (and even then only the model's own files are written).
    """
    import shutil

    from safetensors.torch import save_file

    import reclf

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"{folder} exists and is not a folder; choose another folder for the model")
    if folder.is_dir() and any(folder.iterdir()) and not overwrite and not is_model_folder(folder):
        raise FileExistsError(
            f"{folder} is not empty and is not a reclf model folder; choose an empty or new folder, or pass "
            "overwrite=True (only model.safetensors, config.json and text_encoder/ are written, nothing is deleted)"
        )
    folder.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {"format": FORMAT_VERSION, "reclf_version": reclf.__version__, **model.config}
    config["text_encoder"] = dict(config["text_encoder"])
    with atomic_dir(folder / ".reclf-save", overwrite=True) as tmp:
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"), metadata={"method": model.method})
        if model.text_cfg.name not in BUILTIN_TEXT:
            text_dir = tmp / "text_encoder"
            model.tokenizer.hf_tokenizer.save_pretrained(str(text_dir))
            model.text_encoder.backbone.config.save_pretrained(str(text_dir))
            config["text_encoder"]["name"] = "text_encoder"  # relative: resolved at load time
        atomic_write_json(tmp / "config.json", config)
    staged = folder / ".reclf-save"
    try:
        # config.json last: a folder with the new config always has the new weights beside it
        os.replace(staged / "model.safetensors", folder / "model.safetensors")
        old_text = folder / "text_encoder"
        if old_text.is_dir():
            shutil.rmtree(old_text)  # our own sub-folder from an earlier save
        if (staged / "text_encoder").is_dir():
            os.replace(staged / "text_encoder", old_text)
        os.replace(staged / "config.json", folder / "config.json")
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    write_model_card(folder, name=folder.name)  # README.md: documentation only, from_pretrained ignores it
    return folder


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

