"""Finding and loading the model to evaluate, and naming it by the hash of its weights.

``--model`` accepts
- an exported model folder (``config.json`` + ``model.safetensors``, ``reclf.from_pretrained``);
- a training run folder (its ``export/`` or best checkpoint is used);
- a checkpoint file (``.ckpt`` / ``.pt``, read with ``torch.load(weights_only=True)``; it must carry
  the model config, or sit in a run folder that has an export).
The model hash is the sha256 of the weights file, so results say exactly which weights they are.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reclf.utils.io import file_sha256

WEIGHT_NAMES = ("model.safetensors", "pytorch_model.bin")


class NotAModelError(ValueError):
    """A file given as a model that is not one reclf can read (the message says which and why)."""

    def __init__(self, path: str | Path, reason: Any) -> None:
        if isinstance(reason, BaseException):
            from reclf.train.runs import unsafe_load_reason

            reason = unsafe_load_reason(reason)
        super().__init__(
            f"not a reclf model or checkpoint: {path} ({reason}); give a folder written by `reclf export` / "
            "save_pretrained, a run folder, or a checkpoint of `reclf pretrain`"
        )


@dataclass
class LoadedModel:
    model: Any  # reclf.methods VLModel (nn.Module), in eval mode
    path: str
    weights_path: str | None
    sha256: str | None
    label: str  # short human-readable name (method, folder)


def _export_folder(path: Path) -> Path | None:
    """The folder that ``from_pretrained`` can read, for a model folder or a run folder."""
    if (path / "config.json").is_file() and any((path / n).is_file() for n in WEIGHT_NAMES):
        return path
    for sub in ("export", "best", "model"):
        cand = path / sub
        if (cand / "config.json").is_file() and any((cand / n).is_file() for n in WEIGHT_NAMES):
            return cand
    return None


def model_label(path: Path, method: str | None) -> str:
    """``method:folder`` (or ``floor:random:method`` / ``ceiling:supervised:method`` for baselines)."""
    base = path / "baseline.json"
    if base.is_file():
        try:
            kind = json.loads(base.read_text()).get("kind", "baseline")
        except json.JSONDecodeError:
            kind = "baseline"
        return f"{'floor' if kind == 'random' else 'ceiling'}:{kind}:{method}"
    import re

    node = path
    while node.parent != node and (node.name in ("export", "best", "model", "checkpoints")
                                   or re.fullmatch(r"\d{8}-\d{6}(-\d+)?", node.name)):
        node = node.parent  # runs/NAME/<timestamp>/export -> NAME
    name = node.name or str(path)
    return f"{method}:{name}" if method and method not in name else name


def load_model(spec: str | Path, device: str = "cpu") -> LoadedModel:
    """Load ``spec`` (folder or checkpoint) as an eval-mode model; errors say what was expected."""
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"--model {path}: no such file or folder (give a model folder or a checkpoint)")
    from reclf.methods import from_pretrained

    if path.is_dir():
        folder = _export_folder(path)
        if folder is None:
            ckpts = sorted(path.glob("**/*.ckpt"))
            if not ckpts:
                raise FileNotFoundError(
                    f"--model {path}: holds neither config.json + model.safetensors nor an export/ folder "
                    "nor a .ckpt checkpoint; export a model with `reclf export` first"
                )
            return _load_checkpoint(ckpts[-1], device)
        try:
            model = from_pretrained(folder)
        except (FileNotFoundError, NotAModelError):
            raise
        except Exception as exc:  # corrupt safetensors, config.json that does not fit, a broken text encoder
            raise NotAModelError(folder, exc) from exc
        weights = next(folder / n for n in WEIGHT_NAMES if (folder / n).is_file())
        model.eval().to(device)
        return LoadedModel(model, str(folder), str(weights), file_sha256(weights),
                           model_label(folder, getattr(model, "method", None)))
    return _load_checkpoint(path, device)


def _load_checkpoint(path: Path, device: str) -> LoadedModel:
    import torch

    run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a pickle with objects we refuse, a truncated zip, not a torch file at all
        raise NotAModelError(path, exc) from exc
    if not isinstance(state, dict):
        raise NotAModelError(path, "it holds no state dict")
    cfg = _checkpoint_config(state, run_dir)
    if cfg is None:
        raise ValueError(
            f"checkpoint {path}: cannot find the model config (no hyper_parameters in the file and no "
            f"config.yaml/config.json in {run_dir}); export the model with `reclf export` and pass the folder"
        )
    try:
        model, missing = _model_from_state(state, cfg, path)
    except (ValueError, FileNotFoundError):
        raise
    except Exception as exc:  # a config or state dict of the wrong shape: say so instead of a traceback
        raise NotAModelError(path, exc) from exc
    if missing:
        raise ValueError(f"checkpoint {path}: {len(missing)} model weights missing (e.g. {missing[0]})")
    model.eval().to(device)
    return LoadedModel(model, str(path), str(path), file_sha256(path), model_label(path.parent, model.method))


def _model_from_state(state: dict, cfg: dict, path: Path) -> tuple[Any, list[str]]:
    """Build the model ``cfg`` describes and load ``state``'s weights into it: ``(model, missing keys)``."""
    from reclf.methods import build_model, create_model

    if not isinstance(cfg, dict):
        raise NotAModelError(path, f"the model config found for it is not a mapping: {cfg!r:.80}")
    if "image_encoder" in cfg and "method" in cfg and isinstance(cfg["method"], dict):
        from reclf.config import Config, from_dict

        known = {k: v for k, v in cfg.items() if k in {"name", "seed", "image_encoder", "text_encoder", "method",
                                                        "data", "train"}}
        model = build_model(from_dict(Config, known))
    else:
        conf = dict(cfg)
        method = conf.pop("method", None) or conf.pop("name")
        model = create_model(method, **conf)
    weights = state.get("state_dict", state)
    if not isinstance(weights, dict):
        raise NotAModelError(path, "its state_dict is not a mapping of tensors")
    prefix = next((p for p in ("model.", "module.model.", "") if any(k.startswith(p) for k in weights)), "")
    weights = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
    try:
        missing, _ = model.load_state_dict(weights, strict=False)
    except RuntimeError as exc:  # shapes that do not fit the config
        raise NotAModelError(path, f"its weights do not fit its config ({str(exc).splitlines()[0]})") from exc
    return model, list(missing)


