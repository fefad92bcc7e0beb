"""``reclf convert gloria|mgca CHECKPOINT --out DIR``: released GLoRIA / MGCA weights as reclf model folders.

Why: researchers want to evaluate the published weights under reclf's protocols (``reclf evaluate
TASK --model DIR``). The converter maps the reference state dict onto a reclf ``VLModel`` of the
matching widths and writes it with ``save_pretrained`` (safetensors + config + ``text_encoder/``),
plus ``conversion.json`` (source file, its sha256, every rule applied).

Strictness: every key of the checkpoint is either mapped by a rule or listed among the keys the
reference itself never uses at inference (below); every weight of the reclf model is either mapped
or derived by a stated rule. Anything else — a missing key, an unexpected key, a shape that does
not fit — stops the conversion with the key's name; nothing is silently left at its random init.

Loading: ``torch.load(weights_only=True)`` only. Lightning checkpoints also pickle their
hyper-parameters (GLoRIA: an OmegaConf ``DictConfig``; MGCA: an ``AttributeDict``); those classes
are replaced by an inert placeholder (:class:`_Inert`, which ignores its arguments), so no code from
the file runs and only tensors are read.

GLoRIA (marshuang80/gloria, ``gloria/models``): ``gloria.img_encoder.model.*`` is a torchvision
ResNet (``fc`` = Identity), ``img_encoder.global_embedder`` a ``Linear(2048, 768)``,
``img_encoder.local_embedder`` a bias-free 1x1 ``Conv2d(1024, 768)`` on layer3,
``text_encoder.model.*`` a Hugging Face ``BertModel`` (Bio_ClinicalBERT) with no projection: the
text features are the sum of the last 4 layers, so reclf's text projections become identities.
MGCA (HKU-MedAI/MGCA, ``mgca/models/backbones/encoder.py``): ``img_encoder_q.model.*`` a ResNet-50
or a timm-named ViT-B/16, ``{img_encoder_q,text_encoder_q}.{global_embed,local_embed}.head.*`` the
MLP ``Linear/Conv1d -> BN -> ReLU -> Linear/Conv1d -> BN(affine=False)`` (hidden 2048, out 128),
``text_encoder_q.model.*`` BLIP's ``med.BertModel`` (6 layers of Bio_ClinicalBERT, no token-type
embedding, unused cross-attention), ``prototype_layer`` the 500 prototypes.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

FORMATS = ("gloria", "mgca")
HALF = (0.5, 0.5, 0.5)  # both references normalise inputs with mean 0.5, std 0.5 ("half")


class ConversionError(ValueError):
    """The checkpoint does not fit the reference layout (the message names the key and what to do)."""


class _Inert:
    """Stands in for any non-tensor class pickled in a checkpoint; it accepts and ignores everything."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, value: Any) -> None:
        pass

    def extend(self, values: Any) -> None:
        pass


def load_reference_checkpoint(path: str | Path) -> dict[str, Any]:
    """The state dict of a Lightning / plain checkpoint, read with ``torch.load(weights_only=True)``."""
    import pickle

    import torch
    from torch.serialization import get_unsafe_globals_in_checkpoint, safe_globals

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    try:
        unsafe = get_unsafe_globals_in_checkpoint(str(path))
    except Exception as exc:  # noqa: BLE001 - not a torch zip file: the load below says so
        unsafe = []
        first_error: Exception | None = exc
    else:
        first_error = None
    try:
        with safe_globals([(_Inert, name) for name in unsafe]):
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
        raise ConversionError(
            f"{path}: cannot be read as weights only ({exc}); pass the released .ckpt / .pth file as downloaded"
            + (f" (zip scan: {first_error})" if first_error else "")
        ) from exc
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not state:
        raise ConversionError(f"{path}: holds no state dict (expected a dict of tensors or a 'state_dict' entry)")
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if len(tensors) != len(state):
        bad = next(k for k, v in state.items() if not isinstance(v, torch.Tensor))
        raise ConversionError(f"{path}: state dict entry {bad!r} is not a tensor")
    return tensors


# ---------------------------------------------------------------------------------------------
# rules


Transform = Callable[[Any], Any]


def _same(t: Any) -> Any:
    return t


def _squeeze_kernel(t: Any) -> Any:
    """A 1x1 convolution (Conv2d [O, I, 1, 1] / Conv1d [O, I, 1]) as the equivalent Linear weight [O, I]."""
    while t.dim() > 2 and t.shape[-1] == 1:
        t = t.squeeze(-1)
    return t


