"""Every registered method: one training step, gradients everywhere, API shapes, save/load."""

import math

import pytest
import torch
import torch.nn.functional as F

import reclf
from reclf.config import ConfigError, load_config
from reclf.methods import build_model, create_model, from_pretrained, list_methods

IMAGE = {"name": "cnn-small", "image_size": 64}
TEXT = {"name": "bert-tiny", "max_tokens": 48}
REPORTS = [
    "Small left lower lobe opacity. No pneumothorax.",
    "Heart size is enlarged. Lungs are clear.",
    "Moderate right pleural effusion with adjacent atelectasis.",
    "No acute cardiopulmonary process.",
]


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(0)
    return torch.rand(4, 1, 64, 64)


def test_registry_lists_the_four_methods_and_ablations():
    assert list_methods() == ["convirt", "gloria", "mgca", "reclf", "reclf-no-srm", "reclf-no-irm"]


@pytest.mark.parametrize("method", list_methods())
def test_one_step_finite_and_every_part_learns(method, images):
    torch.manual_seed(0)
    model = reclf.create_model(method, image_encoder=IMAGE, text_encoder=TEXT)
    model.train()
    terms = model.loss({"images": images, "reports": REPORTS})
    assert torch.isfinite(terms["loss"])
    terms["loss"].backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert no_grad == [], f"{method}: parameters without gradient: {no_grad[:8]}"
    # every part moves (single tensors may have an exactly-zero first gradient, e.g. zero-init residual branches)
    for part, module in model.named_children():
        grads = [p.grad.abs().sum() for p in module.parameters() if p.requires_grad]
        if grads:
            assert float(sum(grads)) > 0, f"{method}: {part} gets an all-zero gradient"
    if method in ("reclf", "reclf-no-srm", "reclf-no-irm", "gloria"):
        assert "local" in terms
    if method == "mgca":
        assert {"token", "proto"} <= set(terms)


def test_global_loss_at_init_is_near_log_batch():
    torch.manual_seed(1)
    model = create_model("convirt", image_encoder=IMAGE, text_encoder=TEXT, i2t_weight=0.5)
    model.eval()
    with torch.no_grad():
        terms = model.loss({"images": torch.rand(8, 1, 64, 64), "reports": REPORTS * 2})
    # random init: logits are cos/0.1 of near-random embeddings -> loss within a band around log(8)
    assert abs(float(terms["global"]) - math.log(8)) < 1.0


@pytest.mark.parametrize("method", ["gloria", "reclf"])
def test_similarities_shapes_and_batch_permutation(method, images):
    torch.manual_seed(0)
    model = create_model(method, image_encoder=IMAGE, text_encoder=TEXT).eval()
    with torch.no_grad():
        img, txt = model.encode_image(images), model.encode_text(REPORTS)
        sim = model.similarity(img, txt)
        local = model.local_similarity(img, txt)
        perm = torch.tensor([2, 0, 3, 1])
        img_p, txt_p = model.encode_image(images[perm]), model.encode_text([REPORTS[i] for i in perm])
        local_p = model.local_similarity(img_p, txt_p)
    assert sim.shape == local.shape == (4, 4)
    assert img.local.shape == (4, img.grid[0] * img.grid[1], model.embed_dim)
    torch.testing.assert_close(local_p, local[perm][:, perm], atol=1e-5, rtol=1e-4)


def test_padding_never_changes_scores(images):
    """A report scored alone or beside a much longer one (more padding) gets the same local score."""
    torch.manual_seed(0)
    model = create_model("reclf", image_encoder=IMAGE, text_encoder=TEXT).eval()
    long = " ".join(["Extensive bilateral airspace opacities in both lungs."] * 4)
    with torch.no_grad():
        img = model.encode_image(images[:2])
        alone = model.local_similarity(img, model.encode_text([REPORTS[0]]))
        padded = model.local_similarity(img, model.encode_text([REPORTS[0], long]))[:, :1]
    torch.testing.assert_close(alone, padded, atol=1e-5, rtol=1e-4)


def test_explain_reclf(images):
    model = create_model("reclf", image_encoder=IMAGE, text_encoder=TEXT)
    ex = model.explain(images[0], REPORTS[0])
    n = len(ex.words)
    assert ex.words[:4] == ["small", "left", "lower", "lobe"]
    assert ex.attention.shape == (n, *ex.grid)
    torch.testing.assert_close(ex.attention.sum(dim=(1, 2)), torch.ones(n))
    assert ex.word_weights.shape == (n,) and ex.relations.shape == (n + 1, n + 1)
    assert ex.local_score is not None


