"""The built-in quantization schemes, each one QuantizationScheme class registered by name.

Their `apply` imports spaces/quantization.py (ONNX Runtime's quantization tools) only when a trial quantizes.
Today's three come first: they are the default space and the order error messages list the names in.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from spaces.quantization_knobs import QuantizationChoice, QuantizationScheme, register_scheme

if TYPE_CHECKING:
    import numpy as np


@register_scheme
class Float32(QuantizationScheme):
    """The exported float model as it is: the baseline every other scheme is compared with."""

    name: ClassVar[str] = "fp32"
    in_default_space: ClassVar[bool] = True

    @classmethod
    def apply(
        cls, model: bytes, choice: QuantizationChoice, calibration: "np.ndarray", cache_dir: Path | None
    ) -> bytes:
        return model


@register_scheme
class Int8Dynamic(QuantizationScheme):
    """int8 weights, activations quantized at run time (no calibration)."""

    name: ClassVar[str] = "int8_dynamic"
    in_default_space: ClassVar[bool] = True

    @classmethod
    def apply(
        cls, model: bytes, choice: QuantizationChoice, calibration: "np.ndarray", cache_dir: Path | None
    ) -> bytes:
        from spaces.quantization import int8_dynamic

        return int8_dynamic(model)


class _Int8Static(QuantizationScheme):
    """int8 weights, activations calibrated on the calibration split; some layers may stay float."""

    calibrates: ClassVar[bool] = True
    qdq: ClassVar[bool]  # QuantizeLinear/DequantizeLinear pairs, or quantized operators

    @classmethod
    def describe(cls, choice: QuantizationChoice) -> str:
        return choice.static_label()

    @classmethod
    def weights_decide_structure(cls, choice: QuantizationChoice) -> bool:
        return choice.float_layers == "sensitive"  # a sensitivity ranking of the trained layers picks them

    @classmethod
    def apply(
        cls, model: bytes, choice: QuantizationChoice, calibration: "np.ndarray", cache_dir: Path | None
    ) -> bytes:
        from spaces.quantization import int8_static

        return int8_static(model, choice, calibration, cache_dir, qdq=cls.qdq)


@register_scheme
class Int8StaticQDQ(_Int8Static):
    """Static int8 as QuantizeLinear/DequantizeLinear pairs around float operators (ONNX Runtime fuses them)."""

    name: ClassVar[str] = "int8_static_qdq"
    in_default_space: ClassVar[bool] = True
    qdq: ClassVar[bool] = True


@register_scheme
class Float16(QuantizationScheme):
    """Weights and compute in half precision; inputs and outputs stay float32, so callers feed the same arrays."""

    name: ClassVar[str] = "fp16"

    @classmethod
    def apply(
        cls, model: bytes, choice: QuantizationChoice, calibration: "np.ndarray", cache_dir: Path | None
    ) -> bytes:
        from spaces.quantization import fp16

        return fp16(model)


@register_scheme
class Int8StaticQOperator(_Int8Static):
    """Static int8 as quantized operators (QLinearConv, QGemm, ...)."""

    name: ClassVar[str] = "int8_static_qoperator"
    qdq: ClassVar[bool] = False


@register_scheme
class Int4WeightOnly(QuantizationScheme):
    """MatMul/Gemm weights in 4 bits (blocks of 32, symmetric) as MatMulNBits; activations and other layers float."""

    name: ClassVar[str] = "int4_weight_only"

    @classmethod
    def apply(
        cls, model: bytes, choice: QuantizationChoice, calibration: "np.ndarray", cache_dir: Path | None
    ) -> bytes:
        from spaces.quantization import int4_weight_only

        return int4_weight_only(model)
