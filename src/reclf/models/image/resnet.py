"""ResNet-18 / ResNet-50 in plain torch, with torchvision's parameter names.

Why torchvision names: an ImageNet state dict saved from torchvision (or timm's ``resnet*``, which uses
the same names) loads from a file without any key mapping; torchvision is not installable here.
The encoder's own state dict is exactly torchvision's minus ``fc.*`` (plus two normalisation
buffers); ``keep_head=True`` keeps the 1000-class ``fc`` so parameter counts can be checked against
torchvision (ResNet-50: 25,557,032; ResNet-18: 11,689,512).

Regions come from ``layer3`` by default (stride 16, as GLoRIA and MGCA) or ``layer4``/``layer2``; the
global vector is always the average-pooled ``layer4``.
"""

from __future__ import annotations

from torch import Tensor, nn

from reclf.models.features import ImageEncoderOutput
from reclf.models.image.base import STAGE_STRIDES, ImageEncoder, resolve_stage


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = conv3x3(cin, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """torchvision's ResNet v1.5 bottleneck (stride on the 3x3 convolution)."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = conv1x1(cin, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


ARCHS: dict[str, tuple[type[BasicBlock] | type[Bottleneck], list[int]]] = {
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet34": (BasicBlock, [3, 4, 6, 3]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
}


class ResNetEncoder(ImageEncoder):
    """ResNet backbone; attribute names equal torchvision's (conv1, bn1, layer1..4, fc)."""

    first_conv = "conv1.weight"
    head_prefixes: tuple[str, ...] = ("fc.",)

    def __init__(
        self, arch: str = "resnet50", in_chans: int = 1, local_stage: str | None = None, keep_head: bool = False
    ) -> None:
        super().__init__(in_chans)
        if arch not in ARCHS:
            raise ValueError(f"unknown ResNet {arch!r}; choose one of {', '.join(ARCHS)}")
        block, layers = ARCHS[arch]
        self.name = arch
        self.local_stage = resolve_stage(arch, local_stage, "layer3", list(STAGE_STRIDES))
        self.local_stride = STAGE_STRIDES[self.local_stage]
        self._cin = 64
        self.conv1 = nn.Conv2d(in_chans, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512 * block.expansion, 1000) if keep_head else None
        self.head_prefixes = () if keep_head else ("fc.",)
        e = block.expansion
        stage_dims = {"layer2": 128 * e, "layer3": 256 * e, "layer4": 512 * e}
        self.global_dim = 512 * e
        self.local_dim = stage_dims[self.local_stage]
        self.pyramid_channels = [64, 64 * e, 128 * e, 256 * e, 512 * e]
        self.pyramid_strides = [2, 4, 8, 16, 32]
        self._init_weights()

    def _make_layer(self, block: type[BasicBlock] | type[Bottleneck], planes: int, n: int, stride: int = 1):
        downsample = None
        if stride != 1 or self._cin != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self._cin, planes * block.expansion, stride), nn.BatchNorm2d(planes * block.expansion)
            )
        blocks = [block(self._cin, planes, stride, downsample)]
        self._cin = planes * block.expansion
        blocks += [block(self._cin, planes) for _ in range(1, n)]
        return nn.Sequential(*blocks)

    def _init_weights(self) -> None:
        """torchvision's initialisation (He normal, fan-out; BatchNorm 1/0)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _stages(self, x: Tensor) -> list[Tensor]:
        s2 = self.relu(self.bn1(self.conv1(x)))
        s4 = self.layer1(self.maxpool(s2))
        s8 = self.layer2(s4)
        s16 = self.layer3(s8)
        s32 = self.layer4(s16)
        return [s2, s4, s8, s16, s32]

    def _forward(self, x: Tensor) -> ImageEncoderOutput:
        stages = self._stages(x)
        local = stages[{"layer2": 2, "layer3": 3, "layer4": 4}[self.local_stage]]
        return ImageEncoderOutput(global_=self.avgpool(stages[4]).flatten(1), local=local)

    def _pyramid(self, x: Tensor) -> list[Tensor]:
        return self._stages(x)

    def classify(self, x: Tensor) -> Tensor:
        """ImageNet logits (only with ``keep_head=True``); used to sanity-check loaded weights."""
        if self.fc is None:
            raise RuntimeError(f"{self.name} was built without its fc head (keep_head=False)")
        return self.fc(self._forward(self.normalize(x)).global_)
