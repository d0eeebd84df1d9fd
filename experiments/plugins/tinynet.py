"""A task slimsweep has never seen, brought as a plugin: its own network (a residual block, a concatenation of
two branches, a depthwise convolution) and its own data (scikit-learn's digits, upsampled to 12x12)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn


class TinyNet(nn.Module):
    """Stem -> residual block -> two branches concatenated (one depthwise-separable) -> head."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.res = nn.Sequential(
            nn.Conv2d(32, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1),
            nn.BatchNorm2d(32),
        )
        self.left = nn.Sequential(nn.Conv2d(32, 32, 1), nn.BatchNorm2d(32), nn.ReLU())
        self.right = nn.Sequential(
            nn.Conv2d(32, 32, 3, padding=1, groups=32),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.Conv2d(32, 32, 1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
        )
        self.head = nn.Linear(64, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = F.relu(x + self.res(x))
        x = torch.cat([self.left(x), self.right(x)], dim=1)
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def make_task(epochs: int = 6, seed: int = 0) -> dict:
    """The plugin entry point: data, a trained teacher and the input shape."""
    torch.manual_seed(seed)
    bunch = load_digits()
    x = torch.from_numpy((bunch.images / 16.0).astype(np.float32))[:, None]
    x = F.interpolate(x, size=(12, 12), mode="bilinear", align_corners=False).numpy()
    y = bunch.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    x, y = x[order], y[order]
    split = {
        "x_train": x[:1200],
        "y_train": y[:1200],
        "x_calib": x[1200:1400],
        "y_calib": y[1200:1400],
        "x_val": x[1400:],
        "y_val": y[1400:],
    }
    teacher = TinyNet()
    optimizer = torch.optim.Adam(teacher.parameters(), lr=0.003)
    xs, ys = torch.from_numpy(split["x_train"]), torch.from_numpy(split["y_train"])
    for _ in range(epochs):
        teacher.train()
        for i in torch.randperm(len(xs)).split(64):
            optimizer.zero_grad()
            F.cross_entropy(teacher(xs[i]), ys[i]).backward()
            optimizer.step()
    return {**split, "teacher": teacher.eval(), "input_shape": (1, 12, 12)}
