"""Torch datasets over canonical study tables, a seeded resumable sampler, and the collate.

Bad input is part of real data (a missing JPEG, a truncated file, a study whose report has no
findings or impression), so it is handled in the open:

1. :func:`scan_studies` checks every row *before* training (file exists, report text not empty)
   and returns the bad rows with the reason; with ``on_error="raise"`` the first one is an error
   naming the row, the file and what to do. Bad rows found here are dropped from the dataset.
2. A file that exists but cannot be decoded is only found when it is loaded: the dataset then
   returns ``None`` (``on_error="skip"``) or raises (``"raise"``); :class:`Collate` drops the
   ``None`` and puts the count in the batch (``batch["n_bad"]``). Batches travel from the worker
   processes to the main process, so the trainer's sum of ``n_bad`` is the true total whatever
   ``num_workers`` is (counters inside workers would be lost).

Randomness (augmentation, sentence shuffling, ``sample_sentences``) is drawn from ``reclf.utils.seed.rng(seed, epoch,
index)``, so a sample looks the same whichever worker loads it and after a resume.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, Sampler

from reclf.data.images import ImageReadError, load_image
from reclf.data.reports import augment_sentences, split_sentences, study_report_text
from reclf.data.studies import CHEXPERT_LABELS
from reclf.data.tokenization import Tokenizer
from reclf.data.transforms import EvalTransform
from reclf.utils.seed import rng

ON_ERROR = ("skip", "raise")


class BadDataError(ValueError):
    """Too many bad rows, or a bad row under ``on_error=raise``."""


@dataclass
class BadRow:
    """One unusable study, with the reason (for the run summary)."""

    row: int
    study_id: str
    reason: str


@dataclass
class ScanResult:
    """What :func:`scan_studies` found: the usable row positions and the bad rows."""

    good: list[int]
    bad: list[BadRow] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.good) + len(self.bad)

    @property
    def bad_fraction(self) -> float:
        return len(self.bad) / max(self.total, 1)


# ---------------------------------------------------------------------------------------------
# report text


def study_report(row: pd.Series | dict[str, Any], sections: Sequence[str]) -> str:
    """The report text used for training: the chosen sections, cleaned (``reclf.data.reports``)."""
    return study_report_text(row, sections)


# ---------------------------------------------------------------------------------------------
# pre-scan


def scan_studies(
    df: pd.DataFrame, root: str | Path, sections: Sequence[str], on_error: str = "skip", check_files: bool = True
) -> ScanResult:
    """Find rows whose image file is missing or whose report is empty, before any training."""
    if on_error not in ON_ERROR:
        raise ValueError(f"data.on_error={on_error!r}; allowed: {', '.join(ON_ERROR)}")
    root = Path(root)
    good: list[int] = []
    bad: list[BadRow] = []
    for pos, (_, row) in enumerate(df.iterrows()):
        reason = None
        path = root / str(row["image_path"])
        if not str(row["image_path"]).strip():
            reason = "empty image_path"
        elif check_files and not path.is_file():
            reason = f"image file {path} does not exist"
        elif not study_report(row, sections).strip():
            reason = f"empty report (sections {list(sections)} are all empty)"
        if reason is None:
            good.append(pos)
            continue
        if on_error == "raise":
            raise BadDataError(
                f"{root}: row {pos} (study {row['study_id']}): {reason}. Fix the table, or pass data.on_error=skip "
                "to skip and count such rows"
            )
        bad.append(BadRow(pos, str(row["study_id"]), reason))
    return ScanResult(good, bad)


def check_bad_fraction(n_bad: int, n_total: int, max_fraction: float, where: str) -> None:
    """Fail when more than ``max_fraction`` of the rows are bad (a broken path, a wrong root)."""
    if n_total and n_bad / n_total > max_fraction:
        raise BadDataError(
            f"{where}: {n_bad} of {n_total} studies are bad ({n_bad / n_total:.1%} > data.max_bad_fraction="
            f"{max_fraction:.1%}); check data.root and the image paths, or raise data.max_bad_fraction"
        )


# ---------------------------------------------------------------------------------------------
# dataset


class StudyDataset(Dataset):
    """Image-report pairs from a study table.

    ``__getitem__`` returns ``{"image": [1,S,S], "report": str, "study_id": str, "labels": [14],
    "index": int}``, or ``None`` for a row whose image cannot be read (``on_error="skip"``).
    """

    def __init__(
        self,
        df: pd.DataFrame,
        root: str | Path,
        transform: EvalTransform,
        sections: Sequence[str] = ("findings", "impression"),
        seed: int = 0,
        shuffle_sentences: bool = False,
        max_sentences: int | None = None,
        on_error: str = "skip",
        sample_sentences: int = 0,
    ) -> None:
        if on_error not in ON_ERROR:
            raise ValueError(f"data.on_error={on_error!r}; allowed: {', '.join(ON_ERROR)}")
        self.df = df.reset_index(drop=True)
        self.root = Path(root)
        self.transform = transform
        self.sections = list(sections)
        self.seed = int(seed)
        self.shuffle_sentences = shuffle_sentences
        self.max_sentences = max_sentences
        self.on_error = on_error
        if sample_sentences < 0:
            raise ValueError(f"data.sample_sentences must be >= 0 (0: the full report), got {sample_sentences}")
        self.sample_sentences = int(sample_sentences)
        self.epoch = 0
        labels = self.df.reindex(columns=list(CHEXPERT_LABELS)).to_numpy(dtype=np.float32)
        self.labels = torch.from_numpy(labels)
        self.reports = [study_report(row, self.sections) for _, row in self.df.iterrows()]

    def __len__(self) -> int:
        return len(self.df)

    def set_epoch(self, epoch: int) -> None:
        """Augmentation and sentence order depend on the epoch (set by the trainer each epoch)."""
        self.epoch = int(epoch)

    def _report(self, index: int, gen: np.random.Generator) -> str:
        text = self.reports[index]
        if self.sample_sentences:
            text = sample_sentences(text, self.sample_sentences, rng(self.seed, "sentences", self.epoch, int(index)))
        if not (self.shuffle_sentences or self.max_sentences):
            return text
        return augment_sentences(text, gen, shuffle=self.shuffle_sentences, max_sentences=self.max_sentences)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        row = self.df.iloc[index]
        gen = rng(self.seed, "sample", self.epoch, int(index))
        path = self.root / str(row["image_path"])
        try:
            image = self.transform(load_image(path), gen)
        except ImageReadError as exc:
            if self.on_error == "raise":
                raise BadDataError(
                    f"study {row['study_id']} (row {index}): {exc}; pass data.on_error=skip to skip such rows"
                ) from exc
            warnings.warn(f"skipping study {row['study_id']}: {exc}", stacklevel=2)
            return None
        report = self._report(index, gen)
        if not report.strip():
            if self.on_error == "raise":
                raise BadDataError(f"study {row['study_id']} (row {index}) has an empty report")
            return None
        return {
            "image": image,
            "report": report,
            "study_id": str(row["study_id"]),
            "labels": self.labels[index],
            "index": int(index),
        }


def sample_sentences(text: str, k: int, gen: np.random.Generator) -> str:
    """``k`` sentences of ``text`` drawn without replacement, kept in report order (all of them if fewer).

    GLoRIA trains on one random sentence per study and step (``full_report: false``); ``k = 1`` is that.
    The draw has its own stream (``rng(seed, "sentences", epoch, index)``), so switching it on does not
    change the image augmentation of the same sample.
    """
    sentences = split_sentences(text)
    if len(sentences) <= k:
        return text
    keep = np.sort(gen.choice(len(sentences), size=k, replace=False))
    return " ".join(sentences[i] for i in keep)


class SyntheticPairs(Dataset):
    """Tiny random image-report pairs for ``train.dry_run`` (no data on disk needed)."""

    WORDS = ("left", "right", "upper", "lower", "lobe", "opacity", "effusion", "no", "pneumothorax", "heart")

    def __init__(self, n: int, image_size: int, seed: int = 0) -> None:
        self.n, self.image_size, self.seed = n, image_size, seed

    def __len__(self) -> int:
        return self.n

    def set_epoch(self, epoch: int) -> None:  # same API as StudyDataset
        pass

    def __getitem__(self, index: int) -> dict[str, Any]:
        gen = rng(self.seed, "synthetic-pair", index)
        image = torch.from_numpy(gen.random((1, self.image_size, self.image_size), dtype=np.float32))
        words = [self.WORDS[i] for i in gen.integers(0, len(self.WORDS), size=8)]
        return {
            "image": image,
            "report": " ".join(words) + ".",
            "study_id": f"synthetic-{index}",
            "labels": torch.full((len(CHEXPERT_LABELS),), float("nan")),
            "index": index,
        }


# ---------------------------------------------------------------------------------------------
# collate and sampler


class Collate:
    """Stack samples into a batch, drop ``None`` (bad rows) and count them, tokenise the reports.

    The batch follows the contract in docs/ARCHITECTURE.md: ``images [B,1,H,W]``, ``reports``,
    ``tokens`` (when a tokenizer is given — the model's own ``WordTokenizer``, so training and
    inference tokenise the same way), ``study_ids``, ``labels [B,14]``, plus ``indices [B]`` and
    ``n_bad`` (rows dropped from this batch). A batch whose rows are all bad has ``images=None``.
    """

    def __init__(self, tokenizer: Tokenizer | None = None) -> None:
        self.tokenizer = tokenizer

    def __call__(self, samples: Sequence[dict[str, Any] | None]) -> dict[str, Any]:
        good = [s for s in samples if s is not None]
        n_bad = len(samples) - len(good)
        if not good:
            return {"images": None, "reports": [], "study_ids": [], "n_bad": n_bad}
        reports = [s["report"] for s in good]
        batch: dict[str, Any] = {
            "images": torch.stack([s["image"] for s in good]),
            "reports": reports,
            "study_ids": [s["study_id"] for s in good],
            "labels": torch.stack([s["labels"] for s in good]),
            "indices": torch.tensor([s["index"] for s in good], dtype=torch.long),
            "n_bad": n_bad,
        }
        if self.tokenizer is not None:
            batch["tokens"] = self.tokenizer(reports)
        return batch


class EpochSampler(Sampler[int]):
    """Seeded per-epoch permutation, split across ranks, able to resume mid-epoch.

    The order of epoch ``e`` is a function of ``(seed, e)`` only. Each rank takes every
    ``world``-th index of the permutation (the tail is trimmed so every rank has the same number
    of full batches — DDP needs equal step counts). ``resume_from(epoch, batches_done)`` skips
    the batches an interrupted run had already trained on, so a resumed run sees exactly the
    samples the uninterrupted run would have seen.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = True,
        dataset: Any = None,
    ) -> None:
        self.dataset = dataset  # its set_epoch is called too (per-epoch augmentation)
        self.n, self.batch_size, self.seed, self.shuffle = n, batch_size, seed, shuffle
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.epoch = 0
        self._resume: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(self.epoch)

    def resume_from(self, epoch: int, batches_done: int) -> None:
        self._resume = (int(epoch), int(batches_done))

    def _per_rank(self) -> int:
        per_rank = self.n // self.world_size if self.drop_last else -(-self.n // self.world_size)
        if self.drop_last:
            per_rank -= per_rank % self.batch_size
        return per_rank

    def __len__(self) -> int:
        return self._per_rank()

    def __iter__(self) -> Iterator[int]:
        order = rng(self.seed, "epoch-order", self.epoch).permutation(self.n) if self.shuffle else np.arange(self.n)
        per_rank = self._per_rank()
        if not self.drop_last and len(order) < per_rank * self.world_size:  # pad by wrapping around
            order = np.concatenate([order, order[: per_rank * self.world_size - len(order)]])
        mine = order[self.rank :: self.world_size][:per_rank]
        if self._resume is not None and self._resume[0] == self.epoch:
            mine = mine[self._resume[1] * self.batch_size :]
            self._resume = None
        return iter(int(i) for i in mine)
