"""Bad input, built on the fly, through every command that accepts it (issue 11).

Each case runs the CLI in-process (``reclf.cli.main``) with captured output and asserts: no Python traceback,
the exit code, a message naming the file/row/key, nothing written outside ``--out``, and that every good item
was still processed (the counts in ``prepare_report.json``). Helpers build the corpus: truncated PNG/JPEG/DICOM,
0-byte and random-byte files, a decompression bomb (a tiny PNG that declares 20000 x 20000 pixels), 16-bit,
CMYK and RGBA images, non-UTF-8 text, empty and 1 MB reports, malformed CSV rows at the start, middle and end,
duplicate ids, colliding basenames, ``..`` paths, symlinks, a pickle payload that would write a file when
unpickled, and unwritable output folders.
"""

from __future__ import annotations

import json
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers.image_files import write_dicom
from reclf.cli import main

ROOT_USER = hasattr(os, "geteuid") and os.geteuid() == 0


# --- helpers ---------------------------------------------------------------------------------------------------


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    """``reclf ARGV`` in this process: (exit code, stdout + stderr). An exception escaping main fails the test."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse
        code = int(exc.code or 0)
    except BaseException as exc:  # a raw traceback is exactly what this suite forbids
        pytest.fail(f"reclf {' '.join(map(str, argv))} raised {type(exc).__name__}: {exc}")
    out = capsys.readouterr()
    text = out.out + out.err
    assert "Traceback" not in text, text[-2000:]
    return code, text


def snapshot(root: Path, skip: Path | None = None) -> set[str]:
    """Every path below ``root`` (outside ``skip``): what a command may not add to."""
    found = set()
    for p in root.rglob("*"):
        if skip is not None and (p == skip or skip in p.parents):
            continue
        found.add(str(p.relative_to(root)))
    return found


def gray(h: int = 40, w: int = 50, value: int | None = None, seed: int = 0) -> np.ndarray:
    if value is not None:
        return np.full((h, w), value, np.uint8)
    return np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)


def png_bomb(path: Path, width: int = 20000, height: int = 20000) -> Path:
    """A ~100-byte PNG whose header declares ``width x height`` 8-bit pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    body = zlib.compress(b"\x00" * 1024)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


