"""The DataModule: train / valid splits of a canonical study table (``data.root``).

Setup reads the table, pre-scans both splits for missing files and empty reports (counted, or an
error under ``data.on_error=raise``, and an error when more than ``data.max_bad_fraction`` is
bad), and builds the datasets. The training loader uses :class:`EpochSampler` — seeded order per
epoch, split over DDP ranks by us (``use_distributed_sampler=False``), resumable mid-epoch.
The collate tokenises with the model's own ``WordTokenizer``.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from reclf.config import Config
from reclf.data.datasets import (
    Collate,
    EpochSampler,
    ScanResult,
    StudyDataset,
    SyntheticPairs,
    check_bad_fraction,
    scan_studies,
)
from reclf.data.studies import read_studies
from reclf.data.tokenization import Tokenizer
from reclf.data.transforms import build_transform
from reclf.utils.seed import rng


def _seed_worker(worker_id: int) -> None:
    """Seed numpy / random in a loader worker from torch's per-worker seed (for third-party code;
    reclf's own augmentation draws from ``rng(seed, epoch, index)`` and needs no worker seed)."""
    import random

    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


class PretrainDataModule(L.LightningDataModule):
    def __init__(
        self,
        cfg: Config,
        tokenizer: Tokenizer | None = None,
        synthetic: int = 0,
    ) -> None:
        """``synthetic > 0``: tiny random pairs instead of ``data.root`` (the dry run)."""
        super().__init__()
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.synthetic = synthetic
        self.train_set: StudyDataset | SyntheticPairs | None = None
        self.valid_set: StudyDataset | SyntheticPairs | None = None
        self.scans: dict[str, ScanResult] = {}
        self._resume: tuple[int, int] | None = None
        self.train_sampler: EpochSampler | None = None

    # ------------------------------------------------------------------ setup
    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        cfg, data = self.cfg, self.cfg.data
        size = cfg.image_encoder.image_size
        if self.synthetic:
            self.train_set = SyntheticPairs(self.synthetic, size, cfg.seed)
            self.valid_set = SyntheticPairs(self.synthetic, size, cfg.seed + 1)
            return
        root = Path(data.root)
        df = read_studies(root)
        sections = cfg.text_encoder.sections
        sets = {}
        for split in ("train", "valid"):
            part = df[df["split"] == split].reset_index(drop=True)
            if split == "train" and data.limit_train is not None and data.limit_train < len(part):
                keep = np.sort(rng(cfg.seed, "limit_train").permutation(len(part))[: data.limit_train])
                part = part.iloc[keep].reset_index(drop=True)
            scan = scan_studies(part, root, sections, on_error=data.on_error)
            check_bad_fraction(len(scan.bad), scan.total, data.max_bad_fraction, f"{root} ({split} split, pre-scan)")
            self.scans[split] = scan
            if split == "train" and not scan.good:
                raise ValueError(f"{root}: the train split has no usable studies; create data with `reclf synth`")
            sets[split] = StudyDataset(
                part.iloc[scan.good].reset_index(drop=True),
                root,
                build_transform(size, train=split == "train", augment=data.augment),
                sections=sections,
                seed=cfg.seed,
                shuffle_sentences=data.shuffle_sentences and split == "train",
                on_error=data.on_error,
                sample_sentences=data.sample_sentences if split == "train" else 0,
            )
        self.train_set, self.valid_set = sets["train"], sets["valid"]

    # ------------------------------------------------------------------ resume
    def resume_from(self, epoch: int, batches_done: int) -> None:
        """Called by the module when a checkpoint is loaded: continue at this point of the data."""
        self._resume = (epoch, batches_done)

    def batches_per_epoch(self, world_size: int = 1) -> int:
        assert self.train_set is not None
        return len(self.train_set) // world_size // self.cfg.data.batch_size

    # ------------------------------------------------------------------ loaders
    def _loader(self, dataset: Dataset, sampler: EpochSampler, drop_last: bool) -> DataLoader:
        data = self.cfg.data
        return DataLoader(
            dataset,
            batch_size=data.batch_size,
            sampler=sampler,
            drop_last=drop_last,
            num_workers=data.num_workers,
            collate_fn=Collate(self.tokenizer),
            worker_init_fn=_seed_worker,
            # a private generator: creating loader iterators must not consume the global RNG
            generator=torch.Generator().manual_seed(self.cfg.seed),
            pin_memory=torch.cuda.is_available(),
            persistent_workers=False,  # workers must see each epoch's dataset.set_epoch
        )

    def _rank_world(self) -> tuple[int, int]:
        trainer = self._trainer if hasattr(self, "_trainer") else None
        if trainer is None:
            return 0, 1
        return trainer.global_rank, trainer.world_size

    def train_dataloader(self) -> DataLoader:
        assert self.train_set is not None, "call setup() first"
        rank, world = self._rank_world()
        if self.batches_per_epoch(world) == 0:
            raise ValueError(
                f"{len(self.train_set)} training studies are fewer than one batch per rank "
                f"(data.batch_size={self.cfg.data.batch_size}, {world} rank(s)); lower data.batch_size"
            )
        sampler = EpochSampler(
            len(self.train_set),
            self.cfg.data.batch_size,
            self.cfg.seed,
            shuffle=True,
            rank=rank,
            world_size=world,
            dataset=self.train_set,
        )
        if self._resume is not None:
            epoch, done = self._resume
            if done >= self.batches_per_epoch(world):
                epoch, done = epoch + 1, 0
            sampler.set_epoch(epoch)
            sampler.resume_from(epoch, done)
            self._resume = None
        self.train_sampler = sampler
        return self._loader(self.train_set, sampler, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        assert self.valid_set is not None, "call setup() first"
        rank, world = self._rank_world()
        n = len(self.valid_set)
        if n == 0:
            return DataLoader(Subset(self.valid_set, []), batch_size=1)
        sampler = EpochSampler(
            n, self.cfg.data.batch_size, self.cfg.seed, shuffle=False, rank=rank, world_size=world, drop_last=False
        )
        return self._loader(self.valid_set, sampler, drop_last=False)

    def bad_row_report(self) -> dict[str, Any]:
        """Pre-scan findings per split (counts, and the first rows with their reasons)."""
        return {
            split: {"total": scan.total, "bad": len(scan.bad), "examples": [asdict(b) for b in scan.bad[:20]]}
            for split, scan in self.scans.items()
        }
