"""EfficientNetV2-S in plain PyTorch, module tree identical to torchvision's ``efficientnet_v2_s``.

No torchvision dependency: the ``state_dict`` keys and shapes match torchvision's so the
official MedicalPatchNet checkpoints load strictly. Smaller variants scale channels with
torchvision's ``_make_divisible`` rule and stage depths with ``ceil(layers * depth_mult)``;
(1.0, 1.0) is exactly the reference network.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

#: BatchNorm epsilon of torchvision's EfficientNetV2.
BN_EPS = 1e-3
#: Width of the last 1x1 conv (features.7) of EfficientNetV2-S at width 1.0.
LAST_CHANNELS = 1280


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """torchvision's ``_make_divisible``: nearest multiple of ``divisor``, never below 90 % of ``value``."""
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


@dataclass(frozen=True)
class StageConfig:
    """One stage of EfficientNetV2 (EfficientNetV2 paper, Table 4)."""

    fused: bool
    expand_ratio: int
    kernel: int
    stride: int
    in_channels: int
    out_channels: int
    num_layers: int


#: EfficientNetV2-S stages at width/depth 1.0 (features.1 ... features.6).
V2_S_STAGES: tuple[StageConfig, ...] = (
    StageConfig(True, 1, 3, 1, 24, 24, 2),
    StageConfig(True, 4, 3, 2, 24, 48, 4),
    StageConfig(True, 4, 3, 2, 48, 64, 4),
    StageConfig(False, 4, 3, 2, 64, 128, 6),
    StageConfig(False, 6, 3, 1, 128, 160, 9),
    StageConfig(False, 6, 3, 2, 160, 256, 15),
)


def scaled_stages(width_mult: float, depth_mult: float) -> tuple[StageConfig, ...]:
    """Stages with channels and depths scaled; identity at (1.0, 1.0)."""
    return tuple(
        StageConfig(
            s.fused,
            s.expand_ratio,
            s.kernel,
            s.stride,
            make_divisible(s.in_channels * width_mult),
            make_divisible(s.out_channels * width_mult),
            max(1, math.ceil(s.num_layers * depth_mult)),
        )
        for s in V2_S_STAGES
    )


class ConvNormAct(nn.Sequential):
    """torchvision ``Conv2dNormActivation``: conv (no bias) -> BN(eps=1e-3) -> optional SiLU.

    Children are named ``0`` (conv), ``1`` (BN), ``2`` (activation) as in torchvision.
    """

    def __init__(
        self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, activation: bool = True
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout, eps=BN_EPS),
        ]
        if activation:
            layers.append(nn.SiLU(inplace=True))
        super().__init__(*layers)


class SqueezeExcitation(nn.Module):
    """torchvision ``SqueezeExcitation`` with SiLU inside and a sigmoid gate (``fc1``/``fc2`` 1x1 convs)."""

    def __init__(self, channels: int, squeeze_channels: int) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, channels, 1)
        self.activation = nn.SiLU(inplace=True)
        self.scale_activation = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale: torch.Tensor = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return scale * x


class StochasticDepth(nn.Module):
    """Row-wise stochastic depth; identity at eval, so it never appears in an exported graph."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        survival = 1.0 - self.p
        keep = torch.empty((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype, device=x.device)
        return x * keep.bernoulli_(survival).div_(survival)


class _ResidualBlock(nn.Module):
    """``block(x)``, plus ``x`` through stochastic depth when shapes allow (both block kinds)."""

    def __init__(self, layers: list[nn.Module], residual: bool, sd_prob: float) -> None:
        super().__init__()
        self.use_res_connect = residual
        self.block = nn.Sequential(*layers)
        self.stochastic_depth = StochasticDepth(sd_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.block(x)
        if self.use_res_connect:
            out = self.stochastic_depth(out) + x
        return out


class MBConv(_ResidualBlock):
    """Inverted residual block: 1x1 expand, depthwise kxk, squeeze-excitation, 1x1 project."""

    def __init__(
        self, cin: int, cout: int, expand_ratio: int, kernel: int, stride: int, sd_prob: float
    ) -> None:
        expanded = make_divisible(cin * expand_ratio)
        layers: list[nn.Module] = []
        if expanded != cin:
            layers.append(ConvNormAct(cin, expanded, 1))
        layers.append(ConvNormAct(expanded, expanded, kernel, stride, groups=expanded))
        layers.append(SqueezeExcitation(expanded, max(1, cin // 4)))
        layers.append(ConvNormAct(expanded, cout, 1, activation=False))
        super().__init__(layers, stride == 1 and cin == cout, sd_prob)


class FusedMBConv(_ResidualBlock):
    """Fused inverted residual block: kxk expand conv (or a single kxk conv), 1x1 project."""

    def __init__(
        self, cin: int, cout: int, expand_ratio: int, kernel: int, stride: int, sd_prob: float
    ) -> None:
        expanded = make_divisible(cin * expand_ratio)
        layers: list[nn.Module]
        if expanded != cin:
            layers = [
                ConvNormAct(cin, expanded, kernel, stride),
                ConvNormAct(expanded, cout, 1, activation=False),
            ]
        else:
            layers = [ConvNormAct(cin, cout, kernel, stride)]
        super().__init__(layers, stride == 1 and cin == cout, sd_prob)


class EfficientNetV2(nn.Module):
    """EfficientNetV2-S (optionally width/depth scaled) with an ``in_channels`` stem and ``num_classes`` head.

    ``forward``: ``(N, in_channels, H, W) float32`` -> ``(N, num_classes) float32`` logits.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 1,
        width_mult: float = 1.0,
        depth_mult: float = 1.0,
        stochastic_depth_prob: float = 0.2,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        stages = scaled_stages(width_mult, depth_mult)
        layers: list[nn.Module] = [ConvNormAct(in_channels, stages[0].in_channels, 3, 2)]
        total_blocks = sum(s.num_layers for s in stages)
        block_id = 0
        for stage in stages:
            blocks: list[nn.Module] = []
            block_type = FusedMBConv if stage.fused else MBConv
            for i in range(stage.num_layers):
                cin = stage.in_channels if i == 0 else stage.out_channels
                stride = stage.stride if i == 0 else 1
                sd_prob = stochastic_depth_prob * block_id / total_blocks
                blocks.append(
                    block_type(cin, stage.out_channels, stage.expand_ratio, stage.kernel, stride, sd_prob)
                )
                block_id += 1
            layers.append(nn.Sequential(*blocks))
        last = make_divisible(LAST_CHANNELS * width_mult)
        layers.append(ConvNormAct(stages[-1].out_channels, last, 1))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout, inplace=True), nn.Linear(last, num_classes))
        self._init_weights()

    def _init_weights(self) -> None:
        """torchvision's initialisation (kaiming fan-out convs, unit BN, uniform head)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.out_features)
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        logits: torch.Tensor = self.classifier(torch.flatten(x, 1))
        return logits
