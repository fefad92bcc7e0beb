"""A small AdamW for the evaluation heads (linear probe, U-Net decoder, supervised ceiling).

``torch.optim`` imports the whole compiler stack (``torch._dynamo``) on its first step, which costs
seconds per process on a small CPU machine; probes train tiny heads, so a plain AdamW here keeps
every evaluation (and its tests) quick. Same update rule as ``torch.optim.AdamW`` (decoupled weight
decay, bias-corrected moments); tests/test_eval_optim.py checks it against torch's, step by step.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


class AdamW:
    def __init__(self, params: Iterable[torch.nn.Parameter], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2) -> None:
        self.params = [p for p in params if p.requires_grad]
        self.lr, self.betas, self.eps, self.weight_decay = lr, betas, eps, weight_decay
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]
        self.t = 0

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        self.t += 1
        b1, b2 = self.betas
        c1, c2 = 1 - b1**self.t, 1 - b2**self.t
        for p, m, v in zip(self.params, self.m, self.v):
            if p.grad is None:
                continue
            p.mul_(1 - self.lr * self.weight_decay)
            m.mul_(b1).add_(p.grad, alpha=1 - b1)
            v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
            p.addcdiv_(m / c1, (v / c2).sqrt_().add_(self.eps), value=-self.lr)
