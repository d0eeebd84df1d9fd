"""The properties every registry entry must keep, one check per extension point, shipped in the package so that an
extension's own tests run the same suite (as optuna.testing and sklearn.utils.estimator_checks do):

    from search.conformance import check_quantization, check_target
    check_target("my_npu")                      # in the extension's own pytest suite

Student families, pruning methods x importances and quantization schemes: reachable from an experiment file
(search.config.parse), sampled by a real Optuna trial, the plan round-trips through the trial's params
(optuna.trial.FixedTrial) with the same describe(), and the model it gives passes the ONNX checker, runs on ONNX
Runtime and keeps its output shape (digits: 8x8 inputs, 10 classes). Targets: reachable from an experiment file,
capability flags of the right types, and either a check() that passes and a measurement with ordered percentiles
under the target's own threads and batch, or a check() that fails at once naming the kind. Pick policies: reachable
from the `pick:` section (with their own settings), and they pick a member of the front with a reason.

Heavy libraries (torch, Optuna, ONNX Runtime) are imported by the checks that need them, not by this module.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from evaluators.errors import SlimsweepError
from search.config import parse

if TYPE_CHECKING:
    import numpy as np
    import torch

    from search.pareto import Candidate
    from spaces.plan import CompressionPlan, Space

INPUT = (1, 8, 8)  # digits
CLASSES = 10
NO_STUDENT = {"teacher": False, "cnn": None}  # only the family a check names (cnn is searched by default)
QUICK_TIMING = {"warmup": 2, "min_repeats": 5, "max_seconds": 0.2}  # a conformance timing, not a benchmark


def space_naming(section: dict[str, Any]) -> Space:
    """The space of an experiment file whose `space:` is `section` (validated as the CLI validates it)."""
    return parse({"name": "conformance", "space": section}).space


def sample_and_round_trip(space: Space, trials: int = 8) -> list[CompressionPlan]:
    """Plans sampled by a real Optuna study; each is sampled again, equal, from its trial's params alone."""
    import optuna

    from spaces.plan import sample

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    plans = []
    for _ in range(trials):
        trial = study.ask()
        plan = sample(trial, space)
        again = sample(optuna.trial.FixedTrial(trial.params), space)
        assert again == plan, (trial.params, plan, again)
        assert again.describe() == plan.describe() and plan.describe()
        assert set(again.params()) == set(plan.params())
        study.tell(trial, 0.0)
        plans.append(plan)
    return plans


