"""What every knob's schema shares: strict sections, fixed / choice / range knobs, and sampling them.

Sampling only calls a trial's suggest_* methods, so no knob module imports Optuna, and schemas import no torch:
an experiment file is validated before anything heavy loads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Union

from pydantic import BaseModel, ConfigDict, model_validator


class Strict(BaseModel):
    """A config section that rejects unknown keys."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # NaN/inf are never a setting


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


class TrialLike(Protocol):
    """What sampling needs of an Optuna trial."""

    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False) -> float: ...

    def suggest_categorical(self, name: str, choices: Any) -> Any: ...


@dataclass(frozen=True)
class Fixed:
    """A trial whose every knob is already set (a plan rebuilt from its params); a knob it lacks is a KeyError."""

    params: dict[str, Any]

    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False) -> float:
        return float(self.params[name])

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        return self.params[name]


def values(v: Any) -> list[float]:
    """The concrete numbers a knob may take (the bounds, for a range)."""
    if isinstance(v, FloatRange):
        return [v.low, v.high]
    return list(v) if isinstance(v, list) else [v]


# Upper bounds of the knobs (README, "The experiment file's bounds"): far above any useful setting, low enough that a
# typo cannot ask for years of training or a network that fills the machine's memory.
MAX_EPOCHS = 10_000
MAX_DEPTH = 64  # blocks per stage
MAX_WIDTH = 64.0  # width multiplier
MAX_KERNEL = 31
MAX_BASE_WIDTH = 4096
MAX_STEPS = 100  # iterative pruning steps


def check_positive(v: Any, what: str, upper: float | None = None) -> None:
    """Refuse an empty choice list, a value <= 0, or one above `upper`."""
    if isinstance(v, list) and not v:
        raise ValueError("give at least one choice")
    for x in values(v):
        if x <= 0:
            raise ValueError(f"{what} must be > 0, got {x}")
        if upper is not None and x > upper:
            raise ValueError(f"{what} must be <= {upper:g}, got {x}")


def knob(trial: TrialLike, name: str, knob: Any) -> Any:
    """A fixed value stays fixed; a list is a categorical choice; a range is sampled (log if asked)."""
    if isinstance(knob, FloatRange):
        if knob.low == knob.high:
            return knob.low
        return trial.suggest_float(name, knob.low, knob.high, log=knob.log)
    if isinstance(knob, list):
        return knob[0] if len(knob) == 1 else trial.suggest_categorical(name, knob)
    return knob
