"""The search space of the three knobs, and the CompressionPlan one trial samples from it.

The space is a pydantic schema (validated at the edge by search.config) and sampling only calls the trial's
suggest_* methods, so this module needs no Optuna import.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SCHEMES = ("fp32", "int8_dynamic", "int8_static_qdq")


class Strict(BaseModel):
    """A config section that rejects unknown keys."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class FloatRange(Strict):
    """A continuous range Optuna samples from."""

    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> "FloatRange":
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0, got {self.low}")
        return self


# A knob is a fixed value (not searched), a list of choices, or a range.
FloatKnob = Union[float, list[float], FloatRange]
IntKnob = Union[int, list[int]]


class CNNStudents(Strict):
    """The parametric CNN family, distilled from the teacher."""

    width: FloatKnob = [0.25, 0.5, 0.75]
    depth: IntKnob = [1, 2]
    temperature: FloatKnob = FloatRange(low=2.0, high=6.0)
    alpha: FloatKnob = FloatRange(low=0.5, high=0.9)
    epochs: IntKnob = 12
    lr: FloatKnob = 0.003

    @field_validator("width")
    @classmethod
    def _width(cls, v: FloatKnob) -> FloatKnob:
        _check_positive(v, "width multiplier")
        return v

    @field_validator("depth", "epochs")
    @classmethod
    def _positive_int(cls, v: IntKnob) -> IntKnob:
        _check_positive(v, "value")
        return v

    @field_validator("temperature", "lr")
    @classmethod
    def _positive_float(cls, v: FloatKnob) -> FloatKnob:
        _check_positive(v, "value")
        return v

    @field_validator("alpha")
    @classmethod
    def _unit(cls, v: FloatKnob) -> FloatKnob:
        for x in _values(v):
            if not 0.0 <= x <= 1.0:
                raise ValueError(f"alpha weighs the distillation loss and must lie in [0, 1], got {x}")
        return v


class StudentSpace(Strict):
    """Which students the search may build: the teacher itself and/or the CNN family."""

    teacher: bool = True
    cnn: CNNStudents | None = CNNStudents()

    @model_validator(mode="after")
    def _some(self) -> "StudentSpace":
        if not self.teacher and self.cnn is None:
            raise ValueError("no student left to search: set teacher: true or give a cnn family")
        return self


class PruningSpace(Strict):
    """Structured channel pruning (Torch-Pruning); ratio 0 means no pruning."""

    ratio: FloatKnob = [0.0, 0.25, 0.5]
    recover_epochs: IntKnob = 4
    round_to: int = Field(8, ge=1)

    @field_validator("recover_epochs")
    @classmethod
    def _epochs(cls, v: IntKnob) -> IntKnob:
        if isinstance(v, list) and not v:
            raise ValueError("give at least one choice")
        for x in _values(v):
            if x < 0:
                raise ValueError(f"recovery epochs must be >= 0, got {x}")
        return v

    @field_validator("ratio")
    @classmethod
    def _ratio(cls, v: FloatKnob) -> FloatKnob:
        for x in _values(v):
            if not 0.0 <= x < 1.0:
                raise ValueError(f"a pruning ratio is the share of channels removed and must lie in [0, 1), got {x}")
        return v


class QuantizationSpace(Strict):
    """Which ONNX Runtime quantization schemes the search may apply."""

    schemes: list[Literal["fp32", "int8_dynamic", "int8_static_qdq"]] = list(SCHEMES)

    @field_validator("schemes")
    @classmethod
    def _nonempty(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("give at least one scheme")
        return v


class Space(Strict):
    """The three knobs searched together."""

    students: StudentSpace = StudentSpace()
    pruning: PruningSpace = PruningSpace()
    quantization: QuantizationSpace = QuantizationSpace()


def _values(v: Any) -> list[float]:
    """The concrete numbers a knob may take (the bounds, for a range)."""
    if isinstance(v, FloatRange):
        return [v.low, v.high]
    return list(v) if isinstance(v, list) else [v]


def _check_positive(v: Any, what: str) -> None:
    if isinstance(v, list) and not v:
        raise ValueError("give at least one choice")
    for x in _values(v):
        if x <= 0:
            raise ValueError(f"{what} must be > 0, got {x}")



class TrialLike(Protocol):
    """What sampling needs of an Optuna trial."""

    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False) -> float: ...

    def suggest_categorical(self, name: str, choices: Any) -> Any: ...


