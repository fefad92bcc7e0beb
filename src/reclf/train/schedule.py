"""Learning-rate schedule: linear warm-up then cosine decay, stepped per optimiser step.

A picklable callable object (not a lambda) so that ``LambdaLR.state_dict`` saves it as plain
numbers and a resumed run continues on the same curve.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class WarmupCosine:
    """Multiplier of the base lr at optimiser step ``step`` (0-based).

    ``warmup_steps`` linear steps from ``1 / (warmup_steps + 1)`` up to 1, then a half cosine down
    to ``min_ratio`` at ``total_steps``; constant at ``min_ratio`` afterwards.
    """

    total_steps: int
    warmup_steps: int = 0
    min_ratio: float = 0.0

    def __call__(self, step: int) -> float:
        if self.warmup_steps > 0 and step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)
        span = max(self.total_steps - self.warmup_steps, 1)
        progress = min(max(step - self.warmup_steps, 0) / span, 1.0)
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_steps(total_steps: int, warmup_fraction: float) -> int:
    if not 0.0 <= warmup_fraction < 1.0:
        raise ValueError(f"train.warmup_fraction must be in [0, 1), got {warmup_fraction}")
    return int(round(total_steps * warmup_fraction))