@dataclass(frozen=True)
class Rule:
    pattern: str  # regex on the (prefix-stripped) reference key
    target: str  # replacement (re.sub syntax)
    transform: Transform = _same
    why: str = ""


GLORIA_RULES = (
    Rule(r"^img_encoder\.model\.(.+)$", r"image_encoder.\1", why="torchvision ResNet, same names"),
    Rule(r"^img_encoder\.global_embedder\.(weight|bias)$", r"image_global.net.\1", why="Linear(2048, 768)"),
    Rule(r"^img_encoder\.local_embedder\.weight$", r"image_local.net.weight", _squeeze_kernel,
         "bias-free 1x1 Conv2d = bias-free Linear per region"),
    Rule(r"^text_encoder\.model\.((?:embeddings|encoder)\..+)$", r"text_encoder.backbone.\1",
         why="Hugging Face BertModel, same names"),
)
GLORIA_IGNORED = (
    (r"^text_encoder\.model\.pooler\.", "BERT pooler: GLoRIA reads hidden states only"),
    (r"^text_encoder\.model\.embeddings\.position_ids$", "position index buffer, rebuilt by transformers"),
)

MGCA_RULES = (
    Rule(r"^img_encoder_q\.model\.(.+)$", r"image_encoder.\1", why="torchvision ResNet / timm ViT, same names"),
    Rule(r"^img_encoder_q\.global_embed\.head\.(\d)\.(.+)$", r"image_global.net.\1.\2", _squeeze_kernel, "MLP head"),
    Rule(r"^img_encoder_q\.local_embed\.head\.(\d)\.(.+)$", r"image_local.net.\1.\2", _squeeze_kernel,
         "per-token MLP (Conv1d kernel 1 = Linear)"),
    Rule(r"^text_encoder_q\.global_embed\.head\.(\d)\.(.+)$", r"text_global.net.\1.\2", _squeeze_kernel, "MLP head"),
    Rule(r"^text_encoder_q\.local_embed\.head\.(\d)\.(.+)$", r"text_local.net.\1.\2", _squeeze_kernel,
         "per-token MLP (Conv1d kernel 1 = Linear)"),
    Rule(r"^text_encoder_q\.model\.(embeddings\.(?:word_embeddings|position_embeddings|LayerNorm)\..+)$",
         r"text_encoder.backbone.\1", why="BLIP med.BertModel embeddings, HF names"),
    Rule(r"^text_encoder_q\.model\.(encoder\.layer\.\d+\.(?:attention|intermediate|output)\..+)$",
         r"text_encoder.backbone.\1", why="BLIP med.BertModel self-attention layers, HF names"),
    Rule(r"^prototype_layer\.weight$", r"prototypes.prototypes.weight", why="the 500 prototypes"),
)
MGCA_IGNORED = (
    (r"^text_encoder_q\.model\.embeddings\.position_ids$", "position index buffer, rebuilt by transformers"),
    (r"^text_encoder_q\.model\.encoder\.layer\.\d+\.crossattention\.",
     "BLIP cross-attention: MGCA runs its BERT in text mode, never through these"),
    (r"^(patch|word)_local_atten_layer\.", "MGCA's optional local attention layers (use_local_atten=False)"),
)


# ---------------------------------------------------------------------------------------------
# reading the reference layout


@dataclass
class Layout:
    """What the checkpoint holds: backbone, widths, text geometry (read from key names and shapes)."""

    format: str
    image: str  # resnet18 | resnet34 | resnet50 | vit-b16
    embed_dim: int
    proj_hidden: dict[str, int] = field(default_factory=dict)  # MGCA: hidden width of each MLP head
    text: dict[str, int] = field(default_factory=dict)  # vocab, hidden, layers, intermediate, positions
    proj_in: dict[str, int] = field(default_factory=dict)  # MGCA: input width of each MLP head


def _strip_prefix(state: dict[str, Any], fmt: str) -> dict[str, Any]:
    """GLoRIA's Lightning module keeps the model under ``gloria.``; MGCA's parts are top-level."""
    if fmt == "gloria":
        if any(k.startswith("gloria.") for k in state):
            state = {k[len("gloria."):]: v for k, v in state.items() if k.startswith("gloria.")} | {
                k: v for k, v in state.items() if not k.startswith("gloria.")}
    for pre in ("module.", "model."):
        if state and all(k.startswith(pre) for k in state):
            state = {k[len(pre):]: v for k, v in state.items()}
    return state


def _need(state: dict[str, Any], key: str, fmt: str, ckpt: str) -> Any:
    if key not in state:
        raise ConversionError(f"{ckpt}: key {key!r} is missing; this is not a released {fmt} checkpoint "
                              f"(or a different architecture): check the file and the format argument")
    return state[key]


