"""The student knob: which student to build and how it is distilled (schema, choice, sampling)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from pydantic import field_validator, model_validator

from spaces.knobs import FloatKnob, FloatRange, IntKnob, Strict, TrialLike, check_positive, knob, values


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
        check_positive(v, "width multiplier")
        return v

    @field_validator("depth", "epochs")
    @classmethod
    def _positive_int(cls, v: IntKnob) -> IntKnob:
        check_positive(v, "value")
        return v

    @field_validator("temperature", "lr")
    @classmethod
    def _positive_float(cls, v: FloatKnob) -> FloatKnob:
        check_positive(v, "value")
        return v

    @field_validator("alpha")
    @classmethod
    def _unit(cls, v: FloatKnob) -> FloatKnob:
        for x in values(v):
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



    def params(self) -> dict[str, Any]:
        """Dotted parameters; the family's knobs only where they apply."""
        out: dict[str, Any] = {"student.kind": self.kind}
        if self.kind == "cnn":
            out.update({f"student.{k}": v for k, v in asdict(self).items() if k != "kind"})
        return out

    def describe(self) -> str:
        """A short label."""
        return "teacher" if self.kind == "teacher" else f"cnn w{self.width:g} d{self.depth}"


def sample_student(trial: TrialLike, space: StudentSpace) -> StudentChoice:
    """Sample a student; the family's knobs are asked for only when that family is chosen."""
    kinds = (["teacher"] if space.teacher else []) + (["cnn"] if space.cnn else [])
    kind = knob(trial, "student", kinds)
    if kind != "cnn" or space.cnn is None:
        return StudentChoice(kind="teacher")
    cnn = space.cnn
    return StudentChoice(
        kind="cnn",
        width=float(knob(trial, "cnn.width", cnn.width)),
        depth=int(knob(trial, "cnn.depth", cnn.depth)),
        temperature=float(knob(trial, "cnn.temperature", cnn.temperature)),
        alpha=float(knob(trial, "cnn.alpha", cnn.alpha)),
        epochs=int(knob(trial, "cnn.epochs", cnn.epochs)),
        lr=float(knob(trial, "cnn.lr", cnn.lr)),
    )
