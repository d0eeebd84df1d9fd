"""Trained students kept for pruning plans of the same student (space.pruning.from_trained): a trial saves its
distilled student's weights, and a later plan pruning the same student starts from them instead of training it again.

A student is known by what its training depends on: its family and knobs, its distillation settings, the teacher's
bytes and the training data. Weights are read with `weights_only=True` (tensors, no code), and a file that cannot be
read, or whose tensors do not fit the student built for the plan, is ignored: the plan trains its own student.
Files live beside the sweep's other outputs, on the machine whose workers share that folder; a worker on another
node that does not see it trains its students, as without this setting.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from experiments.task_types import TaskData
from spaces.student_knobs import StudentChoice

# A saved student larger than this is not read back (a compressed classifier's student is far smaller; a file this
# size in the folder is not one this code wrote).
MAX_BYTES = 2 * 2**30


@dataclass(frozen=True)
class Saved:
    """A trained student's weights and the trial that trained them."""

    state: dict[str, torch.Tensor]
    trial: int


def task_tag(teacher_blob: bytes, data: TaskData) -> str:
    """What every student of a sweep is trained from, the teacher's bytes and the training data, hashed (the driver
    hashes it once; a trial's key adds its student)."""
    h = hashlib.sha256(teacher_blob)
    for array in (data.x_train, data.y_train):
        h.update(repr((array.shape, str(array.dtype))).encode())
        h.update(np.ascontiguousarray(array).data)
    return h.hexdigest()


def key(student: StudentChoice, tag: str) -> str:
    """The name a trained student is kept under: its family, knobs and distillation settings, and the task's tag."""
    what = (student.kind, student.temperature, student.alpha, student.epochs, student.lr, student.knobs, tag)
    return hashlib.sha256(repr(what).encode()).hexdigest()[:32]


def load(folder: Path, name: str) -> Saved | None:
    """The student kept under `name`, or None when there is none or it cannot be read."""
    path = folder / f"{name}.pt"
    try:
        if path.stat().st_size > MAX_BYTES:
            return None
        stored = torch.load(path, map_location="cpu", weights_only=True)
        state, trial = stored["state"], int(stored["trial"])
    except Exception:  # noqa: BLE001 - absent, half-written by a killed worker, or not ours: train instead
        return None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        return None
    return Saved(state, trial)


def save(folder: Path, name: str, model: torch.nn.Module, trial: int) -> None:
    """Keep a trained student under `name`; written whole or not at all (a reader never sees half a file)."""
    tmp = None
    try:
        # Not its parents: a worker on a machine without the sweep's output folder keeps nothing there.
        folder.mkdir(exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            torch.save({"state": model.state_dict(), "trial": trial}, f)
        os.replace(tmp, folder / f"{name}.pt")
    except Exception:  # noqa: BLE001 - a full or read-only disk costs later plans their training, not this trial
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def restore(model: torch.nn.Module, saved: Saved) -> bool:
    """Load the saved weights into a freshly built student; False, the model untouched, unless every tensor's name,
    shape and type match the student's own."""
    own = model.state_dict()
    if set(own) != set(saved.state) or any(
        own[k].shape != v.shape or own[k].dtype != v.dtype for k, v in saved.state.items()
    ):
        return False
    model.load_state_dict(saved.state, strict=True)
    return True
