"""Region maps at image resolution, shared by the grounding metrics (``evaluate``) and the figures (``viz``).

It lives here, below both, so that the figures do not import the evaluation package.
"""

from __future__ import annotations

import numpy as np


def upsample_map(attn: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of an ``[h, w]`` attention map to ``shape`` (pixel centres aligned)."""
    import torch
    import torch.nn.functional as F

    t = torch.as_tensor(np.asarray(attn, dtype=np.float32))[None, None]
    return F.interpolate(t, size=tuple(shape), mode="bilinear", align_corners=False)[0, 0].numpy()
