"""What a loaded task is: its data split three ways, and the teacher it brings (a model, settings or an ONNX file).

These types live apart from experiments/tasks.py so that experiments/teacher.py can use them without importing
the loaders, which import the teacher module in turn.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from experiments.schema import TeacherSpec

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class TaskData:
    """A classification dataset split into train / calibration / validation, inputs float32 NCHW."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_calib: np.ndarray
    y_calib: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One sample's shape (C, H, W)."""
        return tuple(self.x_train.shape[1:])


@dataclass(frozen=True)
class Task:
    """A loaded task: its data, and either a ready teacher, the settings to train one, or an ONNX model only."""

    data: TaskData
    teacher: nn.Module | None = None  # a ready teacher: a checkpoint, or one a plugin returned
    onnx_model: bytes | None = None  # ONNX-only: the user's model; the search runs over quantization only
    teacher_spec: TeacherSpec | None = None  # how the teacher is trained (and its cache key) when it isn't ready
    seed: int = 0  # the split's seed, also the trained teacher's
    key: str | None = None  # the data's identity for caches; None: derived from the training data

    @property
    def onnx_only(self) -> bool:
        """Whether the task brings an ONNX model and no PyTorch teacher."""
        return self.onnx_model is not None

    @property
    def cache_key(self) -> str:
        """The training data's identity: a trained teacher is reused only for the data it was trained on."""
        if self.key:
            return self.key
        digest = hashlib.blake2b(digest_size=8)
        for a in (self.data.x_train, self.data.y_train):
            digest.update(str((a.dtype, a.shape)).encode())
            digest.update(np.ascontiguousarray(a).data)
        return f"{self.data.name}-{digest.hexdigest()}"
