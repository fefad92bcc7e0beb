"""The one route from a file to a model: a saved model folder, a run folder, or a ``reclf pretrain`` checkpoint.

Every command that takes a model (``reclf evaluate``, ``explain``, ``export``, ``report``, the demo) comes
through :func:`load_model_file`; ``reclf export`` uses :func:`model_from_checkpoint` for its checkpoint.

- A model folder (``config.json`` + ``model.safetensors``) is read by ``reclf.methods.from_pretrained``.
- A checkpoint is read with ``torch.load(weights_only=True)``; the model is rebuilt from the run config
  the Lightning module stores in it (``checkpoint["reclf"]["config"]``, nothing is guessed from key
  names) and its ``model.*`` weights are loaded strictly: a missing or an unexpected key is an error.
- A run folder stands for its ``export/`` folder, else its newest checkpoint.

Whatever is not one of these raises :class:`NotAModelError` ("not a reclf model or checkpoint: PATH
(why); give ..."), never a traceback from deep inside torch or safetensors.

It lives in ``reclf.methods`` beside ``create_model`` / ``from_pretrained``, not in ``reclf.train``: reading a
model needs torch alone, so evaluating one never imports Lightning (``tests/test_import_map.py`` checks it).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reclf.methods.interface import MethodModel

#: The weights of ``PretrainModule.model`` in its ``state_dict``.
STATE_PREFIX = "model."
WEIGHT_NAMES = ("model.safetensors",)
#: Sub-folders of a run folder that hold an exported model, in order of preference.
EXPORT_FOLDERS = ("export", "best", "model")


class NotAModelError(ValueError):
    """A path given as a model that reclf cannot read as one (the message says which and why)."""

    def __init__(self, path: str | Path, reason: Any) -> None:
        if isinstance(reason, BaseException):
            reason = unsafe_load_reason(reason)
        super().__init__(
            f"not a reclf model or checkpoint: {path} ({reason}); give a folder written by `reclf export` / "
            "save_pretrained, a run folder, or a checkpoint of `reclf pretrain`"
        )


def unsafe_load_reason(exc: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, in one line (never advising weights_only=False)."""
    import pickle

    if isinstance(exc, pickle.UnpicklingError):
        return "it holds Python objects besides tensors and plain values; refused, as loading them could run code"
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    return f"not a readable torch file: {type(exc).__name__}: {first}"


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a training checkpoint safely (tensors and plain values only: ``torch.load(weights_only=True)``)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated file, or one with objects we refuse to unpickle
        raise ValueError(
            f"not a reclf model or checkpoint: {path} ({unsafe_load_reason(exc)}); "
            "give a checkpoint written by `reclf pretrain`"
        ) from exc


@dataclass
class ModelFile:
    """A model and the file its weights came from."""

    model: MethodModel  # in eval mode, on the CPU
    path: Path  # the model folder or checkpoint that was read
    weights: Path  # the weights file (model.safetensors or the .ckpt)


def model_folder(path: Path) -> Path | None:
    """``path`` itself when it is a model folder, else its exported model sub-folder (a run folder)."""
    for cand in (path, *(path / sub for sub in EXPORT_FOLDERS)):
        if (cand / "config.json").is_file() and any((cand / n).is_file() for n in WEIGHT_NAMES):
            return cand
    return None


def model_state_dict(checkpoint: dict[str, Any], path: str | Path = "checkpoint") -> dict[str, Any]:
    """The method model's weights (``model.*`` keys, prefix removed) from a ``PretrainModule`` checkpoint."""
    state = checkpoint.get("state_dict")
    if not isinstance(state, dict):
        raise NotAModelError(path, "it has no state_dict")
    return {k[len(STATE_PREFIX):]: v for k, v in state.items() if k.startswith(STATE_PREFIX)}


def checkpoint_config(checkpoint: dict[str, Any], path: str | Path = "checkpoint") -> dict[str, Any]:
    """The resolved run config ``reclf pretrain`` stored in the checkpoint (``checkpoint["reclf"]["config"]``)."""
    meta = checkpoint.get("reclf")
    cfg = meta.get("config") if isinstance(meta, dict) else None
    if not isinstance(cfg, dict) or not cfg:
        raise NotAModelError(path, "it holds no run config (checkpoint['reclf']['config']), so it was not "
                                   "written by `reclf pretrain`")
    return cfg


def load_weights(model: Any, weights: dict[str, Any], path: str | Path) -> None:
    """Load ``weights`` into ``model`` strictly; a key or shape that does not fit is a :class:`NotAModelError`."""
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False)
    except RuntimeError as exc:  # tensors whose shapes do not fit the config
        first = str(exc).strip().splitlines()[0]
        raise NotAModelError(path, f"its weights do not fit its config: {first}") from exc
    if missing or unexpected:
        raise NotAModelError(
            path, f"its weights do not match the model: missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]}"
        )


def model_from_checkpoint(path: str | Path, checkpoint: dict[str, Any] | None = None,
                          model: Any = None) -> MethodModel:
    """The model of a ``reclf pretrain`` checkpoint.

    ``checkpoint``: its content when already read; ``model``: a model of the right architecture to load
    the weights into, left in its mode (default: built from the run config stored in the checkpoint, and
    returned in eval mode).
    """
    if checkpoint is None:
        try:
            checkpoint = load_checkpoint(path)
        except FileNotFoundError:
            raise
        except Exception as exc:  # a pickle with objects we refuse, a truncated zip, not a torch file at all
            raise NotAModelError(path, exc.__cause__ or exc) from exc
    if not isinstance(checkpoint, dict):
        raise NotAModelError(path, "it holds no mapping")
    weights = model_state_dict(checkpoint, path)
    if model is None:
        from reclf.config import Config, ConfigError, from_dict
        from reclf.methods import build_model

        cfg = copy.deepcopy(checkpoint_config(checkpoint, path))
        if isinstance(cfg.get("image_encoder"), dict):
            cfg["image_encoder"]["weights"] = None  # every weight comes from the checkpoint
        try:
            model = build_model(from_dict(Config, cfg))
        except (ConfigError, KeyError, TypeError, ValueError) as exc:
            raise NotAModelError(path, f"its run config does not describe a reclf model: {exc}") from exc
        load_weights(model, weights, path)
        return model.eval()
    load_weights(model, weights, path)
    return model


def load_model_file(spec: str | Path) -> ModelFile:
    """Read ``spec`` (a model folder, a run folder or a checkpoint) as an eval-mode model on the CPU."""
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder (give a model folder or a checkpoint)")
    if path.is_dir():
        folder = model_folder(path)
        if folder is None:
            ckpts = sorted(path.glob("**/*.ckpt"))
            if not ckpts:
                raise FileNotFoundError(
                    f"{path}: holds neither config.json + model.safetensors nor an export/ folder nor a .ckpt "
                    "checkpoint; export a model with `reclf export` first"
                )
            return ModelFile(model_from_checkpoint(ckpts[-1]), ckpts[-1], ckpts[-1])
        from reclf.methods import from_pretrained

        try:
            model = from_pretrained(folder)
        except (FileNotFoundError, NotAModelError):
            raise
        except Exception as exc:  # corrupt safetensors, config.json that does not fit, a broken text encoder
            raise NotAModelError(folder, exc) from exc
        weights = next(folder / n for n in WEIGHT_NAMES if (folder / n).is_file())
        return ModelFile(model, folder, weights)
    return ModelFile(model_from_checkpoint(path), path, path)
