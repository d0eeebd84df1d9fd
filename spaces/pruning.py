"""Pruning a model as a PruningChoice says.

Structured pruning removes whole channels with Torch-Pruning, so the model really gets smaller and faster; its
dependency graph keeps residual additions and concatenations consistent. Unstructured pruning zeroes single weights
(torch.nn.utils.prune) and leaves every shape as it was: on a dense runtime such a model is no smaller and no faster,
which is the point of offering it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn
from torch.nn.utils import prune as torch_prune

from evaluators.errors import TrialFailure
from spaces.pruning_knobs import IMPORTANCES, PRUNING_METHODS, PruningChoice, Recover

# Layers whose weights pruning ranks and removes (structured) or zeroes (unstructured).
PRUNABLE = (nn.modules.conv._ConvNd, nn.Linear)


def _layers_in_call_order(model: nn.Module, example_input: torch.Tensor) -> tuple[list[nn.Module], torch.Size]:
    """The conv/linear layers in the order a forward pass calls them, and the output's shape."""
    order: list[nn.Module] = []

    def called(module: nn.Module, _inputs: object, _output: object) -> None:
        if module not in order:
            order.append(module)

    hooks = [m.register_forward_hook(called) for m in model.modules() if isinstance(m, PRUNABLE)]
    try:
        with torch.no_grad():
            shape = model(example_input).shape
    finally:
        for hook in hooks:
            hook.remove()
    if not order:
        raise TrialFailure("Nothing to prune: the model calls no convolution or linear layer.")
    return order, shape


def epochs_per_step(recover_epochs: int, steps: int) -> list[int]:
    """Recovery epochs after each pruning step: recover_epochs split evenly, any remainder to the last steps."""
    base, rest = divmod(recover_epochs, steps)
    return [base + (1 if i >= steps - rest else 0) for i in range(steps)]


def prune(
    model: nn.Module,
    example_input: torch.Tensor,
    choice: PruningChoice,
    *,
    recover: Recover | None = None,
    batch: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> nn.Module:
    """Prune a model in place as `choice` says and return it.

    Recovery: when `recover` is given, prune owns all of it and the caller must not train again for the same
    epochs. Structured: after each of the `steps` steps, recover(model, e) with recover_epochs split across the
    steps (epochs_per_step; a step given 0 epochs is not followed by a call). Unstructured: one call with all
    recover_epochs while the pruning masks are still applied, so the zeroed weights stay zero through training.
    Without `recover`, nothing is trained here (for unstructured pruning, later training revives the zeros).

    `batch` (inputs, class labels) is needed by an importance that ranks by gradients (taylor): a cross-entropy
    backward on it before each step gives the gradients it ranks channels by.
    """
    if choice.ratio == 0:
        return model
    was_training = model.training
    model.eval()  # trace and rank without updating batch-norm statistics
    try:
        order, shape = _layers_in_call_order(model, example_input)
        first_last = [order[0], order[-1]]
        method = PRUNING_METHODS.get(choice.method)
        if method.removes_channels:
            # The last layer's outputs are the task's classes: their channels are never removed.
            protected = first_last if choice.protect_first_last else first_last[1:]
        else:  # zeroing weights changes no shape, so only protect_first_last spares a layer
            protected = first_last if choice.protect_first_last else []
        method.apply(model, example_input, choice, protected, recover, batch)
        model.eval()
        widths = [_out_width(m) for m in model.modules() if isinstance(m, PRUNABLE)]
        if 0 in widths:
            raise TrialFailure(f"Pruning {choice.describe()!r} removed every channel of a layer; lower the ratio.")
        with torch.no_grad():
            after = model(example_input).shape
        if after != shape:
            raise TrialFailure(f"Pruning changed the model's output shape from {tuple(shape)} to {tuple(after)}.")
    finally:
        model.train(was_training)
    return model


def _out_width(m: nn.Module) -> int:
    return m.out_channels if isinstance(m, nn.modules.conv._ConvNd) else m.out_features


def structured(
    model: nn.Module,
    example_input: torch.Tensor,
    choice: PruningChoice,
    protected: list[nn.Module],
    recover: Recover | None,
    batch: tuple[torch.Tensor, torch.Tensor] | None,
) -> None:
    """Remove channels with Torch-Pruning in `choice.steps` steps, recovering between them."""
    importance = IMPORTANCES.get(choice.importance)
    if importance.needs_gradients and batch is None:
        others = ", ".join(i.name for i in IMPORTANCES if not i.needs_gradients)
        raise TrialFailure(
            f"{importance.name} importance ranks channels by gradients and needs a batch (inputs, labels) to "
            f"compute them on; pass batch= to prune(), or choose importance {others}."
        )
    pruner = tp.pruner.BasePruner(  # MagnitudePruner / MetaPruner are deprecated aliases of it in 1.6
        model,
        example_input,
        importance=importance.create(),
        pruning_ratio=choice.ratio,
        iterative_steps=choice.steps,
        round_to=choice.round_to if choice.round_to > 1 else None,
        global_pruning=choice.scope == "global",
        ignored_layers=protected,
    )
    for epochs in epochs_per_step(choice.recover_epochs, choice.steps):
        if batch is not None and importance.needs_gradients:
            _gradients(model, batch)
        pruner.step()
        model.zero_grad(set_to_none=True)  # gradients of the removed channels' shapes must not reach training
        if recover is not None and epochs > 0:
            recover(model, epochs)
            model.eval()


def _gradients(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Fill .grad with the cross-entropy gradients on one batch (eval mode: batch-norm statistics stay)."""
    inputs, labels = batch
    model.eval()
    model.zero_grad(set_to_none=True)
    with torch.enable_grad():
        F.cross_entropy(model(inputs), labels.long()).backward()


def unstructured(model: nn.Module, choice: PruningChoice, protected: list[nn.Module], recover: Recover | None) -> None:
    """Zero the smallest |w| over all unprotected layers together; shapes stay as they were."""
    targets = [(m, "weight") for m in model.modules() if isinstance(m, PRUNABLE) and m not in protected]
    if not targets:
        return
    # Global: the smallest |w| over all layers together, so layers lose different shares.
    torch_prune.global_unstructured(targets, pruning_method=torch_prune.L1Unstructured, amount=choice.ratio)
    if recover is not None and choice.recover_epochs > 0:
        recover(model, choice.recover_epochs)  # the masks still apply: the zeros survive training
    for module, name in targets:
        torch_prune.remove(module, name)  # make the zeros permanent and drop the masks; shapes as before


def sparsity(model: nn.Module) -> float:
    """Share of conv/linear weights that are exactly zero."""
    weights = [m.weight for m in model.modules() if isinstance(m, PRUNABLE)]
    total = sum(w.numel() for w in weights)
    return sum(int((w == 0).sum()) for w in weights) / total if total else 0.0


def channel_count(model: nn.Module) -> int:
    """Total output channels of all Conv2d layers."""
    return sum(m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d))
