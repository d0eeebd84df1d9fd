"""retarget's timings on a target: each trained model once (a model the target's runtime refuses is kept aside with
its reason), accuracy from a device agent's outputs, and the side-by-side timing of the members the pick can reach
(search/retarget.py builds the target's front and pick from them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from evaluators.errors import ConfigError, SlimsweepError
from evaluators.latency import TRIAL_TIMING
from evaluators.remote import AgentUnreachable
from evaluators.targets import TargetSpec, settings_for
from search.config import Experiment
from search.deliver import Retime, capped_note, time_with_teacher
from search.pareto import Candidate
from search.station import limited_measure

TEACHER = "teacher"
SIDE = "side_by_side"  # in a target's record: {'p50_ms': name -> p50, 'models': trial -> speed-up over the teacher}


def side_by_side(
    exp: Experiment,
    spec: TargetSpec,
    names: list[str],
    paths: dict[int, Path],
    record: dict[str, Any],
    slug: str,
    retime: Retime,
    compare_seconds: float | None,
    *,
    keep: Callable[[], None],
    say: Callable[[str], None],
) -> None:
    """Time the teacher and the members `names` side by side into record[SIDE], unless the same members were
    before; a timing that ended at its cap before its intervals narrowed is timed again given a larger `--seconds`."""
    if not names:
        return
    prior = record.get(SIDE, {}).get("models", {})
    cap = record.get(SIDE, {}).get("seconds", 0.0)
    again = _loose(record) is not None and compare_seconds is not None and compare_seconds > cap
    if set(prior) == set(names) and not again:
        say(f"the {len(names)} front members the pick can reach were timed side by side on {slug} before")
    else:
        seconds = exp.pick.verify_seconds if compare_seconds is None else compare_seconds
        say(
            f"timing the teacher and the {len(names)} front members the pick can reach side by side on {slug} (up "
            f"to {seconds:g} s)"
        )
        p50s, speedups = time_with_teacher(
            exp,
            {n: paths[int(n)].read_bytes() for n in names},
            retime,
            threads=spec.threads,
            batch=spec.batch_size,
            seconds=seconds,
        )
        # One comparison: its members' intervals go together.
        record[SIDE] = {"p50_ms": p50s, "models": speedups, "seconds": seconds}
        keep()
    rounds = _loose(record)
    if rounds is not None:
        # Overlapping intervals tie: on a busy machine a slow member can then win on accuracy or size.
        remedy = "run retarget again with a larger --seconds, on a quieter machine, to time them side by side again"
        say(capped_note(rounds, f"on {slug}", remedy))


def rounds_and_tight(side: dict[str, dict[str, Any]]) -> tuple[int | None, bool | None]:
    """A side-by-side timing's rounds and whether its intervals narrowed in time (None, None: none was taken)."""
    first = next(iter(side.values()), None)
    return (None, None) if first is None else (first.get("rounds"), first.get("tight"))


def _loose(record: dict[str, Any]) -> int | None:
    """The rounds of a stored side-by-side timing that stopped at its cap before its intervals narrowed, else None."""
    rounds, tight = rounds_and_tight(record.get(SIDE, {}).get("models", {}))
    return None if tight is None or tight else int(rounds or 0)


def time_each(
    exp: Experiment,
    spec: TargetSpec,
    paths: dict[int, Path],
    todo: list[int],
    record: dict[str, Any],
    keep: Callable[[], None] = lambda: None,
) -> None:
    """Time the teacher and the models in `todo` one by one, as a trial is timed (percentiles, throughput), into
    record (`keep` saves it after each, so an interrupted run resumes); what builds the target's front. A model the
    target cannot run goes to record['not_runnable'] with the reason and stays off its front."""
    settings = settings_for(spec, **TRIAL_TIMING)
    models = {str(n): paths[n] for n in todo}
    if TEACHER not in record:  # timed once, as each model is
        models = {TEACHER: exp.out / "teacher.onnx", **models}
    # Tried again on every run (an agent may be back, a runtime upgraded); opening a model that fails is quick.
    failed: dict[str, str] = {}
    for name, path in models.items():
        try:
            stats = limited_measure(spec, path.read_bytes(), settings)
        except (ConfigError, AgentUnreachable):
            raise  # settings that do not fit the target, or an agent gone: every model would fail alike
        except Exception as exc:  # the target's runtime refused this model (an operator or scheme it lacks)
            if name == TEACHER:
                raise SlimsweepError(
                    f"the fp32 teacher cannot run on target {spec.kind!r} ({_reason(exc)}), so no speed-up can be "
                    "taken there; nothing was retargeted"
                ) from exc
            failed[name] = _reason(exc)
            continue
        entry = {**stats.metrics(), "latency_stable": float(stats.stable)}
        if name == TEACHER:
            record[TEACHER] = entry
        else:
            record["models"][name] = entry
        keep()
    record["not_runnable"] = failed


def _reason(exc: BaseException) -> str:
    """An exception as one short line: its type and the first line of its message."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first[:300]}"


def say_not_runnable(
    record: dict[str, Any], slug: str, plans: dict[str, dict[str, Any]], say: Callable[[str], None]
) -> None:
    """One line per reason naming the models the target could not run and their quantization schemes (a runtime
    often refuses a scheme's operators); they are left off its front."""
    by_reason: dict[str, list[str]] = {}
    for name, reason in sorted(record.get("not_runnable", {}).items(), key=lambda kv: int(kv[0])):
        by_reason.setdefault(reason, []).append(name)
    for reason, names in by_reason.items():
        schemes = sorted({str(plans.get(n, {}).get("quantization.scheme", "?")) for n in names})
        say(
            f"{len(names)} trained model(s) could not run on {slug} and are left off its front (trials "
            f"{', '.join(names)}; scheme {', '.join(schemes)}): {reason}"
        )


def score_on_device(
    exp: Experiment,
    spec: TargetSpec,
    paths: dict[int, Path],
    models: list[Candidate],
    record: dict[str, Any],
    say: Callable[[str], None],
) -> None:
    """Each model's accuracy from the outputs the device's runtime gives for the validation inputs (the labels stay
    here); kept in record['device_accuracy']."""
    from evaluators.remote import AgentClient
    from experiments.tasks import load_task

    scored = record.setdefault("device_accuracy", {})
    todo = [str(c.trial) for c in models if str(c.trial) not in scored]
    if TEACHER not in scored:
        todo.insert(0, TEACHER)
    if not todo:
        return
    data = load_task(exp.task).data
    client = AgentClient(spec.url, spec.token)
    say(f"scoring {len(todo)} models on the device ({len(data.x_val)} validation inputs each; labels stay here)")
    for name in todo:
        model = (exp.out / "teacher.onnx" if name == TEACHER else paths[int(name)]).read_bytes()
        logits = client.outputs(model, data.x_val, threads=spec.threads, rows=_rows(data.num_classes))
        if len(logits) != len(data.y_val):
            raise SlimsweepError(f"the device returned {len(logits)} outputs for {len(data.y_val)} inputs")
        scored[name] = float(100.0 * np.mean(logits.argmax(axis=1) == np.asarray(data.y_val)))


def _rows(classes: int) -> int:
    """Rows per outputs request: as many as keep one answer well under the agent's reply limit."""
    return int(max(1, min(256, 500_000 // (4 * max(classes, 1)))))
