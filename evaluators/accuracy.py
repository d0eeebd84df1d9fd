"""Accuracy of an ONNX classifier, computed by the runtime that will serve it."""

from __future__ import annotations

import os

import numpy as np

from evaluators.errors import SlimsweepError
from evaluators.runtime import fixed_batch, input_dtype, make_session


def predict(
    model: bytes | str | os.PathLike,
    x: np.ndarray,
    *,
    batch_size: int = 256,
    threads: int = 1,
) -> np.ndarray:
    """Logits (float32, shape (n, classes)) of an ONNX classifier run by ONNX Runtime on x (N, C, H, W)."""
    if len(x) == 0:
        raise SlimsweepError("predict() got no samples: x has length 0")
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


def accuracy(
    model: bytes | str | os.PathLike,
    x: np.ndarray,
    y: np.ndarray,
    *,
    batch_size: int = 256,
    threads: int = 1,
) -> float:
    """Top-1 accuracy in percent (0–100) of an ONNX classifier run by ONNX Runtime."""
    if len(x) != len(y):
        raise SlimsweepError(f"accuracy() got {len(x)} inputs but {len(y)} labels; they must be the same length")
    logits = predict(model, x, batch_size=batch_size, threads=threads)
    return float(100.0 * np.mean(logits.argmax(axis=1) == np.asarray(y)))
