"""Samplers by name: the registry the schema's `search.sampler` is checked against, and how each is built.

Adding a sampler is one class here (or in your own module) registered with `register_sampler`. Optuna is imported
only when a sampler is built, so an experiment file validates without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Protocol

from evaluators.registry import Registry

if TYPE_CHECKING:
    import optuna


class SamplerEntry(Protocol):
    """One sampler: its name in experiment files and how it is built for a sweep of `trials` trials."""

    name: ClassVar[str]

    @staticmethod
    def build(seed: int, trials: int) -> optuna.samplers.BaseSampler:
        """The seeded sampler."""


SAMPLERS: Registry[type[SamplerEntry]] = Registry("search.sampler")
register_sampler = SAMPLERS.register  # usable as a class decorator
check_sampler = SAMPLERS.check  # for the schema: the name, or ValueError naming the allowed ones


def make_sampler(name: str, seed: int, trials: int) -> optuna.samplers.BaseSampler:
    """The named sampler; always explicit, since Optuna 5 changed the multi-objective default."""
    return SAMPLERS.get(name).build(seed, trials)


@register_sampler
class TPE:
    """Optuna's TPE, multivariate over the plan's conditional knobs; its random start-up is a third of the budget,
    between 4 and 10 trials."""

    name = "tpe"

    @staticmethod
    def build(seed: int, trials: int) -> optuna.samplers.BaseSampler:
        import warnings

        import optuna

        # multivariate + group (one model per set of knobs that occur together): on the replayed grid of
        # benchmarks/data/tabular-digits.csv it reached 95% of the front's hypervolume in slightly fewer distinct
        # plans than independent TPE and with a quarter fewer proposals (repeats); docs/BENCHMARKS.md.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(
                seed=seed, n_startup_trials=max(4, min(10, trials // 3)), multivariate=True, group=True
            )


@register_sampler
class NSGAII:
    """Optuna's NSGA-II; a generation is a third of the budget, between 4 and 50 trials."""

    name = "nsgaii"

    @staticmethod
    def build(seed: int, trials: int) -> optuna.samplers.BaseSampler:
        import optuna

        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(50, trials // 3)))


@register_sampler
class Random:
    """Uniform random sampling: the baseline every other sampler is read against."""

    name = "random"

    @staticmethod
    def build(seed: int, trials: int) -> optuna.samplers.BaseSampler:
        import optuna

        return optuna.samplers.RandomSampler(seed=seed)
