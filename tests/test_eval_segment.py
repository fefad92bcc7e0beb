import json

import torch

from reclf.evaluate.loading import wrap_model
from reclf.evaluate.segment import SegmentConfig, run_segment
from reclf.evaluate.unet import Segmenter, UNetDecoder
from test_eval_stub import StubImageEncoder, StubModel, make_folder


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