@pytest.mark.parametrize("method", ["mgca", "reclf"])
def test_save_and_load_round_trip(method, images, tmp_path):
    model = create_model(method, image_encoder=IMAGE, text_encoder=TEXT).eval()
    model.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").is_file()
    again = from_pretrained(tmp_path / "m")
    with torch.no_grad():
        a = model.similarity(model.encode_image(images), model.encode_text(REPORTS))
        b = again.similarity(again.encode_image(images), again.encode_text(REPORTS))
    torch.testing.assert_close(a, b)
    assert again.config == model.config


def test_bad_method_options_are_clear_errors():
    with pytest.raises(ConfigError, match="unknown method 'clip'"):
        create_model("clip")
    with pytest.raises(ConfigError, match="unknown config key method.aggregatr"):
        create_model("reclf", image_encoder=IMAGE, text_encoder=TEXT, aggregatr="irm")
    with pytest.raises(ConfigError, match="method.aggregator must be one of"):
        create_model("reclf", image_encoder=IMAGE, text_encoder=TEXT, aggregator="attention")


def test_build_model_from_run_config():
    cfg = load_config(None, ["method.name=reclf-no-srm", "image_encoder.image_size=64", "method.hard_negatives=2",
                      "method.local_group=0"])
    model = build_model(cfg)
    assert model.method == "reclf-no-srm" and model.params.aggregator == "irm" and model.params.hard_negatives == 2
    terms = model.loss({"images": torch.rand(4, 1, 64, 64), "reports": REPORTS})
    assert torch.isfinite(terms["loss"])


@pytest.mark.parametrize("method", ["gloria", "mgca", "reclf"])
def test_model_attention_is_sharp_at_init(method):
    """Through the model (its learned GLoRIA scale, MGCA's token attention): a word equal to one region's
    direction puts most of its attention on that region."""
    from reclf.models.features import ImageFeatures, TextFeatures

    model = create_model(method, image_encoder=IMAGE, text_encoder=TEXT)
    d, n = model.embed_dim, 16
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(0)))
    regions = q[:n].unsqueeze(0)
    own = torch.randperm(n, generator=torch.Generator().manual_seed(1))
    img = ImageFeatures(torch.zeros(1, d), regions, (4, 4))
    mask = torch.ones(1, n, dtype=torch.bool)
    txt = TextFeatures(torch.zeros(1, d), regions[:, own], mask, torch.zeros(1, n, dtype=torch.long), [["w"] * n])
    attn = model.word_region_attention(img, txt)[0]
    assert attn[torch.arange(n), own].min() > 0.5


def test_match_scale_is_learned_and_glorias_inference_score_is_per_pair(images):
    torch.manual_seed(0)
    model = create_model("gloria", image_encoder=IMAGE, text_encoder=TEXT)
    model.train()
    model.loss({"images": images, "reports": REPORTS})["loss"].backward()
    assert model.match_scale.log_scale.grad is not None and float(model.match_scale.scale) == pytest.approx(10.0)
    model.eval()
    with torch.no_grad():
        img, txt = model.encode_image(images), model.encode_text(REPORTS)
        full = model.similarity(img, txt)
        single = torch.stack([
            torch.stack([model.similarity(img.index(slice(i, i + 1)), txt.index(torch.tensor([t])))[0, 0]
                         for t in range(4)]) for i in range(4)
        ])
        # GLoRIA's own inference (gloria.get_similarities): (5 * max_w cos(e_w, c_w) + cos(g, h)) / 2
        expected = (5.0 * model.local_similarity(img, txt) + model.global_similarity(img, txt)) / 2
        # the local score is the best-matched word's cosine with its attended context, written out here
        attn = model.word_region_attention(img, txt)  # [B, W, R], report i over image i
        context = attn @ img.local
        cos = F.cosine_similarity(txt.words, context, dim=-1).masked_fill(~txt.word_mask, -2.0)
        own_max = cos.max(-1).values
    torch.testing.assert_close(single, full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(full, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.local_similarity(img, txt).diagonal(), own_max, atol=1e-5, rtol=1e-5)
    # the training aggregation stays log-sum-exp (its local InfoNCE); only inference takes the max
    assert model.aggregator.kind == "lse" and model.params.local_inference == "max"
