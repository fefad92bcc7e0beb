"""A tiny stand-in for a method model (the method API of reclf.methods) and a tiny study table.

Used by the training tests so that the engine (data, Lightning module, checkpoints, resume, DDP)
is tested on its own, in seconds, independent of any real method. It follows the training part of
the method interface, ``reclf.methods.interface.TrainableModel``: ``loss(batch, gather)``,
``encode_image``, ``encode_text``, ``similarity``, ``tokenizer``, ``save_pretrained``, ``config``,
``on_train_epoch_start`` (tests/test_method_interface.py checks it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from reclf.data.studies import CHEXPERT_LABELS, write_studies

VOCAB = 64


class StubTokenizer:
    """Words hashed into a small vocabulary (stable across processes: no Python ``hash``)."""

    def __init__(self, max_tokens: int = 16) -> None:
        self.max_tokens = max_tokens

    def __call__(self, reports: list[str]) -> dict[str, torch.Tensor]:
        ids = torch.zeros(len(reports), self.max_tokens, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(reports):
            words = r.lower().split()[: self.max_tokens]
            for j, w in enumerate(words):
                ids[i, j] = 1 + sum(w.encode()) % (VOCAB - 1)
                mask[i, j] = 1
        return {"input_ids": ids, "attention_mask": mask}


@dataclass
class Feats:
    global_: torch.Tensor


class StubModel(nn.Module):
    """Global-only contrastive model: conv image tower, bag-of-words text tower (with dropout)."""

    method = "stub"
    has_local = False

    def __init__(self, dim: int = 8, dropout: float = 0.1, nan_after: int | None = None, temperature: float = 0.1):
        super().__init__()
        self.embed_dim = dim
        self.config = {"dim": dim, "dropout": dropout}
        self.tokenizer = StubTokenizer()
        self.image_encoder = nn.Sequential(nn.Conv2d(1, 4, 4, stride=4), nn.ReLU(), nn.AdaptiveAvgPool2d(2))
        self.image_proj = nn.Linear(16, dim)
        self.text_encoder = nn.Embedding(VOCAB, 16)
        self.text_drop = nn.Dropout(dropout)
        self.text_proj = nn.Linear(16, dim)
        self.temperature = temperature
        self.nan_after = nan_after
        self.train_calls = 0
        self.epochs_started: list[int] = []

    def encode_image(self, images: torch.Tensor) -> Feats:
        x = self.image_encoder(images).flatten(1)
        return Feats(F.normalize(self.image_proj(x), dim=-1))

    def encode_text(self, tokens: dict[str, torch.Tensor] | list[str]) -> Feats:
        if isinstance(tokens, list):
            tokens = self.tokenizer(tokens)
        mask = tokens["attention_mask"].float().unsqueeze(-1)
        emb = self.text_drop(self.text_encoder(tokens["input_ids"]))
        pooled = (emb * mask).sum(1) / mask.sum(1).clamp(min=1)
        return Feats(F.normalize(self.text_proj(pooled), dim=-1))

    def similarity(self, img: Feats, txt: Feats) -> torch.Tensor:
        return img.global_ @ txt.global_.T

    global_similarity = similarity

    def loss(self, batch: dict, gather=None) -> dict[str, torch.Tensor]:
        img = self.encode_image(batch["images"]).global_
        txt = self.encode_text(batch["tokens"] if "tokens" in batch else batch["reports"]).global_
        if gather is not None:
            img, txt = gather(img), gather(txt)
        logits = img @ txt.T / self.temperature
        target = torch.arange(logits.shape[0])
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        if self.training:
            self.train_calls += 1
            if self.nan_after is not None and self.train_calls > self.nan_after:
                loss = loss * float("nan")
        return {"global": loss, "loss": loss}

    def on_train_epoch_start(self, epoch: int) -> None:
        self.epochs_started.append(epoch)

    def save_pretrained(self, folder: str | Path) -> None:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(folder / "model.safetensors"))
        (folder / "config.json").write_text(json.dumps({"method": self.method, **self.config}))


SIDES = ("left", "right")


def make_table(
    folder: str | Path,
    n_train: int = 12,
    n_valid: int = 4,
    size: int = 40,
    missing: int = 0,
    corrupt: int = 0,
    empty_report: int = 0,
    seed: int = 0,
) -> Path:
    """A canonical study table with PNGs whose bright blob side matches the report's side.

    The first ``missing`` train rows point to absent files, the next ``corrupt`` to broken PNGs,
    the next ``empty_report`` have no findings/impression/report text.
    """
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    gen = np.random.default_rng(seed)
    rows = []
    n = n_train + n_valid
    for i in range(n):
        side = SIDES[i % 2]
        arr = (gen.random((size, size + 8)) * 60).astype(np.uint8)
        cols = slice(2, size // 2) if side == "left" else slice(size // 2 + 8, size + 6)
        arr[size // 4 : 3 * size // 4, cols] = 230
        rel = f"images/s{i}.png"
        Image.fromarray(arr).save(folder / rel)
        findings = f"There is an opacity in the {side} lung. Heart size is normal."
        impression = f"{side.capitalize()} opacity {i}."
        report = f"FINDINGS: {findings} IMPRESSION: {impression}"
        split = "train" if i < n_train else "valid"
        rows.append(
            {
                "study_id": f"s{i}",
                "patient_id": f"p{i}",
                "image_path": rel,
                "view": "PA",
                "report": report,
                "findings": findings,
                "impression": impression,
                "split": split,
                **{c: np.nan for c in CHEXPERT_LABELS},
            }
        )
    j = 0
    for _ in range(missing):
        rows[j]["image_path"] = f"images/missing{j}.png"
        j += 1
    for _ in range(corrupt):
        (folder / rows[j]["image_path"]).write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
        j += 1
    for _ in range(empty_report):
        rows[j]["findings"] = rows[j]["impression"] = rows[j]["report"] = ""
        j += 1
    write_studies(pd.DataFrame(rows), folder)
    return folder


def tiny_config(root: str | Path, runs: str | Path, **train):
    """A Config for the stub: 32 px, batch 4, CPU, no progress bar."""
    from reclf.config import Config

    cfg = Config(name="stubrun", seed=0, method={"name": "stub"})
    cfg.image_encoder.image_size = 32
    cfg.data.root = str(root)
    cfg.data.batch_size = 4
    cfg.train.runs_dir = str(runs)
    cfg.train.max_epochs = 2
    cfg.train.lr = 1e-2
    cfg.train.accelerator = "cpu"
    cfg.train.progress = False
    cfg.train.log_every_n_steps = 1
    for k, v in train.items():
        setattr(cfg.train, k, v)
    return cfg