class WritesAFile:
    """A pickle payload: unpickling it would create ``path`` (weights_only loading must refuse it)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (Path.write_text, (Path(self.path), "pwned"))


REPORT = "FINDINGS: The lungs are clear. IMPRESSION: Normal chest."


def build_corpus(tmp: Path) -> dict:
    """A pairs-csv data set with good and bad images and rows; returns what a correct run must report."""
    root = tmp / "data"
    (root / "img").mkdir(parents=True)
    outside = tmp / "elsewhere"
    outside.mkdir()
    good = {}
    Image.fromarray(gray(seed=1)).save(root / "img/a.png")
    good["a"] = "img/a.png"
    Image.fromarray(gray(seed=2)).convert("RGB").save(root / "img/b.jpg", quality=90)
    good["b"] = "img/b.jpg"
    Image.fromarray(gray(seed=3).astype(np.uint16) * 257).save(root / "img/c16.png")  # 16-bit
    good["c"] = "img/c16.png"
    Image.fromarray(gray(seed=4)).convert("CMYK").save(root / "img/d.jpg")
    good["d"] = "img/d.jpg"
    Image.fromarray(gray(seed=5)).convert("RGBA").save(root / "img/e.png")
    good["e"] = "img/e.png"
    write_dicom(root / "img/f.dcm", gray(seed=6) / 255.0, bits=12)
    good["f"] = "img/f.dcm"
    # colliding basenames: scan.png (black) and scan.jpg (white) in one folder
    Image.fromarray(gray(value=0)).save(root / "img/scan.png")
    Image.fromarray(gray(value=255)).save(root / "img/scan.jpg", quality=95)
    good["scan_png"], good["scan_jpg"] = "img/scan.png", "img/scan.jpg"
    # a path with .. that leaves the root, and a symlink to a good image
    Image.fromarray(gray(seed=7)).save(outside / "x.png")
    good["dotdot"] = "../elsewhere/x.png"
    os.symlink(root / "img/a.png", root / "img/link.png")
    good["link"] = "img/link.png"  # the same file as a.png: reported as sharing an image

    bad_images = {}
    png_bomb(root / "img/bomb.png")
    bad_images["bomb"] = "img/bomb.png"  # first: the report keeps 5 examples per filter
    full = (root / "img/a.png").read_bytes()
    (root / "img/trunc.png").write_bytes(full[: len(full) // 2])
    bad_images["trunc_png"] = "img/trunc.png"
    jpg = (root / "img/b.jpg").read_bytes()
    (root / "img/trunc.jpg").write_bytes(jpg[: len(jpg) // 3])
    bad_images["trunc_jpg"] = "img/trunc.jpg"
    dcm = (root / "img/f.dcm").read_bytes()
    (root / "img/trunc.dcm").write_bytes(dcm[: len(dcm) // 2])
    bad_images["trunc_dcm"] = "img/trunc.dcm"
    (root / "img/zero.png").write_bytes(b"")
    bad_images["zero"] = "img/zero.png"
    (root / "img/noise.png").write_bytes(np.random.default_rng(0).bytes(3000))
    bad_images["noise"] = "img/noise.png"

    lines = ["id,image,report"]
    lines.append("s-first,img/a.png,unquoted, comma at the start")  # malformed, first data row
    for k, rel in good.items():
        lines.append(f"{k},{rel},{REPORT}")
    lines.append("s-middle,img/a.png,another unquoted, comma")  # malformed, middle
    for k, rel in bad_images.items():
        lines.append(f"{k},{rel},{REPORT}")
    lines.append(f"big,img/a.png,\"FINDINGS: {'clear lungs. ' * 90_000}\"")  # a 1 MB report (kept)
    lines.append("empty,img/a.png,")  # an empty report
    lines.append(f"a,img/e.png,{REPORT}")  # duplicate id
    lines.append("missing,img/nope.png," + REPORT)
    body = "\n".join(lines).encode("utf-8")
    body += b"\nlatin,img/a.png,FINDINGS: \xe9panchement pleural \xe0 droite.\n"  # cp1252, not UTF-8
    body += b"s-end,img/a.png,an unquoted, comma at the end\n"
    (root / "pairs.csv").write_bytes(body)
    return {
        "root": root,
        "good": good,
        "bad_images": bad_images,
        "rows_good": len(good) + 1,  # + the 1 MB report
        "line_of": {"s-first": 2, "s-middle": 2 + len(good) + 1, "latin": len(lines) + 1, "s-end": len(lines) + 2},
    }


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    return build_corpus(tmp_path_factory.mktemp("bad"))


def prepare_args(root: Path, out: Path, *extra: str, ids: bool = True) -> list[str]:
    return ["prepare", "pairs-csv", "--root", root, "--out", out, "--size", "16", "--workers", "1",
            "--no-progress", *(["--id-column", "id"] if ids else []), *extra]


# --- prepare ---------------------------------------------------------------------------------------------------


def test_prepare_counts_every_bad_item_and_keeps_every_good_one(corpus, tmp_path, capsys):
    base = corpus["root"].parent
    before = snapshot(base)
    out = tmp_path / "out"
    code, text = run_cli(capsys, *prepare_args(corpus["root"], out))
    assert code == 0, text
    assert snapshot(base) == before  # nothing written outside --out
    report = json.loads((out / "prepare_report.json").read_text())
    dropped = report["dropped"]
    assert report["rows_written"] == corpus["rows_good"]
    assert dropped["unreadable_image"]["count"] == len(corpus["bad_images"])
    examples = " ".join(dropped["unreadable_image"]["examples"])
    assert "declares 20000 x 20000" in examples and "--max-pixels" in examples  # the bomb: one unreadable image
    assert dropped["malformed_csv_row"]["count"] == 3
    lines = corpus["line_of"]
    assert [e.split(":")[0] for e in dropped["malformed_csv_row"]["examples"]] == [
        f"line {lines['s-first']}", f"line {lines['s-middle']}", f"line {lines['s-end']}"]
    assert dropped["not_decodable_row"]["count"] == 1
    assert dropped["not_decodable_row"]["examples"] == [f"line {lines['latin']}"]
    assert dropped["report_no_sections"]["count"] == 1
    assert dropped["duplicate_id"]["count"] == 1 and "line" in dropped["duplicate_id"]["examples"][0]
    assert dropped["missing_image"]["count"] == 1
    # one file, one cache entry; two distinct files, two entries (scan.png is black, scan.jpg white)
    table = {r["study_id"]: r for r in _rows(out / "studies.csv")}
    assert table["scan_png"]["image_path"] != table["scan_jpg"]["image_path"]
    black = np.asarray(Image.open(out / table["scan_png"]["image_path"]))
    white = np.asarray(Image.open(out / table["scan_jpg"]["image_path"]))
    assert black.max() < 30 and white.min() > 225
    assert table["link"]["image_path"] == table["a"]["image_path"]
    shared = report["notes"]["rows_sharing_an_image"]
    assert shared["files"] == 1 and {"a", "link", "big"} <= set(shared["examples"]) | {"big"}
    assert "rows name" in text
    # a rerun reuses every cached image (and only for the file it was made from)
    code, _ = run_cli(capsys, *prepare_args(corpus["root"], out))
    again = json.loads((out / "prepare_report.json").read_text())
    assert code == 0 and again["cache"]["written"] == 0 and again["cache"]["reused"] == report["cache"]["written"]


def _rows(path: Path) -> list[dict]:
    import csv

    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_prepare_encoding_fallback_keeps_the_cp1252_row(corpus, tmp_path, capsys):
    out = tmp_path / "out"
    code, text = run_cli(capsys, *prepare_args(corpus["root"], out, "--encoding", "utf-8,cp1252", "--metadata-only"))
    assert code == 0, text
    report = json.loads((out / "prepare_report.json").read_text())
    assert "not_decodable_row" not in report["dropped"]
    table = {r["study_id"]: r for r in _rows(out / "studies.csv")}
    assert "épanchement" in table["latin"]["findings"]
    code, text = run_cli(capsys, *prepare_args(corpus["root"], tmp_path / "o2", "--encoding", "klingon"))
    assert code == 1 and "--encoding 'klingon'" in text


def test_prepare_strict_names_the_first_bad_row(corpus, tmp_path, capsys):
    code, text = run_cli(capsys, *prepare_args(corpus["root"], tmp_path / "out", "--strict"))
    assert code == 1 and "pairs.csv" in text and f"line {corpus['line_of']['s-first']}" in text


def test_prepare_max_pixels(tmp_path, capsys):
    root = tmp_path / "data"
    root.mkdir()
    Image.fromarray(gray(1200, 1000)).save(root / "big.png")
    Image.fromarray(gray()).save(root / "small.png")
    (root / "pairs.csv").write_text(f"image,report\nbig.png,{REPORT}\nsmall.png,{REPORT}\n")
    out = tmp_path / "out"
    code, text = run_cli(capsys, *prepare_args(root, out, "--max-pixels", "1000000", ids=False))
    assert code == 0, text
    report = json.loads((out / "prepare_report.json").read_text())
    assert report["rows_written"] == 1 and report["dropped"]["unreadable_image"]["count"] == 1
    assert "big.png declares 1000 x 1200" in report["dropped"]["unreadable_image"]["examples"][0]
    code, text = run_cli(capsys, *prepare_args(root, tmp_path / "o2", "--max-pixels", "0", ids=False))
    assert code == 1 and "--max-pixels" in text


@pytest.mark.parametrize(
    "content,message",
    [
        (b"", "is empty (0 bytes)"),
        (b"image,report\n", "no data rows"),
        (b"\n\n", "is empty"),
        (b"image,report\nimg.png,\"unterminated\n", None),  # parsed: the quote runs to the end -> one row
        (b"im\xffage,report\na.png,x\n", "header line is not valid utf-8"),
    ],
)
def test_prepare_broken_csv_files(tmp_path, capsys, content, message):
    root = tmp_path / "data"
    root.mkdir()
    (root / "pairs.csv").write_bytes(content)
    out = tmp_path / "out"
    code, text = run_cli(capsys, *prepare_args(root, out, ids=False))
    assert code == 1, text
    assert "pairs.csv" in text or str(root) in text
    if message:
        assert message in text


def test_prepare_first_row_with_an_unquoted_comma(tmp_path, capsys):
    root = tmp_path / "data"
    root.mkdir()
    Image.fromarray(gray()).save(root / "a.png")
    (root / "pairs.csv").write_text(f"image,report\na.png,clear, lungs\na.png,{REPORT}\n")
    out = tmp_path / "out"
    code, text = run_cli(capsys, *prepare_args(root, out, ids=False))
    assert code == 0, text
    report = json.loads((out / "prepare_report.json").read_text())
    assert report["rows_written"] == 1 and report["dropped"]["malformed_csv_row"]["examples"][0].startswith("line 2")


# --- unwritable output folders ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def blocker(tmp_path_factory) -> Path:
    """A regular file: any folder 'below' it cannot be created, whoever runs the tests (root included)."""
    path = tmp_path_factory.mktemp("blocked") / "a-file"
    path.write_text("not a folder")
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    from reclf.methods import create_model

    torch.manual_seed(0)
    model = create_model("convirt", image_encoder={"name": "cnn-small", "image_size": 32},
                         text_encoder={"name": "bert-tiny", "max_tokens": 32})
    folder = tmp_path_factory.mktemp("model") / "m"
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_table(tmp_path_factory) -> Path:
    from reclf.data.synthetic.generate import generate

    out = tmp_path_factory.mktemp("synth") / "s"
    generate(out, n=24, size=64, seed=0, per_class=2, workers=1, sets=("pretrain", "zeroshot_5x200"))
    return out / "zeroshot_5x200"


def pairs_of(table: Path) -> Path:
    """The paired corpus beside ``tiny_table`` (for pretrain)."""
    return table.parent / "pretrain"


def test_every_command_with_an_unwritable_output(corpus, blocker, model_dir, tiny_table, tmp_path, capsys):
    bad = blocker / "out"
    image = tiny_table / "images" / sorted(os.listdir(tiny_table / "images"))[0]
    ckpt = tmp_path / "x.ckpt"
    torch.save({"state_dict": {}}, ckpt)
    results = tmp_path / "results"  # something for `report` to read
    code, text = run_cli(capsys, "evaluate", "zeroshot", "--model", model_dir, "--data", tiny_table, "--out", results,
                         "--cache-dir", "", "--n-boot", "10")
    assert code == 0, text
    commands = {
        "synth": ["synth", "--out", bad, "--n", "20", "--per-class", "2", "--size", "64"],
        "prepare": prepare_args(corpus["root"], bad),
        "pretrain": ["pretrain", "demo_convirt", f"train.runs_dir={bad}",
                     f"data.root={pairs_of(tiny_table)}", "train.max_steps=1", "train.progress=false"],
        "export": ["export", ckpt, "--out", bad],
        "evaluate": ["evaluate", "zeroshot", "--model", model_dir, "--data", tiny_table, "--out", bad,
                     "--cache-dir", "", "--n-boot", "10"],
        "report": ["report", results, "--out", bad, "--samples", "0"],
        "explain": ["explain", "--model", model_dir, "--image", image, "--report", REPORT, "--out", bad],
        "demo": ["demo", "--quick", "--out", bad, "--synth", bad / "synth"],
    }
    for name, argv in commands.items():
        code, text = run_cli(capsys, *argv)
        assert code != 0, (name, text[-500:])
        assert f"reclf {name}: error:" in text, (name, text[-500:])
        assert str(blocker) in text or "not a reclf model" in text, (name, text[-500:])
    assert blocker.read_text() == "not a folder"


@pytest.mark.skipif(ROOT_USER, reason="root ignores folder permissions")
def test_prepare_into_a_read_only_folder(corpus, tmp_path, capsys):
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    try:
        code, text = run_cli(capsys, *prepare_args(corpus["root"], out))
    finally:
        out.chmod(0o755)
    assert code == 1 and "Permission denied" in text and str(out) in text


# --- model files ------------------------------------------------------------------------------------------------


def test_bad_model_files_are_not_models(model_dir, tiny_table, tmp_path, capsys):
    marker = tmp_path / "pwned.txt"
    payload = tmp_path / "payload.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "x": WritesAFile(marker)}, payload)
    real = (model_dir / "model.safetensors").read_bytes()
    trunc = tmp_path / "trunc.ckpt"
    trunc.write_bytes(payload.read_bytes()[:200])
    noise = tmp_path / "noise.ckpt"
    noise.write_bytes(np.random.default_rng(1).bytes(5000))
    broken = tmp_path / "broken_model"
    broken.mkdir()
    (broken / "config.json").write_text((model_dir / "config.json").read_text())
    (broken / "model.safetensors").write_bytes(real[: len(real) // 2])
    notjson = tmp_path / "notjson_model"
    notjson.mkdir()
    (notjson / "config.json").write_bytes(b"\x80\x81 not json")
    (notjson / "model.safetensors").write_bytes(real)
    image = tiny_table / "images" / sorted(os.listdir(tiny_table / "images"))[0]
    for model in (payload, trunc, noise, broken, notjson):
        for argv in (
            ["evaluate", "zeroshot", "--model", model, "--data", tiny_table, "--out", tmp_path / "e",
             "--cache-dir", "", "--n-boot", "10"],
            ["explain", "--model", model, "--image", image, "--report", REPORT, "--out", tmp_path / "x"],
            ["export", model, "--out", tmp_path / "exp"],
        ):
            if argv[0] == "export" and model.is_dir():
                continue
            code, text = run_cli(capsys, *argv)
            assert code == 1, (argv, text[-800:])
            assert "not a reclf model" in text and str(model) in text, (argv, text[-800:])
    assert not marker.exists()  # the payload was never unpickled
    assert not (tmp_path / "exp").exists() and not (tmp_path / "x").exists()


def test_bad_text_encoder_folder(tiny_table, tmp_path, capsys):
    folder = tmp_path / "enc"
    folder.mkdir()
    (folder / "config.json").write_text("{ not json")
    code, text = run_cli(capsys, "pretrain", "demo_convirt", f"text_encoder.name={folder}",
                         f"data.root={pairs_of(tiny_table)}", f"train.runs_dir={tmp_path / 'runs'}",
                         "train.max_steps=1")
    assert code == 1 and str(folder) in text


def test_save_pretrained_never_deletes_other_files(model_dir, tmp_path):
    from reclf.methods import from_pretrained

    model = from_pretrained(model_dir)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a reclf model folder"):
        model.save_pretrained(mine)
    assert sorted(os.listdir(mine)) == ["notes.txt"]
    model.save_pretrained(mine, overwrite=True)
    assert (mine / "notes.txt").read_text() == "keep me"
    assert sorted(os.listdir(mine)) == ["README.md", "config.json", "model.safetensors", "notes.txt"]  # + the card
    model.save_pretrained(mine)  # a model folder: replaced in place, the user's file still kept
    assert (mine / "notes.txt").read_text() == "keep me"
    assert from_pretrained(mine).method == model.method


# --- config values ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override,key",
    [
        ("image_encoder.image_size=0", "image_encoder.image_size"),
        ("train.grad_clip=-1", "train.grad_clip"),
        ("train.lr=.nan", "train.lr"),
        ("train.lr=0", "train.lr"),
        ("data.num_workers=-1", "data.num_workers"),
        ("data.batch_size=0", "data.batch_size"),
    ],
)
def test_config_values_are_checked(override, key, tmp_path, capsys):
    code, text = run_cli(capsys, "pretrain", "demo_convirt", override, f"train.runs_dir={tmp_path}")
    assert code == 2 and key in text  # a usage error (ConfigError), as argparse
    assert list(tmp_path.iterdir()) == []


def test_validate_values_accepts_every_preset():
    from reclf.config import load_config

    for path in sorted(Path("configs").rglob("*.yaml")):
        load_config(path)
    assert math.isnan(float("nan"))


# --- explain ----------------------------------------------------------------------------------------------------


def test_explain_bad_image_and_report(model_dir, tmp_path, capsys):
    good = tmp_path / "g.png"
    Image.fromarray(gray(64, 64)).save(good)
    trunc = tmp_path / "t.png"
    trunc.write_bytes(good.read_bytes()[:60])
    latin = tmp_path / "r.txt"
    latin.write_bytes(b"FINDINGS: \xe9panchement.")
    cases = [
        (["--image", tmp_path / "none.png", "--report", REPORT], "none.png"),
        (["--image", trunc, "--report", REPORT], "t.png"),
        (["--image", good, "--report", f"@{latin}"], "r.txt"),
        (["--image", good, "--report", f"@{tmp_path / 'nope.txt'}"], "nope.txt"),
        (["--image", good, "--report", "   "], "--report is empty"),
    ]
    for extra, named in cases:
        code, text = run_cli(capsys, "explain", "--model", model_dir, "--out", tmp_path / "x", *extra)
        assert code == 1 and named in text, (extra, text)
    assert not (tmp_path / "x").exists()


# --- runs -------------------------------------------------------------------------------------------------------


def test_a_run_that_fails_before_its_first_step_is_marked(tiny_table, tmp_path, capsys):
    runs = tmp_path / "runs"
    code, text = run_cli(capsys, "pretrain", "demo_convirt", f"data.root={pairs_of(tiny_table)}",
                         f"train.runs_dir={runs}", "train.accelerator=bogus", "train.max_steps=1")
    assert code == 1, text
    folders = [p for p in runs.rglob("*") if (p / "config.yaml").exists()]
    for folder in folders:  # a folder, if one was made, says that it failed
        summary = json.loads((folder / "summary.json").read_text())
        assert summary["status"].startswith("failed") and summary["failed_before_first_checkpoint"]


def test_metrics_keep_each_step_once_after_a_resume(tmp_path):
    from reclf.train.runs import MetricsWriter

    w = MetricsWriter(tmp_path / "metrics.csv")
    for step in range(1, 9):
        w.write(step, 0, {"train/loss": 1.0 / step})
    with open(w.path, "a") as fh:
        fh.write("9,0,train/lo")  # the line the kill cut short
    assert w.truncate_after(5) == 4
    for step in range(6, 9):  # the resumed run logs 6..8 again
        w.write(step, 0, {"train/loss": 1.0 / step})
    steps = [r["step"] for r in _rows(w.path)]
    assert steps == [str(s) for s in range(1, 9)]


def test_studies_csv_with_a_non_utf8_row(tiny_table, tmp_path, capsys):
    import shutil

    from reclf.data.studies import read_studies

    table = tmp_path / "t"
    shutil.copytree(pairs_of(tiny_table), table)
    n = len(read_studies(table))
    data = (table / "studies.csv").read_bytes()
    assert data.count(b"\npre-000003,") == 1
    (table / "studies.csv").write_bytes(data.replace(b"\npre-000003,", b"\npr\xe9-000003,"))
    df = read_studies(table)
    assert len(df) == n - 1 and "pre-000003" not in set(df["study_id"])
    err = capsys.readouterr().err
    assert "studies.csv" in err and "dropped 1 row(s) that are not UTF-8" in err and "line " in err
