"""Vision Transformers (``vit-tiny``, ``vit-tiny-12``, ``vit-small``, ``vit-b16``) with timm's parameter names.

Why timm names (``cls_token``, ``pos_embed``, ``patch_embed.proj``, ``blocks.N.norm1`` / ``attn.qkv`` /
``attn.proj`` / ``norm2`` / ``mlp.fc1`` / ``mlp.fc2``, ``norm``): timm's ImageNet ViT / DeiT state dicts
load from a file with no key mapping (timm itself cannot be installed here). ``head.*`` is ignored.

- Regions are the final (layer-normed) patch tokens reshaped to the patch grid; the global vector is
  the final CLS token (as MGCA).
- ``pos_embed`` is stored for ``image_size`` and interpolated (bicubic) on the fly for other input
  sizes; a weights file made for another size (timm: 224) is resampled once at load time.
- ``cls_attention``: the CLS->patch attention of the last block, averaged over heads, [B, h*w]. These
  are raw softmax probabilities (they sum to 1 - attention on CLS itself); MGCA turns them into patch
  weights.
- ``feature_pyramid`` (simple SETR / ViTDet style, parameter-free): the patch tokens after blocks
  depth/4, depth/2, 3*depth/4 and depth (the last one layer-normed) are reshaped to the stride-16
  grid and resampled to strides 4, 8, 16, 32 (bilinear x4, bilinear x2, identity, 2x2 average pool);
  every level has ``embed_dim`` channels. The decoder adds its own convolutions on top.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reclf.models.features import ImageEncoderOutput
from reclf.models.image.base import ImageEncoder


@dataclass(frozen=True)
class ViTSpec:
    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float = 4.0


VIT_SPECS = {
    "vit-tiny": ViTSpec(16, 192, 6, 3),  # CPU work; half of timm's vit_tiny depth
    "vit-tiny-12": ViTSpec(16, 192, 12, 3),  # = timm vit_tiny_patch16_224 / deit_tiny_patch16_224
    "vit-small": ViTSpec(16, 384, 12, 6),  # = timm vit_small_patch16_224 / deit_small_patch16_224
    "vit-b16": ViTSpec(16, 768, 12, 12),  # = timm vit_base_patch16_224 / deit_base_patch16_224
}


class PatchEmbed(nn.Module):
    def __init__(self, in_chans: int, embed_dim: int, patch_size: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        h, w = x.shape[-2:]
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"ViT: image size {h}x{w} is not a multiple of the patch size {self.patch_size}")
        x = self.proj(x)
        return x.flatten(2).transpose(1, 2), (x.shape[-2], x.shape[-1])


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"ViT: embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, return_cls_attention: bool = False) -> tuple[Tensor, Tensor | None]:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        cls_attn = None
        if return_cls_attention:  # explicit softmax: we need the probabilities
            attn = (q * self.head_dim**-0.5) @ k.transpose(-2, -1)
            attn = attn.softmax(dim=-1)
            out = attn @ v
            cls_attn = attn[:, :, 0, 1:].mean(dim=1)  # [B, N-1], averaged over heads
        else:
            out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c)), cls_attn


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, return_cls_attention: bool = False) -> tuple[Tensor, Tensor | None]:
        y, cls_attn = self.attn(self.norm1(x), return_cls_attention)
        x = x + y
        return x + self.mlp(self.norm2(x)), cls_attn


def resample_pos_embed(pos_embed: Tensor, grid: tuple[int, int], num_prefix: int = 1) -> Tensor:
    """Bicubic resampling of the patch part of ``pos_embed`` [1, prefix + H*W, D] to ``grid``."""
    prefix, patches = pos_embed[:, :num_prefix], pos_embed[:, num_prefix:]
    old = int(math.isqrt(patches.shape[1]))
    if old * old != patches.shape[1]:
        raise ValueError(f"ViT: pos_embed with {patches.shape[1]} patch positions is not a square grid")
    if (old, old) == tuple(grid):
        return pos_embed
    dim = patches.shape[-1]
    patches = patches.reshape(1, old, old, dim).permute(0, 3, 1, 2).float()
    patches = F.interpolate(patches, size=grid, mode="bicubic", align_corners=False)
    patches = patches.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], dim).to(pos_embed.dtype)
    return torch.cat([prefix, patches], dim=1)


class ViTEncoder(ImageEncoder):
    """ViT with a CLS token; see the module docstring for outputs and the feature pyramid."""

    first_conv = "patch_embed.proj.weight"
    head_prefixes = ("head.", "head_dist.", "fc_norm.", "pre_logits.")

    def __init__(
        self, name: str = "vit-tiny", in_chans: int = 1, image_size: int = 128, local_stage: str | None = None
    ) -> None:
        super().__init__(in_chans)
        if name not in VIT_SPECS:
            raise ValueError(f"unknown ViT {name!r}; choose one of {', '.join(VIT_SPECS)}")
        if local_stage not in (None, "last", "layer4"):
            raise ValueError(
                f"{name}: local_stage must be None or 'last' (the final patch tokens), got {local_stage!r}"
            )
        spec = VIT_SPECS[name]
        if image_size % spec.patch_size:
            raise ValueError(f"{name}: image_size {image_size} is not a multiple of the patch size {spec.patch_size}")
        self.name = name
        self.spec = spec
        self.local_stage = "last"
        self.local_stride = spec.patch_size
        self.grid = (image_size // spec.patch_size, image_size // spec.patch_size)
        d = spec.embed_dim
        self.patch_embed = PatchEmbed(in_chans, d, spec.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid[0] * self.grid[1], d))
        self.blocks = nn.ModuleList([Block(d, spec.num_heads, spec.mlp_ratio) for _ in range(spec.depth)])
        self.norm = nn.LayerNorm(d, eps=1e-6)
        self.global_dim = self.local_dim = d
        self.pyramid_channels = [d] * 4
        self.pyramid_strides = [4, 8, 16, 32]
        self.pyramid_blocks = sorted({max(0, spec.depth * q // 4 - 1) for q in (1, 2, 3, 4)})
        self._init_weights()

    def _init_weights(self) -> None:
        """timm-style: normal (std .02) for embeddings and linear layers, zero biases.

        timm truncates at +-2 in absolute value, i.e. 100 standard deviations: a plain normal is the
        same distribution and much faster to draw for ViT-B.
        """
        nn.init.normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.patch_embed.proj.weight, std=0.02)

    def adapt_state_dict(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """Resample a file's ``pos_embed`` made for another image size to this encoder's grid."""
        pe = state.get("pos_embed")
        if pe is not None and pe.shape != self.pos_embed.shape:
            if pe.ndim != 3 or pe.shape[-1] != self.pos_embed.shape[-1]:
                raise ValueError(f"{self.name}: pos_embed in the file has shape {tuple(pe.shape)}")
            state = dict(state)
            state["pos_embed"] = resample_pos_embed(pe, self.grid)
        return state

    def _tokens(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        tokens, grid = self.patch_embed(x)
        pos = self.pos_embed if grid == self.grid else resample_pos_embed(self.pos_embed, grid)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1) + pos[:, :1]
        return torch.cat([cls, tokens + pos[:, 1:]], dim=1), grid

    def _forward(self, x: Tensor) -> ImageEncoderOutput:
        tokens, (h, w) = self._tokens(x)
        cls_attn = None
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            tokens, attn = block(tokens, return_cls_attention=i == last)
            cls_attn = attn if attn is not None else cls_attn
        tokens = self.norm(tokens)
        b, _, d = tokens.shape
        local = tokens[:, 1:].transpose(1, 2).reshape(b, d, h, w)
        return ImageEncoderOutput(global_=tokens[:, 0], local=local, cls_attention=cls_attn)

    def _pyramid(self, x: Tensor) -> list[Tensor]:
        tokens, (h, w) = self._tokens(x)
        grids: list[Tensor] = []
        for i, block in enumerate(self.blocks):
            tokens, _ = block(tokens)
            if i in self.pyramid_blocks:
                t = self.norm(tokens) if i == len(self.blocks) - 1 else tokens
                grids.append(t[:, 1:].transpose(1, 2).reshape(t.shape[0], -1, h, w))
        while len(grids) < 4:  # depth < 4: reuse the deepest map
            grids.append(grids[-1])
        return [
            F.interpolate(grids[0], scale_factor=4, mode="bilinear", align_corners=False),
            F.interpolate(grids[1], scale_factor=2, mode="bilinear", align_corners=False),
            grids[2],
            F.avg_pool2d(grids[3], 2, ceil_mode=True),
        ]
