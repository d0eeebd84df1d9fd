"""Student families and the distillation loop that trains them from the teacher."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from evaluators.errors import TrialFailure
from spaces.student_knobs import StudentChoice

# Channels of the three stages at width 1.0.
BASE_CHANNELS = (32, 64, 128)


def _round8(channels: float) -> int:
    # ONNX Runtime's fast convolution kernels want widths that are multiples of 8 (FIELD-NOTES, pruning).
    return max(8, int(round(channels / 8)) * 8)


class CNN(nn.Module):
    """The parametric CNN family: three stages of `depth` 3x3 conv-BN-ReLU blocks, pooled, then a linear head."""

    def __init__(self, in_channels: int, num_classes: int, *, width: float = 1.0, depth: int = 2) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for stage, base in enumerate(BASE_CHANNELS):
            out = _round8(base * width)
            for _ in range(depth):
                layers += [nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU()]
                channels = out
            if stage < len(BASE_CHANNELS) - 1:
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def build(choice: StudentChoice, teacher: nn.Module, in_channels: int, num_classes: int) -> nn.Module:
    """A fresh student for a choice; 'teacher' is a copy of the trained teacher itself."""
    if choice.kind == "teacher":
        return copy.deepcopy(teacher)
    return CNN(in_channels, num_classes, width=choice.width, depth=choice.depth)


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
    soft = F.kl_div(F.log_softmax(student / t, dim=1), F.log_softmax(teacher / t, dim=1), reduction="batchmean",
                    log_target=True)
    return d.alpha * t * t * soft + (1 - d.alpha) * hard


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, d: Distillation, teacher: nn.Module | None = None) -> float:
    """Train in place (distilling from `teacher` if given) and return the last epoch's mean loss."""
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
    model.eval()
    return loss_mean
