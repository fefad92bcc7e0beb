"""Every method's training loss, pinned on fixed features against its paper's formula written out by hand.

``VLModel.loss`` composes a method from the terms in ``reclf.align.losses`` with the weights and
temperatures of its preset; these tests replace the encoders by fixed joint-space features and check
the total against an independent, loop-level statement of each method's loss (ConVIRT eq. 3, GLoRIA's
``gloria_loss.py``, MGCA's ``mgca_module.py``, DESIGN §1 for RECLF). A change to a preset, to a term or
to how ``loss`` composes them shows up here.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from reclf.methods import create_model
from reclf.models.features import ImageFeatures, TextFeatures

B, WORDS, GRID, D = 4, 5, (3, 3), 128  # square: where-features and region positions read the geometry
IMAGE = {"name": "cnn-small", "image_size": 64}
TEXT = {"name": "bert-tiny", "max_tokens": 32}


def unit(*shape: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


@pytest.fixture(scope="module")
def features() -> tuple[ImageFeatures, TextFeatures]:
    mask = torch.ones(B, WORDS, dtype=torch.bool)
    mask[1, 3:] = False
    mask[3, 4:] = False
    # padded positions hold unit vectors too, as a real encoder's projection of [PAD] does: a loss that
    # forgets the mask would use them, and the references below (which drop them) would disagree
    words = unit(B, WORDS, D, seed=3)
    sentences = torch.tensor([0, 0, 1, 1, 1]).repeat(B, 1).masked_fill(~mask, -1)
    img = ImageFeatures(unit(B, D, seed=1), unit(B, GRID[0] * GRID[1], D, seed=2), GRID)
    txt = TextFeatures(unit(B, D, seed=4), words, mask, sentences)
    return img, txt


def loss_on(method: str, img: ImageFeatures, txt: TextFeatures, **overrides) -> dict[str, torch.Tensor]:
    """``model.loss`` with the encoders replaced by the fixed features."""
    torch.manual_seed(0)
    model = create_model(method, image_encoder=IMAGE, text_encoder=TEXT, **overrides).eval()
    model.encode_image = lambda images: img
    model.encode_text = lambda reports: txt
    with torch.no_grad():
        terms = model.loss({"images": torch.zeros(B, 1, 64, 64), "reports": ["x"] * B})
        # the local score as training aggregates it (GLoRIA's inference takes the max over words instead)
        inference = model.params
        model.params = dataclasses.replace(inference, local_inference="aggregator")
        local = model.local_similarity(img, txt) if model.has_local else None
        model.params = inference
    return {**terms, "model": model, "scores": local}


def ce_i2t(logits: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, torch.arange(logits.shape[0]))


def ce_t2i(logits: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.t(), torch.arange(logits.shape[0]))


def test_convirt_is_lambda_weighted_infonce_at_tau_0_1(features):
    img, txt = features
    out = loss_on("convirt", img, txt)
    logits = img.global_ @ txt.global_.t() / 0.1
    expected = 0.75 * ce_i2t(logits) + 0.25 * ce_t2i(logits)
    torch.testing.assert_close(out["loss"], expected)
    assert set(out) - {"model", "scores"} == {"global", "loss", "global_tau"}


def test_gloria_sums_directions_of_global_and_local_at_temp3_10(features):
    img, txt = features
    out = loss_on("gloria", img, txt)
    g = img.global_ @ txt.global_.t() * 10
    s = out["scores"] * 10
    expected = (ce_i2t(g) + ce_t2i(g)) + (ce_i2t(s) + ce_t2i(s))
    torch.testing.assert_close(out["loss"], expected)


@pytest.mark.parametrize("method", ["reclf", "reclf-no-srm", "reclf-no-irm"])
def test_reclf_is_symmetric_global_plus_local_infonce(method, features):
    img, txt = features
    out = loss_on(method, img, txt)
    g = img.global_ @ txt.global_.t() / 0.07
    s = out["scores"] / 0.1
    expected = (ce_i2t(g) + ce_t2i(g)) / 2 + (ce_i2t(s) + ce_t2i(s)) / 2
    torch.testing.assert_close(out["loss"], expected)
    weighted = loss_on(method, img, txt, global_weight=0.5, local_weight=2.0)
    torch.testing.assert_close(weighted["loss"], 0.5 * out["global"] + 2.0 * out["local"])


def test_reclf_hard_negatives_leave_unscored_pairs_out(features):
    img, txt = features
    out = loss_on("reclf", img, txt, hard_negatives=1, local_group=0)
    g = img.global_ @ txt.global_.t()
    keep = torch.zeros(B, B, dtype=torch.bool)
    for i in range(B):
        others = g[i].clone()
        others[i] = float("-inf")
        keep[i, i] = keep[i, int(others.argmax())] = True
    s = (out["scores"] / 0.1).masked_fill(~keep, float("-inf"))
    torch.testing.assert_close(out["local"], (ce_i2t(s) + ce_t2i(s)) / 2)


@pytest.mark.parametrize("method", ["reclf", "gloria"])
def test_local_group_contrasts_within_groups_of_the_batch(method, features):
    img, txt = features
    out = loss_on(method, img, txt, local_group=3)  # groups {0, 1, 2} and {3}, weighted by their size
    scale = 10.0 if method == "gloria" else 1 / 0.1
    s = out["scores"] * scale

    def nce(block: torch.Tensor) -> torch.Tensor:
        both = ce_i2t(block) + ce_t2i(block)
        return both if method == "gloria" else both / 2

    expected = (3 * nce(s[:3, :3]) + nce(s[3:, 3:])) / 4
    torch.testing.assert_close(out["local"], expected)
    whole = loss_on(method, img, txt, local_group=B)
    torch.testing.assert_close(whole["local"], nce(s))


def test_irm_logit_std_is_the_mean_over_the_local_groups(features):
    img, txt = features
    out = loss_on("reclf", img, txt, local_group=2, srm_topk=0)  # groups {0, 1} and {2, 3}
    model = out["model"]
    stds = []
    with torch.no_grad():
        for group in (slice(0, 2), slice(2, 4)):
            model._local(img.index(group), txt.index(group), None)
            stds.append(float(model.aggregator.irm.last_logit_std))
    assert stds[0] != pytest.approx(stds[1])  # the two groups differ: a last-group-only value would fail
    assert float(out["irm_logit_std"]) == pytest.approx(sum(stds) / 2, rel=1e-5)


def mgca_token_reference(img: ImageFeatures, txt: TextFeatures, tau: float = 0.1) -> torch.Tensor:
    """MGCA's token loss with uniform weights, one report at a time: words pick their own attended
    patch context within the report (rows and columns averaged), and patches their word context."""

    def intra(queries: torch.Tensor, contexts: torch.Tensor) -> torch.Tensor:
        n = queries.shape[0]
        sim = queries @ contexts.t() / tau
        t = torch.arange(n)
        rows = F.cross_entropy(sim, t, reduction="none")
        cols = F.cross_entropy(sim.t(), t, reduction="none")
        return ((rows + cols) / 2).sum() / n  # uniform weights 1/n

    word_side = patch_side = 0.0
    for b in range(B):
        words = txt.words[b][txt.word_mask[b]]
        patches = img.local[b]
        word_ctx = F.normalize(torch.softmax(words @ patches.t() / tau, dim=1) @ patches, dim=-1)
        patch_ctx = F.normalize(torch.softmax(patches @ words.t() / tau, dim=1) @ words, dim=-1)
        word_side = word_side + intra(words, word_ctx)
        patch_side = patch_side + intra(patches, patch_ctx)
    return word_side / B + patch_side / B


def sinkhorn_reference(scores: torch.Tensor, iters: int = 3, eps: float = 0.05) -> torch.Tensor:
    """MGCA's ``sinkhorn`` (mgca_module.py) written out: ``Q = exp(scores / eps)^T`` ``[K, B]`` normalised to
    sum 1, then ``iters`` times rows scaled to 1/K and columns to 1/B; the codes are the columns
    normalised to sum 1, transposed back to ``[B, K]``. Independent of ``reclf.align.prototypes``."""
    q = torch.exp(scores / eps).t().double()
    q = q / q.sum()
    k, b = q.shape
    for _ in range(iters):
        q = q * ((1.0 / k) / q.sum(dim=1)).unsqueeze(1)
        q = q * ((1.0 / b) / q.sum(dim=0)).unsqueeze(0)
    return (q / q.sum(dim=0, keepdim=True)).t().float()


def proto_reference(model, img: ImageFeatures, txt: TextFeatures) -> torch.Tensor:
    """MGCA's swapped prediction: each modality's Sinkhorn codes supervise the other's softmax at 0.2."""
    w = F.normalize(model.prototypes.prototypes.weight, dim=1)
    img_out, txt_out = img.global_ @ w.t(), txt.global_ @ w.t()
    img_code, txt_code = sinkhorn_reference(img_out), sinkhorn_reference(txt_out)
    i2t = -(img_code * F.log_softmax(txt_out / 0.2, dim=1)).sum(1).mean()
    t2i = -(txt_code * F.log_softmax(img_out / 0.2, dim=1)).sum(1).mean()
    return (i2t + t2i) / 2


def test_mgca_is_instance_plus_token_plus_prototype_loss(features):
    img, txt = features
    out = loss_on("mgca", img, txt)
    g = img.global_ @ txt.global_.t() / 0.07
    instance = ce_i2t(g) + ce_t2i(g)
    token = mgca_token_reference(img, txt)
    proto = proto_reference(out["model"], img, txt)
    torch.testing.assert_close(out["global"], instance)
    torch.testing.assert_close(out["token"], token)
    torch.testing.assert_close(out["proto"], proto)
    torch.testing.assert_close(out["loss"], instance + token + proto)
