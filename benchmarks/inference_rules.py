"""Each inference rule of a trained model, side by side: which score should a method rank with?

For every exported model given, the local score is pooled as trained (``aggregator``) and as the max over
words (GLoRIA's ``get_local_similarities``), fused as the method's own ``similarity`` (and, for GLoRIA, as
RECLF's ``fused``), and measured on:

- in-batch retrieval accuracy@1 on the pretraining table's **valid** split (batches of 32, both directions
  averaged): the tuning criterion, the number a rule is chosen by;
- with ``--zeroshot``, zero-shot accuracy on a test table and each rule's prompt-length bias (reported,
  never used to choose).

    python benchmarks/inference_rules.py runs/demo3/pretrain/reclf@seed*/*/export \\
        --pretrain out/synth/pretrain [--zeroshot out/synth/zeroshot_5x200]

docs/methods.md ("Inference rules, measured") has the numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json

import pandas as pd
import torch

from reclf.data.reports import study_report_text
from reclf.evaluate.features import encode_images, encode_texts
from reclf.evaluate.loading import load_model
from reclf.evaluate.tasks.zeroshot import ZeroShotConfig, run_zeroshot


def valid_pairs(root: str) -> tuple[list[str], list[str]]:
    df = pd.read_csv(f"{root}/studies.csv")
    df = df[df.split == "valid"].reset_index(drop=True)
    return [f"{root}/{p}" for p in df.image_path], [study_report_text(r, ["findings", "impression"]) for _, r in
                                                     df.iterrows()]


@torch.no_grad()
def in_batch_acc1(model, img, txt, batch: int = 32) -> float:
    accs = []
    for s in range(0, len(txt.words) - batch + 1, batch):
        sim = model.similarity(img.index(slice(s, s + batch)), txt.index(torch.arange(s, s + batch)))
        t = torch.arange(batch)
        accs.append(((sim.argmax(1) == t).float().mean() + (sim.argmax(0) == t).float().mean()).item() / 2)
    return sum(accs) / len(accs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="+", help="exported model folders")
    ap.add_argument("--pretrain", required=True, help="the pretraining table (its valid split is used)")
    ap.add_argument("--zeroshot", default=None, help="a zero-shot table (test): accuracy and length bias")
    ap.add_argument("--size", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(1)
    paths, texts = valid_pairs(args.pretrain)
    for folder in args.models:
        loaded = load_model(folder)
        model = loaded.model
        img, _ = encode_images(model, paths, args.size, 64, cache_dir="")
        txt = encode_texts(model, texts)
        own = model.params
        if not own.has_local:
            continue
        sims = [own.similarity] + (["fused"] if own.similarity == "gloria" else [])
        for pooling in ("aggregator", "max"):
            for sim in sims:
                model.params = dataclasses.replace(own, local_inference=pooling, similarity=sim)
                row = {"model": folder, "local_inference": pooling, "similarity": sim,
                       "val_acc1": round(in_batch_acc1(model, img, txt), 4)}
                if args.zeroshot:
                    with contextlib.redirect_stdout(io.StringIO()):
                        res = run_zeroshot(loaded, args.zeroshot, None, ZeroShotConfig(n_boot=10, cache_dir=""))
                    row["zeroshot"] = {k.split("/")[0]: round(v.value, 3) for k, v in res.metrics.items()
                                       if k.endswith("/accuracy")}
                    row["length_bias"] = res.extra["length_bias"]
                print(json.dumps(row), flush=True)
        model.params = own


if __name__ == "__main__":
    main()
