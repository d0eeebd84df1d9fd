"""The quantization knob: which ONNX Runtime scheme to apply (schema, choice, sampling)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import field_validator

from spaces.knobs import Strict, TrialLike, knob

SCHEMES = ("fp32", "int8_dynamic", "int8_static_qdq")

class QuantizationSpace(Strict):
    """Which ONNX Runtime quantization schemes the search may apply."""

    schemes: list[Literal["fp32", "int8_dynamic", "int8_static_qdq"]] = list(SCHEMES)

    @field_validator("schemes")
    @classmethod
    def _nonempty(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("give at least one scheme")
        return v


@dataclass(frozen=True)
class QuantizationChoice:
    """Which ONNX Runtime quantization scheme to apply."""

    scheme: str = "fp32"



    def params(self) -> dict[str, Any]:
        """Dotted parameters."""
        return {"quantization.scheme": self.scheme}

    def describe(self) -> str:
        """A short label."""
        return self.scheme


def sample_quantization(trial: TrialLike, space: QuantizationSpace) -> QuantizationChoice:
    """Sample a quantization choice."""
    return QuantizationChoice(scheme=knob(trial, "quantization.scheme", list(space.schemes)))
