"""Methods: ConVIRT, GLoRIA, MGCA, RECLF and its ablations, as compositions of shared parts.

```python
model = reclf.create_model("reclf", image_encoder={"name": "cnn-small"}, text_encoder={"name": "bert-tiny"})
terms = model.loss({"images": images, "reports": reports})
```
"""

from __future__ import annotations

from typing import Any

from reclf.config import Config, ImageEncoderConfig, TextEncoderConfig, from_dict
from reclf.methods.model import Explanation, VLModel
from reclf.methods.params import METHODS, PRESETS, MethodParams, list_methods, method_params
from reclf.methods.pretrained import from_pretrained
from reclf.methods.saving import save_pretrained

__all__ = [
    "METHODS",
    "PRESETS",
    "Explanation",
    "MethodParams",
    "VLModel",
    "build_model",
    "create_model",
    "from_pretrained",
    "list_methods",
    "method_params",
    "save_pretrained",
]


def _as(cls, value, prefix):
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    return from_dict(cls, dict(value), prefix=prefix)


def create_model(
    method: str,
    image_encoder: ImageEncoderConfig | dict[str, Any] | None = None,
    text_encoder: TextEncoderConfig | dict[str, Any] | None = None,
    **overrides: Any,
) -> VLModel:
    """Build method ``method`` on the given encoders; ``overrides`` are ``MethodParams`` fields."""
    params = method_params(method, **overrides)
    image_cfg = _as(ImageEncoderConfig, image_encoder, "image_encoder.")
    text_cfg = _as(TextEncoderConfig, text_encoder, "text_encoder.")
    return VLModel(params, image_cfg, text_cfg)


def build_model(cfg: Config) -> VLModel:
    """The model of a run config (``cfg.method`` holds ``name`` plus overrides)."""
    method = dict(cfg.method)
    name = method.pop("name")
    return create_model(name, cfg.image_encoder, cfg.text_encoder, **method)
