"""A tiny stand-in for a ``reclf.methods`` model (``reclf.methods.interface.EvaluableModel``), used by the
evaluation tests, and ``make_folder``: a tiny study folder for the task tests.

It keeps the evaluation tests independent of the methods under development and fast: a 3-stage
CNN (strides 2/4/8) and a hashed bag-of-words text encoder, with GLoRIA-style local matching.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from reclf.methods.interface import PairExplanations
from reclf.models.features import ImageEncoderOutput, ImageFeatures, TextFeatures

WORD = re.compile(r"[a-z0-9]+")


@dataclass
class StubExplanation:
    words: list[str]
    attention: torch.Tensor
    grid: tuple[int, int]
    word_weights: torch.Tensor | None
    relations: torch.Tensor | None
    global_score: float
    local_score: float | None


class StubImageEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stages = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.BatchNorm2d(cout), nn.ReLU())
             for cin, cout in [(1, 8), (8, 16), (16, 32)]]
        )
        self.pyramid_channels = [8, 16, 32]
        self.pyramid_strides = [2, 4, 8]
        self.global_dim = 32
        self.local_dim = 32

    def feature_pyramid(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = (x - 0.5) / 0.25
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats

    def forward(self, x: torch.Tensor) -> ImageEncoderOutput:
        f = self.feature_pyramid(x)[-1]
        return ImageEncoderOutput(global_=f.mean(dim=(2, 3)), local=f)


class StubModel(nn.Module):
    has_local = True

    def __init__(self, method: str = "stub", image_size: int = 64, dim: int = 16, vocab: int = 512) -> None:
        super().__init__()
        self.method = method
        self.embed_dim = dim
        self.config = {"method": {"name": method}, "image_encoder": {"name": "stub", "image_size": image_size}}
        self.image_encoder = StubImageEncoder()
        self.img_global = nn.Linear(32, dim)
        self.img_local = nn.Linear(32, dim)
        self.vocab = vocab
        self.emb = nn.Embedding(vocab, dim)
        self.txt_local = nn.Linear(dim, dim)

    def _words(self, text: str) -> list[str]:
        return WORD.findall(text.lower())

    def encode_image(self, images: torch.Tensor) -> ImageFeatures:
        out = self.image_encoder(images)
        loc = out.local.flatten(2).transpose(1, 2)
        return ImageFeatures(
            F.normalize(self.img_global(out.global_), dim=-1), F.normalize(self.img_local(loc), dim=-1),
            tuple(out.local.shape[-2:]),
        )

    def encode_text(self, texts: list[str]) -> TextFeatures:
        words = [self._words(t) or ["empty"] for t in texts]
        w = max(len(x) for x in words)
        ids = torch.zeros(len(texts), w, dtype=torch.long)
        mask = torch.zeros(len(texts), w, dtype=torch.bool)
        for b, ws in enumerate(words):
            ids[b, : len(ws)] = torch.tensor([zlib.crc32(x.encode()) % self.vocab for x in ws])
            mask[b, : len(ws)] = True
        e = self.emb(ids)
        glob = (e * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        sent = torch.where(mask, torch.zeros_like(ids), torch.full_like(ids, -1))
        return TextFeatures(F.normalize(glob, dim=-1), F.normalize(self.txt_local(e), dim=-1), mask, sent, words)

    def global_similarity(self, img: ImageFeatures, txt: TextFeatures) -> torch.Tensor:
        return img.global_ @ txt.global_.T

    def _attention(self, img: ImageFeatures, txt: TextFeatures) -> torch.Tensor:
        # [I, T, W, R]
        return torch.softmax(torch.einsum("twd,ird->itwr", txt.words, img.local) / 0.1, dim=-1)

    def local_similarity(self, img: ImageFeatures, txt: TextFeatures) -> torch.Tensor:
        attn = self._attention(img, txt)
        ctx = F.normalize(torch.einsum("itwr,ird->itwd", attn, img.local), dim=-1)
        cos = (ctx * txt.words[None]).sum(-1)
        m = txt.word_mask[None].float()
        return (cos * m).sum(-1) / m.sum(-1)

    def similarity(self, img: ImageFeatures, txt: TextFeatures) -> torch.Tensor:
        return 0.5 * (self.global_similarity(img, txt) + self.local_similarity(img, txt))

    def word_region_attention(self, img: ImageFeatures, txt: TextFeatures) -> torch.Tensor:
        return self._attention(img, txt).diagonal(dim1=0, dim2=1).permute(2, 0, 1)  # [B, W, R]

    @torch.no_grad()
    def explain_pairs(self, images: torch.Tensor, reports: list[str]) -> PairExplanations:
        img, txt = self.encode_image(images), self.encode_text(reports)
        n = txt.word_mask.sum(-1).tolist()
        attn = self.word_region_attention(img, txt)
        weights = [torch.softmax(txt.words[b, : n[b]].sum(-1), dim=0) for b in range(len(reports))]
        return PairExplanations(txt.word_strings, [torch.ones(k, dtype=torch.long) for k in n], img.grid, weights,
                                None, None, [attn[b, : n[b]] for b in range(len(reports))])

    @torch.no_grad()
    def explain(self, image: torch.Tensor, report: str) -> StubExplanation:
        img = self.encode_image(image)
        txt = self.encode_text([report])
        n = int(txt.word_mask[0].sum())
        attn = self._attention(img, txt)[0, 0, :n]
        h, w = img.grid
        weights = torch.softmax(txt.words[0, :n].sum(-1), dim=0)
        rel = torch.softmax(torch.randn(n + 1, n + 1, generator=torch.Generator().manual_seed(0)), dim=-1)
        return StubExplanation(txt.word_strings[0], attn.reshape(n, h, w), (h, w), weights, rel,
                               float(self.global_similarity(img, txt)[0, 0]),
                               float(self.local_similarity(img, txt)[0, 0]))


# ---------------------------------------------------------------------------------------------
# a tiny study folder for the task tests (SynthCXR-like: classes, masks, reports, candidates)

CLASSES = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"]


def make_folder(root, n: int = 20, size: int = 64, seed: int = 0, with_masks: bool = True):
    """Write ``n`` studies (PNG images, masks, reports, labels, class) and return the folder."""
    from pathlib import Path

    import numpy as np
    import pandas as pd
    from PIL import Image

    from reclf.data.studies import CHEXPERT_LABELS, write_studies

    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    gen = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        cls = CLASSES[i % len(CLASSES)]
        side = "left" if i % 2 else "right"
        img = gen.uniform(0.2, 0.4, size=(size, size))
        mask = np.zeros((size, size), dtype=bool)
        if i % 4 != 3:  # every fourth image has an empty mask
            c0 = size // 2 + (size // 4 if side == "left" else -size // 4)
            mask[size // 3 : size // 3 + size // 4, c0 - size // 8 : c0 + size // 8] = True
            img[mask] += 0.5
        Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(root / "images" / f"s{i}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(root / "masks" / f"s{i}.png")
        report = f"there is a {side} {cls.lower()}." if i % 4 != 3 else "no acute findings."
        labels = {lab: 0.0 for lab in CHEXPERT_LABELS}
        if i % 4 != 3:
            labels[cls] = 1.0
        else:
            labels["No Finding"] = 1.0
        annotations = []
        if i % 4 != 3:
            annotations = [{"finding": cls.lower().replace(" ", "_"), "label": cls, "side": side, "zone": "lower",
                            "severity": "mild", "certainty": "present", "mask": f"masks/s{i}.png"}]
        import json

        rows.append({"study_id": f"s{i}", "patient_id": f"p{i // 2}", "image_path": f"images/s{i}.png",
                     "view": "PA", "report": report, "findings": report, "impression": "",
                     "split": ["train", "train", "valid", "test"][(i // 2) % 4], "class": cls,
                     "mask_path": f"masks/s{i}.png" if with_masks else "",
                     "annotations": json.dumps(annotations), **labels})
    write_studies(pd.DataFrame(rows), root)
    cands = []
    for r in rows:  # the true caption and a side and a negation foil per study (SynthCXR's candidates.csv)
        cands.append({"study_id": r["study_id"], "text": r["report"], "is_correct": 1, "contrast": "none"})
        other = r["report"].replace("left", "RIGHT").replace("right", "left").replace("RIGHT", "right")
        cands.append({"study_id": r["study_id"], "text": other, "is_correct": 0, "contrast": "side"})
        cands.append({"study_id": r["study_id"], "text": f"no {r['class'].lower()}.", "is_correct": 0,
                      "contrast": "negation"})
    pd.DataFrame(cands).to_csv(root / "candidates.csv", index=False)
    return root


def run_command(module, argv: list[str]) -> int:
    """Run a command module (``add_arguments`` + ``run``) on ``argv``, as ``reclf`` does."""
    import argparse

    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return module.run(parser.parse_args(argv))
