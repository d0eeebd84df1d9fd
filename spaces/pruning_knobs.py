"""The pruning knob: what to remove, how to rank it, and how long to recover (schema, choice, sampling)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import field_validator

from spaces.knobs import FloatKnob, IntKnob, Strict, TrialLike, check_positive, knob, values

# Upper bounds (README, "The experiment file's bounds"): a typo must not ask for years of recovery training.
MAX_EPOCHS = 10_000
MAX_STEPS = 100

Method = Literal["structured", "unstructured"]
Importance = Literal["l1", "l2", "taylor", "bn_scale", "random"]
Scope = Literal["uniform", "global"]

METHODS: tuple[str, ...] = ("structured", "unstructured")
IMPORTANCES: tuple[str, ...] = ("l1", "l2", "taylor", "bn_scale", "random")
SCOPES: tuple[str, ...] = ("uniform", "global")

# A categorical knob is written as one fixed name or a list of names to choose from; it is held as a list (one
# name is not sampled), so a bad name gets one error naming the valid ones.
MethodKnob = list[Method]
ImportanceKnob = list[Importance]
ScopeKnob = list[Scope]


class PruningSpace(Strict):
    """Pruning: structured channel removal (Torch-Pruning) or unstructured zeroing; ratio 0 means no pruning.

    importance, scope, steps and round_to mean something only for structured pruning and are sampled only there.
    """

    ratio: FloatKnob = [0.0, 0.25, 0.5]
    method: MethodKnob = ["structured"]
    recover_epochs: IntKnob = 4
    importance: ImportanceKnob = ["l2"]
    scope: ScopeKnob = ["uniform"]
    steps: IntKnob = 1  # iterative pruning steps; 1 = one shot
    round_to: IntKnob = 8
    protect_first_last: bool = True

    @field_validator("ratio")
    @classmethod
    def _ratio(cls, v: FloatKnob) -> FloatKnob:
        if isinstance(v, list) and not v:
            raise ValueError("give at least one choice")
        for x in values(v):
            if not 0.0 <= x < 1.0:
                raise ValueError(
                    f"a pruning ratio is the share of channels (structured) or weights (unstructured) removed "
                    f"and must lie in [0, 1), got {x}"
                )
        return v

    @field_validator("recover_epochs")
    @classmethod
    def _epochs(cls, v: IntKnob) -> IntKnob:
        if isinstance(v, list) and not v:
            raise ValueError("give at least one choice")
        for x in values(v):
            if not 0 <= x <= MAX_EPOCHS:
                raise ValueError(f"recovery epochs must lie in [0, {MAX_EPOCHS}], got {x}")
        return v

    @field_validator("steps")
    @classmethod
    def _steps(cls, v: IntKnob) -> IntKnob:
        check_positive(v, "iterative pruning steps (1 = one shot)")
        if any(x > MAX_STEPS for x in values(v)):
            raise ValueError(f"iterative pruning steps must be <= {MAX_STEPS}, got {max(values(v))}")
        return v

    @field_validator("round_to")
    @classmethod
    def _round_to(cls, v: IntKnob) -> IntKnob:
        check_positive(v, "round_to (channel counts are kept multiples of it; 1 = no rounding)")
        return v

    @field_validator("method", "importance", "scope", mode="before")
    @classmethod
    def _one_or_more(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @field_validator("method", "importance", "scope")
    @classmethod
    def _choices(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("give at least one choice")
        if len(set(v)) != len(v):
            raise ValueError(f"choices must not repeat, got {v}")
        return v


@dataclass(frozen=True)
class PruningChoice:
    """What one trial prunes: ratio and method, and for structured pruning how channels are ranked and removed."""

    ratio: float = 0.0
    recover_epochs: int = 0
    round_to: int = 8
    method: str = "structured"
    importance: str = "l2"
    scope: str = "uniform"
    steps: int = 1
    protect_first_last: bool = True

    @property
    def structured(self) -> bool:
        """Whether whole channels are removed (as opposed to weights zeroed in place)."""
        return self.method == "structured"

    def params(self) -> dict[str, Any]:
        """Dotted parameters; only those that applied (nothing but the ratio when nothing was pruned)."""
        out: dict[str, Any] = {"pruning.ratio": self.ratio}
        if self.ratio > 0:
            out.update({
                "pruning.method": self.method,
                "pruning.recover_epochs": self.recover_epochs,
                "pruning.protect_first_last": self.protect_first_last,
            })
            if self.structured:
                out.update({
                    "pruning.importance": self.importance,
                    "pruning.scope": self.scope,
                    "pruning.steps": self.steps,
                    "pruning.round_to": self.round_to,
                })
        return out

    def describe(self) -> str:
        """A short label: 'prune 0.25' for the defaults, with what differs from them appended."""
        if not self.ratio:
            return "no prune"
        parts = [f"prune {self.ratio:g}"]
        if not self.structured:
            parts.append("unstructured")
        else:
            if self.importance != "l2":
                parts.append(self.importance)
            if self.scope != "uniform":
                parts.append(self.scope)
            if self.steps > 1:
                parts.append(f"{self.steps} steps")
        if not self.protect_first_last:
            parts.append("all layers")
        return " ".join(parts)


def sample_pruning(trial: TrialLike, space: PruningSpace) -> PruningChoice:
    """Sample a pruning choice; every knob but the ratio only where something is pruned, the ranking knobs only
    for structured pruning (a conditional space)."""
    ratio = float(knob(trial, "pruning.ratio", space.ratio))
    if not ratio:
        return PruningChoice(ratio=0.0, protect_first_last=space.protect_first_last)
    method = str(knob(trial, "pruning.method", space.method))
    recover = int(knob(trial, "pruning.recover_epochs", space.recover_epochs))
    if method != "structured":
        return PruningChoice(ratio=ratio, recover_epochs=recover, method=method,
                             protect_first_last=space.protect_first_last)
    return PruningChoice(
        ratio=ratio,
        recover_epochs=recover,
        method=method,
        importance=str(knob(trial, "pruning.importance", space.importance)),
        scope=str(knob(trial, "pruning.scope", space.scope)),
        steps=int(knob(trial, "pruning.steps", space.steps)),
        round_to=int(knob(trial, "pruning.round_to", space.round_to)),
        protect_first_last=space.protect_first_last,
    )
