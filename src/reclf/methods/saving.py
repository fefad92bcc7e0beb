"""Writing a model folder: ``model.safetensors`` + ``config.json`` (+ ``text_encoder/``, ``README.md``).

A text encoder that is not built in (a Hugging Face name or folder) has its tokenizer and architecture
config saved beside the weights (``text_encoder/``), so the folder rebuilds offline without the
original download. Reading is :func:`reclf.methods.pretrained.from_pretrained`. This module never
imports the model class, not even for types (``VLModel.save_pretrained`` calls it): it writes any
:class:`SavableModel`, so the two do not import each other.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from torch import Tensor

from reclf.config import BUILTIN_TEXT_ENCODERS
from reclf.methods.model_card import write_model_card
from reclf.models.text import TextEncoder
from reclf.utils.io import atomic_dir, atomic_write_json

FORMAT_VERSION = 1


class SavableModel(Protocol):
    """What writing a model folder reads of a model (``VLModel`` has it)."""

    @property
    def method(self) -> str: ...

    @property
    def config(self) -> dict[str, Any]:
        """``method``, ``image_encoder``, ``text_encoder``: what rebuilds the model."""
        ...

    text_encoder: TextEncoder  # a text encoder that is not built in is saved beside the weights

    def state_dict(self) -> Mapping[str, Tensor]: ...


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


def save_pretrained(model: SavableModel, folder: str | Path, overwrite: bool = False) -> Path:
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
        if config["text_encoder"]["name"] not in BUILTIN_TEXT_ENCODERS:
            text_dir = tmp / "text_encoder"
            model.text_encoder.tokenizer.hf_tokenizer.save_pretrained(str(text_dir))
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
