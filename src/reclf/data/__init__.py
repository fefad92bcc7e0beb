"""Data: the canonical study table, SynthCXR, real-data adapters, reports, words, datasets.

Imports are lazy so that worker processes (image caching, data loading) start without pandas.
"""

from __future__ import annotations

from typing import Any

__all__ = ["CHEXPERT_LABELS", "StudyTableError", "read_studies", "write_studies"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from reclf.data import studies

        return getattr(studies, name)
    raise AttributeError(f"module 'reclf.data' has no attribute {name!r}")
