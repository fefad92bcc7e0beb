"""``reclf convert``: reference-shaped GLoRIA / MGCA state dicts -> reclf model folders.

The reference layouts are written here from the reference architectures' parameter lists (torchvision
ResNet, Hugging Face BERT, BLIP's med.BertModel, timm ViT, GLoRIA's / MGCA's heads), not from their
code, with reduced widths where the mapping does not depend on them.
"""

import json
import pickle
import re
import sys
import types

import pytest
import torch

from reclf.evaluate.loading import load_model
from reclf.methods.convert import (
    ConversionError,
    _strip_prefix,
    build_target,
    convert,
    load_reference_checkpoint,
    map_state,
    read_layout,
)

# -- reference parameter lists ------------------------------------------------------------------


def bn(prefix, c, affine=True):
    out = {f"{prefix}.running_mean": (c,), f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()}
    if affine:
        out |= {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,)}
    return out


def torchvision_resnet(prefix, arch):
    """torchvision ResNet names/shapes without fc (GLoRIA and MGCA replace it by Identity)."""
    bottleneck = arch == "resnet50"
    blocks = {"resnet18": [2, 2, 2, 2], "resnet50": [3, 4, 6, 3]}[arch]
    e = 4 if bottleneck else 1
    s = {f"{prefix}.conv1.weight": (64, 3, 7, 7)} | bn(f"{prefix}.bn1", 64)
    cin = 64
    for li, (planes, n) in enumerate(zip([64, 128, 256, 512], blocks), start=1):
        for b in range(n):
            p = f"{prefix}.layer{li}.{b}"
            if bottleneck:
                convs = [(planes, cin, 1, 1), (planes, planes, 3, 3), (planes * e, planes, 1, 1)]
            else:
                convs = [(planes, cin, 3, 3), (planes, planes, 3, 3)]
            for ci, shape in enumerate(convs, start=1):
                s[f"{p}.conv{ci}.weight"] = shape
                s |= bn(f"{p}.bn{ci}", shape[0])
            if b == 0 and (li > 1 or cin != planes * e):
                s[f"{p}.downsample.0.weight"] = (planes * e, cin, 1, 1)
                s |= bn(f"{p}.downsample.1", planes * e)
            cin = planes * e
    return s


def hf_bert(prefix, h, layers, inter, vocab, pos=512, pooler=True, token_types=True, cross=False):
    s = {f"{prefix}.embeddings.word_embeddings.weight": (vocab, h),
         f"{prefix}.embeddings.position_embeddings.weight": (pos, h),
         f"{prefix}.embeddings.LayerNorm.weight": (h,), f"{prefix}.embeddings.LayerNorm.bias": (h,),
         f"{prefix}.embeddings.position_ids": (1, pos)}
    if token_types:
        s[f"{prefix}.embeddings.token_type_embeddings.weight"] = (2, h)
    for i in range(layers):
        p = f"{prefix}.encoder.layer.{i}"
        for att in ["attention", "crossattention"] if cross else ["attention"]:
            for n in ("query", "key", "value"):
                s |= {f"{p}.{att}.self.{n}.weight": (h, h), f"{p}.{att}.self.{n}.bias": (h,)}
            s |= {f"{p}.{att}.output.dense.weight": (h, h), f"{p}.{att}.output.dense.bias": (h,),
                  f"{p}.{att}.output.LayerNorm.weight": (h,), f"{p}.{att}.output.LayerNorm.bias": (h,)}
        s |= {f"{p}.intermediate.dense.weight": (inter, h), f"{p}.intermediate.dense.bias": (inter,),
              f"{p}.output.dense.weight": (h, inter), f"{p}.output.dense.bias": (h,),
              f"{p}.output.LayerNorm.weight": (h,), f"{p}.output.LayerNorm.bias": (h,)}
    if pooler:
        s |= {f"{prefix}.pooler.dense.weight": (h, h), f"{prefix}.pooler.dense.bias": (h,)}
    return s


