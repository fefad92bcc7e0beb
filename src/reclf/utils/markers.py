"""Stage markers: a finished step says which recipe and which data it ran, so that it is reused only for them.

A long command (``reclf demo``, ``reclf tune``) skips a step whose marker file exists. A marker that
only says "done" reuses a result of another recipe without a word (a 30-step model reported as a
400-step one), so every marker here records the **fingerprint** (a stable hash) of the resolved
config the step ran and of the data it read, and :func:`read_marker` compares them with the ones
asked now. The caller then chooses what a changed recipe means for its stage: the demo and
``reclf tune`` refuse a changed *training* recipe (:func:`refuse_changed`, naming every changed key
and how to proceed), while a derived result (an evaluation) is simply computed again.

Markers are JSON written atomically: ``{"stage", "config_fingerprint", "data_fingerprint", "config",
...payload}``. This module knows nothing of reclf's config classes (``reclf.config.recipe`` makes the
mapping that is hashed), so any layer may use it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reclf.utils.io import atomic_write_json, file_sha256

MARKER_KEYS = ("stage", "config_fingerprint", "data_fingerprint", "config")


class StageChangedError(ValueError):
    """A finished step ran another recipe or other data than the one asked now (the message says what changed)."""


def fingerprint(value: Any) -> str:
    """A stable 16-hex-digit hash of a JSON-able value (mapping keys sorted, so key order does not matter)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def file_fingerprint(path: str | Path) -> str:
    """The data fingerprint of a file (a study table, a SynthCXR ``manifest.json``): its sha256, 16 digits."""
    return file_sha256(path)[:16]


def changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """``"train.max_steps: 30 -> 400"`` for every dotted key whose value differs between two mappings."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new), key=str):
            name = f"{prefix}{key}"
            if key not in old:
                out.append(f"{name}: (absent) -> {new[key]!r}")
            elif key not in new:
                out.append(f"{name}: {old[key]!r} -> (absent)")
            else:
                out += changed_keys(old[key], new[key], f"{name}.")
        return out
    if old != new:
        return [f"{prefix.rstrip('.') or 'value'}: {old!r} -> {new!r}"]
    return []


@dataclass
class Marker:
    """A marker file read back: its payload and what differs from the recipe and data asked now."""

    path: Path
    payload: dict[str, Any]
    changed: list[str] = field(default_factory=list)  # empty: the same recipe and data

    @property
    def matches(self) -> bool:
        return not self.changed


def write_marker(path: str | Path, stage: str, config: dict[str, Any], data: str | None, **payload: Any) -> None:
    """Write the marker of a finished ``stage`` that ran ``config`` (a JSON-able recipe) on ``data`` (its
    fingerprint, or ``None`` when the step reads no data), with ``payload`` (what later steps need)."""
    record = {
        "stage": stage,
        "config_fingerprint": fingerprint(config),
        "data_fingerprint": data,
        "config": config,
        **payload,
    }
    atomic_write_json(path, record)


def read_marker(path: str | Path, config: dict[str, Any], data: str | None = None, check_data: bool = True
                ) -> Marker | None:
    """The marker at ``path`` compared with ``config`` and ``data``; ``None`` when there is none.

    ``check_data=False`` compares the recipe only (before the data exists, e.g. while it is still to be
    generated). A marker written before fingerprints existed is compared by its stored ``config``.
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise StageChangedError(f"{path}: unreadable marker ({exc}); delete it to run the step again") from exc
    if not isinstance(record, dict):
        raise StageChangedError(f"{path}: not a marker (a JSON object was expected); delete it to run the step again")
    payload = {k: v for k, v in record.items() if k not in MARKER_KEYS}
    old = record.get("config")
    changed: list[str] = []
    if old is None:
        changed.append("config: (not recorded) -> this recipe")
    elif record.get("config_fingerprint", fingerprint(old)) != fingerprint(config):
        changed = changed_keys(old, config) or ["config: (fingerprint differs)"]
    if check_data and record.get("data_fingerprint") != data:
        changed.append(f"data fingerprint: {record.get('data_fingerprint')} -> {data}")
    return Marker(path, payload, changed)


def refuse_changed(marker: Marker, what: str, hint: str) -> None:
    """Raise :class:`StageChangedError` when ``marker`` ran another recipe or data: names ``what`` (the step),
    every changed key (up to 8) and ``hint`` (how to proceed: ``--fresh``, another ``--out``)."""
    if marker.matches:
        return
    shown = "; ".join(marker.changed[:8]) + (f"; and {len(marker.changed) - 8} more" if len(marker.changed) > 8 else "")
    raise StageChangedError(f"{what} ran with another config ({marker.path}): {shown}. {hint}")


__all__ = [
    "Marker",
    "StageChangedError",
    "changed_keys",
    "file_fingerprint",
    "fingerprint",
    "read_marker",
    "refuse_changed",
    "write_marker",
]
