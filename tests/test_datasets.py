"""Image pipeline (no flip!), datasets with bad rows, the collate and the resumable sampler."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers.train_stub import make_table
from reclf.data.datasets import (
    BadDataError,
    Collate,
    EpochSampler,
    StudyDataset,
    check_bad_fraction,
    scan_studies,
)
from reclf.data.studies import read_studies
from reclf.data.transforms import EvalTransform, TrainTransform, affine_matrix, apply_affine, resize_and_pad
from reclf.utils.seed import rng


def _left_marked(h: int = 60, w: int = 80) -> np.ndarray:
    img = np.zeros((h, w), dtype=np.float32)
    img[20:40, 5:25] = 1.0  # a bright marker on the image's left
    return img


def _centre_x(x: torch.Tensor) -> float:
    w = x[0].sum(0)
    return float((w * torch.arange(w.numel())).sum() / w.sum())


def test_eval_transform_resizes_keeps_aspect_and_pads():
    out = EvalTransform(32)(_left_marked(60, 80))
    assert out.shape == (1, 32, 32) and out.dtype == torch.float32
    assert 0.0 <= out.min() and out.max() <= 1.0
    # 80 wide -> 32, 60 high -> 24 rows, padded with 4 black rows top and bottom
    assert out[0, :4].abs().sum() == 0 and out[0, -4:].abs().sum() == 0 and out[0, 4:28].sum() > 0
    assert torch.equal(out, EvalTransform(32)(_left_marked(60, 80)))  # deterministic


def test_train_transform_never_flips_left_to_right():
    t = TrainTransform(32)
    img = _left_marked()
    for i in range(40):
        out = t(img, rng(0, i))
        assert out.shape == (1, 32, 32) and float(out.min()) >= 0.0 and float(out.max()) <= 1.0
        assert _centre_x(out) < 16, f"seed {i}: the left marker moved to the right half"


def test_train_transform_is_seeded_and_varies():
    t = TrainTransform(32)
    img = _left_marked()
    a, b, c = t(img, rng(1, 5)), t(img, rng(1, 5)), t(img, rng(1, 6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(ValueError, match="seeded"):
        t(img)


def test_affine_refuses_a_reflection():
    flip = np.array([[-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=np.float32)
    with pytest.raises(ValueError, match="left and right"):
        apply_affine(resize_and_pad(torch.rand(1, 8, 8), 8), flip)
    for i in range(20):
        m = affine_matrix(rng(3, i), TrainTransform(8).augment)
        assert m[0, 0] * m[1, 1] - m[0, 1] * m[1, 0] > 0


def test_scan_counts_missing_files_and_empty_reports(tmp_path):
    make_table(tmp_path, n_train=8, n_valid=2, missing=2, empty_report=1)
    df = read_studies(tmp_path)
    train = df[df.split == "train"].reset_index(drop=True)
    scan = scan_studies(train, tmp_path, ["findings", "impression"])
    assert len(scan.bad) == 3 and len(scan.good) == 5
    reasons = " ".join(b.reason for b in scan.bad)
    assert "does not exist" in reasons and "empty report" in reasons
    with pytest.raises(BadDataError, match="row 0 .*does not exist.*on_error=skip"):
        scan_studies(train, tmp_path, ["findings", "impression"], on_error="raise")
    check_bad_fraction(3, 8, 0.5, "x")
    with pytest.raises(BadDataError, match="max_bad_fraction"):
        check_bad_fraction(3, 8, 0.2, "x")


def test_unreadable_image_is_skipped_and_counted_by_the_collate(tmp_path):
    make_table(tmp_path, n_train=4, n_valid=0, corrupt=1)
    df = read_studies(tmp_path)
    ds = StudyDataset(df, tmp_path, TrainTransform(32), seed=0)
    with pytest.warns(UserWarning, match="skipping study s0"):
        samples = [ds[i] for i in range(4)]
    assert samples[0] is None and all(s is not None for s in samples[1:])
    batch = Collate(tokenizer=lambda reports: {"n": len(reports)})(samples)
    assert batch["n_bad"] == 1 and batch["images"].shape == (3, 1, 32, 32)
    assert batch["study_ids"] == ["s1", "s2", "s3"] and batch["tokens"] == {"n": 3}
    assert batch["labels"].shape == (3, 14) and torch.isnan(batch["labels"]).all()
    assert "left" in batch["reports"][1] or "right" in batch["reports"][1]
    empty = Collate()([None, None])
    assert empty["images"] is None and empty["n_bad"] == 2
    strict = StudyDataset(df, tmp_path, TrainTransform(32), on_error="raise")
    with pytest.raises(BadDataError, match="s0"):
        strict[0]


def test_dataset_is_deterministic_per_epoch_and_shuffles_sentences(tmp_path):
    make_table(tmp_path, n_train=2, n_valid=0)
    df = read_studies(tmp_path)
    ds = StudyDataset(df, tmp_path, TrainTransform(32), seed=0, shuffle_sentences=True)
    a, b = ds[0], ds[0]
    assert torch.equal(a["image"], b["image"]) and a["report"] == b["report"]
    seen = set()
    for epoch in range(8):
        ds.set_epoch(epoch)
        seen.add(ds[0]["report"])
    assert len(seen) > 1  # the sentence order changes with the epoch
    assert all("opacity in the left lung" in s for s in seen)


def test_epoch_sampler_splits_ranks_and_resumes_mid_epoch():
    full = list(EpochSampler(22, 4, seed=3))
    assert len(full) == 20 and len(set(full)) == 20
    ranks = [list(EpochSampler(22, 4, seed=3, rank=r, world_size=2)) for r in range(2)]
    assert all(len(r) == 8 for r in ranks) and not set(ranks[0]) & set(ranks[1])
    s = EpochSampler(22, 4, seed=3)
    s.set_epoch(1)
    epoch1 = list(s)
    assert epoch1 != full
    s.resume_from(1, 2)
    assert list(s) == epoch1[8:]  # the two trained batches are skipped, once
    assert list(s) == epoch1
