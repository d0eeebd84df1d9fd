"""The pruning knob: how many channels to remove and how long to recover (schema, choice, sampling)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import Field, field_validator

from spaces.knobs import FloatKnob, IntKnob, Strict, TrialLike, knob, values


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
        for x in values(v):
            if x < 0:
                raise ValueError(f"recovery epochs must be >= 0, got {x}")
        return v

    @field_validator("ratio")
    @classmethod
    def _ratio(cls, v: FloatKnob) -> FloatKnob:
        for x in values(v):
            if not 0.0 <= x < 1.0:
                raise ValueError(f"a pruning ratio is the share of channels removed and must lie in [0, 1), got {x}")
        return v


@dataclass(frozen=True)
class PruningChoice:
    """How many channels to remove and how long to recover."""

    ratio: float = 0.0
    recover_epochs: int = 0
    round_to: int = 8



    def params(self) -> dict[str, Any]:
        """Dotted parameters; recovery only when something was pruned."""
        out: dict[str, Any] = {"pruning.ratio": self.ratio}
        if self.ratio > 0:
            out.update({"pruning.recover_epochs": self.recover_epochs, "pruning.round_to": self.round_to})
        return out

    def describe(self) -> str:
        """A short label."""
        return f"prune {self.ratio:g}" if self.ratio else "no prune"


def sample_pruning(trial: TrialLike, space: PruningSpace) -> PruningChoice:
    """Sample a pruning choice; recovery epochs only where the ratio is above 0."""
    ratio = float(knob(trial, "pruning.ratio", space.ratio))
    recover = int(knob(trial, "pruning.recover_epochs", space.recover_epochs)) if ratio else 0
    return PruningChoice(ratio=ratio, recover_epochs=recover, round_to=space.round_to)
