"""The sampler and pick-policy registries: every entry works on a real study, and the schema allows exactly them."""

from __future__ import annotations

import optuna
import pytest

from evaluators.errors import ConfigError
from search.config import parse
from search.pareto import Candidate
from search.pick import PICK_POLICIES, make_policy
from search.samplers import SAMPLERS, make_sampler, register_sampler
from spaces.plan import Space, sample

pytestmark = pytest.mark.fast


@pytest.mark.parametrize("name", SAMPLERS.names())
def test_every_sampler_drives_a_multi_objective_study_over_the_real_space(name):
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"], sampler=make_sampler(name, 0, 6))
    described = set()
    for i in range(6):
        trial = study.ask()
        plan = sample(trial, Space())
        # The plan round-trips through Optuna's params: the same params give the same plan.
        assert sample(optuna.trial.FixedTrial(trial.params), Space()).params() == plan.params()
        described.add(plan.describe())
        study.tell(trial, [float(i), 1.0 / (i + 1), float(i % 3)])
    assert len(study.trials) == 6 and all(t.state.name == "COMPLETE" for t in study.trials)
    assert parse({"name": "x", "search": {"sampler": name}}).search.sampler == name


def test_the_schema_allows_exactly_the_registered_samplers_and_policies():
    with pytest.raises(ConfigError) as caught:
        parse({"name": "x", "search": {"sampler": "tpee"}}, "x.yaml")
    assert str(caught.value) == (
        "x.yaml: search.sampler: 'tpee' is not allowed; choose one of: "
        f"{', '.join(SAMPLERS.names())} (did you mean 'tpe'?)"
    )
    with pytest.raises(ConfigError, match="pick.policy: 'fastest' is not allowed.*fastest_within"):
        parse({"name": "x", "pick": {"policy": "fastest"}})


def test_a_sampler_registered_from_outside_search_is_reachable_from_an_experiment_file():
    @register_sampler
    class QuasiRandom:
        name = "qmc_for_test"

        @staticmethod
        def build(seed: int, trials: int) -> optuna.samplers.BaseSampler:
            return optuna.samplers.QMCSampler(seed=seed, warn_independent_sampling=False)

    try:
        exp = parse({"name": "x", "search": {"sampler": "qmc_for_test"}})
        assert isinstance(make_sampler(exp.search.sampler, 0, 4), optuna.samplers.QMCSampler)
    finally:
        SAMPLERS.unregister("qmc_for_test")


def _candidate(trial: int, accuracy_drop: float, latency: float, size_mb: float = 0.01) -> Candidate:
    return Candidate(
        trial=trial,
        plan=f"plan {trial}",
        accuracy=99.0 - accuracy_drop,
        accuracy_drop=accuracy_drop,
        latency_p50_ms=latency,
        latency_p95_ms=latency,
        size_mb=size_mb,
        params=1.0,
    )


@pytest.mark.parametrize("name", PICK_POLICIES.names())
def test_every_pick_policy_picks_a_front_member_and_says_why(name):
    front = [_candidate(0, 0.0, 1.0), _candidate(1, 0.5, 0.5), _candidate(2, 3.0, 0.1)]
    policy = make_policy(parse({"name": "x", "pick": {"policy": name}}).pick)
    choice = policy.choose(front, teacher_latency_ms=1.0)
    assert choice.candidate in front and choice.why and policy.describe()


def test_fastest_within_is_read_from_the_pick_section():
    front = [_candidate(0, 0.0, 1.0), _candidate(1, 0.5, 0.5), _candidate(2, 3.0, 0.1)]
    loose = make_policy(parse({"name": "x", "pick": {"policy": "fastest_within", "max_accuracy_drop": 5.0}}).pick)
    strict = make_policy(parse({"name": "x", "pick": {"max_accuracy_drop": 1.0}}).pick)
    assert loose.choose(front, 1.0).candidate.trial == 2
    assert strict.choose(front, 1.0).candidate.trial == 1
