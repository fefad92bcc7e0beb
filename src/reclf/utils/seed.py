"""One seeding entry point so that every split, subsample and run is reproducible."""

from __future__ import annotations

import os
import random

import numpy as np


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (torch only if it is imported already or importable)."""
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    random.seed(seed)
    np.random.seed(seed % (2**32))
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return
    torch.manual_seed(seed)


def rng(seed: int, *keys: int | str) -> np.random.Generator:
    """A NumPy generator derived from ``seed`` and any extra keys (stable across runs and workers)."""
    material = [seed] + [k if isinstance(k, int) else int.from_bytes(k.encode()[:8].ljust(8, b"\0"), "little")
                         for k in keys]
    return np.random.default_rng(np.random.SeedSequence(material))
