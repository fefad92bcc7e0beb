"""reclf: relation-enhanced medical vision-language contrastive learning and its baselines.

Public API (imported lazily so that ``import reclf`` stays light):

- ``reclf.read_studies(folder)``: the canonical study table
- ``reclf.create_model(method, image_encoder=..., text_encoder=..., **overrides)``
- ``reclf.from_pretrained(folder)``

``__version__`` below is the package's only version string: pyproject.toml reads it at build
time (``[tool.setuptools.dynamic]``), so the metadata of every build, ``reclf --version`` and this
attribute agree.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "read_studies": "reclf.data.studies",
    "create_model": "reclf.methods",
    "from_pretrained": "reclf.methods",
    "list_methods": "reclf.methods",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'reclf' has no attribute {name!r}")