def read_layout(state: dict[str, Any], fmt: str, ckpt: str = "checkpoint") -> Layout:
    img = "img_encoder." if fmt == "gloria" else "img_encoder_q."
    txt = "text_encoder.model." if fmt == "gloria" else "text_encoder_q.model."
    if f"{img}model.cls_token" in state:
        width = int(state[f"{img}model.cls_token"].shape[-1])
        depth = len({k.split(".")[3] for k in state if k.startswith(f"{img}model.blocks.")})
        if (width, depth) != (768, 12):
            raise ConversionError(f"{ckpt}: ViT of width {width} and depth {depth}; reclf converts ViT-B/16 only")
        image = "vit-b16"
    else:
        _need(state, f"{img}model.conv1.weight", fmt, ckpt)
        blocks = [len({k.split(".")[3] for k in state if k.startswith(f"{img}model.layer{i}.")}) for i in range(1, 5)]
        bottleneck = f"{img}model.layer1.0.conv3.weight" in state
        resnets: dict[tuple[bool, tuple[int, ...]], str] = {
            (True, (3, 4, 6, 3)): "resnet50", (False, (2, 2, 2, 2)): "resnet18", (False, (3, 4, 6, 3)): "resnet34"}
        image = resnets.get((bottleneck, tuple(blocks)), "")
        if not image:
            raise ConversionError(f"{ckpt}: a ResNet with blocks {blocks} (bottleneck={bottleneck}) is not one "
                                  "reclf builds (resnet18 / resnet34 / resnet50)")
    words = _need(state, f"{txt}embeddings.word_embeddings.weight", fmt, ckpt)
    layers = len({k.split(".")[4] for k in state if k.startswith(f"{txt}encoder.layer.")})
    inter = _need(state, f"{txt}encoder.layer.0.intermediate.dense.weight", fmt, ckpt)
    text = {"vocab_size": int(words.shape[0]), "hidden_size": int(words.shape[1]), "num_hidden_layers": layers,
            "intermediate_size": int(inter.shape[0]),
            "max_position_embeddings": int(_need(state, f"{txt}embeddings.position_embeddings.weight", fmt,
                                                 ckpt).shape[0])}
    tt = state.get(f"{txt}embeddings.token_type_embeddings.weight")
    text["type_vocab_size"] = int(tt.shape[0]) if tt is not None else 2
    if fmt == "gloria":
        embed = int(_need(state, "img_encoder.global_embedder.weight", fmt, ckpt).shape[0])
        if embed != text["hidden_size"]:
            raise ConversionError(f"{ckpt}: GLoRIA's image embedding width {embed} differs from the BERT width "
                                  f"{text['hidden_size']}; GLoRIA compares them directly, so they must agree")
        return Layout(fmt, image, embed, {}, text)
    hidden, ins = {}, {}
    for part in ("img_encoder_q.global_embed", "img_encoder_q.local_embed", "text_encoder_q.global_embed",
                 "text_encoder_q.local_embed"):
        w = _need(state, f"{part}.head.0.weight", fmt, ckpt)
        hidden[part], ins[part] = int(w.shape[0]), int(w.shape[1])
    embed = int(_need(state, "img_encoder_q.global_embed.head.3.weight", fmt, ckpt).shape[0])
    return Layout(fmt, image, embed, hidden, text, ins)


# ---------------------------------------------------------------------------------------------
# the reclf model of the matching widths


def target_configs(layout: Layout, text_dir: Path) -> tuple[Any, Any, Any]:
    """(MethodParams, ImageEncoderConfig, TextEncoderConfig) of the reclf model the layout maps onto."""
    from reclf.config import ImageEncoderConfig, TextEncoderConfig
    from reclf.methods.params import method_params

    vit = layout.image.startswith("vit")
    # both references upsample ResNet input to 299 (19x19 layer3 regions); ViT-B/16 runs at 224
    image_cfg = ImageEncoderConfig(name=layout.image, in_chans=3, image_size=224 if vit else 299)
    overrides: dict[str, Any] = {"embed_dim": layout.embed_dim}
    if layout.format == "gloria":
        overrides["projection"] = "linear"
        text_cfg = TextEncoderConfig(name=str(text_dir), last_n_layers=4, word_merge="sum", pooling="mean")
    else:
        overrides["projection"] = "mlp"
        widths = set(layout.proj_hidden.values())
        if len(widths) != 1:
            raise ConversionError(f"MGCA heads have different hidden widths {layout.proj_hidden}; reclf uses one")
        overrides["projection_hidden"] = widths.pop()
        text_cfg = TextEncoderConfig(name=str(text_dir), last_n_layers=1, word_merge="sum", pooling="cls")
    text_cfg.max_tokens = min(text_cfg.max_tokens, layout.text["max_position_embeddings"])
    return method_params(layout.format, **overrides), image_cfg, text_cfg


