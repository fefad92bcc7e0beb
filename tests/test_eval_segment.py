import json

import torch

from helpers.eval_stub import StubImageEncoder, StubModel, make_folder
from reclf.evaluate.loading import wrap_model
from reclf.evaluate.tasks.segment import SegmentConfig, run_segment
from reclf.models.unet import Segmenter, UNetDecoder


def test_unet_output_matches_the_mask_shape():
    enc = StubImageEncoder()
    for size in (64, 72):  # also a size that is not a multiple of the coarsest stride
        seg = Segmenter(enc, freeze_encoder=True, width=8).eval()
        assert seg(torch.rand(2, 1, size, size)).shape == (2, 1, size, size)
    dec = UNetDecoder([4], width=8)  # a single-map pyramid (ViT-like)
    assert dec([torch.rand(1, 4, 4, 4)], (64, 64)).shape == (1, 1, 64, 64)


def test_frozen_encoder_gets_no_gradient_and_finetune_does():
    for freeze in (True, False):
        seg = Segmenter(StubImageEncoder(), freeze_encoder=freeze, width=8).train()
        seg(torch.rand(2, 1, 32, 32)).sum().backward()
        grads = [p.grad for p in seg.encoder.parameters()]
        assert all(g is None for g in grads) == freeze
        assert seg.encoder.training == (not freeze)


def test_segment_end_to_end(tmp_path):
    torch.manual_seed(0)
    data = make_folder(tmp_path / "data", n=24, size=32)
    cfg = SegmentConfig(fractions=[0.5, 1.0], seeds=[0, 1], epochs=2, min_steps=4, batch_size=8, width=8, n_boot=30,
                        image_size=32)
    run_segment(wrap_model(StubModel(image_size=32)), data, tmp_path / "out", cfg)
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    for name in ("dice", "iou", "dice_pos", "iou_pos"):
        m = saved["metrics"][f"100%/{name}"]
        assert 0 <= m["value"] <= 1 and m["seeds"] == 2
    assert "empty" in saved["config"]["empty_mask_convention"]
    counts = saved["config"]["test_counts"]["all"]
    assert counts["test_positives"] < counts["test_images"]


def test_decoder_widths_losses_presets_and_balance(tmp_path):
    import numpy as np

    from reclf.evaluate.tasks.segment import SEGMENT_PRESETS, balanced_rows, segment_preset
    from reclf.models.unet import SMP_CHANNELS, segmentation_loss

    enc = StubImageEncoder()
    dec = UNetDecoder(list(enc.pyramid_channels), channels=SMP_CHANNELS)
    assert dec.widths == list(SMP_CHANNELS[: len(enc.pyramid_channels)])
    assert dec.head.in_channels == dec.widths[-1]
    logits, target = torch.randn(2, 1, 8, 8), (torch.rand(2, 1, 8, 8) > 0.7).float()
    perfect = (target * 20 - 10)
    for kind in ("bce_dice", "focal_dice"):
        assert segmentation_loss(perfect, target, kind) < segmentation_loss(logits, target, kind)
    pos = np.array([True, False, False, False, True, False])
    rows = np.arange(10, 16)
    b = balanced_rows(pos, rows, seed=0)
    assert len(b) == 4 and {10, 14} <= set(b) and np.array_equal(b, balanced_rows(pos, rows, seed=0))
    cfg = segment_preset("mgca", epochs=2)
    assert cfg.freeze_encoder and cfg.loss == "focal_dice" and cfg.epochs == 2 and cfg.preset == "mgca"
    assert not segment_preset("gloria").freeze_encoder and SEGMENT_PRESETS["gloria"]["betas"] == (0.5, 0.999)
    torch.manual_seed(0)
    data = make_folder(tmp_path / "data", n=24, size=32)
    cfg = segment_preset("mgca", fractions=[1.0], seeds=[0], epochs=2, image_size=32, n_boot=20,
                         decoder_channels=[32, 16, 8, 8, 4])
    res = run_segment(wrap_model(StubModel(image_size=32)), data, tmp_path / "out", cfg)
    assert res.config["preset"] == "mgca" and res.config["balance_train"]
    assert 0 <= res.metrics["100%/dice"].value <= 1
