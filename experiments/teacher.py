"""The teacher: trained once per task, settings and seed, and cached on disk so later sweeps reuse it."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from torch import nn

from experiments.tasks import TaskData
from spaces.students import CNN, Distillation, train


def cache_dir() -> Path:
    """Where trained teachers are kept (SLIMSWEEP_CACHE, else ~/.cache/slimsweep)."""
    return Path(os.environ.get("SLIMSWEEP_CACHE", Path.home() / ".cache" / "slimsweep"))


def teacher_key(task: str, seed: int, width: float, depth: int, epochs: int, lr: float) -> str:
    """A stable key for one teacher: the task, its split seed and every training setting."""
    blob = json.dumps({"task": task, "seed": seed, "width": width, "depth": depth, "epochs": epochs, "lr": lr,
                       "family": "cnn-v1"}, sort_keys=True)
    return f"{task}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


def get_teacher(data: TaskData, *, seed: int, width: float, depth: int, epochs: int, lr: float) -> tuple[nn.Module, bool]:
    """The trained teacher and whether it came from the cache."""
    torch.manual_seed(seed)
    model = CNN(data.input_shape[0], data.num_classes, width=width, depth=depth)
    path = cache_dir() / "teachers" / f"{teacher_key(data.name, seed, width, depth, epochs, lr)}.pt"
    if path.is_file():
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return model.eval(), True
    train(model, data.x_train, data.y_train, Distillation(epochs=epochs, lr=lr, alpha=0.0, seed=seed))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(model.state_dict(), tmp)
    tmp.replace(path)  # atomic: two sweeps training the same teacher never read half a file
    return model.eval(), False