@dataclass(frozen=True)
class StudentChoice:
    """Which student to build: the teacher itself, or a distilled CNN of the family."""

    kind: Literal["teacher", "cnn"]
    width: float = 1.0
    depth: int = 2
    temperature: float = 4.0
    alpha: float = 0.7
    epochs: int = 0
    lr: float = 0.003


@dataclass(frozen=True)
class PruningChoice:
    """How many channels to remove and how long to recover."""

    ratio: float = 0.0
    recover_epochs: int = 0
    round_to: int = 8


@dataclass(frozen=True)
class QuantizationChoice:
    """Which ONNX Runtime quantization scheme to apply."""

    scheme: str = "fp32"


@dataclass(frozen=True)
class CompressionPlan:
    """Everything one trial does to the teacher, as sampled from the space."""

    student: StudentChoice = field(default_factory=lambda: StudentChoice(kind="teacher"))
    pruning: PruningChoice = field(default_factory=PruningChoice)
    quantization: QuantizationChoice = field(default_factory=QuantizationChoice)

    def params(self) -> dict[str, Any]:
        """The plan as flat, dotted parameters (for MLflow and the model card); unused knobs left out."""
        out: dict[str, Any] = {"student.kind": self.student.kind}
        if self.student.kind == "cnn":
            out.update({f"student.{k}": v for k, v in asdict(self.student).items() if k != "kind"})
        out["pruning.ratio"] = self.pruning.ratio
        if self.pruning.ratio > 0:
            out["pruning.recover_epochs"] = self.pruning.recover_epochs
            out["pruning.round_to"] = self.pruning.round_to
        out["quantization.scheme"] = self.quantization.scheme
        return out

    def describe(self) -> str:
        """A short human label, e.g. 'cnn w0.5 d1 | prune 0.25 | int8_static_qdq'."""
        s = self.student
        student = "teacher" if s.kind == "teacher" else f"cnn w{s.width:g} d{s.depth}"
        prune = f"prune {self.pruning.ratio:g}" if self.pruning.ratio else "no prune"
        return f"{student} | {prune} | {self.quantization.scheme}"


def _knob(trial: TrialLike, name: str, knob: Any) -> Any:
    """A fixed value stays fixed; a list is a categorical choice; a range is sampled (log if asked)."""
    if isinstance(knob, FloatRange):
        if knob.low == knob.high:
            return knob.low
        return trial.suggest_float(name, knob.low, knob.high, log=knob.log)
    if isinstance(knob, list):
        return knob[0] if len(knob) == 1 else trial.suggest_categorical(name, knob)
    return knob


def sample(trial: TrialLike, space: Space) -> CompressionPlan:
    """Sample one plan; a parameter is asked for only where it means something (conditional space)."""
    kinds = (["teacher"] if space.students.teacher else []) + (["cnn"] if space.students.cnn else [])
    kind = _knob(trial, "student", kinds)
    if kind == "cnn":
        cnn = space.students.cnn
        assert cnn is not None  # guaranteed by kinds
        student = StudentChoice(
            kind="cnn",
            width=float(_knob(trial, "cnn.width", cnn.width)),
            depth=int(_knob(trial, "cnn.depth", cnn.depth)),
            temperature=float(_knob(trial, "cnn.temperature", cnn.temperature)),
            alpha=float(_knob(trial, "cnn.alpha", cnn.alpha)),
            epochs=int(_knob(trial, "cnn.epochs", cnn.epochs)),
            lr=float(_knob(trial, "cnn.lr", cnn.lr)),
        )
    else:
        student = StudentChoice(kind="teacher")
    ratio = float(_knob(trial, "pruning.ratio", space.pruning.ratio))
    pruning = PruningChoice(
        ratio=ratio,
        recover_epochs=int(_knob(trial, "pruning.recover_epochs", space.pruning.recover_epochs)) if ratio else 0,
        round_to=space.pruning.round_to,
    )
    scheme = _knob(trial, "quantization.scheme", list(space.quantization.schemes))
    return CompressionPlan(student=student, pruning=pruning, quantization=QuantizationChoice(scheme=scheme))
