"""GPU check of the full-size recipe (issue 14 item 4): RECLF, GLoRIA and ConVIRT at B 72, all pairs, bf16.

    python benchmarks/gpu_check.py                  # on a GPU: ResNet-50 (224 -> 299 px, 19x19 regions)
                                                    # + a BERT-base-sized text encoder, 20 bf16 steps at B 72
    python benchmarks/gpu_check.py --checkpoint     # the same with chunked checkpointing of the local loss
    python benchmarks/gpu_check.py --tiny           # CPU smoke run (tiny encoders, B 4, 2 steps; tested in CI)

Random weights (no hub, no download): the text encoder is ``bert-tiny`` built at BERT-base size (768
wide, 12 layers, 12 heads) with the packaged tokenizer. Reports are seeded random text of 60-100 words.
For each method: mean step time over the timed steps (after ``--warmup`` steps), pairs/s (images per
second), and the peak memory (``torch.cuda.max_memory_allocated`` on a GPU; the process's max RSS on a
CPU, which is a lifetime peak and only a rough figure). One table; ``--out FILE`` also writes JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import resource
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_local import random_reports  # noqa: E402

METHODS = ("reclf", "gloria", "convirt")


@dataclass
class CheckRow:
    method: str
    batch: int
    step_s: float
    pairs_per_s: float
    peak_mib: float
    loss: float


def _build(method: str, args: argparse.Namespace):
    from reclf.config import ImageEncoderConfig, TextEncoderConfig
    from reclf.methods import create_model

    if args.tiny:
        img = ImageEncoderConfig(name="cnn-small", image_size=64)
        txt = TextEncoderConfig(name="bert-tiny", max_tokens=64)
    else:
        img = ImageEncoderConfig(name="resnet50", image_size=224, resize_to=299)
        txt = TextEncoderConfig(name="bert-tiny", max_tokens=128, hidden_size=768, num_layers=12, num_heads=12)
    overrides = {}
    if method != "convirt":
        overrides = {"chunk_size": args.chunk, "checkpoint_chunks": args.checkpoint}
    torch.manual_seed(0)
    return create_model(method, img, txt, **overrides)


def _peak_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_method(method: str, args: argparse.Namespace, device: torch.device) -> CheckRow:
    model = _build(method, args).to(device).train()
    size = model.image_cfg.image_size
    g = torch.Generator().manual_seed(0)
    images = torch.rand(args.batch, 1, size, size, generator=g).to(device)
    reports = random_reports(args.batch, (60, 100) if not args.tiny else (10, 30))
    tokens = model.tokenizer(reports).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    use_bf16 = args.precision == "bf16"
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    times, loss = [], float("nan")
    for i in range(args.warmup + args.steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        with autocast:
            terms = model.loss({"images": images, "tokens": tokens, "reports": reports})
        opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= args.warmup:
            times.append(time.perf_counter() - t)
        loss = float(terms["loss"].detach())
    step = sum(times) / len(times)
    row = CheckRow(method, args.batch, step, args.batch / step, _peak_mib(device), loss)
    del model, opt, images, tokens
    gc.collect()
    return row


def main(argv: list[str] | None = None) -> list[CheckRow]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny encoders, B 4, 2 steps: runs on a CPU in seconds")
    p.add_argument("--batch", type=int, default=None, help="default 72 (4 with --tiny)")
    p.add_argument("--steps", type=int, default=None, help="timed steps; default 20 (2 with --tiny)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first; default 3 (1 with --tiny)")
    p.add_argument("--chunk", type=int, default=8, help="images per chunk of the local loss")
    p.add_argument("--checkpoint", action="store_true", help="chunked checkpointing of the local loss")
    p.add_argument("--precision", choices=("bf16", "fp32"), default=None, help="default bf16 on GPU, fp32 on CPU")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--device", default=None, help="default cuda when available, else cpu")
    p.add_argument("--out", default=None, help="also write the table as JSON")
    args = p.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    args.batch = args.batch or (4 if args.tiny else 72)
    args.steps = args.steps or (2 if args.tiny else 20)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.tiny else 3)
    args.precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    if device.type == "cpu" and not args.tiny:
        print("note: no GPU; the full-size check takes very long on a CPU (--tiny: smoke run)", file=sys.stderr)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    rows = [run_method(m, args, device) for m in args.methods.split(",")]
    preset = "tiny (cnn-small 64 px + bert-tiny)" if args.tiny else "ResNet-50 224->299 (19x19) + BERT-base-sized"
    print(f"# gpu_check: {name}, torch {torch.__version__}, {preset}, B {args.batch}, all pairs, {args.precision}, "
          f"chunk {args.chunk}{' + checkpointing' if args.checkpoint else ''}, {args.steps} timed steps")
    base = {r.method: r.step_s for r in rows}
    mem = "peak MiB (cuda)" if device.type == "cuda" else "max RSS MiB"
    print(f"{'method':<10}{'step s':>10}{'pairs/s':>10}{mem:>18}{'x GLoRIA':>10}{'loss':>10}")
    for r in rows:
        ratio = r.step_s / base["gloria"] if "gloria" in base else float("nan")
        print(f"{r.method:<10}{r.step_s:>10.3f}{r.pairs_per_s:>10.1f}{r.peak_mib:>18.0f}{ratio:>10.2f}{r.loss:>10.3f}")
    if args.out:
        from reclf.utils.io import atomic_write_json

        atomic_write_json(args.out, {"device": name, "settings": vars(args), "rows": [asdict(r) for r in rows]})
    return rows


if __name__ == "__main__":
    main()
