"""Benchmark of the alignment parts (issue #3): speed of the vectorised matcher, cost of RECLF's
relation reasoning, and memory growth with the batch.

    .venv/bin/python benchmarks/bench_align.py            # the full run (a few minutes on 2 cores)
    .venv/bin/python benchmarks/bench_align.py --quick    # smaller, for a smoke check

(a) GLoRIA's local similarity, vectorised (``attend(mode="gloria")`` + the ``lse`` aggregator) vs a
    per-caption loop written the way GLoRIA's ``local_loss`` / ``attention_fn`` are (a Python loop over
    captions, each caption repeated against all images, transposes and ``.contiguous()`` copies);
    both must give the same scores.
(b) RECLF all-pairs scoring (``srm+irm`` + symmetric InfoNCE, forward + backward) vs GLoRIA's local loss
    (vectorised ``lse`` + CE, forward + backward) on the same inputs.
(c) Peak memory of RECLF's forward + backward at batch 16/32/64/128 with a fixed chunk, each size in a
    fresh subprocess (``resource.getrusage`` max RSS, minus the RSS after the inputs are built).

Timings interleave the contenders and report the median, so a busy machine slows both alike.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from reclf.align.aggregators import build_aggregator
from reclf.align.losses import local_contrastive_loss
from reclf.align.matching import GLORIA_ATTN_TEMPERATURE, GLORIA_TEMP1, pairwise_local_scores

# RECLF defaults measured here (also the defaults of AggregatorConfig / SRMConfig / matching)
D_Z, HEADS, LAYERS, CHUNK = 64, 4, 1, 8


def make_inputs(batch: int, n_words: int, grid: int, dim: int, seed: int = 0, grad: bool = False) -> dict:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(n_words // 2, n_words + 1, (batch,), generator=g)
    mask = torch.arange(n_words)[None, :] < lengths[:, None]
    sent = torch.where(mask, torch.arange(n_words)[None, :] // 8, torch.full((batch, n_words), -1))
    out = {
        "words": F.normalize(torch.randn(batch, n_words, dim, generator=g), dim=-1),
        "word_mask": mask,
        "sentence_ids": sent,
        "regions": F.normalize(torch.randn(batch, grid * grid, dim, generator=g), dim=-1),
        "img_global": F.normalize(torch.randn(batch, dim, generator=g), dim=-1),
        "txt_global": F.normalize(torch.randn(batch, dim, generator=g), dim=-1),
    }
    if grad:
        for key in ("words", "regions", "img_global", "txt_global"):
            out[key].requires_grad_(True)
    return out


# ---------------------------------------------------------------------------------------------
# GLoRIA's structure, re-written for the comparison (loop over captions; not used by the library)


def _gloria_attention(query: torch.Tensor, context: torch.Tensor, temp1: float) -> torch.Tensor:
    """query [B, d, W] (one caption repeated), context [B, d, h, w] -> weighted context [B, d, W]."""
    b, n_q = query.size(0), query.size(2)
    n_src = context.size(2) * context.size(3)
    ctx = context.view(b, -1, n_src)
    ctx_t = torch.transpose(ctx, 1, 2).contiguous()
    attn = torch.bmm(ctx_t, query).view(b * n_src, n_q)
    attn = torch.softmax(attn, dim=-1).view(b, n_src, n_q)
    attn = torch.transpose(attn, 1, 2).contiguous().view(b * n_q, n_src)
    attn = torch.softmax(attn * temp1, dim=-1).view(b, n_q, n_src)
    return torch.bmm(ctx, torch.transpose(attn, 1, 2).contiguous())


def gloria_loop_scores(
    words: torch.Tensor,
    lengths: list[int],
    regions: torch.Tensor,
    grid: int,
    temp1: float = GLORIA_TEMP1,
    temp2: float = 5.0,
) -> torch.Tensor:
    """[I, T] local scores, one caption at a time against all images (GLoRIA's ``local_loss``)."""
    n = regions.shape[0]
    img = regions.transpose(1, 2).reshape(n, -1, grid, grid)  # [B, d, h, w]
    cols = []
    for i in range(words.shape[0]):
        n_w = lengths[i]
        word = words[i, :n_w].t().unsqueeze(0).contiguous().repeat(n, 1, 1)  # [B, d, W_i]
        wctx = _gloria_attention(word, img, temp1)
        word = word.transpose(1, 2).contiguous().view(n * n_w, -1)
        wctx = wctx.transpose(1, 2).contiguous().view(n * n_w, -1)
        cos = F.cosine_similarity(word, wctx, dim=1, eps=1e-8).view(n, n_w)
        cols.append(torch.log(torch.exp(cos * temp2).sum(dim=1, keepdim=True)))
    return torch.cat(cols, dim=1)


# ---------------------------------------------------------------------------------------------
# timing helpers


def interleaved(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds per call; the contenders alternate so machine load hits them alike."""
    for fn in fns.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def bench_a(batch: int, n_words: int, grid: int, dim: int, repeats: int) -> dict:
    x = make_inputs(batch, n_words, grid, dim)
    lengths = x["word_mask"].sum(1).tolist()
    lse = build_aggregator("lse", dim)

    def vectorised() -> torch.Tensor:
        return pairwise_local_scores(
            **x, aggregator=lse, temperature=GLORIA_ATTN_TEMPERATURE, mode="gloria", chunk_size=batch
        )

    def loop() -> torch.Tensor:
        return gloria_loop_scores(x["words"], lengths, x["regions"], grid)

    with torch.no_grad():
        diff = float((vectorised() - loop()).abs().max())
        t = interleaved({"vectorised": vectorised, "loop": loop}, repeats)
    return {
        "max_abs_diff": diff,
        "vectorised_s": t["vectorised"],
        "loop_s": t["loop"],
        "speedup": t["loop"] / t["vectorised"],
    }


def bench_b(batch: int, n_words: int, grid: int, dim: int, repeats: int, chunk: int) -> dict:
    x = make_inputs(batch, n_words, grid, dim, grad=True)
    torch.manual_seed(0)
    reclf = build_aggregator("srm+irm", dim, d_z=D_Z, heads=HEADS, layers=LAYERS)
    lse = build_aggregator("lse", dim)
    lengths = x["word_mask"].sum(1).tolist()

    def reclf_step() -> None:
        s = pairwise_local_scores(**x, aggregator=reclf, chunk_size=chunk)
        local_contrastive_loss(s, 0.1).backward()

    def gloria_step() -> None:
        s = pairwise_local_scores(
            **x, aggregator=lse, temperature=GLORIA_ATTN_TEMPERATURE, mode="gloria", chunk_size=chunk
        )
        local_contrastive_loss(s, 0.1, sum_directions=True).backward()

    def gloria_loop_step() -> None:
        s = gloria_loop_scores(x["words"], lengths, x["regions"], grid)
        local_contrastive_loss(s, 0.1, sum_directions=True).backward()

    t = interleaved({"reclf": reclf_step, "gloria": gloria_step, "gloria_loop": gloria_loop_step}, repeats)
    return {
        "reclf_s": t["reclf"],
        "gloria_s": t["gloria"],
        "gloria_loop_s": t["gloria_loop"],
        "ratio": t["reclf"] / t["gloria"],
        "ratio_vs_loop": t["reclf"] / t["gloria_loop"],
    }


# ---------------------------------------------------------------------------------------------
# memory: one subprocess per size


def _rss_mib() -> float:
    """Current resident set size (not the lifetime peak, which import-time spikes would mask)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20


class PeakRSS:
    """Polls the current RSS in a thread while the block runs; ``peak`` is the highest value seen."""

    def __enter__(self) -> PeakRSS:
        import threading

        self.peak, self._stop = _rss_mib(), False

        def poll() -> None:
            while not self._stop:
                self.peak = max(self.peak, _rss_mib())
                time.sleep(0.0005)

        self._thread = threading.Thread(target=poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop = True
        self._thread.join()
        self.peak = max(self.peak, _rss_mib())


def memory_child(batch: int, n_words: int, grid: int, dim: int, chunk: int, mode: str, threads: int) -> None:
    torch.set_num_threads(threads)
    x = make_inputs(batch, n_words, grid, dim, grad=(mode != "no_grad"))
    torch.manual_seed(0)
    agg = build_aggregator("srm+irm", dim, d_z=D_Z, heads=HEADS, layers=LAYERS)
    if mode == "checkpoint":  # import the checkpoint machinery before the baseline
        from torch.utils.checkpoint import checkpoint

        checkpoint(lambda a: a * 2, torch.ones(1, requires_grad=True), use_reentrant=False).sum().backward()
    base = _rss_mib()
    with PeakRSS() as peak:
        if mode == "no_grad":
            with torch.no_grad():
                pairwise_local_scores(**x, aggregator=agg, chunk_size=chunk)
        else:
            s = pairwise_local_scores(**x, aggregator=agg, chunk_size=chunk, checkpoint=(mode == "checkpoint"))
            local_contrastive_loss(s, 0.1).backward()
    print(json.dumps({"batch": batch, "mode": mode, "peak_mib": peak.peak - base}))


def bench_c(
    sizes: list[int], n_words: int, grid: int, dim: int, chunk: int, threads: int, no_ckpt_max: int
) -> list[dict]:
    rows = []
    for mode in ("no_grad", "checkpoint", "plain"):
        for batch in sizes:
            if mode == "plain" and batch > no_ckpt_max:
                continue
            cmd = [
                sys.executable,
                __file__,
                "--child",
                str(batch),
                mode,
                "--words",
                str(n_words),
                "--grid",
                str(grid),
                "--dim",
                str(dim),
                "--chunk",
                str(chunk),
                "--threads",
                str(threads),
            ]
            res = subprocess.run(cmd, capture_output=True, text=True, check=True)
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    return rows


def fit_growth(points: list[tuple[int, float]]) -> tuple[float, float, float]:
    """Least-squares ``peak = a + b*B + c*B^2`` through ``(B, peak)`` points: c ~ 0 means linear growth."""
    x = torch.tensor([[1.0, b, b * b] for b, _ in points], dtype=torch.float64)
    y = torch.tensor([[m] for _, m in points], dtype=torch.float64)
    coef = torch.linalg.lstsq(x, y).solution.flatten().tolist()
    return coef[0], coef[1], coef[2]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--words", type=int, default=40)
    p.add_argument("--grid", type=int, default=16)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--chunk", type=int, default=CHUNK)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--child", nargs=2, metavar=("BATCH", "MODE"), help=argparse.SUPPRESS)
    p.add_argument("--sections", default="abc", help="which parts to run (a, b, c)")
    p.add_argument("--sizes", default="", help="(c) batch sizes, e.g. 8,16,32,64 (default 16,32,64,128)")
    p.add_argument("--plain-max", type=int, default=64, help="(c) largest batch measured without checkpointing")
    args = p.parse_args(argv)
    if args.child:
        memory_child(int(args.child[0]), args.words, args.grid, args.dim, args.chunk, args.child[1], args.threads)
        return 0
    torch.set_num_threads(args.threads)
    if args.quick:
        args.batch, args.repeats = 16, 3
    sizes = [8, 16, 32] if args.quick else [16, 32, 64, 128]
    if args.sizes:
        sizes = [int(v) for v in args.sizes.split(",")]
    print(
        f"# bench_align: torch {torch.__version__}, {args.threads} threads, batch {args.batch}, "
        f"{args.words} words, {args.grid}x{args.grid} regions, d {args.dim}, chunk {args.chunk}, "
        f"RECLF srm+irm d_z {D_Z} heads {HEADS} layers {LAYERS}"
    )
    if "a" in args.sections:
        a = bench_a(args.batch, args.words, args.grid, args.dim, args.repeats)
        print("\n(a) GLoRIA local similarity, all pairs, forward")
        print(f"{'implementation':<28}{'seconds':>10}")
        print(f"{'per-caption loop (GLoRIA)':<28}{a['loop_s']:>10.4f}")
        print(f"{'vectorised (reclf)':<28}{a['vectorised_s']:>10.4f}")
        print(f"speed-up {a['speedup']:.1f}x (target >= 20x); max |difference| {a['max_abs_diff']:.2e}")
    if "b" in args.sections:
        b = bench_b(args.batch, args.words, args.grid, args.dim, args.repeats, args.chunk)
        print("\n(b) local loss, forward + backward")
        print(f"{'method':<34}{'seconds':>10}")
        print(f"{'GLoRIA lse (vectorised)':<34}{b['gloria_s']:>10.4f}")
        print(f"{'GLoRIA lse (per-caption loop)':<34}{b['gloria_loop_s']:>10.4f}")
        print(f"{'RECLF srm+irm (all pairs)':<34}{b['reclf_s']:>10.4f}")
        print(
            f"ratio RECLF / GLoRIA-vectorised {b['ratio']:.2f}x (target <= 3x); "
            f"RECLF / GLoRIA-loop {b['ratio_vs_loop']:.2f}x"
        )
    if "c" in args.sections:
        rows = bench_c(
            sizes, args.words, args.grid, args.dim, args.chunk, args.threads,
            no_ckpt_max=32 if args.quick else args.plain_max,
        )
        print(f"\n(c) peak memory of RECLF scoring (MiB above the inputs), chunk {args.chunk}")
        print(f"{'batch':>6}{'no_grad':>12}{'fwd+bwd ckpt':>14}{'fwd+bwd plain':>15}{'pairs':>8}")
        by = {(r["batch"], r["mode"]): r["peak_mib"] for r in rows}
        for batch in sizes:
            plain = by.get((batch, "plain"))
            print(
                f"{batch:>6}{by[(batch, 'no_grad')]:>12.0f}{by[(batch, 'checkpoint')]:>14.0f}"
                f"{(f'{plain:.0f}' if plain is not None else '-'):>15}{batch * batch:>8}"
            )
        print("\ngrowth law, least squares peak = a + b*B + c*B^2 (MiB, float32), projected; bf16 ~ half")
        for mode in ("no_grad", "checkpoint", "plain"):
            pts = [(bs, by[(bs, mode)]) for bs in sizes if (bs, mode) in by]
            if len(pts) >= 3:
                a, b_, c_ = fit_growth(pts)
                proj = {bs: a + b_ * bs + c_ * bs * bs for bs in (72, 128)}
                print(
                    f"{mode:>10}: a {a:8.1f}  b {b_:8.2f}/B  c {c_:8.4f}/B^2   B 72: {proj[72]:8.0f} MiB fp32, "
                    f"{proj[72] / 2:8.0f} bf16;  B 128: {proj[128]:8.0f} fp32, {proj[128] / 2:8.0f} bf16"
                )
        for mode in ("no_grad", "checkpoint", "plain"):
            pts = [(bs, by[(bs, mode)]) for bs in sizes if (bs, mode) in by]
            if len(pts) >= 2:
                (b0, m0), (b1, m1) = pts[-2], pts[-1]
                print(
                    f"{mode:>10}: batch x{b1 / b0:.0f} -> memory x{m1 / max(m0, 1e-9):.2f} (linear: x{b1 / b0:.0f},"
                    f" quadratic: x{(b1 / b0) ** 2:.0f})"
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
