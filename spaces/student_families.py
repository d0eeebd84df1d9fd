"""The built-in student families: the parametric CNN, torchvision's MobileNetV2, a ResNet of BasicBlocks.

Each is one StudentFamily class (schema section, sampling, label) registered by name; its build() imports the
torch half, spaces/students.py, only when a trial builds one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import field_validator, model_validator

from evaluators.errors import not_allowed
from spaces.knobs import (
    MAX_BASE_WIDTH,
    MAX_DEPTH,
    MAX_KERNEL,
    MAX_WIDTH,
    FloatKnob,
    FloatRange,
    IntKnob,
    TrialLike,
    check_positive,
    knob,
    values,
)
from spaces.student_knobs import StudentChoice, StudentFamily, register_family, stages_label

if TYPE_CHECKING:
    from torch import nn

# Stages of the parametric CNN (spaces/students.py BASE_CHANNELS has one channel count per stage).
CNN_STAGES = 3
# A ResNet student has one to four stages of BasicBlocks (base_width, x2 per stage).
RESNET_MAX_STAGES = 4
# A downsampling layer keeps its stride 2 only if its map keeps at least this many pixels (spaces/students.py).
MIN_FEATURE_MAP = 4
_NO_ROOM = (
    f"a smaller input leaves no room to downsample while keeping maps of at least "
    f"{MIN_FEATURE_MAP}x{MIN_FEATURE_MAP}; use the cnn family"
)


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
        rows=(
            (1, 16, 1, 1),
            (6, 24, 2, 2),
            (6, 32, 3, 2),
            (6, 64, 4, 2),
            (6, 96, 3, 1),
            (6, 160, 3, 2),
            (6, 320, 1, 1),
        ),
        last_channel=1280,
    ),
}

StageList = list[list[int]]


def _nested(v: Any, what: str) -> Any:
    """Refuse a flat list such as [1, 2, 2]: a choice list of per-stage lists is always nested."""
    if isinstance(v, list) and v and not any(isinstance(x, list) for x in v):
        raise ValueError(
            f"{what} is a list of choices, each a list of per-stage counts: write [{v}] for one fixed "
            f"choice or e.g. [[1, 1, 1], [2, 2, 2]] for several, got {v}"
        )
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


def _stages(trial: TrialLike, name: str, choices: StageList) -> tuple[int, ...]:
    # Optuna's categorical choices must be scalars, so a per-stage list is offered as its label.
    label = knob(trial, name, [stages_label(tuple(c)) for c in choices])
    return tuple(int(x) for x in label.split("-"))


@register_family
class CNNStudents(StudentFamily):
    """The parametric CNN family: three stages of conv-BN-ReLU blocks (32/64/128 channels at width 1.0)."""

    name: ClassVar[str] = "cnn"
    choice_defaults: ClassVar[dict[str, Any]] = {"width": 1.0, "depth": 2, "stage_depths": None, "kernel_size": 3}
    searched_by_default: ClassVar[bool] = True
    min_input: ClassVar[int] = 4
    min_input_why: ClassVar[str] = "its two 2x2 max-pools would shrink a smaller map to nothing"

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
        check_positive(v, "width multiplier", MAX_WIDTH)
        return v

    @field_validator("depth")
    @classmethod
    def _depth(cls, v: IntKnob) -> IntKnob:
        check_positive(v, "depth", MAX_DEPTH)
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
        check_positive(v, "kernel_size", MAX_KERNEL)
        for x in values(v):
            if x % 2 == 0:
                raise ValueError(f"kernel_size must be odd so 'same' padding keeps the map size, got {x}")
        return v

    @model_validator(mode="after")
    def _one_depth(self) -> "CNNStudents":
        if self.stage_depths is not None and "depth" in self.model_fields_set:
            raise ValueError(
                f"give depth (blocks in every stage) or stage_depths (blocks per stage), not both: "
                f"got depth={self.depth} and stage_depths={self.stage_depths}"
            )
        return self

    def sample(self, trial: TrialLike) -> dict[str, Any]:
        width = float(knob(trial, "cnn.width", self.width))
        if self.stage_depths is not None:
            shape: dict[str, Any] = dict(stage_depths=_stages(trial, "cnn.stage_depths", self.stage_depths))
        else:
            shape = dict(depth=int(knob(trial, "cnn.depth", self.depth)))
        return dict(width=width, kernel_size=int(knob(trial, "cnn.kernel_size", self.kernel_size)), **shape)

    @classmethod
    def params(cls, choice: StudentChoice) -> dict[str, Any]:
        out = super().params(choice)
        if choice.stage_depths is not None:
            out.pop("depth")  # a CNN records either its uniform depth or its per-stage depths
        return out

    @classmethod
    def describe(cls, choice: StudentChoice) -> str:
        depth = stages_label(choice.stage_depths) if choice.stage_depths is not None else str(choice.depth)
        kernel = "" if choice.kernel_size == 3 else f" k{choice.kernel_size}"
        return f"cnn w{choice.width:g} d{depth}{kernel}"

    @classmethod
    def build(
        cls, choice: StudentChoice, in_channels: int, num_classes: int, input_hw: tuple[int, int] | None
    ) -> "nn.Module":
        from spaces.students import CNN

        return CNN(
            in_channels,
            num_classes,
            width=choice.width,
            depth=choice.depth,
            kernel_size=choice.kernel_size,
            stage_depths=choice.stage_depths,
        )


@register_family
class MobileNetV2Students(StudentFamily):
    """torchvision's MobileNetV2: width multiplier and a named inverted-residual table."""

    name: ClassVar[str] = "mobilenetv2"
    choice_defaults: ClassVar[dict[str, Any]] = {"width": 1.0, "settings": "compact"}
    min_input: ClassVar[int] = 2 * MIN_FEATURE_MAP
    min_input_why: ClassVar[str] = _NO_ROOM

    width: FloatKnob = [0.35, 0.5, 0.75, 1.0]
    settings: str | list[str] = ["compact", "standard"]
    temperature: FloatKnob = FloatRange(low=2.0, high=6.0)
    alpha: FloatKnob = FloatRange(low=0.5, high=0.9)  # weight of the teacher's soft targets
    epochs: IntKnob = 12
    lr: FloatKnob = 0.003

    @field_validator("width")
    @classmethod
    def _width(cls, v: FloatKnob) -> FloatKnob:
        check_positive(v, "width multiplier", MAX_WIDTH)
        return v

    @field_validator("settings")
    @classmethod
    def _settings(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list) and not v:
            raise ValueError(f"give at least one choice of: {', '.join(MOBILENETV2_SETTINGS)}")
        for name in v if isinstance(v, list) else [v]:
            if name not in MOBILENETV2_SETTINGS:
                raise ValueError(not_allowed(name, MOBILENETV2_SETTINGS))
        return v

    def sample(self, trial: TrialLike) -> dict[str, Any]:
        return dict(
            width=float(knob(trial, "mobilenetv2.width", self.width)),
            settings=str(knob(trial, "mobilenetv2.settings", self.settings)),
        )

    @classmethod
    def describe(cls, choice: StudentChoice) -> str:
        return f"mobilenetv2 w{choice.width:g} {choice.settings}"

    @classmethod
    def build(
        cls, choice: StudentChoice, in_channels: int, num_classes: int, input_hw: tuple[int, int] | None
    ) -> "nn.Module":
        from spaces.students import mobilenet_v2

        return mobilenet_v2(
            in_channels, num_classes, _needs_hw(cls, input_hw), width=choice.width, settings=choice.settings
        )


