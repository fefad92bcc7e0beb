"""``cnn-small``: a small residual CNN for CPU experiments at 64-128 px.

Why: the full-size backbones need a GPU; the synthetic-data experiments, tests and CI must train in
minutes on two CPU cores. The network has the same shape of interface as a ResNet - five stages at
strides 2/4/8/16/32 named like ResNet's (``layer1``..``layer4``), regions from ``layer3`` by default
(an 8x8 grid at 128 px, 4x4 at 64 px), global = average-pooled ``layer4`` - so everything built for
ResNet (methods, U-Net decoder) works unchanged.

Each stage is one strided 3x3 convolution followed by one residual block of two 3x3 convolutions,
with BatchNorm (or GroupNorm, ``norm="gn"``, for tiny batches).
"""

from __future__ import annotations

from torch import Tensor, nn

from reclf.models.features import ImageEncoderOutput
from reclf.models.image.base import STAGE_STRIDES, ImageEncoder, resolve_stage

WIDTHS = (24, 32, 64, 128, 256)  # stem (stride 2), layer1 (4), layer2 (8), layer3 (16), layer4 (32)


def _norm(kind: str, channels: int) -> nn.BatchNorm2d | nn.GroupNorm:
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    if kind == "gn":
        return nn.GroupNorm(min(8, channels // 4), channels)
    raise ValueError(f"cnn-small: norm must be 'bn' or 'gn', got {kind!r}")


class ConvNormAct(nn.Sequential):
    def __init__(self, cin: int, cout: int, stride: int, norm: str) -> None:
        super().__init__(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), _norm(norm, cout), nn.ReLU(inplace=True))


class ResidualBlock(nn.Module):
    def __init__(self, channels: int, norm: str) -> None:
        super().__init__()
        self.conv1 = ConvNormAct(channels, channels, 1, norm)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.norm2 = _norm(norm, channels)
        nn.init.zeros_(self.norm2.weight)  # start as identity: stable training from scratch
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(x + self.norm2(self.conv2(self.conv1(x))))


class Stage(nn.Sequential):
    def __init__(self, cin: int, cout: int, norm: str, blocks: int = 1) -> None:
        super().__init__(ConvNormAct(cin, cout, 2, norm), *[ResidualBlock(cout, norm) for _ in range(blocks)])


class SmallCNNEncoder(ImageEncoder):
    """Five stages at strides 2..32; see the module docstring."""

    first_conv = "stem.0.weight"
    head_prefixes = ("fc.", "head.")

    def __init__(
        self,
        in_chans: int = 1,
        local_stage: str | None = None,
        widths: tuple[int, ...] = WIDTHS,
        norm: str = "bn",
    ) -> None:
        super().__init__(in_chans)
        if len(widths) != 5:
            raise ValueError(f"cnn-small: widths needs 5 entries (stem, layer1..layer4), got {widths}")
        self.name = "cnn-small"
        self.local_stage = resolve_stage(self.name, local_stage, "layer3", list(STAGE_STRIDES))
        self.local_stride = STAGE_STRIDES[self.local_stage]
        self.stem = ConvNormAct(in_chans, widths[0], 2, norm)
        self.layer1 = Stage(widths[0], widths[1], norm, blocks=0)  # stride 4: a strided conv is enough here
        self.layer2 = Stage(widths[1], widths[2], norm)
        self.layer3 = Stage(widths[2], widths[3], norm)
        self.layer4 = Stage(widths[3], widths[4], norm)
        self.global_dim = widths[4]
        self.local_dim = {"layer2": widths[2], "layer3": widths[3], "layer4": widths[4]}[self.local_stage]
        self.pyramid_channels = list(widths)
        self.pyramid_strides = [2, 4, 8, 16, 32]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _stages(self, x: Tensor) -> list[Tensor]:
        s2 = self.stem(x)
        s4 = self.layer1(s2)
        s8 = self.layer2(s4)
        s16 = self.layer3(s8)
        return [s2, s4, s8, s16, self.layer4(s16)]

    def _forward(self, x: Tensor) -> ImageEncoderOutput:
        stages = self._stages(x)
        local = stages[{"layer2": 2, "layer3": 3, "layer4": 4}[self.local_stage]]
        return ImageEncoderOutput(global_=stages[4].mean(dim=(2, 3)), local=local)

    def _pyramid(self, x: Tensor) -> list[Tensor]:
        return self._stages(x)
