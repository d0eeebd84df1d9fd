"""Accuracy of an ONNX classifier, computed by the runtime that will serve it, in a worker process with a memory cap
and a deadline (evaluators/limits.py): a model beyond them is a LimitExceeded with the reason, not a lost process."""

from __future__ import annotations

import os

import numpy as np

from evaluators.errors import SlimsweepError
from evaluators.limits import Limits, run_limited
from evaluators.runtime import fixed_batch, input_dtype, make_session


def predict(
    model: bytes | str | os.PathLike,
    x: np.ndarray,
    *,
    batch_size: int = 256,
    threads: int = 1,
    limits: Limits | None = None,
) -> np.ndarray:
    """Logits (float32, shape (n, classes)) of an ONNX classifier run by ONNX Runtime on x (N, C, H, W), in a worker
    process under limits (default: as accuracy's)."""
    if len(x) == 0:
        raise SlimsweepError("predict() got no samples: x has length 0")
    limits = limits or Limits(seconds=accuracy_seconds(len(x)))
    what = f"running this model on {len(x)} samples"
    return run_limited(_predict_here, model, x, batch_size, threads, limits=limits, what=what)


def _predict_here(model: bytes | str | os.PathLike, x: np.ndarray, batch_size: int, threads: int) -> np.ndarray:
    """predict() in this process (the worker's side)."""
    session = make_session(model, threads=threads)
    name = session.get_inputs()[0].name
    x = np.asarray(x, dtype=input_dtype(session))
    fixed = fixed_batch(session)
    batch = fixed or batch_size
    outputs = []
    for start in range(0, len(x), batch):
        chunk = x[start : start + batch]
        n = len(chunk)
        if n < batch and fixed:
            # A fixed-batch model only accepts full batches: pad with zeros and drop their outputs.
            chunk = np.concatenate([chunk, np.zeros((batch - n, *chunk.shape[1:]), dtype=chunk.dtype)])
        outputs.append(session.run(None, {name: chunk})[0][:n])
    return np.concatenate(outputs).astype(np.float32)


def accuracy_seconds(samples: int) -> float:
    """The accuracy pass's default deadline: 10 minutes, or 0.1 s per sample when that is longer."""
    return max(600.0, 0.1 * samples)


def accuracy(
    model: bytes | str | os.PathLike,
    x: np.ndarray,
    y: np.ndarray,
    *,
    batch_size: int = 256,
    threads: int = 1,
    limits: Limits | None = None,
) -> float:
    """Top-1 accuracy in percent (0–100) of an ONNX classifier run by ONNX Runtime, in a worker process under limits
    (default: a memory cap of half this machine's memory, at least 4 GiB, and accuracy_seconds(len(x)))."""
    if len(x) != len(y):
        raise SlimsweepError(f"accuracy() got {len(x)} inputs but {len(y)} labels; they must be the same length")
    if len(x) == 0:
        raise SlimsweepError("accuracy() got no samples: x has length 0")
    limits = limits or Limits(seconds=accuracy_seconds(len(x)))
    what = f"the accuracy pass on this model ({len(x)} samples)"
    return run_limited(_accuracy_here, model, x, y, batch_size, threads, limits=limits, what=what)


def _accuracy_here(
    model: bytes | str | os.PathLike, x: np.ndarray, y: np.ndarray, batch_size: int, threads: int
) -> float:
    """accuracy() in this process (the worker's side)."""
    logits = _predict_here(model, x, batch_size, threads)
    return float(100.0 * np.mean(logits.argmax(axis=1) == np.asarray(y)))
