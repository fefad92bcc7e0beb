"""The model to evaluate, named by the hash of its weights.

``--model`` accepts what :func:`reclf.methods.loading.load_model_file` reads (the one route for every
command): an exported model folder, a run folder (its ``export/``, else its newest checkpoint), or a
``reclf pretrain`` checkpoint (rebuilt from the run config stored in it). The model hash is the sha256
of the weights file, so results say exactly which weights they are.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from reclf.methods.interface import EvaluableModel
from reclf.methods.loading import NotAModelError, load_model_file
from reclf.utils.io import file_sha256

__all__ = ["LoadedModel", "NotAModelError", "image_size_of", "load_model", "model_label", "wrap_model"]


@dataclass
class LoadedModel:
    model: EvaluableModel  # in eval mode
    path: str
    weights_path: str | None
    sha256: str | None
    label: str  # short human-readable name (method, folder)


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
    """Load ``spec`` (folder or checkpoint) as an eval-mode model on ``device``; errors say what was expected."""
    if not Path(spec).exists():
        raise FileNotFoundError(f"--model {spec}: no such file or folder (give a model folder or a checkpoint)")
    found = load_model_file(spec)
    found.model.eval().to(device)
    where = found.path if found.path.is_dir() else found.path.parent
    return LoadedModel(found.model, str(found.path), str(found.weights), file_sha256(found.weights),
                       model_label(where, found.model.method))


def wrap_model(model: EvaluableModel, label: str | None = None) -> LoadedModel:
    """Wrap an in-memory model (tests, the demo) so that tasks can use it like a loaded one."""
    model.eval()
    return LoadedModel(model, "<memory>", None, None, label or model.method)


def image_size_of(model: EvaluableModel, default: int = 128) -> int:
    """The input size the model was built for (its config), else ``default`` (``reclf.methods.inference``)."""
    from reclf.methods.inference import image_size_of as size_of

    return size_of(model, default)
