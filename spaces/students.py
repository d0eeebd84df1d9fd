"""The torch half of the built-in student families, and the distillation loop that trains them from the teacher.

The families themselves (schema, sampling, labels) are registered in spaces/student_families.py; `build` asks the
chosen family. MobileNetV2 and ResNet are adapted to the task: the first conv takes the task's channels, and on
small inputs some downsamplings run at stride 1 (see `downsampling`), so a map never collapses below 4x4.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from evaluators.errors import TrialFailure
from spaces.student_families import MIN_FEATURE_MAP, MOBILENETV2_SETTINGS
from spaces.student_knobs import StudentChoice, suits  # noqa: F401 - suits: re-exported, the sweep asks it

# Channels of the three stages at width 1.0.
BASE_CHANNELS = (32, 64, 128)


def downsampling(input_hw: tuple[int, int], wanted: Sequence[int]) -> list[int]:
    """The strides a family runs at on this input: each wanted stride 2 stays only while the map keeps >= 4 px.

    `wanted` lists the family's standard strides in order (stem first). A stride-2 layer (3x3 pad 1, or 1x1) maps
    n pixels to ceil(n / 2); it keeps stride 2 if that is at least MIN_FEATURE_MAP on the shorter side, else it runs
    at stride 1. Inputs of 32 * MIN_FEATURE_MAP = 128 px or more get MobileNetV2's unchanged torchvision layout.
    """
    h, w = input_hw
    out = []
    for s in wanted:
        if s > 1 and min(math.ceil(h / s), math.ceil(w / s)) >= MIN_FEATURE_MAP:
            h, w = math.ceil(h / s), math.ceil(w / s)
            out.append(s)
        else:
            out.append(1)
    return out


def _round8(channels: float) -> int:
    # ONNX Runtime's fast convolution kernels want widths that are multiples of 8 (see round_to in the README).
    return max(8, int(round(channels / 8)) * 8)


class CNN(nn.Module):
    """The parametric CNN family: three stages of conv-BN-ReLU blocks, max-pooled between, then a linear head."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        width: float = 1.0,
        depth: int = 2,
        kernel_size: int = 3,
        stage_depths: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        depths = tuple(stage_depths) if stage_depths is not None else (depth,) * len(BASE_CHANNELS)
        if len(depths) != len(BASE_CHANNELS):
            raise ValueError(f"stage_depths needs {len(BASE_CHANNELS)} stages, got {depths}")
        layers: list[nn.Module] = []
        channels = in_channels
        for stage, (base, blocks) in enumerate(zip(BASE_CHANNELS, depths, strict=True)):
            out = _round8(base * width)
            for _ in range(blocks):
                layers += [
                    nn.Conv2d(channels, out, kernel_size, padding=kernel_size // 2, bias=False),
                    nn.BatchNorm2d(out),
                    nn.ReLU(),
                ]
                channels = out
            if stage < len(BASE_CHANNELS) - 1:
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def _init_like_torchvision(module: nn.Module) -> None:
    # The initialisation torchvision's MobileNetV2 and ResNet give their layers, for the layers replaced or added here.
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


def mobilenet_v2(
    in_channels: int, num_classes: int, input_hw: tuple[int, int], *, width: float = 1.0, settings: str = "compact"
) -> nn.Module:
    """torchvision's MobileNetV2 with a named inverted-residual table, its stem and strides fitted to the input."""
    # torchvision on first use: importing it costs every process (the driver, each Ray worker) a second or more.
    from torchvision.models import MobileNetV2
    from torchvision.models._utils import _make_divisible
    from torchvision.ops.misc import Conv2dNormActivation

    table = MOBILENETV2_SETTINGS[settings]
    strides = downsampling(input_hw, [2] + [s for *_, s in table.rows])  # torchvision: a stride-2 stem, then the table
    rows = [[t, c, n, s] for (t, c, n, _), s in zip(table.rows, strides[1:], strict=True)]
    model = MobileNetV2(num_classes=num_classes, width_mult=width, inverted_residual_setting=rows)
    stem, head = model.features[0], model.features[-1]
    # torchvision hard-codes a 3-channel stride-2 stem and a 1280-wide head; the task and the table set them here.
    model.features[0] = Conv2dNormActivation(
        in_channels, stem[0].out_channels, stride=strides[0], norm_layer=nn.BatchNorm2d, activation_layer=nn.ReLU6
    )
    last = _make_divisible(table.last_channel * max(1.0, width), 8)  # torchvision's rule for its head
    model.features[-1] = Conv2dNormActivation(
        head[0].in_channels, last, kernel_size=1, norm_layer=nn.BatchNorm2d, activation_layer=nn.ReLU6
    )
    model.classifier[-1] = nn.Linear(last, num_classes)
    model.last_channel = last
    for replaced in (model.features[0], model.features[-1], model.classifier):
        _init_like_torchvision(replaced)
    return model


class ResNet(nn.Module):
    """A CIFAR-style ResNet of torchvision BasicBlocks: 3x3 stem, stages of base_width x 2^i channels, pooled head."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        input_hw: tuple[int, int],
        *,
        blocks: Sequence[int] = (1, 1, 1),
        base_width: int = 16,
    ) -> None:
        super().__init__()
        # He et al. 2016 (section 4.2) for small images: a stride-1 stem and first stage, then each stage halves.
        strides = downsampling(input_hw, [1, 1] + [2] * (len(blocks) - 1))
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, base_width, 3, stride=strides[0], padding=1, bias=False),
            nn.BatchNorm2d(base_width),
            nn.ReLU(inplace=True),
        )
        stages: list[nn.Module] = []
        inplanes = base_width
        for i, (count, stride) in enumerate(zip(blocks, strides[1:], strict=True)):
            planes = base_width * 2**i
            stages.append(_stage(inplanes, planes, count, stride))
            inplanes = planes
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inplanes, num_classes)
        _init_like_torchvision(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.stages(self.stem(x))), 1))


def _stage(inplanes: int, planes: int, count: int, stride: int) -> nn.Sequential:
    # As torchvision's ResNet._make_layer: the first block changes shape, through a 1x1 projection when it must.
    from torchvision.models.resnet import BasicBlock, conv1x1

    downsample = None
    if stride != 1 or inplanes != planes:
        downsample = nn.Sequential(conv1x1(inplanes, planes, stride), nn.BatchNorm2d(planes))
    layers = [BasicBlock(inplanes, planes, stride, downsample)]
    layers += [BasicBlock(planes, planes) for _ in range(count - 1)]
    return nn.Sequential(*layers)


def build(
    choice: StudentChoice,
    teacher: nn.Module,
    in_channels: int,
    num_classes: int,
    input_hw: tuple[int, int] | None = None,
) -> nn.Module:
    """A fresh student for a choice, built by its registered family; 'teacher' is a copy of the trained teacher.

    Whether the family suits the input was asked before the first trial (`suits`); it is not asked again here.
    """
    family = choice.family()
    if family is None:
        return copy.deepcopy(teacher)
    return family.build(choice, in_channels, num_classes, input_hw)


def parameter_count(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@dataclass(frozen=True)
class Distillation:
    """How a student learns: epochs, learning rate, and the teacher's weight in the loss."""

    epochs: int
    lr: float = 0.003
    temperature: float = 4.0
    alpha: float = 0.7  # weight of the teacher's soft targets; 1 - alpha goes to the labels
    batch_size: int = 64
    seed: int = 0


def distill_loss(student: torch.Tensor, teacher: torch.Tensor | None, labels: torch.Tensor, d: Distillation):
    """Hinton's loss: alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * cross-entropy."""
    hard = F.cross_entropy(student, labels)
    if teacher is None or d.alpha == 0:
        return hard
    t = d.temperature
    soft = F.kl_div(
        F.log_softmax(student / t, dim=1), F.log_softmax(teacher / t, dim=1), reduction="batchmean", log_target=True
    )
    return d.alpha * t * t * soft + (1 - d.alpha) * hard


def train(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    d: Distillation,
    teacher: nn.Module | None = None,
    *,
    on_epoch: Callable[[int, float], None] | None = None,
) -> float:
    """Train in place (distilling from `teacher` if given) and return the last epoch's mean loss; `on_epoch` hears
    each finished epoch (1-based) and its mean loss, and may evaluate the model (each epoch sets train mode again)."""
    if d.epochs <= 0:
        return float("nan")
    generator = torch.Generator().manual_seed(d.seed)
    xs, ys = torch.from_numpy(x), torch.from_numpy(y).long()
    soft = None
    if teacher is not None and d.alpha > 0:
        # The teacher is fixed and the data not augmented, so its logits are computed once, not every epoch.
        teacher.eval()
        with torch.no_grad():
            soft = torch.cat([teacher(xs[i : i + 512]) for i in range(0, len(xs), 512)])
    optimizer = torch.optim.Adam(model.parameters(), lr=d.lr)
    steps = d.epochs * math.ceil(len(xs) / d.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=d.lr, total_steps=steps)
    loss_mean = float("nan")
    for epoch in range(d.epochs):
        model.train()
        order = torch.randperm(len(xs), generator=generator)
        total, batches = 0.0, 0
        for i in range(0, len(xs), d.batch_size):
            idx = order[i : i + d.batch_size]
            loss = distill_loss(model(xs[idx]), None if soft is None else soft[idx], ys[idx], d)
            if not torch.isfinite(loss):
                raise TrialFailure(
                    f"training loss became {loss.item()} at epoch {epoch + 1} (lr={d.lr:g}); lower the learning rate"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total, batches = total + loss.item(), batches + 1
        loss_mean = total / batches
        if on_epoch is not None:
            on_epoch(epoch + 1, loss_mean)
    model.eval()
    return loss_mean
