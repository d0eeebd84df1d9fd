"""The pruning knob: the PruningMethod and Importance protocols, their registries, the schema section, the choice.

A pruning method (structured channel removal, unstructured zeroing) and a channel importance (l1, l2, taylor, ...)
are each one class registered by name (spaces/pruning_methods.py has the built-in ones); the section's allowed
names are the registries'. Their heavy half (torch, Torch-Pruning) is imported only when a trial prunes.

A method shaped like a student family owns its options: its pydantic fields are its section `space.pruning.<name>`
(each a fixed value or a list of choices), sampled as `<name>.<option>` only in trials that chose it and read in
`apply` as `choice.<option>`. (The built-in structured method's knobs, importance, scope, steps and round_to, stay
in the pruning section itself, where every experiment file already has them.)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, ConfigDict, field_validator, model_validator

from evaluators.registry import Registry
from spaces.knobs import MAX_EPOCHS, MAX_STEPS, FloatKnob, IntKnob, Strict, TrialLike, check_positive, knob, values
from spaces.sections import with_sections

if TYPE_CHECKING:
    import torch
    import torch_pruning as tp
    from torch import nn

Scope = Literal["uniform", "global"]
SCOPES: tuple[str, ...] = ("uniform", "global")

# Trains a model in place for a number of epochs (the caller's distillation); see spaces.pruning.prune().
Recover = Callable[["nn.Module", int], None]


class PruningMethod(Strict):
    """One way of pruning a model; register a subclass with register_method. Its pydantic fields, if any, are its
    own options (the section space.pruning.<name>)."""

    name: ClassVar[str]
    removes_channels: ClassVar[bool] = False  # shapes shrink (so the file and the dense latency do)

    def sample_options(self, trial: TrialLike) -> dict[str, Any]:
        """The method's own options for one trial (by default each field, as written, as `<name>.<option>`)."""
        return {option: knob(trial, f"{self.name}.{option}", getattr(self, option)) for option in self.model_fields}

    @classmethod
    def sample(cls, trial: TrialLike, space: "PruningSpace") -> dict[str, Any]:
        """The method's knobs kept in the pruning section for one trial (PruningChoice fields); none by default."""
        return {}

    @classmethod
    def params(cls, choice: "PruningChoice") -> dict[str, Any]:
        """The method's own knobs as undotted params; none by default."""
        return {}

    @classmethod
    def describe(cls, choice: "PruningChoice") -> list[str]:
        """Words for the label after 'prune <ratio>': what differs from the defaults (its options as option=value)."""
        return [cls.name, *(f"{k}={v}" for k, v in choice.options)]

    @classmethod
    def weights_decide_structure(cls, choice: "PruningChoice") -> bool:
        """Whether trained weights decide the pruned graph's shapes (then an untrained probe is not faithful)."""
        return False

    @classmethod
    @abstractmethod
    def apply(
        cls,
        model: "nn.Module",
        example_input: "torch.Tensor",
        choice: "PruningChoice",
        protected: list["nn.Module"],
        recover: Recover | None,
        batch: tuple["torch.Tensor", "torch.Tensor"] | None,
    ) -> None:
        """Prune in place, sparing `protected` layers; recover with `recover` as spaces.pruning.prune() says."""


class Importance(ABC):
    """How structured pruning ranks channels; register a subclass with register_importance."""

    name: ClassVar[str]
    needs_gradients: ClassVar[bool] = False  # ranks by gradients: needs a labelled batch

    @classmethod
    @abstractmethod
    def create(cls) -> "tp.importance.Importance":
        """Torch-Pruning's importance object (import torch_pruning inside)."""


PRUNING_METHODS: Registry[type[PruningMethod]] = Registry("pruning method")
IMPORTANCES: Registry[type[Importance]] = Registry("pruning importance")
register_importance = IMPORTANCES.register


def register_method(method: type[PruningMethod]) -> type[PruningMethod]:
    """Make a method a choice of every experiment file (space.pruning.method, and its options section
    space.pruning.<name>); usable as a class decorator."""
    if method.name in PruningSpace.model_fields:
        raise ValueError(f"{method.name!r} is taken by the pruning section itself; choose another method name")
    return PRUNING_METHODS.register(method)


def _method(name: str) -> str:
    return PRUNING_METHODS.check(name)


def _importance(name: str) -> str:
    return IMPORTANCES.check(name)


# A categorical knob is written as one fixed name or a list of names to choose from; it is held as a list (one
# name is not sampled), so a bad name gets one error naming the valid ones.
MethodKnob = list[Annotated[str, AfterValidator(_method)]]
ImportanceKnob = list[Annotated[str, AfterValidator(_importance)]]
ScopeKnob = list[Scope]