def _checkpoint_config(state: dict, run_dir: Path) -> dict | None:
    hp = state.get("hyper_parameters")
    if isinstance(hp, dict):
        for key in ("run_config", "config", "cfg", "model_config"):
            if isinstance(hp.get(key), dict):
                return hp[key]
        if "image_encoder" in hp:
            return hp
    import yaml

    for name in ("config.json", "model_config.json", "config.yaml"):
        cfg_path = run_dir / name
        if cfg_path.is_file():
            try:
                text = cfg_path.read_text(encoding="utf-8")
                return json.loads(text) if name.endswith(".json") else yaml.safe_load(text)
            except (UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError) as exc:
                raise ValueError(f"{cfg_path}, the config of the checkpoint, cannot be read: {exc}") from exc
    return None


def wrap_model(model: Any, label: str | None = None) -> LoadedModel:
    """Wrap an in-memory model (tests, the demo) so that tasks can use it like a loaded one."""
    model.eval()
    return LoadedModel(model, "<memory>", None, None, label or getattr(model, "method", "model"))


def image_size_of(model: Any, default: int = 128) -> int:
    """The input size the model was built for (its config), else ``default``."""
    cfg = getattr(model, "config", None) or {}
    enc = cfg.get("image_encoder") if isinstance(cfg, dict) else None
    if isinstance(enc, dict) and isinstance(enc.get("image_size"), int):
        return int(enc["image_size"])
    return default
