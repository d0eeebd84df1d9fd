"""The built-in pruning methods (structured, unstructured) and channel importances (l1, l2, taylor, bn_scale,
random), each one class registered by name. Their torch half is spaces/pruning.py, imported only when a trial prunes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from spaces.knobs import TrialLike, knob
from spaces.pruning_knobs import (
    Importance,
    PruningChoice,
    PruningMethod,
    PruningSpace,
    Recover,
    register_importance,
    register_method,
)

if TYPE_CHECKING:
    import torch
    import torch_pruning as tp
    from torch import nn


@register_method
class Structured(PruningMethod):
    """Removes whole channels with Torch-Pruning, ranked by an importance, so the model gets smaller and faster."""

    name: ClassVar[str] = "structured"
    removes_channels: ClassVar[bool] = True

    @classmethod
    def sample(cls, trial: TrialLike, space: PruningSpace) -> dict[str, Any]:
        return dict(
            importance=str(knob(trial, "pruning.importance", space.importance)),
            scope=str(knob(trial, "pruning.scope", space.scope)),
            steps=int(knob(trial, "pruning.steps", space.steps)),
            round_to=int(knob(trial, "pruning.round_to", space.round_to)),
        )

    @classmethod
    def params(cls, choice: PruningChoice) -> dict[str, Any]:
        return dict(importance=choice.importance, scope=choice.scope, steps=choice.steps, round_to=choice.round_to)

    @classmethod
    def describe(cls, choice: PruningChoice) -> list[str]:
        return [
            word
            for word, shown in (
                (choice.importance, choice.importance != "l2"),
                (choice.scope, choice.scope != "uniform"),
                (f"{choice.steps} steps", choice.steps > 1),
            )
            if shown
        ]

    @classmethod
    def weights_decide_structure(cls, choice: PruningChoice) -> bool:
        return choice.scope == "global"  # per-layer widths follow the trained weights' magnitudes

    @classmethod
    def apply(
        cls,
        model: "nn.Module",
        example_input: "torch.Tensor",
        choice: PruningChoice,
        protected: list["nn.Module"],
        recover: Recover | None,
        batch: tuple["torch.Tensor", "torch.Tensor"] | None,
    ) -> None:
        from spaces.pruning import structured

        structured(model, example_input, choice, protected, recover, batch)


@register_method
class Unstructured(PruningMethod):
    """Zeroes the smallest weights and keeps every shape: on a dense runtime, no smaller and no faster."""

    name: ClassVar[str] = "unstructured"

    @classmethod
    def apply(
        cls,
        model: "nn.Module",
        example_input: "torch.Tensor",
        choice: PruningChoice,
        protected: list["nn.Module"],
        recover: Recover | None,
        batch: tuple["torch.Tensor", "torch.Tensor"] | None,
    ) -> None:
        from spaces.pruning import unstructured

        unstructured(model, choice, protected, recover)


@register_importance
class L1(Importance):
    """The L1 norm of each channel group's weights."""

    name: ClassVar[str] = "l1"

    @classmethod
    def create(cls) -> "tp.importance.Importance":
        import torch_pruning as tp

        return tp.importance.GroupMagnitudeImportance(p=1)


@register_importance
class L2(Importance):
    """The L2 norm of each channel group's weights."""

    name: ClassVar[str] = "l2"

    @classmethod
    def create(cls) -> "tp.importance.Importance":
        import torch_pruning as tp

        return tp.importance.GroupMagnitudeImportance(p=2)


@register_importance
class Taylor(Importance):
    """|weight x gradient| of each channel group: what removing it would cost the loss, to first order."""

    name: ClassVar[str] = "taylor"
    needs_gradients: ClassVar[bool] = True

    @classmethod
    def create(cls) -> "tp.importance.Importance":
        import torch_pruning as tp

        return tp.importance.GroupTaylorImportance()


@register_importance
class BNScale(Importance):
    """The batch-norm scale of each channel; only groups that contain a BatchNorm are ranked (and so pruned)."""

    name: ClassVar[str] = "bn_scale"

    @classmethod
    def create(cls) -> "tp.importance.Importance":
        import torch_pruning as tp

        return tp.importance.BNScaleImportance()


@register_importance
class Random(Importance):
    """A random ranking: the baseline every other importance should beat."""

    name: ClassVar[str] = "random"

    @classmethod
    def create(cls) -> "tp.importance.Importance":
        import torch_pruning as tp

        return tp.importance.RandomImportance()
