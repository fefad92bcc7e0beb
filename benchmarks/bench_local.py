"""RECLF's cost next to GLoRIA's (issue 14): the local loss, a profile by part, and the full training step.

Every comparison runs the contenders interleaved in one process and prints their ratio (medians), so a
busy machine slows them alike. Run it with ``nice``, one benchmark at a time::

    PYTHONPATH=src nice -n 10 python benchmarks/bench_local.py --sections loss,parts --batch 16
    PYTHONPATH=src nice -n 10 python benchmarks/bench_local.py --sections step --preset real --batch 16
    PYTHONPATH=src nice -n 10 python benchmarks/bench_local.py --sections step --preset demo --batch 32

Shapes: ``--preset real`` is the MIMIC recipe's local shapes (R = 19x19 = 361 regions, reports of
60-100 words, W up to ~100, d 128) with encoders small enough for 2 cores (cnn-small at 304 px -> 19x19,
bert-tiny); ``--preset demo`` is the demo preset (cnn-small at 128 px -> 8x8, bert-tiny, max 64 tokens,
shorter reports). Encoders, batch and sizes are equal for all methods.

(loss)  forward + backward of the local loss alone on random unit features: RECLF ``srm+irm`` over all
        pairs, RECLF with top-k hard negatives, GLoRIA (double softmax with match_scale + ``lse``).
(parts) where RECLF's and GLoRIA's local loss spends its time: matcher, matching vectors, SRM, IRM /
        pooling, InfoNCE (forward, summed over chunks) and the whole backward.
(step)  full training steps (encoders + all losses + backward + AdamW) of RECLF, GLoRIA and ConVIRT.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_align import interleaved, make_inputs  # noqa: E402
from reclf.align.aggregators import build_aggregator  # noqa: E402
from reclf.align.losses import info_nce  # noqa: E402
from reclf.align.matching import (  # noqa: E402
    DEFAULT_MATCH_SCALE,
    GLORIA_ATTN_TEMPERATURE,
    _attend_grouped,
    pairwise_local_scores,
)

# a vocabulary of words that are one WordPiece each, so W (words) ~ the word count of the report
VOCAB = (
    "the lungs are clear there is no focal consolidation pleural effusion or pneumothorax heart size normal "
    "mediastinal contours stable mild opacity left right lower upper lobe base small large moderate new "
    "improved unchanged since prior study tube line tip seen at level of with without evidence acute process "
    "chest patient side view lateral frontal bilateral minimal likely atelectasis edema vascular congestion"
).split()

PRESETS = {
    # image size (cnn-small layer3: stride 16), words per report (min, max), max tokens
    "real": {"image_size": 304, "words": (60, 100), "max_tokens": 128},
    "demo": {"image_size": 128, "words": (15, 45), "max_tokens": 64},
}


def random_reports(n: int, words: tuple[int, int], seed: int = 0) -> list[str]:
    """Seeded reports of ``words[0]..words[1]`` words, sentences of 8 words."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        k = int(torch.randint(words[0], words[1] + 1, (1,), generator=g))
        idx = torch.randint(len(VOCAB), (k,), generator=g).tolist()
        toks = [VOCAB[i] for i in idx]
        out.append(" ".join(w + ("." if (j + 1) % 8 == 0 else "") for j, w in enumerate(toks)) + ".")
    return out


# ---------------------------------------------------------------------------------------------
# (loss) and (parts)


def _local_fns(batch: int, n_words: int, grid: int, dim: int, chunk: int, hard: int) -> dict[str, Callable]:
    x = make_inputs(batch, n_words, grid, dim, grad=True)
    torch.manual_seed(0)
    reclf = build_aggregator("srm+irm", dim)
    lse = build_aggregator("lse", dim)

    def reclf_all() -> None:
        s = pairwise_local_scores(**x, aggregator=reclf, chunk_size=chunk)
        info_nce(s / 0.1).backward()

    def reclf_topk() -> None:
        from reclf.align.losses import scatter_candidate_scores, topk_candidates

        pairs = topk_candidates(x["img_global"].detach() @ x["txt_global"].detach().t(), hard)
        s = pairwise_local_scores(**x, aggregator=reclf, chunk_size=chunk, pairs=pairs)
        info_nce(scatter_candidate_scores(s, pairs, batch) / 0.1).backward()

    def gloria() -> None:
        s = pairwise_local_scores(
            **x, aggregator=lse, temperature=GLORIA_ATTN_TEMPERATURE, mode="gloria", chunk_size=chunk,
            scale=DEFAULT_MATCH_SCALE,
        )
        info_nce(s * 10.0, sum_directions=True).backward()

    def reclf_before() -> None:  # the same loss with the formulas before issue 14 (reference_local.py)
        from reference_local import reference_pairwise_scores

        info_nce(reference_pairwise_scores(reclf, x, chunk=chunk) / 0.1).backward()

    return {"reclf": reclf_all, "reclf_before": reclf_before, f"reclf_top{hard}": reclf_topk, "gloria": gloria}


def bench_loss(args: argparse.Namespace) -> dict[str, float]:
    fns = _local_fns(args.batch, args.words, args.grid, args.dim, args.chunk, args.hard)
    t = interleaved(fns, args.repeats)
    print(f"\n(loss) local loss forward + backward: B {args.batch}, W {args.words}, R {args.grid ** 2}, d {args.dim}, "
          f"chunk {args.chunk}")
    for k, v in t.items():
        print(f"  {k:<16}{v:>9.3f} s   x GLoRIA {v / t['gloria']:.2f}")
    return t


