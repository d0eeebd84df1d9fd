"""The student knob: which student to build and how it is distilled (schema, choice, sampling).

Four kinds of student: the teacher itself (no distillation), the parametric CNN, torchvision's MobileNetV2 and a
ResNet of torchvision's BasicBlocks. Each family is an optional section of the experiment file (null or absent: not
searched); "student" is the categorical choice among the kinds present, and a family's knobs are sampled only when
that family is chosen. Every family is distilled on logits with its own temperature, alpha, epochs and lr.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import field_validator, model_validator

from spaces.knobs import FloatKnob, FloatRange, IntKnob, Strict, TrialLike, check_positive, knob, values

# Stages of the parametric CNN (spaces/students.py BASE_CHANNELS has one channel count per stage).
CNN_STAGES = 3
# A ResNet student has one to four stages of BasicBlocks (base_width, x2 per stage).
RESNET_MAX_STAGES = 4


@dataclass(frozen=True)
class InvertedResidualTable:
    """A MobileNetV2 layout: rows (t expansion, c channels, n blocks, s stride) and the last 1x1 conv's width."""

    rows: tuple[tuple[int, int, int, int], ...]
    last_channel: int


# Named MobileNetV2 layouts an experiment file chooses among ("settings"); channels are at width 1.0.
MOBILENETV2_SETTINGS: dict[str, InvertedResidualTable] = {
    # For small inputs: the first five rows, thinned to 8 blocks, and a 512-wide head (~1/10 of the parameters).
    "compact": InvertedResidualTable(
        rows=((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 2, 2), (6, 64, 2, 2), (6, 96, 1, 1)),
        last_channel=512,
    ),
    # torchvision's own table (MobileNetV2 paper, Table 2): 17 inverted-residual blocks, 1280 features.
    "standard": InvertedResidualTable(
        rows=((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
              (6, 320, 1, 1)),
        last_channel=1280,
    ),
}

StageList = list[list[int]]


def _not_allowed(value: Any, allowed: list[str]) -> str:
    hint = difflib.get_close_matches(str(value), allowed, n=1)
    near = f" (did you mean {hint[0]!r}?)" if hint else ""
    return f"{value!r} is not allowed; choose one of: {', '.join(allowed)}{near}"


def _nested(v: Any, what: str) -> Any:
    """Refuse a flat list such as [1, 2, 2]: a choice list of per-stage lists is always nested."""
    if isinstance(v, list) and v and not any(isinstance(x, list) for x in v):
        raise ValueError(f"{what} is a list of choices, each a list of per-stage counts: write [{v}] for one fixed "
                         f"choice or e.g. [[1, 1, 1], [2, 2, 2]] for several, got {v}")
    return v


def _check_stages(v: StageList, what: str, stages: tuple[int, int]) -> StageList:
    """A non-empty list of per-stage block counts, each with an allowed number of stages and every count >= 1."""
    low, high = stages
    if not v:
        raise ValueError(f"give at least one choice of per-stage {what}, e.g. [[1, 1, 1], [2, 2, 2]]")
    for choice in v:
        if not low <= len(choice) <= high:
            count = f"{low}" if low == high else f"{low} to {high}"
            raise ValueError(f"each choice of {what} lists {count} stages, got {choice}")
        for x in choice:
            if x < 1:
                raise ValueError(f"{what} must be >= 1 in every stage, got {choice}")
            if x > MAX_DEPTH:
                raise ValueError(f"{what} must be <= {MAX_DEPTH} in every stage, got {choice}")
    return v


def stages_label(stages: tuple[int, ...]) -> str:
    """Per-stage block counts as one categorical value and MLflow param, e.g. (1, 2, 2) -> '1-2-2'."""
    return "-".join(map(str, stages))


def _stages(trial: TrialLike, name: str, choices: StageList) -> tuple[int, ...]:
    # Optuna's categorical choices must be scalars, so a per-stage list is offered as its label.
    label = knob(trial, name, [stages_label(tuple(c)) for c in choices])
    return tuple(int(x) for x in label.split("-"))


# Upper bounds (README, "The experiment file's bounds"): far above a useful student, low enough that a typo cannot
# ask for years of training or a network that fills the machine's memory.
MAX_EPOCHS = 10_000
MAX_DEPTH = 64
MAX_WIDTH = 64.0
MAX_KERNEL = 31
MAX_BASE_WIDTH = 4096


def at_most(v: Any, what: str, limit: float) -> None:
    """Refuse a knob value above limit."""
    for x in values(v):
        if x > limit:
            raise ValueError(f"{what} must be <= {limit:g}, got {x}")


class Distilled(Strict):
    """What every distilled family checks in its shared knobs: temperature, alpha, epochs and lr.

    Each family declares those four fields itself, after its own shape knobs, so that the keys an error message
    lists read in the order of the experiment file.
    """

    @field_validator("epochs", check_fields=False)
    @classmethod
    def _epochs(cls, v: IntKnob) -> IntKnob:
        check_positive(v, "epochs")
        at_most(v, "epochs", MAX_EPOCHS)
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


class CNNStudents(Distilled):
    """The parametric CNN family: three stages of conv-BN-ReLU blocks (32/64/128 channels at width 1.0)."""

    width: FloatKnob = [0.25, 0.5, 0.75]
    depth: IntKnob = [1, 2]  # blocks in every stage
    temperature: FloatKnob = FloatRange(low=2.0, high=6.0)
    alpha: FloatKnob = FloatRange(low=0.5, high=0.9)  # weight of the teacher's soft targets
    epochs: IntKnob = 12
    lr: FloatKnob = 0.003
    stage_depths: StageList | None = None  # blocks per stage, e.g. [[1, 1, 1], [1, 2, 2]]; replaces depth
    kernel_size: IntKnob = 3

    @field_validator("width")
    @classmethod
    def _width(cls, v: FloatKnob) -> FloatKnob:
        check_positive(v, "width multiplier")
        at_most(v, "width multiplier", MAX_WIDTH)
        return v

    @field_validator("depth")
    @classmethod
    def _depth(cls, v: IntKnob) -> IntKnob:
        check_positive(v, "depth")
        at_most(v, "depth", MAX_DEPTH)
        return v

    @field_validator("stage_depths", mode="before")
    @classmethod
    def _stage_depths_nested(cls, v: Any) -> Any:
        return _nested(v, "stage_depths")

    @field_validator("stage_depths")
    @classmethod
    def _stage_depths(cls, v: StageList | None) -> StageList | None:
        return None if v is None else _check_stages(v, "stage_depths", (CNN_STAGES, CNN_STAGES))

    @field_validator("kernel_size")
    @classmethod
    def _kernel(cls, v: IntKnob) -> IntKnob:
        check_positive(v, "kernel_size")
        at_most(v, "kernel_size", MAX_KERNEL)
        for x in values(v):
            if x % 2 == 0:
                raise ValueError(f"kernel_size must be odd so 'same' padding keeps the map size, got {x}")
        return v

    @model_validator(mode="after")
    def _one_depth(self) -> "CNNStudents":
        if self.stage_depths is not None and "depth" in self.model_fields_set:
            raise ValueError(f"give depth (blocks in every stage) or stage_depths (blocks per stage), not both: "
                             f"got depth={self.depth} and stage_depths={self.stage_depths}")
        return self


class MobileNetV2Students(Distilled):
    """torchvision's MobileNetV2: width multiplier and a named inverted-residual table."""

    width: FloatKnob = [0.35, 0.5, 0.75, 1.0]
    settings: str | list[str] = ["compact", "standard"]
    temperature: FloatKnob = FloatRange(low=2.0, high=6.0)
    alpha: FloatKnob = FloatRange(low=0.5, high=0.9)  # weight of the teacher's soft targets
    epochs: IntKnob = 12
    lr: FloatKnob = 0.003

    @field_validator("width")
    @classmethod
    def _width(cls, v: FloatKnob) -> FloatKnob:
        check_positive(v, "width multiplier")
        at_most(v, "width multiplier", MAX_WIDTH)
        return v

    @field_validator("settings")
    @classmethod
    def _settings(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list) and not v:
            raise ValueError(f"give at least one choice of: {', '.join(MOBILENETV2_SETTINGS)}")
        for name in v if isinstance(v, list) else [v]:
            if name not in MOBILENETV2_SETTINGS:
                raise ValueError(_not_allowed(name, list(MOBILENETV2_SETTINGS)))
        return v


class ResNetStudents(Distilled):
    """A ResNet of torchvision's BasicBlocks: blocks per stage, and the first stage's width (x2 per later stage)."""

    blocks: StageList = [[1, 1, 1], [2, 2, 2]]
    base_width: IntKnob = [16, 32]
    temperature: FloatKnob = FloatRange(low=2.0, high=6.0)
    alpha: FloatKnob = FloatRange(low=0.5, high=0.9)  # weight of the teacher's soft targets
    epochs: IntKnob = 12
    lr: FloatKnob = 0.003

    @field_validator("blocks", mode="before")
    @classmethod
    def _blocks_nested(cls, v: Any) -> Any:
        return _nested(v, "blocks")

    @field_validator("blocks")
    @classmethod
    def _blocks(cls, v: StageList) -> StageList:
        return _check_stages(v, "blocks", (1, RESNET_MAX_STAGES))

    @field_validator("base_width")
    @classmethod
    def _base_width(cls, v: IntKnob) -> IntKnob:
        check_positive(v, "base_width")
        at_most(v, "base_width", MAX_BASE_WIDTH)
        return v


Kind = Literal["teacher", "cnn", "mobilenetv2", "resnet"]


class StudentSpace(Strict):
    """Which students the search may build: the teacher itself and any of the families given."""

    teacher: bool = True
    cnn: CNNStudents | None = CNNStudents()
    mobilenetv2: MobileNetV2Students | None = None
    resnet: ResNetStudents | None = None

    @model_validator(mode="after")
    def _some(self) -> "StudentSpace":
        if not self.kinds():
            raise ValueError("no student left to search: set teacher: true or give a cnn family "
                             "(or a mobilenetv2 or resnet family)")
        return self

    def kinds(self) -> list[str]:
        """The kinds of student present, in a fixed order (the 'student' choice)."""
        families = {"cnn": self.cnn, "mobilenetv2": self.mobilenetv2, "resnet": self.resnet}
        return (["teacher"] if self.teacher else []) + [k for k, f in families.items() if f is not None]


# Which StudentChoice fields each kind uses, besides kind itself (params() and sampling follow this).
_DISTILL = ("temperature", "alpha", "epochs", "lr")
_FIELDS: dict[str, tuple[str, ...]] = {
    "teacher": (),
    "cnn": ("width", "depth", "stage_depths", "kernel_size", *_DISTILL),
    "mobilenetv2": ("width", "settings", *_DISTILL),
    "resnet": ("blocks", "base_width", *_DISTILL),
}


@dataclass(frozen=True)
class StudentChoice:
    """Which student to build and how it is distilled; each kind reads only its own fields."""

    kind: Kind
    width: float = 1.0  # cnn, mobilenetv2: width multiplier
    depth: int = 2  # cnn: blocks in every stage (unused when stage_depths is set)
    temperature: float = 4.0
    alpha: float = 0.7
    epochs: int = 0
    lr: float = 0.003
    kernel_size: int = 3  # cnn
    stage_depths: tuple[int, ...] | None = None  # cnn: blocks per stage, replaces depth
    settings: str = "compact"  # mobilenetv2: a name in MOBILENETV2_SETTINGS
    blocks: tuple[int, ...] = (1, 1, 1)  # resnet: BasicBlocks per stage
    base_width: int = 16  # resnet: channels of the first stage

    def params(self) -> dict[str, Any]:
        """Dotted parameters; only the chosen family's knobs (per-stage counts as '1-2-2')."""
        out: dict[str, Any] = {"student.kind": self.kind}
        for name in _FIELDS[self.kind]:
            value = getattr(self, name)
            if (name == "depth" and self.stage_depths is not None) or (name == "stage_depths" and value is None):
                continue  # a CNN records either its uniform depth or its per-stage depths
            out[f"student.{name}"] = stages_label(value) if isinstance(value, tuple) else value
        return out

    def describe(self) -> str:
        """A short label, e.g. 'cnn w0.5 d1', 'cnn w0.5 d1-2-2 k5', 'mobilenetv2 w0.35 compact', 'resnet b1-1-1 w16'."""
        if self.kind == "cnn":
            depth = stages_label(self.stage_depths) if self.stage_depths is not None else str(self.depth)
            kernel = "" if self.kernel_size == 3 else f" k{self.kernel_size}"
            return f"cnn w{self.width:g} d{depth}{kernel}"
        if self.kind == "mobilenetv2":
            return f"mobilenetv2 w{self.width:g} {self.settings}"
        if self.kind == "resnet":
            return f"resnet b{stages_label(self.blocks)} w{self.base_width}"
        return "teacher"


def _distillation(trial: TrialLike, family: str,
                  space: CNNStudents | MobileNetV2Students | ResNetStudents) -> dict[str, Any]:
    return dict(
        temperature=float(knob(trial, f"{family}.temperature", space.temperature)),
        alpha=float(knob(trial, f"{family}.alpha", space.alpha)),
        epochs=int(knob(trial, f"{family}.epochs", space.epochs)),
        lr=float(knob(trial, f"{family}.lr", space.lr)),
    )


def sample_student(trial: TrialLike, space: StudentSpace) -> StudentChoice:
    """Sample a student; a family's knobs are asked for only when that family is chosen."""
    kind = knob(trial, "student", space.kinds())
    if kind == "cnn" and space.cnn is not None:
        cnn = space.cnn
        width = float(knob(trial, "cnn.width", cnn.width))
        if cnn.stage_depths is not None:
            shape: dict[str, Any] = dict(stage_depths=_stages(trial, "cnn.stage_depths", cnn.stage_depths))
        else:
            shape = dict(depth=int(knob(trial, "cnn.depth", cnn.depth)))
        kernel = int(knob(trial, "cnn.kernel_size", cnn.kernel_size))
        return StudentChoice(kind="cnn", width=width, kernel_size=kernel, **shape, **_distillation(trial, "cnn", cnn))
    if kind == "mobilenetv2" and space.mobilenetv2 is not None:
        m = space.mobilenetv2
        return StudentChoice(kind="mobilenetv2", width=float(knob(trial, "mobilenetv2.width", m.width)),
                             settings=str(knob(trial, "mobilenetv2.settings", m.settings)),
                             **_distillation(trial, "mobilenetv2", m))
    if kind == "resnet" and space.resnet is not None:
        r = space.resnet
        return StudentChoice(kind="resnet", blocks=_stages(trial, "resnet.blocks", r.blocks),
                             base_width=int(knob(trial, "resnet.base_width", r.base_width)),
                             **_distillation(trial, "resnet", r))
    return StudentChoice(kind="teacher")