def timm_vit(prefix, d=768, depth=12, patches=196):
    s = {f"{prefix}.cls_token": (1, 1, d), f"{prefix}.pos_embed": (1, patches + 1, d),
         f"{prefix}.patch_embed.proj.weight": (d, 3, 16, 16), f"{prefix}.patch_embed.proj.bias": (d,),
         f"{prefix}.norm.weight": (d,), f"{prefix}.norm.bias": (d,)}
    for i in range(depth):
        p = f"{prefix}.blocks.{i}"
        s |= {f"{p}.norm1.weight": (d,), f"{p}.norm1.bias": (d,), f"{p}.attn.qkv.weight": (3 * d, d),
              f"{p}.attn.qkv.bias": (3 * d,), f"{p}.attn.proj.weight": (d, d), f"{p}.attn.proj.bias": (d,),
              f"{p}.norm2.weight": (d,), f"{p}.norm2.bias": (d,), f"{p}.mlp.fc1.weight": (4 * d, d),
              f"{p}.mlp.fc1.bias": (4 * d,), f"{p}.mlp.fc2.weight": (d, 4 * d), f"{p}.mlp.fc2.bias": (d,)}
    return s


def mgca_head(prefix, cin, hidden, out, conv):
    k = (1,) if conv else ()
    return ({f"{prefix}.head.0.weight": (hidden, cin, *k), f"{prefix}.head.0.bias": (hidden,)}
            | bn(f"{prefix}.head.1", hidden)
            | {f"{prefix}.head.3.weight": (out, hidden, *k), f"{prefix}.head.3.bias": (out,)}
            | bn(f"{prefix}.head.4", out, affine=False))


def gloria_layout(arch="resnet18", h=32, layers=4, inter=64, vocab=30522, embed=None):
    embed = embed or h
    local_in = 1024 if arch == "resnet50" else 256
    global_in = 2048 if arch == "resnet50" else 512
    s = torchvision_resnet("gloria.img_encoder.model", arch)
    s |= {"gloria.img_encoder.global_embedder.weight": (embed, global_in),
          "gloria.img_encoder.global_embedder.bias": (embed,),
          "gloria.img_encoder.local_embedder.weight": (embed, local_in, 1, 1)}
    return s | hf_bert("gloria.text_encoder.model", h, layers, inter, vocab)


def mgca_layout(image="resnet18", h=32, layers=2, inter=64, vocab=30522, hidden=64, emb=16):
    vit = image == "vit-b16"
    g_in, l_in = (768, 768) if vit else ((2048, 1024) if image == "resnet50" else (512, 256))
    hid = dict.fromkeys(("ig", "il", "tg", "tl"), hidden)  # MGCA: one hidden width for every head (2048)
    s = timm_vit("img_encoder_q.model") if vit else torchvision_resnet("img_encoder_q.model", image)
    s |= mgca_head("img_encoder_q.global_embed", g_in, hid.get("ig", g_in), emb, conv=False)
    s |= mgca_head("img_encoder_q.local_embed", l_in, hid.get("il", l_in), emb, conv=True)
    s |= hf_bert("text_encoder_q.model", h, layers, inter, vocab, pooler=False, token_types=False, cross=True)
    s |= mgca_head("text_encoder_q.global_embed", h, hid.get("tg", h), emb, conv=False)
    s |= mgca_head("text_encoder_q.local_embed", h, hid.get("tl", h), emb, conv=True)
    for att in ("patch_local_atten_layer", "word_local_atten_layer"):
        s |= {f"{att}.in_proj_weight": (3 * emb, emb), f"{att}.in_proj_bias": (3 * emb,),
              f"{att}.out_proj.weight": (emb, emb), f"{att}.out_proj.bias": (emb,)}
    return s | {"prototype_layer.weight": (500, emb)}


