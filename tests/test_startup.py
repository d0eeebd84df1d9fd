"""The covering start-up design: every value of every categorical knob is tried among a joint search's first trials."""

from __future__ import annotations

from pathlib import Path

import optuna

from search.config import load
from search.startup import design, enqueue_design
from spaces.plan import sample

JOINT = Path(__file__).resolve().parent.parent / "experiments" / "bench" / "joint.yaml"


def test_design_covers_every_value_including_a_conditional_knob():
    space = load(JOINT).space
    plans = design(space, seed=3)
    seen: dict[str, set] = {}
    for p in plans:
        for k, v in p.items():
            seen.setdefault(k, set()).add(v)
    assert seen["student"] == {"teacher", "cnn"}
    assert seen["cnn.width"] == {0.25, 0.5, 0.75, 1.0}  # asked only for students, still all covered
    assert seen["pruning.ratio"] == {0.0, 0.25, 0.5, 0.75}
    assert seen["quantization.scheme"] == {"fp32", "int8_static_qdq", "int8_static_qoperator", "int8_dynamic"}
    assert len(plans) == len({repr(sorted(p.items())) for p in plans})  # no plan twice


def test_a_fresh_study_asks_the_design_first_and_a_resumed_one_gets_nothing(tmp_path: Path):
    space = load(JOINT).space
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0))
    count = enqueue_design(study, space, seed=0, budget=24)
    assert count == len(design(space, seed=0)[:8])
    asked = []
    for _ in range(count):
        trial = study.ask()
        sample(trial, space)
        asked.append(trial.params)
        study.tell(trial, [0.0, 0.0])
    assert asked == design(space, seed=0)[:count]  # the design's plans, in order, before the sampler's own
    assert enqueue_design(study, space, seed=0, budget=24) == 0
