"""`run --dry-run`: what a sweep would do (the resolved file, the space's size, the target checked), writing nothing."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from evaluators.secrets import mask_secrets, masked
from search.config import Experiment
from spaces.plan import sample


@dataclass
class SpaceSize:
    """How many distinct plans the space holds: discrete combinations, and the knobs sampled from a range."""

    discrete_plans: int = 0
    continuous: list[str] = field(default_factory=list)  # knobs drawn from a range (infinitely many values)

    def describe(self) -> str:
        """The size in words."""
        if not self.continuous:
            return f"{self.discrete_plans} distinct plans"
        return (
            f"{self.discrete_plans} discrete combinations, with continuous knobs where they are sampled "
            f"({', '.join(self.continuous)})"
        )


class _Walker:
    """A trial that follows a fixed list of categorical choices and records where the tree branches."""

    def __init__(self, path: list[int]) -> None:
        self.path, self.depth, self.branches = path, 0, []
        self.continuous: set[str] = set()

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        choices = list(choices)
        index = self.path[self.depth] if self.depth < len(self.path) else 0
        self.branches.append(len(choices))
        self.depth += 1
        return choices[index]

    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False) -> float:
        self.continuous.add(name)
        return low

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int:
        self.continuous.add(name)
        return low


def space_size(exp: Experiment, limit: int = 1_000_000) -> SpaceSize:
    """Walk every branch of the conditional space (a knob counts only where it is sampled)."""
    size, stack = SpaceSize(), [[]]
    continuous: set[str] = set()
    while stack and size.discrete_plans < limit:
        path = stack.pop()
        walker = _Walker(path)
        sample(walker, exp.space)
        continuous |= walker.continuous
        if len(walker.branches) > len(path):  # first visit of this prefix's subtree: queue its siblings
            for depth in range(len(path), len(walker.branches)):
                for choice in range(1, walker.branches[depth]):
                    stack.append([*path, *([0] * (depth - len(path))), choice])
        size.discrete_plans += 1
    size.continuous = sorted(continuous)
    return size


def report(exp: Experiment, target_checked: str) -> dict[str, Any]:
    """What `run --dry-run` prints: the experiment as resolved, the space's size, the target, where outputs go (any
    password in a URL masked)."""
    size = space_size(exp)
    return {
        "experiment": masked(exp.model_dump(mode="json")),
        "space": {
            "discrete_plans": size.discrete_plans,
            "continuous_knobs": size.continuous,
            "described": size.describe(),
        },
        "target": target_checked,
        "outputs": str(exp.out.resolve()),
        "storage": mask_secrets(exp.storage_url),
        "tracking_uri": mask_secrets(exp.tracking_uri),
        "budget": exp.search.trials,
    }


def as_text(rep: dict[str, Any]) -> str:
    """The dry-run report for a terminal."""
    return "\n".join(
        [
            "# the experiment as resolved (file, defaults and flags)",
            yaml.safe_dump(rep["experiment"], sort_keys=False).rstrip(),
            f"# space: {rep['space']['described']}; budget {rep['budget']} trials",
            f"# target: {rep['target']}",
            f"# outputs: {rep['outputs']} (study {rep['storage']}, MLflow {rep['tracking_uri']})",
            "# dry run: nothing was started or written",
        ]
    )