def materialise(shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, shape in shapes.items():
        if k.endswith("num_batches_tracked"):
            out[k] = torch.tensor(7)
        elif k.endswith("position_ids"):
            out[k] = torch.arange(shape[1]).view(1, -1)
        elif k.endswith("running_var"):
            out[k] = torch.rand(shape, generator=g) + 0.5
        else:
            out[k] = torch.randn(shape, generator=g) * 0.05
    return out


def bert_folder(path, h=32, layers=4, heads=2, vocab=30522):
    """A tiny BERT folder (config + MiniLM's WordPiece vocabulary): stands in for Bio_ClinicalBERT."""
    from reclf.models.text import minilm_dir

    path.mkdir(parents=True, exist_ok=True)
    cfg = {"model_type": "bert", "architectures": ["BertModel"], "hidden_size": h, "num_hidden_layers": layers,
           "num_attention_heads": heads, "intermediate_size": 4 * h, "vocab_size": vocab, "hidden_act": "gelu",
           "layer_norm_eps": 1e-12, "max_position_embeddings": 512, "type_vocab_size": 2, "pad_token_id": 0}
    (path / "config.json").write_text(json.dumps(cfg))
    words = (minilm_dir() / "vocab.txt").read_text().splitlines()[:vocab]
    (path / "vocab.txt").write_text("\n".join(words) + "\n")
    (path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}))
    return path


def lightning_ckpt(path, state, hparams):
    torch.save({"epoch": 3, "global_step": 10, "pytorch-lightning_version": "1.5.0", "state_dict": state,
                "hyper_parameters": hparams}, path)
    return path


# -- tests -----------------------------------------------------------------------------------------


def test_gloria_end_to_end_and_evaluate(tmp_path):
    from helpers.eval_stub import make_folder
    from reclf.evaluate.cli import run_task

    ref = materialise(gloria_layout())
    ckpt = lightning_ckpt(tmp_path / "gloria.ckpt", ref, {"model": {"text": {"last_n_layers": 4}}})
    from reclf.cli import main

    assert main(["convert", "gloria", str(ckpt), "--out", str(tmp_path / "conv"), "--text-encoder",
                 str(bert_folder(tmp_path / "bert"))]) == 0
    report = types.SimpleNamespace(**json.loads((tmp_path / "conv" / "conversion.json").read_text()))
    assert report.mapped == len(ref) - len(report.ignored) and report.ignored
    assert set(report.derived) >= {"text_global.net.weight", "image_encoder.input_mean"}
    loaded = load_model(tmp_path / "conv")
    m = loaded.model
    assert torch.equal(m.image_encoder.layer3[1].conv2.weight, ref["gloria.img_encoder.model.layer3.1.conv2.weight"])
    assert torch.equal(m.image_local.net.weight, ref["gloria.img_encoder.local_embedder.weight"][:, :, 0, 0])
    assert torch.equal(m.text_encoder.backbone.encoder.layer[3].output.dense.weight,
                       ref["gloria.text_encoder.model.encoder.layer.3.output.dense.weight"])
    assert m.text_cfg.last_n_layers == 4 and m.method == "gloria" and m.embed_dim == 32
    # the converted folder evaluates like any reclf model (tiny images)
    data = make_folder(tmp_path / "data", n=10)
    res = run_task("zeroshot", loaded, data, tmp_path / "zs", {"prompts": "chexpert", "prompts_per_class": 2,
                                                               "n_boot": 20, "image_size": 64})
    assert "global/accuracy" in res.metrics and "local/accuracy" in res.metrics
    assert report.sha256 and report.image_encoder == "resnet18"
    # a missing BERT folder: one clear line, exit 1
    assert main(["convert", "gloria", str(ckpt), "--out", str(tmp_path / "x"), "--text-encoder",
                 str(tmp_path / "missing")]) == 1


