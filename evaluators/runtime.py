"""Opening ONNX Runtime sessions the same way everywhere, and reading what their input looks like."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Union

import numpy as np
import onnxruntime as ort

from evaluators.errors import SlimsweepError

# ONNX Runtime names element types as strings; these are the ones a compressed classifier takes as input.
_NUMPY_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
}


# A provider name, or (name, options) such as ("CUDAExecutionProvider", {"device_id": 0}).
Provider = Union[str, tuple[str, dict[str, Any]]]


def make_session(
    model: bytes | str | os.PathLike,
    *,
    threads: int = 1,
    providers: Sequence[Provider] = ("CPUExecutionProvider",),
    profile_prefix: str | None = None,
) -> ort.InferenceSession:
    """An ONNX Runtime session with fixed threads (intra_op=threads, inter_op=1, sequential, all optimizations)."""
    options = ort.SessionOptions()
    if profile_prefix is not None:
        # ONNX Runtime's own trace of every run: an independent clock to check the timing method against.
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    options.intra_op_num_threads = threads
    # One inter-op thread and sequential execution: the thread count we report is the one that ran.
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    source = model if isinstance(model, bytes) else os.fspath(model)
    return ort.InferenceSession(source, sess_options=options, providers=list(providers))


def fixed_batch(session: ort.InferenceSession) -> int | None:
    """The first input's batch size if the model fixes it, else None."""
    dim = session.get_inputs()[0].shape[0]
    return dim if _is_fixed(dim) else None


def input_shape(session: ort.InferenceSession, batch_size: int) -> tuple[int, ...]:
    """The session's first input shape with a symbolic dim 0 set to batch_size; SlimsweepError naming the input if
    any other dimension is symbolic."""
    first = session.get_inputs()[0]
    batch, *rest = first.shape
    symbolic = [i + 1 for i, dim in enumerate(rest) if not _is_fixed(dim)]
    if symbolic:
        raise SlimsweepError(
            f"input {first.name!r} has shape {first.shape}: dimension(s) {symbolic} are symbolic, "
            "and only the batch dimension (0) may be; export the model with fixed non-batch dimensions"
        )
    return (batch if _is_fixed(batch) else batch_size, *rest)


def input_dtype(session: ort.InferenceSession) -> type[np.generic]:
    """The numpy type of the session's first input."""
    first = session.get_inputs()[0]
    try:
        return _NUMPY_TYPES[first.type]
    except KeyError:
        raise SlimsweepError(
            f"input {first.name!r} has type {first.type}; supported input types are {sorted(_NUMPY_TYPES)}"
        ) from None


def _is_fixed(dim: object) -> bool:
    # ONNX Runtime reports a symbolic dimension as its name (str) and an unknown one as None or a negative int.
    return isinstance(dim, int) and dim > 0


def model_batch(model: bytes | str | os.PathLike) -> int | None:
    """The batch size a model file fixes on its first input, or None when the batch dimension is symbolic."""
    # The CPU provider is in every ONNX Runtime build, so any model can be read this way whatever the target.
    return fixed_batch(make_session(model))