@register_family
class ResNetStudents(StudentFamily):
    """A ResNet of torchvision's BasicBlocks: blocks per stage, and the first stage's width (x2 per later stage)."""

    name: ClassVar[str] = "resnet"
    choice_defaults: ClassVar[dict[str, Any]] = {"blocks": (1, 1, 1), "base_width": 16}
    min_input: ClassVar[int] = 2 * MIN_FEATURE_MAP
    min_input_why: ClassVar[str] = _NO_ROOM

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
        check_positive(v, "base_width", MAX_BASE_WIDTH)
        return v

    def sample(self, trial: TrialLike) -> dict[str, Any]:
        return dict(
            blocks=_stages(trial, "resnet.blocks", self.blocks),
            base_width=int(knob(trial, "resnet.base_width", self.base_width)),
        )

    @classmethod
    def describe(cls, choice: StudentChoice) -> str:
        return f"resnet b{stages_label(choice.blocks)} w{choice.base_width}"

    @classmethod
    def build(
        cls, choice: StudentChoice, in_channels: int, num_classes: int, input_hw: tuple[int, int] | None
    ) -> "nn.Module":
        from spaces.students import ResNet

        return ResNet(
            in_channels, num_classes, _needs_hw(cls, input_hw), blocks=choice.blocks, base_width=choice.base_width
        )


def _needs_hw(family: type[StudentFamily], input_hw: tuple[int, int] | None) -> tuple[int, int]:
    if input_hw is None:
        raise ValueError(f"a {family.name} student needs input_hw (the task's H, W) to fit its strides to the input")
    return input_hw