def build_target(layout: Layout, text_dir: str | Path, device: str = "cpu") -> Any:
    """A reclf VLModel with the reference's widths; its BERT is shaped by the checkpoint (layers, vocab)
    and takes everything else (activation, eps, tokenizer) from ``text_dir``."""
    import torch
    from transformers import BertConfig, BertModel

    from reclf.data.tokenization import WordTokenizer
    from reclf.methods.model import VLModel
    from reclf.models.text import TextEncoder, _fast_tokenizer

    text_dir = Path(text_dir)
    if not (text_dir / "config.json").is_file():
        raise FileNotFoundError(f"--text-encoder {text_dir}: no config.json; pass the Bio_ClinicalBERT folder "
                                "(config.json + vocab.txt / tokenizer.json) the checkpoint was trained with")
    raw = json.loads((text_dir / "config.json").read_text())
    keys = set(BertConfig().to_dict())
    base = {k: v for k, v in raw.items() if k in keys and k not in ("architectures", "model_type")}
    heads = int(base.get("num_attention_heads", 12))
    if layout.text["hidden_size"] % heads:
        raise ConversionError(f"{text_dir}: num_attention_heads={heads} does not divide the checkpoint's BERT "
                              f"width {layout.text['hidden_size']}; pass the BERT folder the checkpoint was made from")
    bert_cfg = BertConfig(**(base | layout.text | {"add_cross_attention": False, "is_decoder": False}))
    params, image_cfg, text_cfg = target_configs(layout, text_dir)
    hf_tok = _fast_tokenizer(text_dir)
    if len(hf_tok) > layout.text["vocab_size"]:
        raise ConversionError(f"{text_dir}: its tokenizer has {len(hf_tok)} tokens but the checkpoint's BERT "
                              f"{layout.text['vocab_size']}; pass the tokenizer the checkpoint was trained with")
    with torch.device(device):
        backbone = BertModel(bert_cfg, add_pooling_layer=False)
        text = TextEncoder(backbone, WordTokenizer(hf_tok, text_cfg.max_tokens), text_cfg.last_n_layers,
                           text_cfg.word_merge, text_cfg.freeze, name=str(text_dir), pooling=text_cfg.pooling)
        model = VLModel(params, image_cfg, text_cfg, text_encoder=text)
    return model


# ---------------------------------------------------------------------------------------------
# mapping


@dataclass
class ConversionReport:
    format: str
    checkpoint: str
    sha256: str | None
    image_encoder: str
    embed_dim: int
    text: dict[str, int]
    mapped: int
    ignored: dict[str, str]  # reference key -> why it is not needed
    derived: dict[str, str]  # reclf key -> the rule that sets it
    rules: list[str]


def _derive(fmt: str, key: str, shape: tuple[int, ...], model_state: dict[str, Any]) -> tuple[Any, str] | None:
    """Weights of the reclf model that the reference has no tensor for, and the exact rule that sets them."""
    import torch

    if key in ("image_encoder.input_mean", "image_encoder.input_std"):
        return torch.full(shape, 0.5), "input normalisation mean 0.5 / std 0.5, as the reference ('half')"
    if key.endswith("_tau.log_scale"):
        return model_state[key].clone(), "the method preset's temperature (inference ranks do not depend on it)"
    if key == "match_scale.log_scale":
        return model_state[key].clone(), (
            "the preset's word-region attention scale (method.match_scale): reclf attends with scaled cosines where "
            "GLoRIA used raw dot products (docs/methods.md, deviation table)"
        )
    if fmt == "gloria" and key in ("text_global.net.weight", "text_local.net.weight"):
        return torch.eye(shape[0], shape[1]), "identity: GLoRIA has no text projection"
    if fmt == "gloria" and key == "text_global.net.bias":
        return torch.zeros(shape), "zero: GLoRIA has no text projection"
    if fmt == "mgca" and key == "text_encoder.backbone.embeddings.token_type_embeddings.weight":
        return torch.zeros(shape), "zero: MGCA's BERT (BLIP med) has no token-type embedding"
    return None