def runs_and_keeps_its_output(model: bytes, batch: int = 3) -> None:
    """The ONNX checker accepts it and ONNX Runtime runs it with the output shape (batch, classes)."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    onnx.checker.check_model(onnx.load_model_from_string(model))
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((batch, *INPUT), dtype=np.float32)
    (logits,) = session.run(None, {session.get_inputs()[0].name: x})
    assert logits.shape == (batch, CLASSES)
    assert np.isfinite(logits).all()


def example() -> torch.Tensor:
    """One random digits-shaped input."""
    import torch

    return torch.rand(1, *INPUT)


def _small_cnn() -> Any:
    from spaces.student_knobs import StudentChoice
    from spaces.students import build

    return build(StudentChoice("cnn", width=0.25, depth=1), None, INPUT[0], CLASSES, INPUT[1:]).eval()


def check_student_family(name: str) -> None:
    """A registered family: reachable, sampled, round-tripped, built, exported, run."""
    import torch

    from spaces.export import to_onnx
    from spaces.student_knobs import STUDENT_FAMILIES
    from spaces.students import build

    family = STUDENT_FAMILIES.get(name)
    space = space_naming(
        {
            "students": {**NO_STUDENT, name: {"epochs": 1}},
            "pruning": {"ratio": 0.0},
            "quantization": {"schemes": ["fp32"]},
        }
    )
    assert space.students.kinds() == [name]
    plans = sample_and_round_trip(space)
    assert {p.student.kind for p in plans} == {name}
    assert all(set(p.student.params()) >= {"student.kind", "student.epochs"} for p in plans)
    assert family.suits(INPUT) is None
    for plan in {p.student: p for p in plans}.values():
        torch.manual_seed(0)
        model = build(plan.student, None, INPUT[0], CLASSES, INPUT[1:]).eval()
        runs_and_keeps_its_output(to_onnx(model, example()))


def check_pruning(method: str, importance: str, options: dict[str, Any] | None = None) -> None:
    """A registered pruning method with a registered importance, and its own options section if given: reachable,
    sampled, round-tripped (its options in the plan's params), applied, run."""
    import torch

    from spaces.export import to_onnx
    from spaces.pruning import prune
    from spaces.pruning_knobs import PRUNING_METHODS

    section: dict[str, Any] = {"ratio": [0.5], "method": method, "importance": importance, "recover_epochs": 0}
    if options is not None:
        section[method] = options
    space = space_naming({"pruning": section})
    plans = sample_and_round_trip(space, trials=4)
    owned = list(PRUNING_METHODS.get(method).model_fields)
    for plan in plans:
        choice = plan.pruning
        assert (choice.method, choice.ratio) == (method, 0.5)
        assert [k for k, _ in choice.options] == owned
        assert {f"pruning.{k}" for k in owned} <= set(choice.params())
        if choice.structured:
            assert choice.importance == importance
    batch = (torch.rand(16, *INPUT), torch.randint(0, CLASSES, (16,)))
    for choice in {p.pruning: p for p in plans}:
        torch.manual_seed(0)
        model = _small_cnn()
        prune(model, example(), choice, batch=batch)
        runs_and_keeps_its_output(to_onnx(model, example()))


def check_quantization(
    scheme: str, calibration: np.ndarray, float_model: bytes, options: dict[str, Any] | None = None
) -> None:
    """A registered scheme, with its own options section if given: reachable, sampled, round-tripped (its options
    in the plan's params and only in trials that chose it), applied to a small float model, run."""
    from spaces.quantization import quantize
    from spaces.quantization_knobs import SCHEMES

    section: dict[str, Any] = {"schemes": [scheme]}
    if options is not None:
        section[scheme] = options
    space = space_naming({"quantization": section})
    plans = sample_and_round_trip(space, trials=4)
    owned = list(SCHEMES.get(scheme).model_fields)
    for plan in plans:
        choice = plan.quantization
        assert choice.scheme == scheme
        assert [k for k, _ in choice.options] == owned
        assert {f"quantization.{k}" for k in owned} <= set(choice.params())
    for choice in {p.quantization: p for p in plans}:
        runs_and_keeps_its_output(quantize(float_model, choice, calibration))


def small_float_model() -> bytes:
    """An untrained small CNN student, exported: what every scheme's check quantizes."""
    import torch

    from spaces.export import to_onnx

    torch.manual_seed(0)
    return to_onnx(_small_cnn(), example())


def check_target(kind: str, **fields: Any) -> None:
    """A registered target kind, with the experiment file's other target fields (url, token_file, threads, ...):
    reachable from an experiment file, its flags booleans (runtime_build a package name or None), and either it
    runs here (check() passes; a measurement has ordered percentiles, the target's threads and batch are its own,
    and describe() is JSON) or check() fails before any work with a SlimsweepError naming the kind."""
    from evaluators.errors import ConfigError
    from evaluators.targets import TARGETS, Target, make_target, settings_for

    section = parse({"name": "conformance", "target": {"kind": kind, **fields}}).target
    assert section.kind == kind
    cls = TARGETS.get(kind)
    assert issubclass(cls, Target) and cls.kind == kind
    for flag in ("uses_gpu", "times_on_local_cpu", "takes_url"):
        assert isinstance(getattr(cls, flag), bool), (kind, flag)
    assert cls.runtime_build is None or isinstance(cls.runtime_build, str)
    spec = section.spec()
    target = make_target(spec)
    assert target.local_cpu() == cls.times_on_local_cpu
    try:
        target.check()
    except SlimsweepError as exc:
        assert repr(kind) in str(exc), f"target {kind!r}: check() failed without naming the kind: {exc}"
        return
    described = target.describe()
    json.dumps(described)
    assert (described["kind"], described["threads"], described["batch_size"]) == (kind, spec.threads, spec.batch_size)
    stats = target.measure(_tiny_model(), settings_for(spec, **QUICK_TIMING))
    assert 0 < stats.p50_ms <= stats.p90_ms <= stats.p95_ms <= stats.p99_ms
    from evaluators.latency import TimingSettings

    other = TimingSettings(threads=spec.threads + 1, batch_size=spec.batch_size, **QUICK_TIMING)
    try:
        target.measure(_tiny_model(), other)
    except ConfigError:
        pass  # a timing taken with other threads would be filed under this target wrongly
    else:
        raise AssertionError(f"target {kind!r} measured with threads {other.threads}, not its own {spec.threads}")


def _tiny_model() -> bytes:
    """Y = X + X over a symbolic batch: any target times it at its own batch size."""
    import onnx

    x = onnx.helper.make_tensor_value_info("X", onnx.TensorProto.FLOAT, ["batch", 4])
    y = onnx.helper.make_tensor_value_info("Y", onnx.TensorProto.FLOAT, ["batch", 4])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Add", ["X", "X"], ["Y"])], "conformance", [x], [y])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)])
    model.ir_version = 8  # readable by every ONNX Runtime this project supports
    return model.SerializeToString()


def check_pick_policy(name: str, settings: dict[str, Any] | None = None) -> None:
    """A registered pick policy, with its own settings section if given: reachable from the `pick:` section, picks
    a member of a small front with a reason, and describes itself."""
    from search.pick import choose, make_policy

    section: dict[str, Any] = {"policy": name}
    if settings is not None:
        section[name] = settings
    pick = parse({"name": "conformance", "pick": section}).pick
    assert pick.policy == name
    policy = make_policy(pick)
    assert policy.describe()
    front = [_candidate(0, 0.0, 1.0, 0.04), _candidate(1, 0.5, 0.5, 0.02), _candidate(2, 3.0, 0.1, 0.01)]
    choice = choose(front, policy, teacher_latency_ms=1.0)
    assert choice.candidate in front and choice.why
    assert all(t in {c.trial for c in front} for t in choice.tied)


def _candidate(trial: int, accuracy_drop: float, latency: float, size_mb: float) -> Candidate:
    from search.pareto import Candidate

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