RATIO_KNOB = "pruning.ratio"  # the Optuna parameter of the pruning ratio


class PruningSpace(Strict):
    """Pruning: structured channel removal (Torch-Pruning) or unstructured zeroing; ratio 0 means no pruning.

    importance, scope, steps and round_to mean something only for structured pruning and are sampled only there.
    A method with options of its own has its section under its name.
    """

    model_config = ConfigDict(extra="allow")  # the methods' own sections, validated by _sections

    ratio: FloatKnob = [0.0, 0.25, 0.5]
    method: MethodKnob = ["structured"]
    recover_epochs: IntKnob = 4
    importance: ImportanceKnob = ["l2"]
    scope: ScopeKnob = ["uniform"]
    steps: IntKnob = 1  # iterative pruning steps; 1 = one shot
    round_to: IntKnob = 8
    protect_first_last: bool = True
    # A pruning plan of a distilled student this sweep has already trained (the same student, distillation, teacher
    # and data) starts from that student's saved weights and trains only its recovery epochs, as a user prunes a
    # saved model (search/students.py). Off: every plan trains its own student first.
    from_trained: bool = False

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
        check_positive(v, "iterative pruning steps (1 = one shot)", MAX_STEPS)
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

    @model_validator(mode="wrap")
    @classmethod
    def _sections(cls, data: Any, handler: Any) -> "PruningSpace":
        stray = "options of a method that method {chosen} does not include: add it or remove this"
        return with_sections(cls, data, handler, PRUNING_METHODS, "method", stray)

    def section(self, method: str) -> PruningMethod | None:
        """The options section of a method with options of its own (None for a method without)."""
        return (self.__pydantic_extra__ or {}).get(method)


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
    options: tuple[tuple[str, Any], ...] = ()  # the method's own options, in its field order (also attributes)

    def __getattr__(self, name: str) -> Any:
        # Only reached for names that are not fields: the method's own options (choice.n).
        if not name.startswith("_"):
            for key, value in self.__dict__.get("options", ()):
                if key == name:
                    return value
        raise AttributeError(f"{type(self).__name__} of method {self.__dict__.get('method')!r} has no {name!r}")

    @property
    def structured(self) -> bool:
        """Whether whole channels are removed (as opposed to weights zeroed in place)."""
        return PRUNING_METHODS.get(self.method).removes_channels

    def params(self) -> dict[str, Any]:
        """Dotted parameters; only those that applied (nothing but the ratio when nothing was pruned)."""
        out: dict[str, Any] = {"pruning.ratio": self.ratio}
        if self.ratio > 0:
            out.update(
                {
                    "pruning.method": self.method,
                    "pruning.recover_epochs": self.recover_epochs,
                    "pruning.protect_first_last": self.protect_first_last,
                }
            )
            out.update({f"pruning.{k}": v for k, v in PRUNING_METHODS.get(self.method).params(self).items()})
            out.update({f"pruning.{k}": v for k, v in self.options})
        return out

    def describe(self) -> str:
        """A short label: 'prune 0.25' for the defaults, with what differs from them appended."""
        if not self.ratio:
            return "no prune"
        parts = [f"prune {self.ratio:g}", *PRUNING_METHODS.get(self.method).describe(self)]
        if not self.protect_first_last:
            parts.append("all layers")
        return " ".join(parts)

    def weights_decide_structure(self) -> bool:
        """Whether trained weights decide the pruned graph's shapes (global pruning picks widths by magnitude)."""
        return self.ratio > 0 and PRUNING_METHODS.get(self.method).weights_decide_structure(self)


def sample_pruning(trial: TrialLike, space: PruningSpace) -> PruningChoice:
    """Sample a pruning choice; every knob but the ratio only where something is pruned, a method's own knobs
    only for that method (a conditional space)."""
    ratio = float(knob(trial, RATIO_KNOB, space.ratio))
    if not ratio:
        return PruningChoice(ratio=0.0, protect_first_last=space.protect_first_last)
    method = str(knob(trial, "pruning.method", space.method))
    recover = int(knob(trial, "pruning.recover_epochs", space.recover_epochs))
    section = space.section(method)
    return PruningChoice(
        ratio=ratio,
        recover_epochs=recover,
        method=method,
        protect_first_last=space.protect_first_last,
        **PRUNING_METHODS.get(method).sample(trial, space),
        options=tuple(section.sample_options(trial).items()) if section is not None else (),
    )


# The built-in methods and importances register themselves on import; last, because they subclass the bases above.
import spaces.pruning_methods  # noqa: E402,F401