def map_state(fmt: str, ref: dict[str, Any], target: dict[str, Any], model_state: dict[str, Any] | None = None,
              ckpt: str = "checkpoint") -> tuple[dict[str, Any], ConversionReport]:
    """Map reference tensors (prefix-stripped) onto the target's keys; refuse on anything unaccounted for.

    ``target``: the reclf model's ``state_dict()`` (tensors, or meta tensors for a dry check).
    """
    rules = GLORIA_RULES if fmt == "gloria" else MGCA_RULES
    ignored_rules = GLORIA_IGNORED if fmt == "gloria" else MGCA_IGNORED
    out: dict[str, Any] = {}
    ignored: dict[str, str] = {}
    unexpected: list[str] = []
    source_of: dict[str, str] = {}
    for key, tensor in ref.items():
        why = next((w for p, w in ignored_rules if re.search(p, key)), None)
        if why is not None:
            ignored[key] = why
            continue
        rule = next((r for r in rules if re.search(r.pattern, key)), None)
        if rule is None:
            unexpected.append(key)
            continue
        new = re.sub(rule.pattern, rule.target, key)
        if new not in target:
            unexpected.append(f"{key} (-> {new}, which the reclf model does not have)")
            continue
        value = rule.transform(tensor)
        if tuple(value.shape) != tuple(target[new].shape):
            raise ConversionError(f"{ckpt}: {key} has shape {tuple(tensor.shape)}, but reclf's {new} is "
                                  f"{tuple(target[new].shape)}; the checkpoint's widths do not match the model built "
                                  "for it (check --text-encoder and the format argument)")
        out[new] = value
        source_of[new] = key
    if unexpected:
        raise ConversionError(f"{ckpt}: {len(unexpected)} unexpected key(s) for a {fmt} checkpoint, e.g. "
                              f"{unexpected[:3]}; the file is not the released {fmt} layout")
    derived: dict[str, str] = {}
    missing = []
    for key, t in target.items():
        if key in out:
            continue
        found = _derive(fmt, key, tuple(t.shape), model_state if model_state is not None else target)
        if found is None:
            missing.append(key)
        else:
            out[key], derived[key] = found
    if missing:
        raise ConversionError(f"{ckpt}: {len(missing)} weight(s) of the reclf {fmt} model have no source in the "
                              f"checkpoint, e.g. {missing[:3]}; refusing to leave them at random initialisation")
    report = ConversionReport(fmt, ckpt, None, "", 0, {}, len(source_of), ignored, derived,
                              [f"{r.pattern} -> {r.target}: {r.why}" for r in rules])
    return out, report


def convert(fmt: str, checkpoint: str | Path, out: str | Path, text_encoder: str | Path) -> ConversionReport:
    """Convert ``checkpoint`` (GLoRIA or MGCA layout) to a reclf model folder ``out``; returns the report."""
    from reclf.utils.io import atomic_write_json, file_sha256

    if fmt not in FORMATS:
        raise ConversionError(f"unknown format {fmt!r}; choose one of {FORMATS}")
    ckpt = str(checkpoint)
    ref = _strip_prefix(load_reference_checkpoint(checkpoint), fmt)
    layout = read_layout(ref, fmt, ckpt)
    model = build_target(layout, text_encoder)
    state = model.state_dict()
    new, report = map_state(fmt, ref, state, ckpt=ckpt)
    model.load_state_dict(new, strict=True)
    model.eval()
    report.sha256 = file_sha256(checkpoint)
    report.image_encoder, report.embed_dim, report.text = layout.image, layout.embed_dim, layout.text
    model.save_pretrained(out)
    atomic_write_json(Path(out) / "conversion.json", asdict(report))
    return report


# ---------------------------------------------------------------------------------------------
# CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("format", choices=FORMATS, help="the reference code base the checkpoint comes from")
    parser.add_argument("checkpoint", type=Path, help="the released checkpoint (.ckpt / .pth)")
    parser.add_argument("--out", required=True, type=Path, help="output model folder")
    parser.add_argument("--text-encoder", required=True, type=Path,
                        help="BERT folder (Bio_ClinicalBERT: config.json + vocab.txt) for the tokenizer and config")


def run(args: argparse.Namespace) -> int:
    report = convert(args.format, args.checkpoint, args.out, args.text_encoder)
    print(f"converted {report.format} ({report.image_encoder}, joint width {report.embed_dim}, "
          f"BERT {report.text['num_hidden_layers']} layers): {report.mapped} tensors mapped, "
          f"{len(report.derived)} derived, {len(report.ignored)} unused reference tensors")
    print(f"wrote {args.out} (evaluate it with: reclf evaluate TASK --model {args.out} --data ...)")
    return 0


__all__ = ["ConversionError", "ConversionReport", "convert", "load_reference_checkpoint", "map_state",
           "read_layout"]
