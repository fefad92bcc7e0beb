"""How sharp is word -> region attention? The setting of issue 10 §1, for every matcher rule.

196 unit-norm regions (a 14x14 grid) in the joint space (d = 128), ``W`` words each equal to one
region (the rest of the regions are random directions). For each rule the script prints the mean
attention a word puts on its own region divided by the uniform 1/196 ("peak / uniform") and the mean
normalised entropy of the words' maps (1 = uniform). Seeded; runs in about a second on a CPU::

    PYTHONPATH=src python benchmarks/bench_attention.py
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from reclf.align.matching import (
    DEFAULT_ATTN_TEMPERATURE,
    DEFAULT_MATCH_SCALE,
    GLORIA_ATTN_TEMPERATURE,
    attend,
    normalized_entropy,
)

RULES = {
    # name: (mode, temperature, scale, feature norm)
    "softmax tau 0.1 (RECLF, MGCA)": ("softmax", DEFAULT_ATTN_TEMPERATURE, 1.0, 1.0),
    "gloria on cosines (before)": ("gloria", GLORIA_ATTN_TEMPERATURE, 1.0, 1.0),
    "gloria raw dots, norm 10 (GLoRIA-like)": ("gloria", GLORIA_ATTN_TEMPERATURE, 1.0, 10.0),
    f"gloria cosines x {DEFAULT_MATCH_SCALE:g} (after)": ("gloria", GLORIA_ATTN_TEMPERATURE, DEFAULT_MATCH_SCALE, 1.0),
}


def measure(n_words: int, n_regions: int = 196, dim: int = 128, seed: int = 0) -> dict[str, tuple[float, float]]:
    g = torch.Generator().manual_seed(seed)
    regions = F.normalize(torch.randn(1, n_regions, dim, generator=g), dim=-1)
    own = torch.randperm(n_regions, generator=g)[:n_words]
    words = regions[0, own].unsqueeze(0)  # [1 report, W, d]
    out = {}
    for name, (mode, temp, scale, norm) in RULES.items():
        _, attn = attend(words * norm, regions * norm, temp, mode, scale=scale)  # [1, 1, W, R]
        a = attn[0, 0]
        peak = a[torch.arange(n_words), own].mean().item() * n_regions
        out[name] = (peak, normalized_entropy(a).mean().item())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--words", type=int, nargs="+", default=[10, 40])
    args = parser.parse_args()
    print(f"{'rule':44s} {'words':>5s} {'peak/uniform':>12s} {'norm. entropy':>13s}")
    for w in args.words:
        for name, (peak, ent) in measure(w).items():
            print(f"{name:44s} {w:5d} {peak:12.2f} {ent:13.3f}")


if __name__ == "__main__":
    main()
