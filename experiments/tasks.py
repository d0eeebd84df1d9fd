"""Tasks a sweep compresses: a dataset split three ways and the shape of its inputs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split


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


def split(name: str, x: np.ndarray, y: np.ndarray, *, val: int, calib: int, seed: int) -> TaskData:
    """A fixed, seeded, stratified three-way split."""
    x_rest, x_val, y_rest, y_val = train_test_split(x, y, test_size=val, random_state=seed, stratify=y)
    x_train, x_calib, y_train, y_calib = train_test_split(
        x_rest, y_rest, test_size=calib, random_state=seed, stratify=y_rest
    )
    return TaskData(name, x_train, y_train, x_calib, y_calib, x_val, y_val, int(y.max()) + 1)


def digits(seed: int = 0) -> TaskData:
    """scikit-learn's bundled 8x8 digits (1,797 images): 1,197 train, 200 calibration, 400 validation."""
    bunch = load_digits()
    x = (bunch.images / 16.0).astype(np.float32)[:, None, :, :]
    return split("digits", x, bunch.target.astype(np.int64), val=400, calib=200, seed=seed)


TASKS = {"digits": digits}


def load(name: str, seed: int) -> TaskData:
    """The named task's data, split with the given seed."""
    return TASKS[name](seed)
