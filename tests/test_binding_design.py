"""RECLF's binding design (docs/methods.md): swapped-report negatives, where-nodes, structure and grounding
edges, IRM priors — each a switch, each checked against a statement written out here."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from reclf.align.aggregators import (
    MAX_DISTANCE,
    build_aggregator,
    build_edge_mask,
    grounding_overlap,
    region_centres,
    structure_buckets,
    where_features,
)
from reclf.align.matching import append_phrase_nodes, attend
from reclf.config import ConfigError
from reclf.data.reports import names_both_sides, swap_laterality
from reclf.methods import create_model
from reclf.models.features import ImageFeatures, TextFeatures

D = 16
ALL_SWITCHES = dict(structure_edges=True, grounding_edges=True, node_where=True, irm_text_prior=True,
                    irm_cos_prior=True)


def test_swap_laterality_is_a_whole_word_case_keeping_exchange():
    text = "Small LEFT effusion. Right upper lobe nodule; bilateral, leftward opacity in the left lower lobe."
    assert swap_laterality(text) == (
        "Small RIGHT effusion. Left upper lobe nodule; bilateral, leftward opacity in the right lower lobe."
    )
    assert swap_laterality(text, zones=True) == (
        "Small RIGHT effusion. Left lower lobe nodule; bilateral, leftward opacity in the right upper lobe."
    )
    assert swap_laterality("No acute process.") == "No acute process."
    assert sorted(swap_laterality("left effusion. right nodule.").split()) == sorted(
        "left effusion. right nodule.".split()
    )


def test_region_centres_and_where_features_locate_a_peaked_map():
    xy = region_centres(16)
    assert xy.shape == (16, 2) and float(xy[0, 0]) == pytest.approx(-0.75) and float(xy[3, 0]) == pytest.approx(0.75)
    assert float(xy[4, 1]) == pytest.approx(-0.25)  # row-major: index 4 is the second row
    one_hot = F.one_hot(torch.tensor([3]), 16).float()
    w = where_features(one_hot)[0]
    assert float(w[0]) == pytest.approx(0.75) and float(w[1]) == pytest.approx(-0.75)
    assert float(w[10]) == pytest.approx(0.0, abs=1e-6) and float(w[11]) == pytest.approx(0.0, abs=1e-6)
    assert float(w[12]) == pytest.approx(1.0)
    uniform = where_features(torch.full((1, 16), 1 / 16))[0]
    assert float(uniform[0]) == pytest.approx(0.0, abs=1e-6) and float(uniform[12]) == pytest.approx(1 / 16)
    with pytest.raises(ValueError, match="square"):
        region_centres(6)


def test_structure_buckets_distance_sentence_and_global():
    sid = torch.tensor([[[0, 0, 0, 1, 1] + [1] * 10]])  # [G=1, T=1, W=15]
    b = structure_buckets(sid, global_node=True)[0, 0]
    assert b.shape == (16, 16)
    assert int(b[1, 1]) == 0 and int(b[1, 3]) == 2  # words 0 and 2 of sentence 0
    assert int(b[1, 4]) == MAX_DISTANCE + 1  # other sentence
    assert int(b[4, 15]) == MAX_DISTANCE  # same sentence, 11 apart: "farther"
    assert (b[0] == MAX_DISTANCE + 2).all() and (b[:, 0] == MAX_DISTANCE + 2).all()


def test_grounding_overlap_is_log_r_times_the_map_product():
    attn = torch.softmax(torch.randn(2, 3, 4, 9), dim=-1)
    g = grounding_overlap(attn, global_node=True)
    assert g.shape == (2, 3, 5, 5) and (g[..., 0, :] == 0).all()
    ref = math.log(9 * float((attn[1, 2, 0] * attn[1, 2, 3]).sum()))
    assert float(g[1, 2, 1, 4]) == pytest.approx(ref, rel=1e-5)
    uniform = torch.full((1, 1, 2, 9), 1 / 9)
    assert grounding_overlap(uniform, False).abs().max() < 1e-5


def inputs(n_img=3, n_txt=4, n_words=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    words = F.normalize(torch.randn(n_txt, n_words, D, generator=g), dim=-1)
    regions = F.normalize(torch.randn(n_img, 16, D, generator=g), dim=-1)
    mask = torch.ones(n_txt, n_words, dtype=torch.bool)
    mask[1, 5:] = False
    sent = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2]).repeat(n_txt, 1).masked_fill(~mask, -1)
    ctx, attn = attend(words, regions, 0.1)
    img_g = F.normalize(torch.randn(n_img, D, generator=g), dim=-1)
    txt_g = F.normalize(torch.randn(n_txt, D, generator=g), dim=-1)
    return words, ctx, mask, sent, img_g, txt_g, attn


def test_new_edges_start_as_the_plain_graph_and_then_change_it():
    words, ctx, mask, sent, img_g, txt_g, attn = inputs()
    torch.manual_seed(0)
    plain = build_aggregator("srm+irm", D, d_z=8, heads=2)
    torch.manual_seed(0)
    biased = build_aggregator("srm+irm", D, d_z=8, heads=2, structure_edges=True, grounding_edges=True)
    a = plain(words, ctx, mask, sent, img_g, txt_g).score
    b = biased(words, ctx, mask, sent, img_g, txt_g, attention=attn).score
    torch.testing.assert_close(a, b)  # both biases start at 0
    with torch.no_grad():
        biased.srm.structure.normal_()
        biased.srm.grounding.fill_(1.0)
    c = biased(words, ctx, mask, sent, img_g, txt_g, attention=attn)
    assert not torch.allclose(a, c.score)
    # fused (training) and explicit (explanations) attention agree with the biases on
    fused = biased(words, ctx, mask, sent, img_g, txt_g, extras=False, attention=attn).score
    torch.testing.assert_close(fused, c.score, atol=1e-5, rtol=0)
    torch.testing.assert_close(c.head_relations.mean(dim=2), c.relations)
    assert c.head_relations.shape == (3, 4, 2, 9, 9)


def test_grounding_values_put_the_attention_weighted_overlap_into_each_message():
    """``grounding_values`` starts as the plain SRM; once r_h is set, node i's head-h message gains exactly
    ``(sum_j alpha^h_ij G_ij) r_h`` (written out here from the layer's own attention), on every SRM path."""
    words, ctx, mask, sent, img_g, txt_g, attn = inputs()
    kw = dict(d_z=8, heads=2, prenorm=True, sentence_edges=True, irm_before_srm=True)
    torch.manual_seed(0)
    plain = build_aggregator("srm+irm", D, **kw)
    torch.manual_seed(0)
    agg = build_aggregator("srm+irm", D, grounding_values=True, **kw)
    start = agg(words, ctx, mask, sent, img_g, txt_g, attention=attn).score
    torch.testing.assert_close(plain(words, ctx, mask, sent, img_g, txt_g).score, start)
    layer = agg.srm.layers[0]
    with torch.no_grad():
        layer.edge_value.normal_()
        layer.out.weight.normal_()
    out = agg(words, ctx, mask, sent, img_g, txt_g, attention=attn)
    assert not torch.allclose(out.score, plain(words, ctx, mask, sent, img_g, txt_g).score)
    # the layer by hand, for one pair (image 2, report 0) and node 3 (word 2, sentence 0)
    z, _ = agg.matchings(words, ctx, mask, img_g, txt_g, attn)
    x = z[2 * 4 + 0]
    sid = torch.cat([torch.tensor([-2]), sent[0]])
    q, k, v = layer.qkv(layer.norm1(x)).reshape(9, 3, 2, 4).unbind(1)  # [N, H, hd]
    is_global = torch.arange(9) == 0
    allowed = (sid[:, None] == sid[None, :]) | is_global[:, None] | is_global[None, :]
    g = grounding_overlap(attn, global_node=True)[2, 0]  # [N, N]
    i = 3
    heads = []
    for h in range(2):
        alpha = torch.softmax(((k[:, h] @ q[i, h]) / 2.0).masked_fill(~allowed[i], float("-inf")), dim=0)
        heads.append(alpha @ v[:, h] + (alpha * g[i]).sum() * layer.edge_value[h])
    y = x[i] + layer.out(torch.cat(heads))
    y = y + layer.ffn(layer.norm2(y))
    got, _ = agg.srm(x.unsqueeze(0), allowed.unsqueeze(0), need_relations=False, overlap=g.unsqueeze(0))
    torch.testing.assert_close(got[0, i], y, atol=1e-5, rtol=1e-5)
    # the fused training path (no relations asked) and the explicit one give the same score
    fused = agg(words, ctx, mask, sent, img_g, txt_g, extras=False, attention=attn).score
    torch.testing.assert_close(fused, out.score, atol=1e-5, rtol=0)
    # with SRM over the top words, the overlap follows the kept nodes: the same as SRM on the written-out subgraph
    top = build_aggregator("srm+irm", D, grounding_values=True, topk=3, **kw)
    top.load_state_dict(agg.state_dict())
    res = top(words, ctx, mask, sent, img_g, txt_g, attention=attn)
    torch.testing.assert_close(res.score, top(words, ctx, mask, sent, img_g, txt_g, extras=False, attention=attn).score,
                               atol=1e-5, rtol=0)
    zt, valid = top.matchings(words, ctx, mask, img_g, txt_g, attn)
    keep = top._srm_nodes(top.irm.logits(zt, valid, top._irm_prior(words, ctx, mask, img_g, txt_g)), valid)
    kp = keep[2 * 4 + 0]
    sub, _ = top.srm(zt[8, kp].unsqueeze(0), allowed[kp][:, kp].unsqueeze(0), need_relations=False,
                     overlap=g[kp][:, kp].unsqueeze(0))
    full = top._srm_on(keep, zt, valid, build_edge_mask(valid, _node_sentences(sent, 3), True), None, False,
                       grounding_overlap(attn, True).reshape(12, 9, 9))[0]
    torch.testing.assert_close(full[8, kp], sub[0], atol=1e-5, rtol=1e-5)


def test_cross_values_put_each_words_matching_at_its_neighbours_place_into_the_message():
    """``cross_values`` starts as the plain SRM; then node i's head-h message gains exactly
    ``sum_j alpha^h_ij (V_x W_z(d e_i ⊙ c_j))_h`` (``W_0``/``h`` for the global row, ``g`` its column), written
    out here for one pair, on every SRM path; and swapping two words' contexts changes it while each word's own
    matching stays."""
    words, ctx, mask, sent, img_g, txt_g, attn = inputs()
    kw = dict(d_z=8, heads=2, prenorm=True, sentence_edges=True, irm_before_srm=True)
    torch.manual_seed(0)
    plain = build_aggregator("srm+irm", D, **kw)
    agg = build_aggregator("srm+irm", D, cross_values=True, **kw)
    missing = agg.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing == ["srm.layers.0.cross_value.weight"]
    torch.testing.assert_close(agg(words, ctx, mask, sent, img_g, txt_g).score,
                               plain(words, ctx, mask, sent, img_g, txt_g).score)  # the output map starts at 0
    layer = agg.srm.layers[0]
    with torch.no_grad():
        layer.out.weight.normal_()
    out = agg(words, ctx, mask, sent, img_g, txt_g, extras=True)
    assert not torch.allclose(out.score, plain(words, ctx, mask, sent, img_g, txt_g).score)
    # the layer by hand, for one pair (image 2, report 0) and node 4 (word 3, sentence 1)
    z, _ = agg.matchings(words, ctx, mask, img_g, txt_g)
    x = z[2 * 4 + 0]
    e = torch.cat([txt_g[0:1], words[0]]) * D  # node 0: the report's global vector
    c = torch.cat([img_g[2:3], ctx[2, 0]])
    sid = torch.cat([torch.tensor([-2]), sent[0]])
    q, k, v = layer.qkv(layer.norm1(x)).reshape(9, 3, 2, 4).unbind(1)  # [N, H, hd]
    is_global = torch.arange(9) == 0
    allowed = (sid[:, None] == sid[None, :]) | is_global[:, None] | is_global[None, :]
    i = 4
    cross = agg.matchings.word(e[i] * c)  # [N, d_z]: word i at node j's place
    torch.testing.assert_close(cross[i], x[i])  # x_ii = z_i
    heads = []
    for h in range(2):
        alpha = torch.softmax(((k[:, h] @ q[i, h]) / 2.0).masked_fill(~allowed[i], float("-inf")), dim=0)
        heads.append(alpha @ v[:, h] + alpha @ layer.cross_value(cross).reshape(9, 2, 4)[:, h])
    y = x[i] + layer.out(torch.cat(heads))
    y = y + layer.ffn(layer.norm2(y))
    xs = agg.matchings.cross(words, ctx, mask, img_g, txt_g.unsqueeze(0))
    torch.testing.assert_close(xs[8, i], cross)
    torch.testing.assert_close(xs[8, 0], agg.matchings.glob(e[0] * c))  # the global row takes W_0
    got, _ = agg.srm(x.unsqueeze(0), allowed.unsqueeze(0), need_relations=False, cross=xs[8:9])
    torch.testing.assert_close(got[0, i], y, atol=1e-5, rtol=1e-5)
    fused = agg(words, ctx, mask, sent, img_g, txt_g, extras=False).score
    torch.testing.assert_close(fused, out.score, atol=1e-5, rtol=0)
    # over the top words: the same as SRM on the written-out subgraph with its cross-matchings
    top = build_aggregator("srm+irm", D, cross_values=True, topk=3, **kw)
    top.load_state_dict(agg.state_dict())
    res = top(words, ctx, mask, sent, img_g, txt_g)
    zt, valid = top.matchings(words, ctx, mask, img_g, txt_g)
    keep = top._srm_nodes(top.irm.logits(zt, valid, top._irm_prior(words, ctx, mask, img_g, txt_g)), valid)
    kp = keep[8]
    sub, _ = top.srm(zt[8, kp].unsqueeze(0), allowed[kp][:, kp].unsqueeze(0), need_relations=False,
                     cross=xs[8][kp][:, kp].unsqueeze(0))
    full = top._srm_on(keep, zt, valid, build_edge_mask(valid, _node_sentences(sent, 3), True), None, False,
                       None, top.matchings.cross(words, ctx, mask, img_g, txt_g.unsqueeze(0), keep))[0]
    torch.testing.assert_close(full[8, kp], sub[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(res.score, top(words, ctx, mask, sent, img_g, txt_g, extras=False).score,
                               atol=1e-5, rtol=0)
    # two words' places exchanged: their own matchings swap with them, the cross-matchings across them do not
    swapped = ctx.clone()
    swapped[:, 0, [1, 2]] = ctx[:, 0, [2, 1]]
    xw = agg.matchings.cross(words, swapped, mask, img_g, txt_g.unsqueeze(0))
    assert not torch.allclose(xw[8, 2, 3], xs[8, 2, 3])
    torch.testing.assert_close(xw[8, 2, 3], xs[8, 2, 2])


def _node_sentences(sent, n_img):
    """``[P, N]`` the node sentence ids of every (image, report) pair, the global node first (-2)."""
    sid = sent.unsqueeze(0).expand(n_img, -1, -1).reshape(-1, sent.shape[-1])
    return torch.cat([sid.new_full((sid.shape[0], 1), -2), sid], dim=1)


def test_masked_words_never_change_a_score_with_every_switch_on():
    words, ctx, mask, sent, img_g, txt_g, attn = inputs()
    torch.manual_seed(0)
    agg = build_aggregator("srm+irm", D, d_z=8, heads=2, **ALL_SWITCHES)
    a = agg(words, ctx, mask, sent, img_g, txt_g, attention=attn).score
    words2, ctx2, attn2 = words.clone(), ctx.clone(), attn.clone()
    words2[1, 5:] = 7.0
    ctx2[:, 1, 5:] = 3.0
    attn2[:, 1, 5:] = torch.softmax(torch.randn(3, 3, 16), -1)
    b = agg(words2, ctx2, mask, sent, img_g, txt_g, attention=attn2).score
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_an_aggregator_that_needs_attention_says_so():
    words, ctx, mask, sent, img_g, txt_g, _ = inputs()
    agg = build_aggregator("irm", D, d_z=8, node_where=True)
    with pytest.raises(ValueError, match="needs the word-region attention"):
        agg(words, ctx, mask, sent, img_g, txt_g)


def test_irm_cos_prior_starts_as_log_sum_exp_weights():
    """With the learned MLP's output zeroed, IRM's weights are exactly softmax(5 cos) (GLoRIA's implied weights)."""
    words, ctx, mask, sent, img_g, txt_g, attn = inputs()
    agg = build_aggregator("irm", D, d_z=8, global_node=False, irm_cos_prior=True)
    with torch.no_grad():
        agg.irm.importance.weight.zero_()
        agg.irm.importance.bias.zero_()
    w = agg(words, ctx, mask, sent, img_g, txt_g).node_weights
    cos = F.cosine_similarity(words.unsqueeze(0).expand_as(ctx), ctx, dim=-1)
    ref = torch.softmax((5.0 * cos).masked_fill(~mask, float("-inf")), dim=-1)
    torch.testing.assert_close(w, ref, atol=1e-6, rtol=0)


# --------------------------------------------------------------------------- the loss


B, WORDS, GRID = 4, 5, (4, 4)
IMAGE = {"name": "cnn-small", "image_size": 64}
TEXT = {"name": "bert-tiny", "max_tokens": 32}
REPORTS = ["left effusion. right nodule.", "no acute process.", "right pneumothorax.", "heart is normal."]


def unit(*shape: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def twin_features() -> tuple[ImageFeatures, TextFeatures, TextFeatures]:
    """Fixed image features, report features and the swapped twins' features for the ``REPORTS`` batch."""
    mask = torch.ones(B, WORDS, dtype=torch.bool)
    sentences = torch.tensor([0, 0, 1, 1, 1]).repeat(B, 1)
    img = ImageFeatures(unit(B, 128, seed=1), unit(B, 16, 128, seed=2), GRID)
    txt = TextFeatures(unit(B, 128, seed=4), unit(B, WORDS, 128, seed=3), mask, sentences)
    sw = TextFeatures(unit(B, 128, seed=6), unit(B, WORDS, 128, seed=5), mask, sentences)
    return img, txt, sw


@pytest.mark.parametrize("method", ["reclf", "gloria"])
def test_binding_negatives_join_the_image_to_report_softmax_only(method):
    img, txt, sw = twin_features()
    torch.manual_seed(0)
    # local_inference "aggregator": local_similarity as training aggregates (GLoRIA's inference takes the max)
    model = create_model(method, image_encoder=IMAGE, text_encoder=TEXT, binding_negatives="side",
                         local_inference="aggregator", **(ALL_SWITCHES if method == "reclf" else {})).eval()
    model.encode_image = lambda images: img
    model.encode_text = lambda reports: sw if reports[0] != REPORTS[0] else txt
    with torch.no_grad():
        terms = model.loss({"images": torch.zeros(B, 1, 64, 64), "reports": REPORTS})
        s = model.local_similarity(img, txt)
        s_sw = model.local_similarity(img, sw).diagonal()
    changed = torch.tensor([True, False, True, False])  # reports 0 and 2 have a side word
    tau = float(model.local_tau.tau)
    i2t = torch.cat([s, s_sw.masked_fill(~changed, float("-inf")).unsqueeze(1)], dim=1) / tau
    l_i2t = F.cross_entropy(i2t, torch.arange(B))
    l_t2i = F.cross_entropy(s.t() / tau, torch.arange(B))
    ref = l_i2t + l_t2i if method == "gloria" else (l_i2t + l_t2i) / 2
    torch.testing.assert_close(terms["local"], ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("term_on", ["changed", "both-sides"])
def test_the_binding_term_scores_the_twins_binding_term_on_names(term_on):
    """``binding`` = mean softplus(-(s(i, T_i) - s(i, swap T_i)) / tau_l) over the changed reports, or with
    ``both-sides`` over those naming both left and right only (report 0; report 2 is a one-side flip)."""
    img, txt, sw = twin_features()
    torch.manual_seed(0)
    model = create_model("reclf", image_encoder=IMAGE, text_encoder=TEXT, binding_negatives="side",
                         binding_weight=2.0, binding_term_on=term_on, local_inference="aggregator").eval()
    model.encode_image = lambda images: img
    model.encode_text = lambda reports: sw if reports[0] != REPORTS[0] else txt
    with torch.no_grad():
        terms = model.loss({"images": torch.zeros(B, 1, 64, 64), "reports": REPORTS})
        margin = (model.local_similarity(img, txt).diagonal() - model.local_similarity(img, sw).diagonal())
    scored = [0, 2] if term_on == "changed" else [0]
    ref = F.softplus(-margin[scored] / float(model.local_tau.tau)).mean()
    torch.testing.assert_close(terms["binding"], ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(terms["loss"], terms["global"] + terms["local"] + 2.0 * ref, atol=1e-5, rtol=1e-5)
    assert names_both_sides("Left effusion. RIGHT nodule.") and not names_both_sides("left effusion, leftward")
    with pytest.raises(ConfigError, match="binding_term_on"):
        create_model("reclf", image_encoder=IMAGE, text_encoder=TEXT, binding_negatives="side", binding_term_on="x")


@pytest.mark.parametrize("method", ["reclf", "convirt"])
def test_binding_global_adds_the_twin_to_the_global_image_to_report_softmax(method):
    img, txt, sw = twin_features()
    torch.manual_seed(0)
    model = create_model(method, image_encoder=IMAGE, text_encoder=TEXT, binding_negatives="side",
                         binding_global=True).eval()
    model.encode_image = lambda images: img
    model.encode_text = lambda reports: sw if reports[0] != REPORTS[0] else txt
    with torch.no_grad():
        terms = model.loss({"images": torch.zeros(B, 1, 64, 64), "reports": REPORTS})
    changed = torch.tensor([True, False, True, False])  # reports 0 and 2 have a side word
    cos = img.global_ @ txt.global_.t()
    twin = (img.global_ * sw.global_).sum(-1).masked_fill(~changed, float("-inf"))
    tau = float(model.global_tau.tau)
    l_i2t = F.cross_entropy(torch.cat([cos, twin.unsqueeze(1)], dim=1) / tau, torch.arange(B))
    l_t2i = F.cross_entropy(cos.t() / tau, torch.arange(B))
    w = model.params.i2t_weight
    torch.testing.assert_close(terms["global"], w * l_i2t + (1 - w) * l_t2i, atol=1e-5, rtol=1e-5)
    own = (img.global_ * txt.global_).sum(-1)
    assert float(terms["binding_global_acc"]) == float((own > twin)[changed].float().mean())


def test_binding_negatives_need_a_local_matcher_or_the_global_twin():
    from reclf.config import ConfigError

    with pytest.raises(ConfigError, match="binding_negatives"):
        create_model("convirt", image_encoder=IMAGE, text_encoder=TEXT, binding_negatives="side")
    with pytest.raises(ConfigError, match="binding_global"):
        create_model("convirt", image_encoder=IMAGE, text_encoder=TEXT, binding_global=True)
    with pytest.raises(ConfigError, match="binding_negatives"):
        create_model("reclf", image_encoder=IMAGE, text_encoder=TEXT, binding_negatives="sides")


def test_region_positions_start_as_the_plain_matcher_and_reach_every_attention():
    mask = torch.ones(B, WORDS, dtype=torch.bool)
    sentences = torch.tensor([0, 0, 1, 1, 1]).repeat(B, 1)
    img = ImageFeatures(unit(B, 128, seed=1), unit(B, 16, 128, seed=2), GRID)
    txt = TextFeatures(unit(B, 128, seed=4), unit(B, WORDS, 128, seed=3), mask, sentences)
    torch.manual_seed(0)
    plain = create_model("reclf", image_encoder=IMAGE, text_encoder=TEXT).eval()
    torch.manual_seed(0)
    model = create_model("reclf", image_encoder=IMAGE, text_encoder=TEXT, region_positions=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(model.local_similarity(img, txt), plain.local_similarity(img, txt))
        model.region_position.normal_()
        a = model.word_region_attention(img, txt)
        assert not torch.allclose(a, plain.word_region_attention(img, txt))
        # training (fused kernel) and explanations (explicit attention) use the same logits
        fused = model.local_similarity(img, txt)
        explicit = model._local(img, txt, extras=True).score
        torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=0)
    with pytest.raises(Exception, match="region_positions"):
        create_model("gloria", image_encoder=IMAGE, text_encoder=TEXT, region_positions=True)


def test_irm_before_srm_scores_importance_from_the_matchings_before_srm():
    words, ctx, mask, sent, img_g, txt_g, attn = inputs()
    torch.manual_seed(0)
    agg = build_aggregator("srm+irm", D, d_z=8, heads=2, irm_before_srm=True)
    out = agg(words, ctx, mask, sent, img_g, txt_g)
    z, valid = agg.matchings(words, ctx, mask, img_g, txt_g)
    _, beta = agg.irm(z, valid)  # scored from the same vectors as before SRM
    torch.testing.assert_close(out.node_weights.reshape(beta.shape), beta)


def test_prenorm_srm_starts_as_the_identity_so_reclf_starts_as_reclf_no_srm():
    words, ctx, mask, sent, img_g, txt_g, attn = inputs()
    torch.manual_seed(0)
    full = build_aggregator("srm+irm", D, d_z=8, heads=2, prenorm=True, structure_edges=True)
    no_srm = build_aggregator("irm", D, d_z=8)
    no_srm.load_state_dict({k: v for k, v in full.state_dict().items() if not k.startswith("srm.")})
    torch.testing.assert_close(
        full(words, ctx, mask, sent, img_g, txt_g).score, no_srm(words, ctx, mask, sent, img_g, txt_g).score
    )


def test_phrase_nodes_are_the_normalised_sums_of_their_sentences():
    words = torch.randn(2, 5, 4)
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]], dtype=torch.bool)
    sid = torch.tensor([[0, 0, 1, 1, -1], [0, 0, -1, -1, -1]])
    out, out_mask, out_sid = append_phrase_nodes(words, mask, sid)
    assert out.shape == (2, 7, 4) and torch.equal(out[:, :5], words)  # the words keep their positions
    torch.testing.assert_close(out[0, 5], F.normalize(words[0, :2].sum(0), dim=0))
    torch.testing.assert_close(out[0, 6], F.normalize(words[0, 2:4].sum(0), dim=0))
    assert out_mask.tolist() == [[1, 1, 1, 1, 0, 1, 1], [1, 1, 0, 0, 0, 1, 0]]  # report 1 has one sentence
    assert out_sid[:, 5:].tolist() == [[0, 1], [0, -1]]


def test_phrase_nodes_tell_two_findings_from_the_same_report_with_their_places_swapped():
    """Context-free words score a report and its swapped twin alike (same bag of words); a phrase's one
    softmax peaks only where what and where agree, so the true report wins."""
    eff, nod, left, right = torch.eye(128)[:4]
    # image: the effusion lies where "left" looks, the nodule where "right" looks, two empty places
    regions = F.normalize(torch.stack([eff + left, nod + right, left, right] * 4), dim=-1).unsqueeze(0)
    true = torch.stack([eff, left, nod, right]).unsqueeze(0)
    swap = torch.stack([eff, right, nod, left]).unsqueeze(0)
    sid = torch.tensor([[0, 0, 1, 1]])
    mask = torch.ones(1, 4, dtype=torch.bool)
    img = ImageFeatures(unit(1, 128, seed=1), regions, GRID)
    texts = [TextFeatures(unit(1, 128, seed=2), w, mask, sid) for w in (true, swap)]
    scores = {}
    for phrases in (False, True):
        model = create_model("reclf", image_encoder=IMAGE, text_encoder=TEXT, aggregator="mean",
                             phrase_nodes=phrases).eval()
        with torch.no_grad():
            scores[phrases] = [float(model.local_similarity(img, t)) for t in texts]
    assert scores[False][0] == pytest.approx(scores[False][1], abs=1e-6)
    assert scores[True][0] > scores[True][1] + 0.05
    with pytest.raises(Exception, match="phrase_nodes"):
        create_model("convirt", image_encoder=IMAGE, text_encoder=TEXT, phrase_nodes=True)


def test_srm_topk_reasons_over_the_most_important_nodes_and_passes_the_rest_through():
    from reclf.align.aggregators import key_padding_mask

    words, ctx, mask, sent, img_g, txt_g, attn = inputs()
    torch.manual_seed(0)
    agg = build_aggregator("srm+irm", D, d_z=8, heads=2, irm_before_srm=True, irm_text_prior=True, topk=3,
                           structure_edges=True)
    with torch.no_grad():
        agg.srm.structure.normal_()  # edge biases that matter: each kept node's own rows and columns
    out = agg(words, ctx, mask, sent, img_g, txt_g)
    # written out: IRM's logits before SRM pick the global node and the 3 most important valid words
    z, valid = agg.matchings(words, ctx, mask, img_g, txt_g)
    u = agg.irm.logits(z, valid, agg._irm_prior(words, ctx, mask, img_g, txt_g))
    bias = agg.srm.edge_bias(structure_buckets(sent[None], True), None, ctx.shape[0], ctx.shape[1])  # [P, H, N, N]
    after = z.clone()
    for p in range(z.shape[0]):
        ranked = [int(i) + 1 for i in torch.argsort(u[p, 1:].masked_fill(~valid[p, 1:], -1e9), descending=True)]
        idx = torch.tensor([0] + ranked[:3])
        sub_bias = bias[p][:, idx][:, :, idx][None]
        new, _ = agg.srm(z[p, idx][None], key_padding_mask(valid[p, idx][None]), bias=sub_bias)
        after[p, idx] = new[0]
    ref, _ = agg.irm(after, valid, u=u)
    torch.testing.assert_close(out.score.reshape(-1), ref)
    # relations: only among the kept nodes (4 of the 9 nodes of every pair get a row)
    rows = out.relations.reshape(-1, 9, 9).abs().sum(-1) > 0
    assert (rows.sum(-1) == 4).all()
    # k >= the words: every node, the same as no top-k
    torch.manual_seed(0)
    full = build_aggregator("srm+irm", D, d_z=8, heads=2, irm_before_srm=True, irm_text_prior=True)
    torch.manual_seed(0)
    big = build_aggregator("srm+irm", D, d_z=8, heads=2, irm_before_srm=True, irm_text_prior=True, topk=8)
    torch.testing.assert_close(big(words, ctx, mask, sent, img_g, txt_g).score,
                               full(words, ctx, mask, sent, img_g, txt_g).score)
    with pytest.raises(Exception, match="srm_topk"):
        create_model("reclf-no-irm", image_encoder=IMAGE, text_encoder=TEXT, srm_topk=4)


def test_srm_topk_builds_the_kept_subgraph_of_the_whole_graph():
    """The subgraph SRM reasons over is the whole graph's kept rows and columns: sentence edges, structure and
    grounding biases, written out here from the full ``[N, N]`` graph, per pair."""
    from reclf.align.aggregators import kept_square

    words, ctx, mask, sent, img_g, txt_g, attn = inputs()
    torch.manual_seed(0)
    agg = build_aggregator("srm+irm", D, d_z=8, heads=2, irm_before_srm=True, topk=4, sentence_edges=True,
                           prenorm=True, **ALL_SWITCHES)
    with torch.no_grad():  # biases and a residual branch that matter
        agg.srm.structure.normal_()
        agg.srm.grounding.normal_()
        agg.srm.layers[0].out.weight.normal_()
    out = agg(words, ctx, mask, sent, img_g, txt_g, attention=attn)
    z, valid = agg.matchings(words, ctx, mask, img_g, txt_g, attn)
    u = agg.irm.logits(z, valid, agg._irm_prior(words, ctx, mask, img_g, txt_g))
    keep = agg._srm_nodes(u, valid)
    assert keep.shape == (12, 5) and (keep[:, 0] == 0).all()
    edges = build_edge_mask(valid, _node_sentences(sent, 3), True)  # [P, N, N]
    bias = agg.srm.edge_bias(structure_buckets(sent[None], True), grounding_overlap(attn, True), 3, 4)
    sub, _ = agg.srm(z.gather(1, keep[..., None].expand(-1, -1, 8)), kept_square(edges, keep),
                     need_relations=False, bias=kept_square(bias, keep))
    ref = z.scatter(1, keep[..., None].expand(-1, -1, 8), sub)
    fused = agg(words, ctx, mask, sent, img_g, txt_g, extras=False, attention=attn).score
    assert torch.equal(fused.reshape(-1), agg.irm(ref, valid, u=u)[0])  # the same numbers, bit for bit
    # the explicit path (relations asked) agrees; the pair with masked words keeps none of them
    torch.testing.assert_close(out.score, fused, atol=1e-5, rtol=0)
    assert not bool((keep.view(3, 4, 5)[:, 1] > 5).any())  # report 1 has 5 valid words: nodes 1..5


def test_claim_loss_scores_each_changed_sentence_against_the_images_and_its_twin():
    from reclf.methods.model import changed_sentences

    img = ImageFeatures(unit(B, 128, seed=1), unit(B, 16, 128, seed=2), GRID)
    torch.manual_seed(0)
    model = create_model("convirt", image_encoder=IMAGE, text_encoder=TEXT, binding_negatives="side",
                         claim_weight=1.0).train()
    model.text_encoder.eval()  # no dropout: the reference below re-encodes the same reports
    model.encode_image = lambda images: img
    terms = model.loss({"images": torch.zeros(B, 1, 64, 64), "reports": REPORTS})
    txt = model.encode_text(REPORTS)
    twin = model.encode_text([swap_laterality(r) for r in REPORTS])
    changed = changed_sentences(txt, twin, 2)
    # report 0: both sentences name a side; report 2: its only one; reports 1 and 3: none
    assert changed.tolist() == [[True, True], [False, False], [True, False], [False, False]]
    rows = [(0, 0), (0, 1), (2, 0)]
    own = torch.stack([txt.claims[b, k] for b, k in rows])
    other = torch.stack([twin.claims[b, k] for b, k in rows])
    owners = torch.tensor([b for b, _ in rows])
    tau = float(model.global_tau.tau)
    logits = own @ img.global_.t() / tau
    own_score = logits[torch.arange(3), owners]
    twin_score = (other * img.global_[owners]).sum(-1) / tau
    ref = (F.cross_entropy(logits, owners) + F.softplus(twin_score - own_score).mean()) / 2
    torch.testing.assert_close(terms["claim"], ref, atol=1e-5, rtol=1e-5)
    assert float(terms["claim_acc"]) == float((own_score > twin_score).float().mean())
    torch.testing.assert_close(terms["loss"], terms["global"] + terms["claim"], atol=1e-5, rtol=1e-5)
    assert txt.claims.norm(dim=-1)[0].tolist() == pytest.approx([1.0, 1.0], abs=1e-5)


def test_claim_weight_needs_binding_negatives():
    from reclf.config import ConfigError

    with pytest.raises(ConfigError, match="claim_weight"):
        create_model("convirt", image_encoder=IMAGE, text_encoder=TEXT, claim_weight=1.0)


def test_global_node_off_builds_the_local_score_from_the_words_alone():
    """``method.global_node=false`` on the shipped RECLF (SRM over the top words, sentence edges): the graph has
    one node per word, and the local score no longer depends on the global vectors."""
    mask = torch.ones(B, WORDS, dtype=torch.bool)
    sentences = torch.tensor([0, 0, 1, 1, 1]).repeat(B, 1)
    img = ImageFeatures(unit(B, 128, seed=1), unit(B, 16, 128, seed=2), GRID)
    txt = TextFeatures(unit(B, 128, seed=4), unit(B, WORDS, 128, seed=3), mask, sentences)
    moved = ImageFeatures(unit(B, 128, seed=9), img.local, GRID)  # other global vectors, the same regions
    torch.manual_seed(0)
    model = create_model("reclf", image_encoder=IMAGE, text_encoder=TEXT, global_node=False).eval()
    assert model.aggregator.global_node is False and model.params.srm_topk == 8
    with torch.no_grad():
        torch.testing.assert_close(model.local_similarity(img, txt), model.local_similarity(moved, txt))
    torch.manual_seed(0)
    with_node = create_model("reclf", image_encoder=IMAGE, text_encoder=TEXT).eval()
    with torch.no_grad():
        assert not torch.allclose(with_node.local_similarity(img, txt), with_node.local_similarity(moved, txt))


def test_words_alone_leave_the_binding_to_srm():
    """``text_encoder.context=word``: a report and its twin with the sides swapped between two findings have the
    same words and report vector, so reclf-no-srm and GLoRIA score them alike (their nodes are the same set) and
    only SRM, which reads which words share a sentence, can tell them apart — the test only SRM can pass. With
    contextual words (the default) the ablation can tell them apart too."""
    true = "small effusion on the left. nodule on the right."
    swapped = swap_laterality(true)
    images = torch.rand(1, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    scores = {}
    for context in ("word", "report"):
        for method in ("reclf-no-srm", "gloria", "reclf"):
            torch.manual_seed(0)
            model = create_model(method, image_encoder=IMAGE, text_encoder={**TEXT, "context": context}).eval()
            srm = getattr(model.aggregator, "srm", None)
            for layer in srm.layers if srm is not None else []:  # pre-norm SRM starts as the identity: wake it
                for lin in (layer.out, layer.ffn[-1]):
                    torch.nn.init.normal_(lin.weight, std=0.3)
            with torch.no_grad():
                img = model.encode_image(images)
                txt = [model.encode_text([r]) for r in (true, swapped)]
                scores[context, method] = [float(model.similarity(img, t)) for t in txt]
    tie = {k: abs(a - b) for k, (a, b) in scores.items()}
    assert tie["word", "reclf-no-srm"] < 1e-5 and tie["word", "gloria"] < 1e-5
    assert tie["word", "reclf"] > 1e-3
    assert tie["report", "reclf-no-srm"] > 1e-3
