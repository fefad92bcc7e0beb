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
from reclf.align.matching import pairwise_local_scores  # noqa: E402


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
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
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

    with torch.no_grad():
        t_global = _timed(global_score, repeats=5)
        t_local = _timed(local_score) * args.reports / m
    pairs = args.images * args.reports
    print(f"# bench_scoring: torch {torch.__version__}, {torch.get_num_threads()} threads; {args.images} images x "
          f"{args.reports} reports = {pairs:,} pairs; W {args.words}, R {args.grid ** 2}, d {args.dim}")
    print(f"global score (cosines, all pairs)          {t_global:10.4f} s")
    print(f"method score (fused, all pairs; {m} reports timed, scaled x{args.reports / m:g})"
          f" {t_local:10.1f} s   {pairs / t_local:,.0f} pairs/s")
    print(f"ratio method / global, scores only         {t_local / t_global:10.0f} x")
    if args.encoders:
        t_img, t_txt = encoder_seconds(args.images, args.reports)
        enc = t_img + t_txt
        print(f"encoding (ResNet-50 299 px {t_img:.0f} s + BERT-base-sized {t_txt:.0f} s, scaled)  {enc:10.1f} s")
        print(f"ratio end to end (encode + method) / (encode + global)  {(enc + t_local) / (enc + t_global):.2f} x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
