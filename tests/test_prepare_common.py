"""The image cache (DICOM handling, resumability, bad files), masks (SIIM RLE, RSNA boxes) and the drop log."""

import json

import numpy as np
import pytest
from PIL import Image

from helpers.image_files import gradient, write_dicom, write_jpeg, write_png
from reclf.data.images import load_image, png_is_complete, target_shape
from reclf.data.sources.cache import CacheConfigError, CacheJob, build_cache
from reclf.data.sources.common import BadInputError, DropLog
from reclf.data.sources.masks import MaskSpecError, boxes_to_mask, rle_decode, rle_encode, rle_runs


def _cache(jobs, out, size=32, square=False, workers=1):
    return build_cache(jobs, out, size, square=square, workers=workers, progress=False)


def test_dicom_variants_cached_with_orientation_and_polarity(tmp_path):
    arr = gradient(64, 80, seed=1)  # dark on the left, bright on the right
    files = {
        "m2_16": write_dicom(tmp_path / "a.dcm", arr, bits=16),
        "m1_16": write_dicom(tmp_path / "b.dcm", arr, bits=16, monochrome1=True),
        "m1_12": write_dicom(tmp_path / "c.dcm", arr, bits=12, monochrome1=True, view="AP"),
        "m2_8_win": write_dicom(tmp_path / "d.dcm", arr, bits=8, window=(128, 256)),
    }
    jobs = [CacheJob(k, str(p), f"images/{k}.png") for k, p in files.items()]
    res = _cache(jobs, tmp_path / "out")
    assert res.written == 4 and not res.failed
    assert res.meta["m1_12"]["view"] == "AP"
    for k in files:
        img = np.asarray(Image.open(tmp_path / "out" / f"images/{k}.png"))
        assert img.dtype == np.uint8 and img.shape == target_shape(64, 80, 32) == (32, 40)
        left, right = img[:, :5].mean(), img[:, -5:].mean()
        assert right - left > 150, (k, left, right)  # MONOCHROME1 inverted back, 16-bit scaled to the full range


def test_jpeg_resized_short_side_and_square(tmp_path):
    src = write_jpeg(tmp_path / "big.jpg", gradient(300, 250))
    res = _cache([CacheJob("j", str(src), "images/j.png")], tmp_path / "o1", size=50)
    assert res.written == 1
    assert Image.open(tmp_path / "o1/images/j.png").size == (50, 60)  # (W, H): short side 50
    _cache([CacheJob("j", str(src), "images/j.png")], tmp_path / "o2", size=50, square=True)
    sq = np.asarray(Image.open(tmp_path / "o2/images/j.png"))
    assert sq.shape == (50, 50) and sq[:, :2].max() < 10  # padded columns are black
    ref = load_image(tmp_path / "o1/images/j.png")
    assert ref[:, -3:].mean() > 0.85 and ref[:, :3].mean() < 0.15


def test_bad_files_fail_resume_skips_done_and_redoes_broken(tmp_path):
    good = [write_png(tmp_path / f"g{i}.png", gradient(40, 40, seed=i)) for i in range(3)]
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (tmp_path / "bad.dcm").write_bytes(b"DICM" * 10)
    trunc = tmp_path / "trunc.png"
    trunc.write_bytes(good[0].read_bytes()[:60])
    jobs = [
        CacheJob(p.name, str(p), f"images/{p.stem}.png")
        for p in [*good, tmp_path / "bad.jpg", tmp_path / "bad.dcm", trunc]
    ]
    out = tmp_path / "out"
    res = _cache(jobs, out)
    assert res.written == 3 and set(res.failed) == {"bad.jpg", "bad.dcm", "trunc.png"}
    assert all("Error" in v for v in res.failed.values())
    res2 = _cache(jobs, out)
    assert res2.written == 0 and res2.reused == 3 and len(res2.failed) == 3
    # A broken cached file (truncated) and a deleted one are redone; the others are reused.
    cached = out / "images/g1.png"
    cached.write_bytes(cached.read_bytes()[:-20])
    assert not png_is_complete(cached)
    (out / "images/g2.png").unlink()
    res3 = _cache(jobs, out)
    assert res3.written == 2 and res3.reused == 1 and png_is_complete(cached)
    assert not list(out.rglob("*.tmp"))  # atomic writes leave no temporaries
    with pytest.raises(CacheConfigError, match="size"):
        _cache(jobs, out, size=64)


def test_parallel_workers_match_serial(tmp_path):
    srcs = [write_jpeg(tmp_path / f"{i}.jpg", gradient(48, 40, seed=i)) for i in range(12)]
    jobs = [CacheJob(p.name, str(p), f"images/{p.stem}.png") for p in srcs]
    _cache(jobs, tmp_path / "a", workers=1)
    res = build_cache(jobs, tmp_path / "b", 32, workers=2, progress=False, chunk=4)
    assert res.written == 12
    for p in srcs:
        a = np.asarray(Image.open(tmp_path / "a/images" / f"{p.stem}.png"))
        b = np.asarray(Image.open(tmp_path / "b/images" / f"{p.stem}.png"))
        assert np.array_equal(a, b)


def test_rle_is_relative_offset_column_major():
    # 4x3 image; flat column-major index i -> (row i % 4, col i // 4). Runs: pixels 1-2, then gap 3 -> 6.
    mask = rle_decode("1 2 3 1", shape=(4, 3))
    expect = np.zeros((4, 3), bool)
    expect[1, 0] = expect[2, 0] = True  # flat 1, 2
    expect[2, 1] = True  # flat 6 = 1+2+3
    assert np.array_equal(mask, expect)
    assert rle_encode(mask) == "1 2 3 1"
    rng = np.random.default_rng(0)
    m = rng.random((16, 16)) > 0.7
    assert np.array_equal(rle_decode(rle_encode(m), (16, 16)), m)
    assert not rle_decode("-1", (16, 16)).any()
    with pytest.raises(MaskSpecError):
        rle_decode("200 100", (16, 16))  # beyond the image
    with pytest.raises(MaskSpecError):
        rle_runs("1 2 3")


def test_boxes_and_masks_follow_the_image_geometry(tmp_path):
    arr = gradient(100, 100)
    src = write_dicom(tmp_path / "x.dcm", arr, bits=16)
    spec = json.dumps({"boxes": [[10, 20, 30, 40]]})
    res = _cache([CacheJob("x", str(src), "images/x.png", spec, "masks/x.png")], tmp_path / "o", size=50)
    assert res.written == 1
    mask = np.asarray(Image.open(tmp_path / "o/masks/x.png")) > 0
    expect = boxes_to_mask([[10, 20, 30, 40]], (100, 100))[::2, ::2]
    assert mask.shape == (50, 50) and np.array_equal(mask, expect)
    bad = json.dumps({"rle": ["1 2"], "shape": [1024, 1024]})  # SIIM RLE on a 100x100 image: refused
    res = _cache([CacheJob("y", str(src), "images/y.png", bad, "masks/y.png")], tmp_path / "o", size=50)
    assert "y" in res.failed and not (tmp_path / "o/images/y.png").exists()


def test_drop_log_counts_and_strict():
    log = DropLog()
    log.bad("missing_image", "gone", 2, ["a", "b"])
    log.filtered("view_lateral", "policy", 3)
    assert log.total() == 5 and log.as_json()["missing_image"]["examples"] == ["a", "b"]
    strict = DropLog(strict=True)
    strict.filtered("view_lateral", "policy", 3)  # a policy filter never raises
    with pytest.raises(BadInputError, match="gone"):
        strict.bad("missing_image", "gone", 1, ["a"])
