"""Loading foreign (torchvision / timm / our own) state dicts into an image encoder, safely.

Why this is its own module: there is no model hub here, so pretrained weights arrive as files that
someone downloaded elsewhere. Such files come wrapped (``{"state_dict": ...}``, ``{"model": ...}``),
prefixed (``module.`` from DDP, ``model.`` / ``encoder.`` / ``backbone.`` from training wrappers),
with classification heads we do not use, and with three input channels where we read gray X-rays.
Loading must never execute code (``torch.load(weights_only=True)`` or safetensors) and must fail
loudly on anything that would leave part of the network silently random.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from reclf.models.image.base import ImageEncoder

log = logging.getLogger(__name__)

# Wrapper prefixes stripped (repeatedly) when most keys carry them.
STRIP_PREFIXES = ("module.", "model.", "encoder.", "backbone.", "visual.", "image_encoder.", "img_encoder.")
# Keys of wrapper dicts that hold the actual state dict.
NESTED_KEYS = ("state_dict", "model", "model_state", "model_state_dict", "net", "params")
# Buffers that are ours (normalisation) and therefore may be absent from a foreign file.
OWN_BUFFERS = ("input_mean", "input_std")


class WeightsError(ValueError):
    """A weights file that cannot be loaded into the encoder as asked."""


@dataclass
class LoadReport:
    """What happened when a weights file was loaded."""

    path: str
    loaded: int  # number of tensors copied
    adapted: list[str] = field(default_factory=list)  # keys changed on the way (first conv, pos_embed)
    ignored: list[str] = field(default_factory=list)  # classification-head keys dropped
    missing: list[str] = field(default_factory=list)  # (only num_batches_tracked / own buffers may be here)
    stripped_prefixes: list[str] = field(default_factory=list)
    dropped_outside_prefix: int = 0  # keys of other sub-models in a whole-model checkpoint

    def summary(self) -> str:
        parts = [f"loaded {self.loaded} tensors from {self.path}"]
        if self.stripped_prefixes:
            parts.append(f"stripped prefixes {self.stripped_prefixes}")
        if self.dropped_outside_prefix:
            parts.append(f"left {self.dropped_outside_prefix} keys outside them")
        if self.adapted:
            parts.append(f"adapted {self.adapted}")
        if self.ignored:
            parts.append(f"ignored {len(self.ignored)} head keys")
        if self.missing:
            parts.append(f"kept initial values for {self.missing}")
        return "; ".join(parts)


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a state dict from .safetensors or .pth/.pt/.bin/.ckpt (tensors only; never unpickles code)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(
            f"weights file {path} does not exist; image_encoder.weights must be a path to a torchvision/timm "
            "state dict (.pth, .pt or .safetensors)"
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        obj: object = load_file(str(path), device="cpu")
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - re-raised with the file named
            raise WeightsError(
                f"cannot read weights file {path} with torch.load(weights_only=True): {exc}. "
                "Save a plain state dict (torch.save(model.state_dict(), path)) or use .safetensors"
            ) from exc
    for _ in range(3):  # unwrap {"state_dict": {...}} and similar, possibly nested
        if isinstance(obj, dict) and not any(isinstance(v, Tensor) for v in obj.values()):
            inner = next((obj[k] for k in NESTED_KEYS if k in obj and isinstance(obj[k], dict)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, dict) or not obj:
        raise WeightsError(f"weights file {path} does not hold a state dict (a mapping of names to tensors)")
    state = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
    if not state:
        raise WeightsError(f"weights file {path} holds no tensors (keys: {list(obj)[:8]})")
    return state


def strip_prefixes(state: dict[str, Tensor], model_keys: set[str]) -> tuple[dict[str, Tensor], list[str], int]:
    """Strip wrapper prefixes (``module.``, ``model.``, ``encoder.`` ...) while that matches more model keys.

    Each step keeps only the keys under the chosen prefix, so a whole-model checkpoint
    (``model.image_encoder.*`` next to ``model.text_encoder.*``) yields its image encoder. Returns the
    state, the prefixes stripped and how many keys were left behind outside them.
    """

    def overlap(keys) -> int:
        return sum(k in model_keys for k in keys)

    # search prefix chains (up to 3 deep, only prefixes some key carries); the best overlap wins,
    # the shortest chain on ties
    best_state, best_chain, best = state, [], overlap(state)
    frontier: list[tuple[dict[str, Tensor], list[str]]] = [(state, [])]
    for _ in range(3):
        nxt = []
        for cur, chain in frontier:
            for prefix in STRIP_PREFIXES:
                sub = {k[len(prefix) :]: v for k, v in cur.items() if k.startswith(prefix)}
                if not sub:
                    continue
                nxt.append((sub, [*chain, prefix]))
                if overlap(sub) > best:
                    best_state, best_chain, best = sub, [*chain, prefix], overlap(sub)
        frontier = nxt
    return best_state, best_chain, len(state) - len(best_state)


def adapt_input_conv(weight: Tensor, in_chans: int) -> Tensor:
    """First-conv weight [O, C, k, k] for ``in_chans`` inputs: RGB -> gray sums the filters.

    Summing (not averaging) keeps the response to a gray image equal to the RGB network's response to
    that image repeated on three channels (up to the per-channel normalisation, which becomes the
    mean of the RGB statistics).
    """
    c = weight.shape[1]
    if c == in_chans:
        return weight
    if c == 3 and in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    if c == 1 and in_chans == 3:
        return weight.repeat(1, 3, 1, 1) / 3.0
    raise WeightsError(f"cannot adapt a first convolution with {c} input channels to {in_chans}")


def load_weights(encoder: ImageEncoder, path: str | Path) -> LoadReport:
    """Load a weights file into ``encoder``; every backbone tensor must be present with its shape.

    Classification-head keys (``encoder.head_prefixes``) are ignored; the first convolution is adapted
    to the encoder's input channels; backbone-specific fixes (ViT position embeddings) run through
    ``encoder.adapt_state_dict``. Missing or unexpected backbone keys and shape mismatches raise
    ``WeightsError`` naming the keys, because a partial load is almost always a mistake.
    """
    own = encoder.state_dict()
    state, stripped, dropped = strip_prefixes(read_state_dict(path), set(own))
    ignored = sorted(k for k in state if k.startswith(encoder.head_prefixes)) if encoder.head_prefixes else []
    state = {k: v for k, v in state.items() if k not in set(ignored)}
    adapted: list[str] = []
    if encoder.first_conv and encoder.first_conv in state:
        w = state[encoder.first_conv]
        if w.ndim == 4 and w.shape[1] != encoder.in_chans:
            state[encoder.first_conv] = adapt_input_conv(w, encoder.in_chans)
            adapted.append(f"{encoder.first_conv} ({w.shape[1]}->{encoder.in_chans} channels)")
    before = {k: tuple(v.shape) for k, v in state.items()}
    state = encoder.adapt_state_dict(state)
    adapted += [f"{k} {before[k]}->{tuple(v.shape)}" for k, v in state.items() if k in before and before[k] != v.shape]

    unexpected = sorted(k for k in state if k not in own)
    missing = sorted(k for k in own if k not in state)
    tolerated = [k for k in missing if k.endswith("num_batches_tracked") or k in OWN_BUFFERS]
    missing = [k for k in missing if k not in tolerated]
    mismatched = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or mismatched:
        lines = [f"weights file {path} does not fit image encoder {encoder.name!r}:"]
        if missing:
            lines.append(f"  {len(missing)} missing keys, e.g. {missing[:8]}")
        if unexpected:
            lines.append(f"  {len(unexpected)} unexpected keys, e.g. {unexpected[:8]}")
        if mismatched:
            lines.append(f"  {len(mismatched)} shape mismatches, e.g. {mismatched[:5]}")
        if stripped:
            lines.append(f"  (after stripping prefixes {stripped})")
        lines.append("  check that image_encoder.name matches the architecture the file was saved from")
        raise WeightsError("\n".join(lines))
    with torch.no_grad():
        for k, v in state.items():
            own[k].copy_(v.to(own[k].dtype))  # state_dict() tensors share storage with the module's
    report = LoadReport(str(path), len(state), adapted, ignored, tolerated, stripped, dropped)
    log.info("%s: %s", encoder.name, report.summary())
    return report
