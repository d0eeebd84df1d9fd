"""The student knob: the StudentFamily protocol, its registry, the students section of the space, the choice.

A family is one class: its pydantic fields are its section of the experiment file (space.students.<name>), its
methods say how a trial samples it, how it describes itself and (importing torch only then) how it is built.
"student" is the categorical choice among the teacher itself and the families present; a family's knobs are
sampled only when that family is chosen. Every family is distilled on logits (temperature, alpha, epochs, lr).
The built-in families (cnn, mobilenetv2, resnet) live in spaces/student_families.py.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from evaluators.errors import ConfigError, not_allowed
from evaluators.registry import Registry
from spaces.knobs import MAX_EPOCHS, FloatKnob, FloatRange, IntKnob, Strict, TrialLike, check_positive, knob, values

if TYPE_CHECKING:  # the heavy half: only a family's build() imports torch
    from torch import nn

DISTILL_KNOBS = ("temperature", "alpha", "epochs", "lr")
TEACHER = "teacher"  # "the teacher itself": not a family, it is never built or distilled


def stages_label(stages: tuple[int, ...]) -> str:
    """Per-stage block counts as one categorical value and MLflow param, e.g. (1, 2, 2) -> '1-2-2'."""
    return "-".join(map(str, stages))


class StudentFamily(Strict):
    """One student family: its fields are its schema section; it samples, describes and builds its students.

    Subclass it with the family's knobs as fields (each a fixed value, a list of choices or a range), give it a
    `name`, the knobs' values when a choice omits them (`choice_defaults`) and `build`; then register it with
    `register_family`. The distillation knobs below are shared by every family.
    """

    name: ClassVar[str]
    choice_defaults: ClassVar[dict[str, Any]] = {}  # the family's own knobs and their values when not given
    searched_by_default: ClassVar[bool] = False  # in the space even when the file does not name it (cnn)
    min_input: ClassVar[int] = 1  # the smallest input side (H and W) it takes
    min_input_why: ClassVar[str] = ""

    temperature: FloatKnob = FloatRange(low=2.0, high=6.0)
    alpha: FloatKnob = FloatRange(low=0.5, high=0.9)  # weight of the teacher's soft targets
    epochs: IntKnob = 12
    lr: FloatKnob = 0.003

    @field_validator("epochs", check_fields=False)
    @classmethod
    def _epochs(cls, v: IntKnob) -> IntKnob:
        check_positive(v, "epochs", MAX_EPOCHS)
        return v

    @field_validator("temperature", "lr", check_fields=False)
    @classmethod
    def _positive_float(cls, v: FloatKnob) -> FloatKnob:
        check_positive(v, "value")
        return v

    @field_validator("alpha", check_fields=False)
    @classmethod
    def _unit(cls, v: FloatKnob) -> FloatKnob:
        for x in values(v):
            if not 0.0 <= x <= 1.0:
                raise ValueError(f"alpha weighs the distillation loss and must lie in [0, 1], got {x}")
        return v

    # --- sampling (light: a trial's suggest_* methods only) ---

    def sample(self, trial: TrialLike) -> dict[str, Any]:
        """The family's own knobs for one trial (by default each of choice_defaults' fields, as written)."""
        return {name: knob(trial, f"{self.name}.{name}", getattr(self, name)) for name in self.choice_defaults}

    def sample_distillation(self, trial: TrialLike) -> dict[str, Any]:
        """The shared distillation knobs for one trial."""
        return dict(
            temperature=float(knob(trial, f"{self.name}.temperature", self.temperature)),
            alpha=float(knob(trial, f"{self.name}.alpha", self.alpha)),
            epochs=int(knob(trial, f"{self.name}.epochs", self.epochs)),
            lr=float(knob(trial, f"{self.name}.lr", self.lr)),
        )

    # --- describing a choice ---

    @classmethod
    def params(cls, choice: "StudentChoice") -> dict[str, Any]:
        """The choice's own knobs as MLflow params (per-stage counts as '1-2-2'; None left out)."""
        out = {}
        for name, value in choice.knobs:
            if value is not None:
                out[name] = stages_label(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def describe(cls, choice: "StudentChoice") -> str:
        """A short label, e.g. 'cnn w0.5 d1'."""
        return " ".join([cls.name, *(f"{k}={v}" for k, v in cls.params(choice).items())])

    # --- capabilities and the heavy half ---

    @classmethod
    def weights_decide_structure(cls, choice: "StudentChoice") -> bool:
        """Whether trained weights decide the built graph (no built-in family does: shapes come from the knobs)."""
        return False

    @classmethod
    def suits(cls, input_shape: Sequence[int]) -> str | None:
        """Why this family cannot take inputs of this shape (C, H, W), or None when it can."""
        shape = tuple(input_shape)
        if len(shape) != 3:
            return f"{cls.name} students need image inputs (C, H, W), got input shape {shape}"
        _, h, w = shape
        if min(h, w) < cls.min_input:
            why = f": {cls.min_input_why}" if cls.min_input_why else ""
            side = f"{cls.min_input}x{cls.min_input}"
            return f"{cls.name} students need inputs of at least {side} pixels, got {h}x{w}{why}"
        return None

    @classmethod
    @abstractmethod
    def build(
        cls, choice: "StudentChoice", in_channels: int, num_classes: int, input_hw: tuple[int, int] | None
    ) -> "nn.Module":
        """A fresh, untrained student for this choice (import torch and friends inside)."""

    @classmethod
    def keys(cls) -> list[str]:
        """The section's keys in the order the class declares them (its own first), for error messages."""
        own = [n for n in cls.__dict__.get("__annotations__", {}) if n in cls.model_fields]
        return own + [n for n in cls.model_fields if n not in own]


STUDENT_FAMILIES: Registry[type[StudentFamily]] = Registry("student family")


def register_family(family: type[StudentFamily]) -> type[StudentFamily]:
    """Make a family a choice of every experiment file (space.students.<name>); usable as a class decorator."""
    if family.name == TEACHER or family.name in StudentSpace.model_fields:
        raise ValueError(f"{family.name!r} is taken by the students section itself; choose another family name")
    return STUDENT_FAMILIES.register(family)


def _nested_errors(family: type[StudentFamily], exc: ValidationError) -> list[dict[str, Any]]:
    """A family section's errors, placed under its key; an unknown key names the section's keys."""
    out = []
    for err in exc.errors():
        loc = (family.name, *err["loc"])
        if err["type"] == "extra_forbidden":
            message = f"unknown key; {not_allowed(err['loc'][-1], _keys_at(family, err['loc'][:-1]))}"
            out.append({"type": PydanticCustomError("unknown_key", message), "loc": loc, "input": err["input"]})
        else:
            out.append({"type": PydanticCustomError(err["type"], err["msg"]), "loc": loc, "input": err["input"]})
    return out


def _keys_at(family: type[StudentFamily], loc: tuple[Any, ...]) -> list[str]:
    """The keys of the section a location inside a family points into (the family's, or a range's)."""
    current: Any = family
    for part in loc:
        field = current.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            continue  # a union member's name pydantic put in the location, not a key
        models = [
            a
            for a in (field.annotation, *getattr(field.annotation, "__args__", ()))
            if isinstance(a, type) and issubclass(a, BaseModel)
        ]
        if not models:
            break
        current = models[0]
    return current.keys() if current is family else list(current.model_fields)


class StudentSpace(Strict):
    """Which students the search may build: the teacher itself and any registered family given a section.

    Each family is a key named after it (`cnn: {...}`); null or absent means not searched (the cnn family is
    searched unless set to null). The families are registry entries, so they are validated here, not as fields.
    """

    model_config = ConfigDict(extra="allow")  # the families' sections, validated by _families

    teacher: bool = True

    @model_validator(mode="wrap")
    @classmethod
    def _families(cls, data: Any, handler: Any) -> "StudentSpace":
        if not isinstance(data, dict):
            return handler(data)
        own = {k: v for k, v in data.items() if k in cls.model_fields}
        sections: dict[str, StudentFamily | None] = {}
        errors: list[dict[str, Any]] = []
        for key, value in data.items():
            if key in cls.model_fields:
                continue
            if key not in STUDENT_FAMILIES:
                allowed = [*cls.model_fields, *STUDENT_FAMILIES.names()]
                message = f"unknown key; {not_allowed(key, allowed)}"
                errors.append({"type": PydanticCustomError("unknown_family", message), "loc": (key,), "input": value})
                continue
            family = STUDENT_FAMILIES.get(key)
            try:
                sections[key] = None if value is None else family.model_validate(value)
            except ValidationError as exc:
                errors.extend(_nested_errors(family, exc))
        if errors:
            raise ValidationError.from_exception_data(cls.__name__, errors)
        space = handler(own)
        for family in STUDENT_FAMILIES:
            default = family() if family.searched_by_default else None
            space.__pydantic_extra__[family.name] = sections.get(family.name, default)
        if not space.kinds():
            names = STUDENT_FAMILIES.names()
            raise ValueError(
                f"no student left to search: set teacher: true or give a {names[0]} family"
                + (f" (or {' or '.join(names[1:])})" if names[1:] else "")
            )
        return space

    def family(self, kind: str) -> StudentFamily | None:
        """The section of a family, or None when that family is not searched."""
        return (self.__pydantic_extra__ or {}).get(kind)

    def kinds(self) -> list[str]:
        """The kinds of student present, in a fixed order (the 'student' choice): the teacher, then families."""
        present = [f.name for f in STUDENT_FAMILIES if self.family(f.name) is not None]
        return ([TEACHER] if self.teacher else []) + present


@dataclass(frozen=True, init=False)
class StudentChoice:
    """Which student to build and how it is distilled; `knobs` holds the family's own knobs (also as attributes)."""

    kind: str
    temperature: float
    alpha: float
    epochs: int
    lr: float
    knobs: tuple[tuple[str, Any], ...]  # in the family's choice_defaults order, so equal choices compare equal

    def __init__(
        self,
        kind: str = TEACHER,
        *,
        temperature: float = 4.0,
        alpha: float = 0.7,
        epochs: int = 0,
        lr: float = 0.003,
        **knobs: Any,
    ) -> None:
        defaults = {} if kind == TEACHER else STUDENT_FAMILIES.get(kind).choice_defaults
        unknown = sorted(set(knobs) - set(defaults))
        if unknown:
            raise ConfigError(
                f"a {kind} student has no knob {unknown[0]!r}; its knobs: "
                f"{', '.join([*defaults, *DISTILL_KNOBS]) or 'none'}"
            )
        for name, value in (
            ("kind", kind),
            ("temperature", temperature),
            ("alpha", alpha),
            ("epochs", epochs),
            ("lr", lr),
            ("knobs", tuple((k, knobs.get(k, v)) for k, v in defaults.items())),
        ):
            object.__setattr__(self, name, value)

    def __getattr__(self, name: str) -> Any:
        # Only reached for names that are not fields: the family's own knobs (choice.width, choice.blocks).
        if not name.startswith("_"):
            for key, value in self.__dict__.get("knobs", ()):
                if key == name:
                    return value
        raise AttributeError(f"{type(self).__name__} of kind {self.__dict__.get('kind')!r} has no {name!r}")

    @property
    def distilled(self) -> bool:
        """Whether this student is trained from the teacher (every family; not the teacher itself)."""
        return self.kind != TEACHER

    def family(self) -> type[StudentFamily] | None:
        """The registered family of this choice (None for the teacher itself)."""
        return STUDENT_FAMILIES.get(self.kind) if self.distilled else None

    def params(self) -> dict[str, Any]:
        """Dotted parameters; only the chosen family's knobs (per-stage counts as '1-2-2')."""
        out: dict[str, Any] = {"student.kind": self.kind}
        family = self.family()
        if family is not None:
            out.update({f"student.{k}": v for k, v in family.params(self).items()})
            out.update({f"student.{k}": getattr(self, k) for k in DISTILL_KNOBS})
        return out

    def describe(self) -> str:
        """A short label, e.g. 'cnn w0.5 d1', 'mobilenetv2 w0.35 compact', 'resnet b1-1-1 w16', 'teacher'."""
        family = self.family()
        return TEACHER if family is None else family.describe(self)

    def weights_decide_structure(self) -> bool:
        """Whether trained weights decide this student's graph (the latency-first probe is then not faithful)."""
        family = self.family()
        return family is not None and family.weights_decide_structure(self)


def sample_student(trial: TrialLike, space: StudentSpace) -> StudentChoice:
    """Sample a student; a family's knobs are asked for only when that family is chosen."""
    kind = knob(trial, "student", space.kinds())
    section = space.family(kind)
    if section is None:
        return StudentChoice()
    return StudentChoice(kind, **section.sample(trial), **section.sample_distillation(trial))


def suits(kind: str, input_shape: Sequence[int]) -> str | None:
    """Why a student kind cannot take inputs of this shape (C, H, W), or None when it can."""
    if kind == TEACHER:
        return None  # it was trained on this very task
    return STUDENT_FAMILIES.get(kind).suits(input_shape)


# The built-in families register themselves on import; last, because they subclass StudentFamily above.
import spaces.student_families  # noqa: E402,F401
