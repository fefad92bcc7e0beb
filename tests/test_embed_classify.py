"""`reclf embed` and `reclf classify` on a folder mixing PNG, JPEG, DICOM and one corrupt file, with a tiny trained
model (cnn-small 64 px + bert-tiny, a few steps): classify --labels agrees with `evaluate zeroshot` on the same
images to the last digit; embed is resumable and names what it could not read; the Python API gives the same."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from helpers.eval_stub import CLASSES, make_folder
from helpers.eval_stub import run_command as _run
from helpers.image_files import write_dicom, write_jpeg
from reclf.cli import main
from reclf.data.studies import read_studies, write_studies
from reclf.evaluate import classify as classify_cli
from reclf.evaluate import cli as eval_cli
from reclf.evaluate.embed import embed_files, list_folder, list_table, read_embeddings
from reclf.evaluate.loading import load_model


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from reclf.methods import create_model

    root = tmp_path_factory.mktemp("apply")
    data = make_folder(root / "data", n=12)
    df = read_studies(data)
    # s1 as JPEG, s2 as DICOM, s3 corrupt; a text file the folder listing must ignore
    for sid, suffix in (("s1", ".jpg"), ("s2", ".dcm")):
        png = data / "images" / f"{sid}.png"
        arr = np.asarray(Image.open(png), dtype=np.float32) / 255.0
        (write_jpeg if suffix == ".jpg" else write_dicom)(png.with_suffix(suffix), arr)
        png.unlink()
        df.loc[df["study_id"] == sid, "image_path"] = f"images/{sid}{suffix}"
    (data / "images" / "s3.png").write_bytes(b"this is not a PNG")
    (data / "images" / "notes.txt").write_text("not an image")
    write_studies(df, data)

    torch.manual_seed(0)
    model = create_model("reclf", image_encoder={"name": "cnn-small", "image_size": 64},
                         text_encoder={"name": "bert-tiny"})
    readable = df[df["study_id"] != "s3"].head(8)
    from reclf.evaluate.features import prepare_image

    images = torch.from_numpy(np.stack([prepare_image(data / p, 64) for p in readable["image_path"]]))[:, None]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(3):  # a few steps: a trained model, not the random init
        opt.zero_grad()
        model.loss({"images": images, "reports": list(readable["report"])})["loss"].backward()
        opt.step()
    model.eval()
    model.save_pretrained(root / "model")
    return root, data


def test_classify_agrees_with_evaluate_zeroshot(setup, capsys):
    root, data = setup
    _run(eval_cli, ["zeroshot", "--model", str(root / "model"), "--data", str(data), "--n-boot", "50",
                    "--cache-dir", "", "--prompts", "chexpert", "--prompts-per-class", "3",
                    "--out", str(root / "zs")])
    df = read_studies(data)
    labels = pd.DataFrame({"image": df["image_path"].str.replace("images/", "", regex=False), "class": df["class"]})
    labels.to_csv(root / "labels.csv", index=False)
    capsys.readouterr()
    classes = ",".join(reversed(CLASSES))  # any order: classes are sorted, as zeroshot sorts them
    rc = main(["classify", "--model", str(root / "model"), "--images", str(data / "images"), "--classes", classes,
               "--prompts-per-class", "3", "--n-boot", "50", "--labels", str(root / "labels.csv"),
               "--out", str(root / "preds.csv")])
    assert rc == 0
    console = capsys.readouterr().out
    assert "1 of 12 files could not be read" in console and "s3.png" in console

    zs = json.loads((root / "zs" / "results.json").read_text())
    ours = json.loads((root / "preds.results.json").read_text())
    shared = [k for k in zs["metrics"] if k.endswith(("/accuracy", "/macro_f1"))]
    assert "method/accuracy" in shared and "fused/accuracy" in shared
    for key in shared:
        assert ours["metrics"][key] == zs["metrics"][key], key  # value, interval and n, to the last digit
    assert zs["data"]["used"] == ours["data"]["used"] == 11
    for mode in ("global", "local", "fused", "method"):
        assert ours["extra"]["per_item"][f"{mode}/accuracy"]["values"] == \
            zs["extra"]["per_item"][f"{mode}/accuracy"]["values"]
        assert ours["extra"]["confusion"][mode] == zs["extra"]["confusion"][mode]
        m = ours["metrics"][f"{mode}/macro_auroc"]
        assert 0.0 <= m["ci_low"] <= m["value"] <= m["ci_high"] <= 1.0
    assert ours["extra"]["prompts"] == zs["extra"]["prompts"]

    preds = pd.read_csv(root / "preds.csv", keep_default_na=False)
    assert sorted(preds["image"]) == sorted(list_folder(data / "images").ids) and len(preds) == 12
    bad = preds[preds["image"] == "s3.png"].iloc[0]
    assert bad["prediction"] == "" and "s3.png" in bad["error"]
    good = preds[preds["image"] != "s3.png"]
    assert (good["error"] == "").all() and set(good["prediction"]) <= set(CLASSES)
    score_cols = [f"score:{c}" for c in sorted(CLASSES)]
    best = np.asarray(sorted(CLASSES))[good[score_cols].astype(float).to_numpy().argmax(1)]
    assert list(best) == list(good["prediction"])
    # the hits per labelled image are the same as zeroshot's, image by image
    hit = dict(zip(good["image"], good["prediction"]))
    expected = [hit[i] == c for i, c in zip(labels["image"], labels["class"]) if i != "s3.png"]
    assert expected == [bool(v) for v in zs["extra"]["per_item"]["method/accuracy"]["values"]]


def test_classify_with_a_prompt_file_and_unknown_classes(setup, tmp_path):
    root, data = setup
    prompts = tmp_path / "p.yaml"
    prompts.write_text("name: mine\nversion: 1\nmulticlass:\n  effusion: [pleural effusion, fluid]\n"
                       "  normal: [no acute findings]\n")
    _run(classify_cli, ["--model", str(root / "model"), "--images", str(data / "images"), "--prompts",
                        str(prompts), "--out", str(tmp_path / "a.csv"), "--score", "global"])
    a = pd.read_csv(tmp_path / "a.csv", keep_default_na=False)
    assert [c for c in a.columns if c.startswith("score:")] == ["score:effusion", "score:normal"]
    # classes no built-in prompt file has: their names are their prompts
    _run(classify_cli, ["--model", str(root / "model"), "--images", str(data / "images"), "--classes",
                        "dog,cat", "--out", str(tmp_path / "b.csv")])
    b = pd.read_csv(tmp_path / "b.csv", keep_default_na=False)
    assert set(b["prediction"]) - {""} <= {"dog", "cat"}
    labels = tmp_path / "l.csv"
    pd.DataFrame({"image": ["s0.png"], "class": ["bird"]}).to_csv(labels, index=False)
    with pytest.raises(ValueError, match="line 2: class 'bird'"):
        _run(classify_cli, ["--model", str(root / "model"), "--images", str(data / "images"), "--classes",
                            "dog,cat", "--out", str(tmp_path / "c.csv"), "--labels", str(labels)])


def test_embed_mixed_folder_names_the_corrupt_file(setup, capsys):
    root, data = setup
    out = root / "emb" / "all.safetensors"
    rc = main(["embed", "--model", str(root / "model"), "--images", str(data / "images"), "--out", str(out),
               "--local", "--batch-size", "4", "--shard-size", "5"])
    assert rc == 0
    console = capsys.readouterr().out
    assert "batch 1/3" in console and "s3.png" in console and "1 of 12 files could not be read" in console
    emb = read_embeddings(out)
    ids = list_folder(data / "images").ids
    assert emb.ids == [i for i in ids if i != "s3.png"] and {"s1.jpg", "s2.dcm"} <= set(emb.ids)
    assert [b[0] for b in emb.bad] == ["s3.png"] and "s3.png" in emb.bad[0][1]
    assert emb.meta["ignored"] == json.dumps(["notes.txt"])
    model = load_model(root / "model").model
    assert emb.global_.shape == (11, model.embed_dim)
    assert emb.local.shape == (11, emb.grid[0] * emb.grid[1], model.embed_dim)
    assert not (out.parent / "all.safetensors.parts").exists()
    # the Python API gives the same embeddings (other batches: equal to float precision)
    api = model.embed_images([data / "images" / i for i in ids], local=True)
    assert [str(p).rsplit("/", 1)[1] for p in api.ids] == emb.ids and [b[0] for b in api.bad] == [ids.index("s3.png")]
    assert torch.allclose(api.global_, emb.global_, atol=1e-5) and torch.allclose(api.local, emb.local, atol=1e-5)
    x = model.preprocess(data / "images" / "s2.dcm")
    assert x.shape == (1, 64, 64) and 0.0 <= float(x.min()) <= float(x.max()) <= 1.0
    zs = model.zero_shot([data / "images" / i for i in ids], {"effusion": ["pleural effusion"], "normal": "clear"})
    assert zs.classes == ["effusion", "normal"] and zs.scores["method"].shape == (11, 2)
    assert len(zs.predictions()) == 11 and len(zs.bad) == 1


def test_embed_resumes_from_its_shards(setup, monkeypatch):
    import reclf.methods.inference as inference

    root, data = setup
    loaded = load_model(root / "model")
    images = list_folder(data / "images")
    out = root / "resume" / "emb.safetensors"
    real = inference.embed_images
    calls = []

    def dies_on_second_shard(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed while the second shard runs
        return real(*args, **kwargs)

    monkeypatch.setattr(inference, "embed_images", dies_on_second_shard)
    with pytest.raises(KeyboardInterrupt):
        embed_files(loaded, images, out, shard_size=5, batch_size=4, quiet=True)
    assert not out.exists() and len(list((root / "resume" / "emb.safetensors.parts").iterdir())) == 1
    monkeypatch.setattr(inference, "embed_images", real)
    resumed = embed_files(loaded, images, out, shard_size=5, batch_size=4, quiet=True)
    assert resumed.shards_reused == 1 and resumed.embedded == 11 and [b[0] for b in resumed.bad] == ["s3.png"]
    fresh = embed_files(loaded, images, root / "fresh.safetensors", shard_size=5, batch_size=4, quiet=True)
    assert fresh.shards_reused == 0
    assert torch.equal(read_embeddings(out).global_, read_embeddings(root / "fresh.safetensors").global_)
    again = embed_files(loaded, images, out, shard_size=5, batch_size=4, quiet=True)
    assert again.up_to_date and again.embedded == 11
    with pytest.raises(FileExistsError, match="--overwrite"):  # another file list: never mixed with the old one
        embed_files(loaded, list_table(data), out, shard_size=5, quiet=True)


def test_embed_from_a_table(setup):
    root, data = setup
    out = root / "table.safetensors"
    _run_embed = ["embed", "--model", str(root / "model"), "--table", str(data / "studies.csv"), "--out", str(out)]
    assert main(_run_embed) == 0
    emb = read_embeddings(out)
    assert emb.local is None and len(emb.ids) == 11 and emb.ids[0] == "s0" and [b[0] for b in emb.bad] == ["s3"]
