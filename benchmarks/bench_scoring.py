"""Full-scale scoring (issue 14 item 3): RECLF's own score for every image x report pair vs the global score.

    PYTHONPATH=src nice -n 10 python benchmarks/bench_scoring.py [--images 1000 --reports 1000 --measured 100]

The method's score is ``fused = (cos / tau_g + s_local / tau_l) / 2`` (``VLModel.similarity``), with
``s_local`` from the softmax matcher + ``srm+irm`` over every pair, at the real shapes (W 80 words,
R 19x19 = 361 regions, d 128), in eval mode without gradients. Scoring is linear in the number of pairs
(each pair is independent), so the local part is timed on all images x ``--measured`` reports and scaled
to ``--reports``; the global score is timed in full. With ``--encoders`` the script also times the
encoders that any retrieval has to run once per item (ResNet-50 at 299 px and a BERT-base-sized text
encoder, random weights, on a few items, scaled to the full counts) and prints the end-to-end ratio.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_align import make_inputs  # noqa: E402
from reclf.align.aggregators import build_aggregator  # noqa: E402
from reclf.align.matching import (  # noqa: E402
    DEFAULT_MATCH_SCALE,
    GLORIA_ATTN_TEMPERATURE,
    pairwise_local_scores,
)


def _timed(fn, repeats: int = 1) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def encoder_seconds(n_images: int, n_reports: int, sample: int = 4) -> tuple[float, float]:
    """Seconds to encode ``n_images`` / ``n_reports`` with ResNet-50 at 299 px and a BERT-base-sized
    encoder (random weights), timed on ``sample`` items and scaled."""
    from bench_local import build_models, random_reports

    model = build_models("real", ["convirt"], text_size="base", image="resnet50", image_size=299)["convirt"]
    model.eval()
    images = torch.rand(sample, 1, 299, 299)
    reports = random_reports(sample, (60, 100))
    with torch.no_grad():
        model.encode_image(images[:1])
        t_img = _timed(lambda: model.encode_image(images))
        tokens = model.tokenizer(reports)
        t_txt = _timed(lambda: model.encode_text(tokens))
    return t_img / sample * n_images, t_txt / sample * n_reports


def rerank_cost(model_dir: str, data: str, n: int, rerank_ks: list[int], chunk: int) -> None:
    """With a trained model: how often each image's own report falls outside the global top-K (re-ranking
    can never recover it), image->report R@1/5/10 with every pair scored by the method vs the global top-K
    re-ranked, and the time of both scores on these features (encoding excluded)."""
    import numpy as np

    from reclf.evaluate.common import load_table, report_texts
    from reclf.evaluate.features import encode_images, encode_texts, similarity_matrix
    from reclf.evaluate.loading import image_size_of, load_model

    loaded = load_model(model_dir)
    model = loaded.model.eval()
    table = load_table(data)
    table.df = table.df.iloc[:n].reset_index(drop=True)
    with torch.no_grad():
        img, enc = encode_images(model, table.paths(), image_size_of(model))
        df = table.df.iloc[enc.kept].reset_index(drop=True)
        texts = report_texts(df, model)
        txt = encode_texts(model, texts)
        t = time.perf_counter()
        glob = similarity_matrix(model.global_similarity, img, txt, chunk)
        t_glob = time.perf_counter() - t
        t = time.perf_counter()
        full = similarity_matrix(model.similarity, img, txt, chunk)
        t_full = time.perf_counter() - t
    _, inst = np.unique(np.asarray(texts), return_inverse=True)
    inst_t = torch.as_tensor(inst)
    same = inst_t[:, None] == inst_t[None, :]  # [images, reports]: relevant reports of each image

    def recall(scores: torch.Tensor, k: int) -> float:
        top = scores.topk(k, dim=1).indices
        return float(same.gather(1, top).any(dim=1).float().mean())

    m = len(df)
    print(f"\n# re-ranking cost: {model_dir} ({model.method}) on {data}, first {m} studies, "
          f"grid {img.grid}, {txt.words.shape[1]} words max")
    print(f"time, all {m}x{m} pairs: global {t_glob:.3f} s, method ({model.params.similarity}) {t_full:.1f} s, "
          f"ratio {t_full / t_glob:.0f}x")
    print(f"{'scoring':<28}{'outside global top-K':>22}{'R@1':>8}{'R@5':>8}{'R@10':>8}")
    print(f"{'global':<28}{'-':>22}" + "".join(f"{recall(glob, k):>8.3f}" for k in (1, 5, 10)))
    print(f"{'method, every pair':<28}{'-':>22}" + "".join(f"{recall(full, k):>8.3f}" for k in (1, 5, 10)))
    for kk in rerank_ks:
        top = glob.topk(min(kk, m), dim=1).indices
        keep = torch.zeros_like(same).scatter(1, top, True)
        rer = full.masked_fill(~keep, float("-inf"))  # global top-K re-ranked by the method, the rest below
        outside = 1.0 - float(same.gather(1, top).any(dim=1).float().mean())
        row = "".join(f"{recall(rer, k):>8.3f}" for k in (1, 5, 10))
        print(f"{f'method, re-rank top {kk}':<28}{outside:>22.3f}" + row)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--reports", type=int, default=1000)
    p.add_argument("--measured", type=int, default=100, help="reports actually scored locally (then scaled)")
    p.add_argument("--words", type=int, default=80)
    p.add_argument("--grid", type=int, default=19)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--chunk", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--encoders", action="store_true", help="also time ResNet-50 + BERT-base encoding")
    p.add_argument("--model", default=None, help="a trained model (export folder): measure the re-ranking cost")
    p.add_argument("--data", default=None, help="with --model: a study table folder (e.g. retrieval_8x200)")
    p.add_argument("--studies", type=int, default=500, help="with --model: the first N studies")
    p.add_argument("--rerank", default="10,50,100", help="with --model: re-ranking depths K")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.model:
        if not args.data:
            p.error("--model needs --data (a study table folder)")
        rerank_cost(args.model, args.data, args.studies, [int(k) for k in args.rerank.split(",")], args.chunk)
        return 0
    torch.manual_seed(0)
    x = make_inputs(max(args.images, args.reports), args.words, args.grid, args.dim)
    img_g, txt_g = x["img_global"][: args.images], x["txt_global"][: args.reports]
    agg = build_aggregator("srm+irm", args.dim).eval()
    m = min(args.measured, args.reports)

    def global_score() -> torch.Tensor:
        return (F.normalize(img_g, dim=-1) @ F.normalize(txt_g, dim=-1).t()) / 0.07

    def local_score() -> torch.Tensor:
        s = pairwise_local_scores(
            x["words"][:m], x["word_mask"][:m], x["sentence_ids"][:m], x["regions"][: args.images], img_g, txt_g[:m],
            agg, chunk_size=args.chunk,
        )
        return (global_score()[:, :m] + s / 0.1) / 2

    lse = build_aggregator("lse", args.dim)

    def gloria_score() -> torch.Tensor:  # GLoRIA's own all-pairs local score at the same shapes, for scale
        return pairwise_local_scores(
            x["words"][:m], x["word_mask"][:m], x["sentence_ids"][:m], x["regions"][: args.images], img_g, txt_g[:m],
            lse, temperature=GLORIA_ATTN_TEMPERATURE, mode="gloria", chunk_size=args.chunk, scale=DEFAULT_MATCH_SCALE,
        )

    with torch.no_grad():
        t_global = _timed(global_score, repeats=5)
        t_local = _timed(local_score) * args.reports / m
        t_gloria = _timed(gloria_score) * args.reports / m
    pairs = args.images * args.reports
    print(f"# bench_scoring: torch {torch.__version__}, {torch.get_num_threads()} threads; {args.images} images x "
          f"{args.reports} reports = {pairs:,} pairs; W {args.words}, R {args.grid ** 2}, d {args.dim}")
    print(f"global score (cosines, all pairs)          {t_global:10.4f} s")
    print(f"method score (fused, all pairs; {m} reports timed, scaled x{args.reports / m:g})"
          f" {t_local:10.1f} s   {pairs / t_local:,.0f} pairs/s")
    print(f"GLoRIA local score (all pairs, same shapes) {t_gloria:10.1f} s   {pairs / t_gloria:,.0f} pairs/s")
    print(f"ratio method / global, scores only         {t_local / t_global:10.0f} x")
    print(f"ratio method / GLoRIA local score          {t_local / t_gloria:10.2f} x")
    if args.encoders:
        t_img, t_txt = encoder_seconds(args.images, args.reports)
        enc = t_img + t_txt
        print(f"encoding (ResNet-50 299 px {t_img:.0f} s + BERT-base-sized {t_txt:.0f} s, scaled)  {enc:10.1f} s")
        print(f"ratio end to end (encode + method) / (encode + global)  {(enc + t_local) / (enc + t_global):.2f} x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
