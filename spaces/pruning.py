"""Structured pruning: remove whole channels with Torch-Pruning so the model really gets smaller and faster."""

from __future__ import annotations

import torch
import torch_pruning as tp
from torch import nn

from evaluators.errors import ConfigError

IMPORTANCES: dict[str, int] = {"l1": 1, "l2": 2}  # name -> norm degree of the group magnitude


def prune_channels(
    model: nn.Module,
    example_input: torch.Tensor,
    ratio: float,
    *,
    round_to: int = 8,
    importance: str = "l2",
) -> nn.Module:
    """Remove `ratio` of the prunable channels (structured), keeping widths multiples of round_to; returns the same, now smaller, model."""
    if importance not in IMPORTANCES:
        raise ConfigError(
            f"Unknown pruning importance {importance!r}; valid importances are: {', '.join(IMPORTANCES)}."
        )
    if not 0.0 <= ratio < 1.0:
        raise ConfigError(f"Pruning ratio {ratio!r} is out of range; it must be in [0, 1).")
    if ratio == 0:
        return model

    was_training = model.training
    model.eval()  # trace without updating batch-norm statistics
    with torch.no_grad():
        output_size = model(example_input).shape[-1]
    # The classifier's outputs are the task's classes: they must never be removed.
    classifier = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == output_size]
    pruner = tp.pruner.BasePruner(  # MagnitudePruner / MetaPruner are deprecated aliases of it in 1.6
        model,
        example_input,
        importance=tp.importance.GroupMagnitudeImportance(p=IMPORTANCES[importance]),
        pruning_ratio=ratio,
        round_to=round_to,
        global_pruning=False,
        ignored_layers=classifier,
    )
    pruner.step()
    model.train(was_training)
    return model


def channel_count(model: nn.Module) -> int:
    """Total output channels of all Conv2d layers."""
    return sum(m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d))
