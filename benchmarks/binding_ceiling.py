"""Can the demo's image encoder learn the two-finding binding at all? A supervised ceiling.

Every contrastive model ranks "effusion left, nodule right" against its swap at chance, and the image probe
(`binding_probe.py --image-probe`) finds the binding missing in their image features. This asks whether that
is the learning signal's fault or the benchmark's: the same encoder (architecture, input size, image learning
rate, augmentation, steps and batch as the demo's pretraining) is trained *with the answer* — per finding
type, is it present, on the left, on the right (SynthCXR's annotations of the pretraining train split;
bilateral = both) — and then scored on the relations binding studies:

- ``swap_supervised``: the share of swapped pairs (two findings of different types on opposite sides) for
  which the head's log-likelihood of the true sides beats that of the sides exchanged (chance 0.5);
- ``image_probe``: the same frozen-feature side probe as ``binding_probe.py --image-probe`` (global vector and
  region vectors, two-finding and one-finding images), so the numbers compare with the pretrained models'.

If the supervised encoder binds well above chance, the pretraining signal is what is missing; if it does not,
the target is out of reach of this encoder at this budget, whatever the method.

    python benchmarks/binding_ceiling.py [--synth out/synth-seed1] [--steps 500] [--encoder cnn-small]
        [--weights imagenet] [--image-size 64] [--seed 0] [--out ceiling.json] [--save-encoder enc.safetensors]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from binding_probe import emit, side_probe  # noqa: E402
from reclf.config import ImageEncoderConfig  # noqa: E402
from reclf.data.synthetic.vocab import FINDINGS  # noqa: E402
from reclf.data.transforms import TrainTransform  # noqa: E402
from reclf.methods.inference import prepare_image  # noqa: E402
from reclf.models.image import build_image_encoder  # noqa: E402
from reclf.train.schedule import WarmupCosine, warmup_steps  # noqa: E402

HEADS = ("present", "left", "right")


def targets(annotations: str) -> np.ndarray:
    """``[len(FINDINGS), 3]``: per finding type, present / on the left / on the right (bilateral: both)."""
    y = np.zeros((len(FINDINGS), len(HEADS)), dtype=np.float32)
    for a in json.loads(annotations):
        k = FINDINGS.index(a["finding"])
        y[k, 0] = 1
        if a["side"] in ("left", "bilateral"):
            y[k, 1] = 1
        if a["side"] in ("right", "bilateral"):
            y[k, 2] = 1
    return y


class Supervised(nn.Module):
    """The encoder + one linear head on its global vector: what a global image vector can be taught to hold."""

    def __init__(self, encoder: nn.Module, image_size: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.global_dim, len(FINDINGS) * len(HEADS))
        self.config = {"image_encoder": {"image_size": image_size}}  # what binding_probe's preprocess reads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x).global_).view(-1, len(FINDINGS), len(HEADS))

    def encode_image(self, x: torch.Tensor):  # the interface binding_probe.side_probe reads
        return self.encoder(x)


def train(model: Supervised, root: Path, size: int, steps: int, batch: int, lr: float, seed: int) -> list[float]:
    table = pd.read_csv(root / "pretrain" / "studies.csv")
    table = table[table.split == "train"].reset_index(drop=True)
    images = np.stack([prepare_image(root / "pretrain" / p, size) for p in table.image_path])
    ys = torch.from_numpy(np.stack([targets(a) for a in table.annotations]))
    aug = TrainTransform(size)
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    # the demo's schedule (train.warmup_fraction 0.1, then cosine), the same code as pretraining's
    sched = torch.optim.lr_scheduler.LambdaLR(opt, WarmupCosine(steps, warmup_steps(steps, 0.1)))
    losses = []
    model.train()
    for _ in range(steps):
        idx = rng.choice(len(images), size=batch, replace=False)
        x = torch.stack([aug(images[i], rng) for i in idx])
        loss = F.binary_cross_entropy_with_logits(model(x), ys[idx])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    model.eval()
    return losses


@torch.no_grad()
def swap_supervised(model: Supervised, root: Path, size: int) -> dict[str, float]:
    """Share of swapped finding pairs whose true sides the head finds likelier than the sides exchanged."""
    table = pd.read_csv(root / "relations" / "studies.csv")
    table = table[table.task == "binding"]
    col = {"left": 1, "right": 2}
    wins, n = 0.0, 0
    for path, ann in zip(table.image_path, table.annotations):
        lateral = [a for a in json.loads(ann) if a["side"] in ("left", "right")]
        x = torch.from_numpy(prepare_image(root / "relations" / path, size))[None, None]
        logp = F.logsigmoid(model(x)[0])  # [K, 3]
        for i in range(len(lateral)):
            for j in range(i + 1, len(lateral)):
                a, b = lateral[i], lateral[j]
                if a["side"] == b["side"] or a["finding"] == b["finding"]:
                    continue
                ka, kb = FINDINGS.index(a["finding"]), FINDINGS.index(b["finding"])
                true = logp[ka, col[a["side"]]] + logp[kb, col[b["side"]]]
                swap = logp[ka, col[b["side"]]] + logp[kb, col[a["side"]]]
                wins += 1.0 if true > swap else (0.5 if true == swap else 0.0)
                n += 1
    return {"swap_supervised": round(wins / max(1, n), 4), "pairs": n}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--synth", default="out/synth-seed1", help="SynthCXR folder (designs are chosen on seed 1)")
    p.add_argument("--encoder", default="cnn-small")
    p.add_argument("--weights", default=None, help="e.g. imagenet (efficientnet-lite0)")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-2, help="the demo's image learning rate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="also write the numbers as JSON")
    p.add_argument(
        "--save-encoder",
        default=None,
        help="save the trained encoder (safetensors) for `image_encoder.weights=`: an oracle start for pretraining",
    )
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    root = Path(args.synth)
    cfg = ImageEncoderConfig(name=args.encoder, weights=args.weights, image_size=args.image_size)
    model = Supervised(build_image_encoder(cfg), args.image_size)
    t0 = time.perf_counter()
    losses = train(model, root, args.image_size, args.steps, args.batch, args.lr, args.seed)
    result: dict = {
        "args": vars(args),
        "train_seconds": round(time.perf_counter() - t0, 1),
        "loss_first_last_50": [round(float(np.mean(losses[:50])), 4), round(float(np.mean(losses[-50:])), 4)],
    }
    result.update(swap_supervised(model, root, args.image_size))
    result["image_probe"] = {
        "two_findings": side_probe(model, root, binding=True),
        "one_finding": side_probe(model, root, binding=False),
    }
    if args.save_encoder:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in model.encoder.state_dict().items()}, args.save_encoder)
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
