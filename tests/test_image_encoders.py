"""Image encoders: parameter names and counts, weight loading, shapes, pyramids, freezing, gradients."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from reclf.config import ImageEncoderConfig
from reclf.models.features import ImageEncoderOutput
from reclf.models.image import (
    EfficientNetLite0Encoder,
    ViTEncoder,
    WeightsError,
    build_image_encoder,
)
from reclf.models.image.base import IMAGENET_MEAN, IMAGENET_STD, TF_LITE_MEAN
from reclf.models.image.efficientnet import packaged_weights_path
from reclf.models.image.vit import resample_pos_embed


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def build(name: str, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_image_encoder(ImageEncoderConfig(name=name, **kw))


# ---------------------------------------------------------------------------------------------
# ResNet: torchvision-identical names and counts


def test_resnet50_parameter_count_equals_torchvision():
    torch.manual_seed(0)
    model = build_image_encoder(ImageEncoderConfig(name="resnet50", in_chans=3), keep_head=True)
    assert n_params(model) == 25_557_032
    keys = set(model.state_dict())
    for key in (
        "conv1.weight",
        "bn1.running_var",
        "layer1.0.downsample.0.weight",
        "layer1.0.downsample.1.bias",
        "layer4.2.conv3.weight",
        "layer4.2.bn3.num_batches_tracked",
        "fc.weight",
        "fc.bias",
    ):
        assert key in keys
    # the encoder drops fc, and a gray first conv has a third of the RGB one's weights
    gray = build("resnet50")
    assert n_params(gray) == 25_557_032 - (2048 * 1000 + 1000) - 64 * 2 * 7 * 7
    assert "fc.weight" not in gray.state_dict()


def test_resnet18_parameter_count_equals_torchvision():
    torch.manual_seed(0)
    model = build_image_encoder(ImageEncoderConfig(name="resnet18", in_chans=3), keep_head=True)
    assert n_params(model) == 11_689_512
    model = build_image_encoder(ImageEncoderConfig(name="resnet34", in_chans=3), keep_head=True)
    assert n_params(model) == 21_797_672


def test_rgb_state_dict_loads_into_gray_resnet(tmp_path):
    torch.manual_seed(1)
    rgb = build_image_encoder(ImageEncoderConfig(name="resnet18", in_chans=3), keep_head=True)
    state = {k: v for k, v in rgb.state_dict().items() if not k.startswith("input_")}  # torchvision has none
    path = tmp_path / "resnet18.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)

    gray = build("resnet18", weights=str(path))
    report = gray.load_report
    assert report.stripped_prefixes == ["module."]
    assert report.ignored == ["fc.bias", "fc.weight"]
    assert any("conv1.weight" in a for a in report.adapted)
    torch.testing.assert_close(gray.conv1.weight, state["conv1.weight"].sum(dim=1, keepdim=True))
    torch.testing.assert_close(gray.layer3[1].conv2.weight, state["layer3.1.conv2.weight"])
    torch.testing.assert_close(gray.layer4[0].bn2.running_mean, state["layer4.0.bn2.running_mean"])
    # ImageNet weights -> ImageNet statistics (gray = mean of the RGB statistics)
    assert gray.input_mean.flatten().tolist() == pytest.approx([sum(IMAGENET_MEAN) / 3])
    assert gray.input_std.flatten().tolist() == pytest.approx([sum(IMAGENET_STD) / 3])
    # summed filters: the gray net answers a gray image as the RGB net answers it on three channels
    gm, gs = gray.input_mean.item(), gray.input_std.item()
    rgb.set_input_stats((gm,) * 3, (gs,) * 3)
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(gray.eval()(x).global_, rgb.eval()(x.expand(-1, 3, -1, -1)).global_)


def test_our_own_safetensors_file_round_trips_with_its_statistics(tmp_path):
    model = build("cnn-small").eval()
    model.set_input_stats((0.3, 0.3, 0.3), (0.2, 0.2, 0.2))
    path = tmp_path / "cnn.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    torch.manual_seed(5)
    again = build_image_encoder(ImageEncoderConfig(name="cnn-small", weights=str(path))).eval()
    assert again.input_mean.item() == pytest.approx(0.3)  # kept from the file, not reset to ImageNet
    x = torch.rand(2, 1, 64, 64)
    torch.testing.assert_close(again(x).global_, model(x).global_)
    # a whole-model checkpoint (Lightning style): the image encoder is picked out of it
    ckpt = {f"model.image_encoder.{k}": v for k, v in model.state_dict().items()}
    ckpt["model.text_encoder.embeddings.weight"] = torch.zeros(4, 4)
    torch.save({"state_dict": ckpt, "epoch": 3}, tmp_path / "run.ckpt")
    third = build_image_encoder(ImageEncoderConfig(name="cnn-small", weights=str(tmp_path / "run.ckpt"))).eval()
    assert third.load_report.stripped_prefixes == ["model.", "image_encoder."]
    assert third.load_report.dropped_outside_prefix == 1
    torch.testing.assert_close(third(x).global_, model(x).global_)


def test_weight_loading_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="no model hub"):
        build("resnet18", weights="imagenet")
    with pytest.raises(WeightsError, match="does not exist"):
        build("resnet18", weights=str(tmp_path / "missing.pth"))
    state = build("cnn-small").state_dict()
    del state["layer4.0.0.weight"]
    state["extra.weight"] = torch.zeros(3)
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError) as err:
        build("cnn-small", weights=str(path))
    assert "layer4.0.0.weight" in str(err.value) and "extra.weight" in str(err.value)
    torch.save(build("resnet18").state_dict(), path)  # wrong architecture
    with pytest.raises(WeightsError, match="missing keys"):
        build("cnn-small", weights=str(path))


# ---------------------------------------------------------------------------------------------
# shapes and pyramids

SMALL = ["cnn-small", "resnet18", "vit-tiny", "efficientnet-lite0"]
CASES = [(n, s) for n in SMALL for s in (64, 128)] + [("resnet50", 64), ("vit-b16", 64)]


@pytest.mark.parametrize(("name", "size"), CASES)
def test_output_and_pyramid_shapes(name, size):
    model = build(name, image_size=size).eval()
    b = 1 if name in ("resnet50", "vit-b16") else 2
    x = torch.rand(b, 1, size, size)
    with torch.no_grad():
        out = model(x)
        pyramid = model.feature_pyramid(x)
    assert isinstance(out, ImageEncoderOutput)
    g = size // model.local_stride
    assert out.global_.shape == (b, model.global_dim)
    assert out.local.shape == (b, model.local_dim, g, g)
    assert torch.isfinite(out.global_).all() and torch.isfinite(out.local).all()
    if isinstance(model, ViTEncoder):
        assert out.cls_attention is not None and out.cls_attention.shape == (b, g * g)
    else:
        assert out.cls_attention is None
    assert len(pyramid) == len(model.pyramid_channels) == len(model.pyramid_strides)
    for feat, c, s in zip(pyramid, model.pyramid_channels, model.pyramid_strides, strict=True):
        assert feat.shape == (b, c, size // s, size // s)
    if size == 64 and b == 2:
        assert model.local_grid(size) == (g, g)


def test_resnet_and_cnn_local_stage():
    x = torch.rand(1, 1, 128, 128)
    for name in ("resnet18", "cnn-small"):
        l3, l4 = build(name).eval(), build(name, local_stage="layer4").eval()
        assert l3.local_stage == "layer3"
        with torch.no_grad():
            o3, o4 = l3(x), l4(x)
        assert o3.local.shape[-2:] == (8, 8) and o4.local.shape[-2:] == (4, 4)
        assert o3.local.shape[1] == l3.local_dim and o4.local.shape[1] == l4.local_dim == l4.global_dim
        torch.testing.assert_close(o3.global_, o4.global_)  # same weights (same seed), same global
    with pytest.raises(ValueError, match="local_stage"):
        build("resnet18", local_stage="layer9")


def test_three_channel_encoder_accepts_gray_and_gray_rejects_rgb():
    rgb = build("cnn-small", in_chans=3).eval()
    gray_img = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(rgb(gray_img).global_, rgb(gray_img.expand(-1, 3, -1, -1)).global_)
    with pytest.raises(ValueError, match="in_chans"):
        build("cnn-small")(torch.rand(1, 3, 64, 64))
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        build("cnn-small")(torch.rand(1, 64, 64))
    with pytest.raises(ValueError, match="unknown image_encoder.name"):
        build("resnet1000")


# ---------------------------------------------------------------------------------------------
# ViT


def test_vit_state_dict_has_timm_names_and_round_trips(tmp_path):
    model = build("vit-tiny", in_chans=3).eval()
    keys = set(model.state_dict()) - {"input_mean", "input_std"}
    expected = {
        "cls_token",
        "pos_embed",
        "patch_embed.proj.weight",
        "patch_embed.proj.bias",
        "norm.weight",
        "norm.bias",
    }
    for i in range(6):
        for part in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"):
            expected |= {f"blocks.{i}.{part}.weight", f"blocks.{i}.{part}.bias"}
    assert keys == expected
    # a timm file: head included, made for 224 px (14x14 grid) -> resampled to our 8x8 grid, RGB -> gray
    src = ViTEncoder("vit-tiny", in_chans=3, image_size=224)
    state = {k: v for k, v in src.state_dict().items() if not k.startswith("input_")}
    state["head.weight"], state["head.bias"] = torch.randn(1000, 192), torch.zeros(1000)
    path = tmp_path / "vit.pth"
    torch.save(state, path)
    loaded = build("vit-tiny", weights=str(path))
    assert loaded.pos_embed.shape == (1, 1 + 64, 192)
    torch.testing.assert_close(loaded.pos_embed[:, :1], state["pos_embed"][:, :1])  # CLS position untouched
    torch.testing.assert_close(loaded.blocks[3].attn.qkv.weight, state["blocks.3.attn.qkv.weight"])
    torch.testing.assert_close(loaded.patch_embed.proj.weight, state["patch_embed.proj.weight"].sum(1, keepdim=True))
    # exact round trip at the same size: identical outputs
    path2 = tmp_path / "vit_same.pth"
    torch.save(model.state_dict(), path2)
    again = build("vit-tiny", in_chans=3, weights=str(path2)).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(again(x).local, model(x).local)


def test_vit_pos_embed_interpolation():
    pe = torch.randn(1, 1 + 16, 8)
    assert resample_pos_embed(pe, (4, 4)) is pe
    # a position embedding that is constant over the grid stays constant; the CLS slot is kept
    const = torch.cat([torch.randn(1, 1, 8), torch.ones(1, 16, 1) * torch.randn(1, 1, 8)], dim=1)
    out = resample_pos_embed(const, (6, 6))
    assert out.shape == (1, 37, 8)
    torch.testing.assert_close(out[:, 1:], const[:, 1:2].expand(-1, 36, -1))
    torch.testing.assert_close(out[:, :1], const[:, :1])
    # a model built for 128 px runs at 64 px (grid 4x4) and at 96 px (6x6)
    model = build("vit-tiny", image_size=128).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 1, 64, 64)).local.shape[-2:] == (4, 4)
        assert model(torch.rand(1, 1, 96, 96)).local.shape[-2:] == (6, 6)


def test_vit_cls_attention_matches_the_fused_path():
    model = build("vit-tiny").eval()
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        tokens, _ = model._tokens(model.normalize(x))
        last = model.blocks[-1]
        fused, none = last(tokens)
        explicit, attn = last(tokens, return_cls_attention=True)
    assert none is None
    torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=1e-5)
    assert attn.shape == (2, 16)
    assert (attn >= 0).all() and (attn.sum(-1) < 1).all() and (attn.sum(-1) > 0).all()


# ---------------------------------------------------------------------------------------------
# EfficientNet-Lite0 with the packaged ImageNet weights


def test_efficientnet_lite0_loads_packaged_weights_strictly():
    state = torch.load(packaged_weights_path(), map_location="cpu", weights_only=True)
    model = EfficientNetLite0Encoder(in_chans=3, keep_head=True)
    result = model.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    own = model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in state.items())
    assert set(own) - set(state) == {"input_mean", "input_std"}


def test_efficientnet_lite0_imagenet_gray_is_deterministic():
    state = torch.load(packaged_weights_path(), map_location="cpu", weights_only=True)
    a = build("efficientnet-lite0", weights="imagenet").eval()
    b = build("efficientnet-lite0", weights="imagenet").eval()
    torch.testing.assert_close(a._conv_stem.weight, state["_conv_stem.weight"].sum(1, keepdim=True))
    assert a.input_mean.item() == pytest.approx(TF_LITE_MEAN[0])
    x = torch.cat(
        [torch.full((1, 1, 64, 64), 0.5), torch.rand(1, 1, 64, 64, generator=torch.Generator().manual_seed(0))]
    )
    with torch.no_grad():
        oa, ob, oa2 = a(x), b(x), a(x)
    torch.testing.assert_close(oa.global_, ob.global_)
    torch.testing.assert_close(oa.global_, oa2.global_)
    assert oa.global_.std() > 0 and not torch.allclose(oa.global_[0], oa.global_[1])


# ---------------------------------------------------------------------------------------------
# training behaviour


@pytest.mark.parametrize("name", ["cnn-small", "vit-tiny", "efficientnet-lite0"])
def test_gradients_flow(name):
    model = build(name).train()
    x = torch.rand(2, 1, 64, 64, requires_grad=True)
    out = model(x)
    loss = out.global_.square().mean() + out.local.square().mean()
    if out.cls_attention is not None:
        loss = loss + out.cls_attention.square().mean()
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values()), name
    assert x.grad is not None and x.grad.abs().sum() > 0
    first = {"cnn-small": "stem.0.weight", "vit-tiny": "patch_embed.proj.weight"}.get(name, "_conv_stem.weight")
    assert grads[first].abs().sum() > 0


def test_freeze_keeps_batchnorm_in_eval_and_no_trainable_parameters():
    model = build("cnn-small", freeze=True)
    model.train()
    assert not any(p.requires_grad for p in model.parameters())
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(not m.training for m in bns)
    before = bns[0].running_mean.clone()
    model(torch.rand(4, 1, 64, 64))
    torch.testing.assert_close(bns[0].running_mean, before)  # running statistics did not move
    model.unfreeze()
    model.train()
    assert all(p.requires_grad for p in model.parameters()) and all(m.training for m in bns)
