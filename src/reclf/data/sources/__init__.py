"""Real data set adapters: the files as distributed -> the canonical study table, split lists, an image cache.

``reclf prepare SOURCE --root DIR --out DIR`` (see :mod:`reclf.data.sources.cli` and ``docs/datasets.md``).
Each adapter module has ``parse(opts) -> SourceTable`` (metadata only, no image is read);
:func:`prepare` adds the image cache and writes everything.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from reclf.data.sources.common import PrepareOptions, SourceTable

SOURCES: dict[str, str] = {
    "mimic-cxr": "reclf.data.sources.mimic",
    "chexpert": "reclf.data.sources.chexpert",
    "rsna": "reclf.data.sources.rsna",
    "siim": "reclf.data.sources.siim",
    "covidx": "reclf.data.sources.covidx",
    "iu-xray": "reclf.data.sources.iu_xray",
    "pairs-csv": "reclf.data.sources.pairs_csv",
    "ms-cxr": "reclf.data.sources.ms_cxr",
    "chest-imagenome": "reclf.data.sources.chest_imagenome",
}


def parse_source(name: str, opts: PrepareOptions) -> SourceTable:
    """Parse the metadata of data set ``name`` (no image is opened)."""
    from reclf.data.sources.common import ENCODINGS
    from reclf.data.studies import parse_encodings

    if name not in SOURCES:
        raise ValueError(f"unknown data source {name!r}; choose one of {', '.join(SOURCES)}")
    token = ENCODINGS.set(parse_encodings(opts.get("encoding")))  # --encoding, read by every CSV/report read
    try:
        return importlib.import_module(SOURCES[name]).parse(opts)
    finally:
        ENCODINGS.reset(token)


def prepare(name: str, opts: PrepareOptions) -> dict[str, Any]:
    """Parse, cache images (unless ``opts.metadata_only``), write the table(s) and ``prepare_report.json``."""
    from reclf.data.sources.common import run_prepare

    return run_prepare(parse_source(name, opts), opts)


__all__ = ["SOURCES", "parse_source", "prepare"]