def bench_parts(args: argparse.Namespace) -> None:
    """Forward time of each part (summed over chunks, the chunks as in ``pairwise_local_scores``) and backward."""
    from reclf.align.aggregators import key_padding_mask

    x = make_inputs(args.batch, args.words, args.grid, args.dim, grad=True)
    torch.manual_seed(0)
    reclf = build_aggregator("srm+irm", args.dim)
    lse = build_aggregator("lse", args.dim)
    n = args.batch

    def run(method: str, acc: dict[str, float]) -> None:
        def tick(key: str, t0: float) -> float:
            t1 = time.perf_counter()
            acc[key] = acc.get(key, 0.0) + t1 - t0
            return t1

        scores = []
        mask, words = x["word_mask"], x["words"]
        for s in range(0, n, args.chunk):
            sl = slice(s, s + args.chunk)
            t0 = time.perf_counter()
            if method == "reclf":
                ctx, _ = _attend_grouped(words[None], x["regions"][sl], 0.1, "softmax", mask[None], True,
                                         need_attention=False)
                t0 = tick("matcher", t0)
                z, valid = reclf.matchings(words[None], ctx, mask[None], x["img_global"][sl], x["txt_global"][None])
                t0 = tick("matching vectors", t0)
                z, _ = reclf.srm(z, key_padding_mask(valid), need_relations=False)
                t0 = tick("SRM", t0)
                sc, _ = reclf.irm(z, valid)
                scores.append(sc.reshape(ctx.shape[0], n))
                tick("IRM", t0)
            else:
                ctx, _ = _attend_grouped(words[None], x["regions"][sl], GLORIA_ATTN_TEMPERATURE, "gloria", mask[None],
                                         True, DEFAULT_MATCH_SCALE)
                t0 = tick("matcher", t0)
                scores.append(lse(words, ctx, mask, x["sentence_ids"], x["img_global"][sl], x["txt_global"]).score)
                tick("pooling (lse)", t0)
        t0 = time.perf_counter()
        s_all = torch.cat(scores)
        loss = info_nce(s_all / 0.1) if method == "reclf" else info_nce(s_all * 10.0, sum_directions=True)
        t0 = tick("InfoNCE", t0)
        loss.backward()
        tick("backward (all)", t0)

    print(f"\n(parts) forward by part + backward, median of {args.repeats} (seconds)")
    for method in ("reclf", "gloria"):
        runs = []
        run(method, {})  # warm-up
        for _ in range(args.repeats):
            acc: dict[str, float] = {}
            run(method, acc)
            runs.append(acc)
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        total = sum(med.values())
        print(f"  {method}: total {total:.3f}")
        for k, v in med.items():
            print(f"    {k:<18}{v:>8.3f}  {100 * v / total:5.1f}%")


# ---------------------------------------------------------------------------------------------
# (step)


def build_models(preset: str, methods: list[str], text_size: str = "tiny", image: str = "cnn-small",
                 image_size: int | None = None, **overrides) -> dict:
    """Models of ``methods`` on equal encoders, seeded identically."""
    from reclf.config import ImageEncoderConfig, TextEncoderConfig
    from reclf.methods import create_model

    spec = PRESETS[preset]
    size = image_size or spec["image_size"]
    img_cfg = ImageEncoderConfig(name=image, image_size=size)
    text_kw = {"hidden_size": 768, "num_layers": 12, "num_heads": 12} if text_size == "base" else {}
    txt_cfg = TextEncoderConfig(name="bert-tiny", max_tokens=spec["max_tokens"], **text_kw)
    models = {}
    for m in methods:
        torch.manual_seed(0)
        models[m] = create_model(m, img_cfg, txt_cfg, **overrides.get(m, {}))
    return models


def bench_step(args: argparse.Namespace) -> dict[str, float]:
    spec = PRESETS[args.preset]
    methods = ["reclf", "gloria", "convirt"]
    models = build_models(args.preset, methods)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(args.batch, 1, spec["image_size"], spec["image_size"], generator=g)
    reports = random_reports(args.batch, spec["words"])
    fns = {}
    shapes = {}
    for m, model in models.items():
        model.train()
        tokens = model.tokenizer(reports)
        shapes[m] = (int(tokens.word_mask.shape[1]), model.image_encoder.local_grid(spec["image_size"]))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step(model=model, tokens=tokens, opt=opt, reports=reports) -> None:
            terms = model.loss({"images": images, "tokens": tokens, "reports": reports})
            opt.zero_grad(set_to_none=True)
            terms["loss"].backward()
            opt.step()

        fns[m] = step
    t = interleaved(fns, args.repeats)
    w, grid = shapes["reclf"]
    print(f"\n(step) full training step, preset {args.preset}: B {args.batch}, W {w}, R {grid[0]}x{grid[1]}, "
          f"image {spec['image_size']} px, cnn-small + bert-tiny, all pairs, {torch.get_num_threads()} threads")
    for k, v in t.items():
        print(f"  {k:<10}{v:>9.3f} s  {args.batch / v:8.1f} pairs/s   x GLoRIA {v / t['gloria']:.2f}   "
              f"x ConVIRT {v / t['convirt']:.2f}")
    return t


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sections", default="loss,parts,step")
    p.add_argument("--preset", choices=sorted(PRESETS), default="real", help="(step) shapes")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--words", type=int, default=80, help="(loss, parts) padded words per report")
    p.add_argument("--grid", type=int, default=19, help="(loss, parts) regions = grid x grid")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--chunk", type=int, default=8)
    p.add_argument("--hard", type=int, default=7, help="(loss) hard negatives of the top-k variant")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"# bench_local: torch {torch.__version__}, {torch.get_num_threads()} threads")
    sections = args.sections.split(",")
    if "loss" in sections:
        bench_loss(args)
    if "parts" in sections:
        bench_parts(args)
    if "step" in sections:
        bench_step(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
