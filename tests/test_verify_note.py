"""The sweep's verification says when its side-by-side timing stopped at its time cap before its intervals narrowed:
every member then ties, and the tie rule picks on accuracy, then size, not on speed (retarget says the same)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import small_experiment
from test_openvino import _dense  # IR 8: onnxruntime-openvino 1.24 reads it too
from test_retarget import _finish, _teacher_weights

from evaluators.compare import CompareSettings, Comparison, ModelTiming
from experiments.tasks import load_task
from search.config import load
from search.deliver import deliver
from search.pick import make_policy
from search.study import open_study
from search.tracking import Tracker

# Explicit side-by-side speed-ups over the teacher (never a measured latency): trial 0 is faster by median, trial 1
# more accurate; their intervals overlap, so neither is measurably faster than the other.
INTERVALS = {"0": (1.5, 1.2, 1.8), "1": (1.4, 1.1, 1.7)}
ROUNDS = 7


def _timing(name: str, speedup: float, low: float, high: float) -> ModelTiming:
    p50 = 1.0 / speedup
    return ModelTiming(
        name=name,
        p50_ms=p50,
        p50_ci_low_ms=p50 * 0.9,
        p50_ci_high_ms=p50 * 1.1,
        round_cv=0.2,
        runs=ROUNDS * 10,
        speedup=speedup,
        speedup_ci_low=low,
        speedup_ci_high=high,
        clear_of_one=low > 1.0 or high < 1.0,
        round_p50_ms=(p50,) * ROUNDS,
        round_ci_low=low,
        round_ci_high=high,
    )


def _deliver(tmp_path: Path, *, tight: bool):
    """A finished sweep of two front members, verified by a side-by-side timing that did (or did not) narrow."""
    path = small_experiment(
        tmp_path,
        name="verify-note",
        constraints={"max_accuracy_drop": 100.0},
        pick={"max_accuracy_drop": 100.0, "verify_seconds": 2.0},
    )
    exp = load(path)
    w = _teacher_weights(exp)
    noisy = w + np.random.default_rng(0).normal(scale=0.5 * np.abs(w).mean(), size=w.shape)
    # Trial 0: less accurate, smaller and faster in the sweep; trial 1: the teacher's weights. Both on the front.
    host = _finish(exp, _dense(w), [(_dense(noisy), 0.01), (_dense(w), 0.02)])
    assert host[0] < host[1]
    handed: list[list[str]] = []

    def retime(models: list[bytes], names: list[str], settings: CompareSettings) -> Comparison:
        handed.append(list(names))
        timings = [_timing("teacher", 1.0, 0.9, 1.1)] + [_timing(n, *INTERVALS[n]) for n in names[1:]]
        return Comparison(tuple(timings), ROUNDS, settings.max_seconds, tight, settings.target_rel_ci)

    tracker = Tracker(exp.tracking_uri, exp.name, exp.out / "mlartifacts")
    tracker.start_sweep(path.read_text(), {})
    lines: list[str] = []
    done = deliver(
        exp,
        open_study(exp),
        tracker,
        make_policy(exp.pick),
        retime=retime,
        say=lines.append,
        example=load_task(exp.task).data.x_val[:2],
    )
    assert handed == [["teacher", "0", "1"]]
    return done, json.loads(done.card_path.read_text())


@pytest.mark.parametrize("tight", [False, True])
def test_a_pick_among_ties_says_when_the_verification_stopped_at_its_cap(tmp_path: Path, tight: bool) -> None:
    done, card = _deliver(tmp_path, tight=tight)
    # The decision itself: the members tie, and the more accurate one wins on accuracy.
    assert done.choice.candidate.trial == 1 and done.choice.tied == (0,) and done.choice.won_by == "accuracy"
    capped = f"reached its time cap after {ROUNDS} rounds with intervals wider than ±3%"
    if tight:
        assert "time cap" not in done.choice.why and "time cap" not in card["why"]
        assert card["side_by_side"] == {"rounds": ROUNDS, "intervals_narrowed": True}
        return
    # The pick's line (`picked trial N: <why>`) and the card (whose why the registered version's description
    # carries) say it, with what to do.
    for why in (done.choice.why, card["why"]):
        assert capped in why, why
        assert "members whose intervals overlap count as tied, so the pick may not be the fastest" in why
        assert "pick.verify_seconds" in why and "slimsweep run" in why
    assert card["side_by_side"] == {"rounds": ROUNDS, "intervals_narrowed": False}
