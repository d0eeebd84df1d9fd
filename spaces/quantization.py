"""Quantization schemes applied to an exported ONNX model with ONNX Runtime's own quantization tools.

Each scheme is one small class registered by name; adding a scheme (fp16, QOperator, mixed precision) is one new
class in this file.
"""

from __future__ import annotations

import difflib
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from evaluators.errors import ConfigError, SlimsweepError, TrialFailure


class QuantizationScheme(ABC):
    """One way of turning a float ONNX model into a deployable one."""

    name: ClassVar[str]

    @abstractmethod
    def apply(self, model: bytes, calibration: np.ndarray) -> bytes:
        """Return the quantized ONNX model."""


SCHEMES: dict[str, QuantizationScheme] = {}


def _register(cls: type[QuantizationScheme]) -> type[QuantizationScheme]:
    SCHEMES[cls.name] = cls()
    return cls


def quantize(model: bytes, scheme: str, calibration: np.ndarray) -> bytes:
    """Apply a named scheme (unknown name -> ConfigError listing the valid names)."""
    if scheme not in SCHEMES:
        valid = ", ".join(sorted(SCHEMES))
        nearest = difflib.get_close_matches(scheme, SCHEMES, n=1)
        hint = f" Did you mean {nearest[0]!r}?" if nearest else ""
        raise ConfigError(f"Unknown quantization scheme {scheme!r}; valid schemes are: {valid}.{hint}")
    try:
        return SCHEMES[scheme].apply(model, calibration)
    except SlimsweepError:
        raise
    except Exception as exc:
        raise TrialFailure(f"Quantization {scheme!r} failed: {type(exc).__name__}: {exc}") from exc


@_register
class Float32(QuantizationScheme):
    """The exported float model as it is: the baseline every other scheme is compared with."""

    name = "fp32"

    def apply(self, model: bytes, calibration: np.ndarray) -> bytes:
        return model


@_register
class Int8Dynamic(QuantizationScheme):
    """int8 weights, activations quantized at run time (no calibration)."""

    name = "int8_dynamic"

    def apply(self, model: bytes, calibration: np.ndarray) -> bytes:
        with tempfile.TemporaryDirectory(prefix="slimsweep-quant-") as tmp:
            src, dst = _preprocessed(model, Path(tmp)), Path(tmp, "int8.onnx")
            quantize_dynamic(src, dst, weight_type=QuantType.QInt8)
            return dst.read_bytes()


@_register
class Int8StaticQDQ(QuantizationScheme):
    """int8 weights (per channel) and uint8 activations calibrated by MinMax, as QuantizeLinear/DequantizeLinear."""

    name = "int8_static_qdq"

    def apply(self, model: bytes, calibration: np.ndarray) -> bytes:
        with tempfile.TemporaryDirectory(prefix="slimsweep-quant-") as tmp:
            src, dst = _preprocessed(model, Path(tmp)), Path(tmp, "int8.onnx")
            quantize_static(
                src,
                dst,
                _ArrayReader(onnx.load(src), calibration),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                # Restored accuracy on CPUs without VNNI (FIELD-NOTES, ONNX Runtime's docs).
                reduce_range=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
            )
            return dst.read_bytes()


def _preprocessed(model: bytes, folder: Path) -> Path:
    """Write the float model to folder after ONNX Runtime's pre-quantization pass; return its path."""
    raw, prepared = folder / "float.onnx", folder / "float.prep.onnx"
    raw.write_bytes(model)
    # Shape inference and graph optimization (e.g. batch-norm folding) first, as ONNX Runtime's tools advise:
    # quantization parameters are then computed for the graph that will actually run.
    quant_pre_process(raw, prepared)
    return prepared


class _ArrayReader(CalibrationDataReader):
    """Feeds a (N, C, H, W) array to the calibrator in batches the model accepts."""

    def __init__(self, model: onnx.ModelProto, calibration: np.ndarray) -> None:
        initializers = {init.name for init in model.graph.initializer}
        graph_input = next(i for i in model.graph.input if i.name not in initializers)
        self._input_name = graph_input.name
        batch_dim = graph_input.type.tensor_type.shape.dim[0]
        # A dynamic batch axis takes batches of 1; a fixed one must be fed exactly that many samples.
        batch = batch_dim.dim_value if batch_dim.HasField("dim_value") and batch_dim.dim_value > 0 else 1
        data = np.ascontiguousarray(calibration, dtype=np.float32)
        if len(data) < batch:
            raise ConfigError(
                f"Calibration has {len(data)} samples; the model's fixed batch size is {batch}: "
                f"give at least {batch} samples."
            )
        self._batches = iter(data[start : start + batch] for start in range(0, len(data) - batch + 1, batch))

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {self._input_name: batch}