def test_mgca_tiny_resnet_and_refusals(tmp_path):
    ref = materialise(mgca_layout())
    ckpt = lightning_ckpt(tmp_path / "mgca.ckpt", ref, {"img_encoder": "resnet_50", "emb_dim": 16})
    report = convert("mgca", ckpt, tmp_path / "conv", bert_folder(tmp_path / "bert"))
    m = load_model(tmp_path / "conv").model
    assert m.text_encoder.backbone.config.num_hidden_layers == 2  # from the checkpoint, not the folder's 4
    assert torch.equal(m.prototypes.prototypes.weight, ref["prototype_layer.weight"])
    assert torch.equal(m.text_local.net[0].weight,
                       ref["text_encoder_q.local_embed.head.0.weight"][..., 0])
    assert torch.equal(m.image_global.net[4].running_var, ref["img_encoder_q.global_embed.head.4.running_var"])
    assert not m.text_encoder.backbone.embeddings.token_type_embeddings.weight.any()
    assert any("crossattention" in k for k in report.ignored)
    # one unexpected key -> refused with its name
    bad = dict(ref) | {"img_encoder_q.extra_head.weight": torch.zeros(2)}
    with pytest.raises(ConversionError, match="extra_head"):
        map_state("mgca", bad, _target_state(ref, tmp_path))
    # one missing key -> refused with the reclf weight that has no source
    short = {k: v for k, v in ref.items() if k != "img_encoder_q.local_embed.head.3.bias"}
    with pytest.raises(ConversionError, match=re.escape("image_local.net.3.bias")):
        map_state("mgca", short, _target_state(ref, tmp_path))
    # a wrong shape -> refused naming both keys
    wrong = dict(ref) | {"prototype_layer.weight": torch.zeros(500, 8)}
    with pytest.raises(ConversionError, match="prototype_layer.weight"):
        map_state("mgca", wrong, _target_state(ref, tmp_path))


def _target_state(ref, tmp_path):
    layout = read_layout(_strip_prefix(ref, "mgca"), "mgca")
    return build_target(layout, bert_folder(tmp_path / "bert"), device="meta").state_dict()


class FakeDictConfig:  # a stand-in for omegaconf's DictConfig, pickled by reference
    def __init__(self, d):
        self.d = d


def test_unsafe_pickled_objects_stay_inert(tmp_path):
    mod = types.ModuleType("fake_omegaconf")
    FakeDictConfig.__module__ = "fake_omegaconf"
    mod.FakeDictConfig = FakeDictConfig
    sys.modules["fake_omegaconf"] = mod
    try:
        path = lightning_ckpt(tmp_path / "x.ckpt", {"a.weight": torch.ones(2)}, FakeDictConfig({"lr": 1}))
    finally:
        del sys.modules["fake_omegaconf"]
    with pytest.raises(pickle.UnpicklingError):  # plain weights_only refuses the class ...
        torch.load(path, weights_only=True)
    state = load_reference_checkpoint(path)  # ... the converter reads the tensors without running it
    assert list(state) == ["a.weight"] and torch.equal(state["a.weight"], torch.ones(2))


def _full_size_bert(tmp_path, layers):
    return bert_folder(tmp_path / "bioclinical", h=768, layers=layers, heads=12, vocab=28996)


@pytest.mark.parametrize("fmt", ["gloria", "mgca-resnet50", "mgca-vit"])
def test_full_size_reference_names_map_completely(tmp_path, fmt):
    """Full-size names and shapes (ResNet-50 / ViT-B/16, Bio_ClinicalBERT 768-d, vocab 28996), on meta tensors."""
    if fmt == "gloria":
        shapes = gloria_layout("resnet50", h=768, layers=12, inter=3072, vocab=28996, embed=768)
    else:
        # MGCA's heads are 2048 wide (method.projection_hidden)
        hidden = 2048
        shapes = mgca_layout("vit-b16" if fmt == "mgca-vit" else "resnet50", h=768, layers=6, inter=3072,
                             vocab=28996, emb=128, hidden=hidden)
    name = fmt.split("-")[0]
    ref = _strip_prefix({k: torch.empty(s, device="meta") for k, s in shapes.items()}, name)
    layout = read_layout(ref, name)
    target = build_target(layout, _full_size_bert(tmp_path, 12), device="meta").state_dict()
    out, report = map_state(name, ref, target)
    assert set(out) == set(target)
    assert report.mapped + len(report.ignored) == len(ref)


def test_mgca_heads_of_different_widths_are_refused(tmp_path):
    shapes = mgca_layout("resnet18")
    shapes |= mgca_head("img_encoder_q.local_embed", 256, 32, 16, conv=True)  # one head narrower than the rest
    ref = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    with pytest.raises(ConversionError, match="different hidden widths"):
        build_target(read_layout(ref, "mgca"), bert_folder(tmp_path / "bert"), device="meta")
