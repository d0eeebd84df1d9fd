"""The search space of the three knobs together, and the CompressionPlan one trial samples from it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from spaces.knobs import Strict, TrialLike
from spaces.pruning_knobs import PruningChoice, PruningSpace, sample_pruning
from spaces.quantization_knobs import QuantizationChoice, QuantizationSpace, sample_quantization
from spaces.student_knobs import StudentChoice, StudentSpace, sample_student


class Space(Strict):
    """The three knobs searched together."""

    students: StudentSpace = StudentSpace()
    pruning: PruningSpace = PruningSpace()
    quantization: QuantizationSpace = QuantizationSpace()


@dataclass(frozen=True)
class CompressionPlan:
    """Everything one trial does to the teacher, as sampled from the space."""

    student: StudentChoice = field(default_factory=StudentChoice)
    pruning: PruningChoice = field(default_factory=PruningChoice)
    quantization: QuantizationChoice = field(default_factory=QuantizationChoice)

    def params(self) -> dict[str, Any]:
        """The plan as flat, dotted parameters (for MLflow and the model card); unused knobs left out."""
        return {**self.student.params(), **self.pruning.params(), **self.quantization.params()}

    def describe(self) -> str:
        """A short human label, e.g. 'cnn w0.5 d1 | prune 0.25 | int8_static_qdq'."""
        return " | ".join(c.describe() for c in (self.student, self.pruning, self.quantization))

    def weights_decide_structure(self) -> bool:
        """Whether trained weights decide the deployed graph, so an untrained structure would time differently
        (each registry entry says so for its own choice: global pruning, a sensitivity-ranked float layer, ...)."""
        return any(c.weights_decide_structure() for c in (self.student, self.pruning, self.quantization))


def sample(trial: TrialLike, space: Space) -> CompressionPlan:
    """Sample one plan; a parameter is asked for only where it means something (conditional space)."""
    return CompressionPlan(
        student=sample_student(trial, space.students),
        pruning=sample_pruning(trial, space.pruning),
        quantization=sample_quantization(trial, space.quantization),
    )
