"""One trial, as a worker runs it: build, distill, prune, export, quantize, measure. Holds no driver state."""

from __future__ import annotations

import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import onnx
import torch

from evaluators.accuracy import accuracy
from evaluators.errors import TrialFailure
from evaluators.latency import LatencyStats, TimingSettings
from evaluators.size import size_mb
from experiments.tasks import TaskData
from experiments.teacher import cache_dir, teacher_from_bytes
from search import students
from search.gate import Bar
from search.record import TrialInfo
from spaces.export import to_onnx
from spaces.knobs import Fixed
from spaces.plan import CompressionPlan
from spaces.pruning import channel_count, prune, sparsity
from spaces.quantization import quantize
from spaces.quantization_knobs import SCHEME_KNOB, QuantizationChoice, QuantizationSpace, sample_quantization
from spaces.students import Distillation, build, parameter_count, train


def _sensitivity_cache() -> Path:
    """Where per-layer quantization sensitivity rankings are kept, so a model is ranked once across trials."""
    return cache_dir() / "quant-sensitivity"


# Recovery after pruning distils with these when the student itself was not distilled (the teacher itself).
RECOVERY_TEMPERATURE, RECOVERY_ALPHA, RECOVERY_LR = 4.0, 0.7, 0.003


@dataclass(frozen=True)
class TrialContext:
    """What every trial of a sweep shares; put in Ray's object store once."""

    data: TaskData
    teacher_blob: bytes | None  # experiments.teacher.teacher_to_bytes(teacher); None for an ONNX-only task
    timing: TimingSettings
    seed: int = 0
    train_threads: int = 1
    max_latency_ms: float | None = None  # a latency budget: structures over it are not trained (latency first)
    onnx_model: bytes | None = None  # an ONNX-only task's model: trials only quantize it
    # Measure the models a trial makes on its way when the space holds their plans too: the trained student before
    # pruning (ratio 0 is a choice) and the pruned model before quantization (fp32 is a choice).
    measure_unpruned: bool = False
    measure_fp32: bool = False
    # And the trained model in the space's other schemes: the quantization space (None where
    # space.quantization.on_the_way is off), which rebuilds each scheme's options from the trial's own knobs, as
    # search/ontheway.py draws its plan.
    quantization: QuantizationSpace | None = None
    # Cheap-then-full: cumulative training epochs (distillation and pruning's recovery together, ascending; a rung
    # below 1 is that share of the plan's epochs) after which a trial reports its accuracy so far to the driver,
    # which may stop it there. Empty: no reports.
    rungs: tuple[float, ...] = ()
    # space.pruning.from_trained: the folder trained students are kept in (search/students.py) and the tag of what
    # they are trained from (teacher and data); None: every plan trains its own student.
    students_dir: str | None = None
    students_tag: str = ""

    def teacher(self) -> torch.nn.Module:
        """A fresh copy of the teacher (any module: trained CNN, checkpoint, plugin's)."""
        if self.teacher_blob is None:
            raise TrialFailure("an ONNX-only task has no PyTorch teacher")
        return teacher_from_bytes(self.teacher_blob)


@dataclass
class MadeOnTheWay:
    """A model a trial made on its way to its plan's own, measured as a candidate: the plan with `ratio` and
    `scheme` changed (ratio 0: the trained student before pruning; fp32: the pruned model before quantization)."""

    ratio: float
    scheme: str
    metrics: dict[str, float]
    onnx: bytes
    info: TrialInfo = field(default_factory=TrialInfo)  # a dict is accepted and converted

    def __post_init__(self) -> None:
        if not isinstance(self.info, TrialInfo):
            self.info = TrialInfo.from_dict(self.info)


@dataclass
class TrialResult:
    """What a worker hands back: metrics and the deployable ONNX bytes, or the reason it failed."""

    number: int
    metrics: dict[str, float] = field(default_factory=dict)
    onnx: bytes | None = None
    stages: dict[str, float] = field(default_factory=dict)  # seconds spent in each stage
    error: str | None = None
    traceback: str | None = None
    info: TrialInfo = field(default_factory=TrialInfo)  # how it ran; a dict is accepted and converted
    on_the_way: list[MadeOnTheWay] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not isinstance(self.info, TrialInfo):
            self.info = TrialInfo.from_dict(self.info)

    @property
    def ok(self) -> bool:
        """Whether the trial produced a candidate."""
        return self.error is None


@contextmanager
def _stage(stages: dict[str, float], name: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        # Summed: a stage entered more than once in a trial (a model made on its way each time) keeps its total.
        stages[name] = round(stages.get(name, 0.0) + time.perf_counter() - start, 4)


# Times one ONNX model on the sweep's target: (statistics, whether they came from the latency cache).
TimeModel = Callable[[bytes], tuple[LatencyStats, bool]]
# Reports one rung's figures to the driver: report(rung index, metrics); False means "stop at this rung".
ReportRung = Callable[[int, dict[str, float]], bool]


class _StoppedAtRung(Exception):
    """Raised from inside training when the driver answered a rung's report with "stop"."""

    def __init__(self, rung: int, epochs: int, accuracy: float) -> None:
        super().__init__(f"stopped at rung {rung} after {epochs} epochs")
        self.rung, self.epochs, self.accuracy = rung, epochs, accuracy


def epochs_planned(plan: CompressionPlan) -> int:
    """The training epochs a plan asks for: its student's distillation and pruning's recovery together."""
    distill = plan.student.epochs if plan.student.distilled else 0
    recover = plan.pruning.recover_epochs if plan.pruning.ratio > 0 else 0
    return distill + recover


def torch_accuracy(model: torch.nn.Module, x: np.ndarray, y: np.ndarray, batch_size: int = 512) -> float:
    """Top-1 accuracy in percent of a PyTorch classifier, in eval mode; its train/eval mode is left as it was."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            xs = torch.from_numpy(x)
            right = sum(
                int((model(xs[i : i + batch_size]).argmax(dim=1).numpy() == y[i : i + batch_size]).sum())
                for i in range(0, len(xs), batch_size)
            )
    finally:
        model.train(was_training)
    return 100.0 * right / len(y) if len(y) else 0.0


def rung_epochs(rungs: tuple[float, ...], planned: int) -> tuple[int, ...]:
    """Each rung's epoch in a training of `planned` epochs: a rung below 1 is that share of them (at least one), a
    rung of 1 or more an epoch count."""
    return tuple(max(1, round(r * planned)) if r < 1 else int(r) for r in rungs)


@dataclass
class _Epochs:
    """Counts a trial's training epochs across distillation and recovery, and reports at its rungs."""

    rungs: tuple[float, ...]
    planned: int
    report: ReportRung | None
    data: TaskData
    figures: dict[str, float] = field(default_factory=dict)  # the structure's latency_p50_ms, size_mb if faithful
    params: int = 0  # the plan's structure's weights (the probe's, else the student's as built)
    done: int = 0

    def __post_init__(self) -> None:
        self.at = rung_epochs(self.rungs, self.planned)

    def replan(self, planned: int) -> int:
        """The plan's epochs changed before any was trained (a saved student it could not use); the new count."""
        self.planned, self.at = planned, rung_epochs(self.rungs, planned)
        return planned

    def reports(self) -> bool:
        """Whether any rung falls inside the plan's training (the last epoch is the plan's end, not a rung)."""
        return self.report is not None and any(r < self.planned for r in self.at)

    def epoch(self, model: torch.nn.Module) -> None:
        """One more epoch done; at a rung, report and raise _StoppedAtRung when the driver says stop."""
        self.done += 1
        if self.report is None or self.done not in self.at or self.done >= self.planned:
            return
        rung = self.at.index(self.done)
        acc = torch_accuracy(model, self.data.x_val, self.data.y_val)  # no_grad, eval: training goes on unchanged
        metrics = {"accuracy": acc, "epochs": float(self.done), "epochs_planned": float(self.planned)}
        if not self.report(rung, {**metrics, **self.figures}):
            raise _StoppedAtRung(rung, self.done, acc)


def run_trial(
    number: int,
    plan: CompressionPlan,
    ctx: TrialContext,
    time_model: TimeModel,
    bar: Bar | Callable[[], Bar] | None = None,
    report: ReportRung | None = None,
) -> TrialResult:
    """Apply a plan to the teacher and measure the result; every exception becomes a failed result. With a `bar`
    (or a call that gives the newest one when the structure is compared), a plan whose untrained structure is
    slower and larger than one of its members stops before training. With
    `report` and ctx.rungs, the trial reports after each rung and ends there, unexported, when told to stop."""
    torch.set_num_threads(ctx.train_threads)  # one core per trial: parallel trials must not fight over cores
    torch.manual_seed(ctx.seed + number)
    result = TrialResult(number=number)
    try:
        _run(plan, ctx, result, time_model, bar or Bar(), report)
    except Exception as exc:  # noqa: BLE001 - a failing trial is a result, not a crash of the sweep
        # The station's errors (a model over its memory cap or past its deadline) come back wrapped by Ray, whose
        # text holds the station's whole traceback: the error names the station's own exception.
        cause = getattr(exc, "cause", None)
        shown = cause if isinstance(cause, Exception) else exc
        result.error = f"{type(shown).__name__}: {shown}"
        result.traceback = traceback.format_exc()
    return result


def _structure(
    plan: CompressionPlan, ctx: TrialContext, teacher: torch.nn.Module, example: torch.Tensor
) -> tuple[bytes, int]:
    """The plan's deployable graph before any training (same shapes and scheme, so the same latency), and its size."""
    data = ctx.data
    model = build(plan.student, teacher, data.input_shape[0], data.num_classes, tuple(data.input_shape[1:]))
    if plan.pruning.ratio > 0:
        prune(model, example, plan.pruning, batch=_batch(data))
    deployed = quantize(to_onnx(model.eval(), example), plan.quantization, data.x_calib, cache_dir=_sensitivity_cache())
    return deployed, parameter_count(model)


def _probe_is_faithful(plan: CompressionPlan) -> bool:
    """Whether the untrained structure has the trained model's graph: the plan's choices say whether trained
    weights decide the shapes (global pruning) or which layers stay float (a sensitivity ranking)."""
    return not plan.weights_decide_structure()


def _batch(data: TaskData, n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """A labelled batch for gradient-based pruning importance (Taylor)."""
    return torch.from_numpy(data.x_train[:n]), torch.from_numpy(data.y_train[:n])


def _run_onnx(plan: CompressionPlan, ctx: TrialContext, result: TrialResult, time_model: TimeModel) -> None:
    """An ONNX-only task: the user's model quantized by the plan's scheme, then measured."""
    data, stages = ctx.data, result.stages
    with _stage(stages, "quantize"):
        deployed = quantize(ctx.onnx_model, plan.quantization, data.x_calib, cache_dir=_sensitivity_cache())
    with _stage(stages, "latency"):
        latency, hit = time_model(deployed)
    result.info.skipped_training, result.info.latency_cache = False, _cache(hit)
    result.onnx = deployed
    with _stage(stages, "accuracy"):
        result.metrics = _metrics(deployed, latency, data, onnx_parameter_count(ctx.onnx_model))


def onnx_parameter_count(model: bytes) -> int:
    """Weights in an ONNX graph: the elements of its initializers."""
    return sum(int(np.prod(t.dims)) for t in onnx.load_model_from_string(model).graph.initializer)


def _run(
    plan: CompressionPlan,
    ctx: TrialContext,
    result: TrialResult,
    time_model: TimeModel,
    bar: Bar | Callable[[], Bar],
    report: ReportRung | None = None,
) -> None:
    if ctx.onnx_model is not None:
        return _run_onnx(plan, ctx, result, time_model)
    data = ctx.data
    trained = _trained_student(plan, ctx)
    planned = epochs_planned(plan) - (plan.student.epochs if trained is not None else 0)
    epochs = _Epochs(tuple(ctx.rungs), planned, report, data)
    result.info.epochs_planned, result.info.epochs_used = epochs.planned, 0
    try:
        _train_and_measure(plan, ctx, result, time_model, bar, epochs, trained)
    except _StoppedAtRung as stop:
        # The driver stopped the plan at a rung: its accuracy so far and its structure's figures are its record;
        # nothing is exported or quantized.
        result.info.stopped_at_rung, result.info.epochs_used = stop.rung, stop.epochs
        result.info.skipped_training = False
        result.metrics = {"accuracy_so_far": stop.accuracy, **epochs.figures, "params": float(epochs.params)}
        result.onnx = None
    except Exception:
        result.info.epochs_used = epochs.done  # a plan that fails mid-training still spent those epochs
        raise


def _trained_student(plan: CompressionPlan, ctx: TrialContext) -> students.Saved | None:
    """The student this pruning plan may start from (space.pruning.from_trained), if a trial trained it already."""
    if ctx.students_dir is None or plan.pruning.ratio <= 0 or not plan.student.distilled:
        return None
    return students.load(Path(ctx.students_dir), students.key(plan.student, ctx.students_tag))


def _train_and_measure(
    plan: CompressionPlan,
    ctx: TrialContext,
    result: TrialResult,
    time_model: TimeModel,
    bar: Bar | Callable[[], Bar],
    epochs: _Epochs,
    trained: students.Saved | None = None,
) -> None:
    data, stages = ctx.data, result.stages
    teacher = ctx.teacher()
    example = torch.from_numpy(data.x_val[:1])
    s = plan.student
    if (ctx.max_latency_ms is not None or bar or epochs.reports()) and _probe_is_faithful(plan):
        with _stage(stages, "latency_first"), torch.random.fork_rng(devices=[]):
            # Its own random numbers: the student trains the same whether or not its structure was probed first.
            probe, params = _structure(plan, ctx, teacher, example)
            if callable(bar) and hasattr(bar, "ask"):
                bar.ask()  # the newest bar travels while the structure is timed (search/rungboard.py NewestBar)
            latency, hit = time_model(probe)
        result.info.latency_cache = _cache(hit)
        if ctx.max_latency_ms is not None and latency.p50_ms > ctx.max_latency_ms:
            # Already over budget untrained: training cannot make it faster, so stop here, infeasible.
            result.info.skipped_training = True
            result.onnx = probe
            result.metrics = _metrics(probe, latency, data, params)
            return
        probe_mb = size_mb(probe)
        # A report at a rung carries them: the deployed graph's figures are known before training.
        epochs.figures, epochs.params = {"latency_p50_ms": latency.p50_ms, "size_mb": probe_mb}, params
        dominator = (bar() if callable(bar) else bar).dominator(latency.p50_ms, probe_mb)
        if dominator is not None:
            # Slower and larger than a model already at the top of the accuracy range: off the front whatever
            # training gives it. Its structure's figures are kept; it has no accuracy.
            result.info.skipped_training = True
            result.info.dominated_by = dominator.number
            result.metrics = {"size_mb": probe_mb, "params": float(params), **latency.metrics()}
            return
    with _stage(stages, "distill"):
        student = build(s, teacher, data.input_shape[0], data.num_classes, tuple(data.input_shape[1:]))
        if not epochs.figures:  # no faithful probe: a stop at a rung names the student's own weights
            epochs.params = parameter_count(student)
        if trained is not None and students.restore(student, trained):
            # Pruned from a student a trial trained already. Its models before pruning are measured below all the
            # same: that trial may have failed after saving it, and the driver records a plan only once.
            result.info.student_from = trained.trial
        elif s.distilled:
            if trained is not None:  # its weights did not fit the student: trained here after all, and counted
                result.info.epochs_planned = epochs.replan(epochs_planned(plan))
            d = Distillation(epochs=s.epochs, lr=s.lr, temperature=s.temperature, alpha=s.alpha, seed=ctx.seed)
            train(student, data.x_train, data.y_train, d, teacher=teacher, on_epoch=lambda *_: epochs.epoch(student))
            if ctx.students_dir is not None:
                students.save(Path(ctx.students_dir), students.key(s, ctx.students_tag), student, result.number)
    result.info.channels_before_pruning = channel_count(student)
    if plan.pruning.ratio > 0 and s.distilled and ctx.measure_unpruned:
        # The trained student before pruning is a plan of the space too, and costs only its export and measurement
        # (both counted as the work of a model made on the way, not as the trial's overhead).
        with _stage(stages, "on_the_way"):
            unpruned = to_onnx(student.eval(), example)
        info = TrialInfo(channels=channel_count(student), sparsity=0.0)
        weights = parameter_count(student)
        _on_the_way(result, 0.0, "fp32", unpruned, weights, info, data, time_model)
        # And in the space's other schemes, as the pruned model is below: the student unpruned but quantized is a
        # plan of the space too (a hand-chained pipeline quantizes the student it keeps, pruned or not).
        _in_schemes(result, plan, ctx, 0.0, unpruned, weights, info, time_model, skip={"fp32"})
    if plan.pruning.ratio > 0:
        with _stage(stages, "prune"):
            temperature, alpha, lr = (
                (s.temperature, s.alpha, s.lr) if s.distilled else (RECOVERY_TEMPERATURE, RECOVERY_ALPHA, RECOVERY_LR)
            )

            def recover(model: torch.nn.Module, n: int) -> None:
                # Recovery is distillation from the teacher; prune() calls it between iterative steps.
                d = Distillation(epochs=n, lr=lr, temperature=temperature, alpha=alpha, seed=ctx.seed)
                train(model, data.x_train, data.y_train, d, teacher=teacher, on_epoch=lambda *_: epochs.epoch(model))

            prune(student, example, plan.pruning, recover=recover, batch=_batch(data))
    result.info.epochs_used = epochs.done
    result.info.channels = channel_count(student)
    result.info.sparsity = sparsity(student)
    with _stage(stages, "export"):
        fp32 = to_onnx(student.eval(), example)
    with _stage(stages, "quantize"):
        deployed = quantize(fp32, plan.quantization, data.x_calib, cache_dir=_sensitivity_cache())
    with _stage(stages, "latency"):
        latency, hit = time_model(deployed)
    result.info.skipped_training, result.info.latency_cache = False, _cache(hit)
    result.onnx = deployed
    weights = parameter_count(student)
    with _stage(stages, "accuracy"):
        result.metrics = _metrics(deployed, latency, data, weights)
    changed = s.distilled or plan.pruning.ratio > 0  # else the fp32 model is the teacher itself, the baseline
    if plan.quantization.scheme != "fp32" and changed and ctx.measure_fp32:
        info = TrialInfo(channels=result.info.channels, sparsity=result.info.sparsity)
        _on_the_way(result, plan.pruning.ratio, "fp32", fp32, weights, info, data, time_model)
    info = TrialInfo(channels=result.info.channels, sparsity=result.info.sparsity)
    # Not its own scheme, nor fp32 (measure_fp32, above).
    _in_schemes(
        result, plan, ctx, plan.pruning.ratio, fp32, weights, info, time_model, {plan.quantization.scheme, "fp32"}
    )


def _in_schemes(
    result: TrialResult,
    plan: CompressionPlan,
    ctx: TrialContext,
    ratio: float,
    fp32: bytes,
    weights: int,
    info: TrialInfo,
    time_model: TimeModel,
    skip: set[str],
) -> None:
    """Measure a trained fp32 model quantized in each of the space's schemes but `skip`, as models made on the way
    (space.quantization.on_the_way; the plan with `ratio` and that scheme)."""
    for choice in _other_schemes(plan, ctx, skip):
        try:
            with _stage(result.stages, "on_the_way"):
                model = quantize(fp32, choice, ctx.data.x_calib, cache_dir=_sensitivity_cache())
            _on_the_way(result, ratio, choice.scheme, model, weights, TrialInfo.from_dict(info), ctx.data, time_model)
        except Exception:  # noqa: BLE001 - an extra model that cannot be made or run costs the trial nothing
            continue  # its own plan, when drawn, runs it and says why


def _other_schemes(plan: CompressionPlan, ctx: TrialContext, skip: set[str]) -> list[QuantizationChoice]:
    """The space's schemes but `skip` to quantize a trained model in: each with the options the plan's own knobs
    give it; a scheme whose options the plan does not name (a knob of that scheme's own, sampled) is left to its
    trials."""
    if ctx.quantization is None:
        return []
    out = []
    for scheme in sorted(set(ctx.quantization.schemes) - skip):
        try:
            out.append(sample_quantization(Fixed({**plan.params(), SCHEME_KNOB: scheme}), ctx.quantization))
        except Exception:  # noqa: BLE001 - a knob the plan does not name (KeyError), or a plugin scheme's own error
            continue
    return out


def _on_the_way(
    result: TrialResult,
    ratio: float,
    scheme: str,
    model: bytes,
    params: int,
    info: TrialInfo,
    data: TaskData,
    time_model: TimeModel,
) -> None:
    """Measure a model made on the trial's way (accuracy, latency, size) and add it to the result."""
    with _stage(result.stages, "on_the_way"):
        latency, hit = time_model(model)
        metrics = _metrics(model, latency, data, params)
    info.latency_cache = _cache(hit)
    result.on_the_way.append(MadeOnTheWay(ratio, scheme, metrics, model, info))


def _cache(hit: bool) -> str:
    """How a latency came: from the study's latency cache, or measured now."""
    return "hit" if hit else "miss"


def _metrics(model: bytes, latency: LatencyStats, data: TaskData, params: int) -> dict[str, float]:
    return {
        "accuracy": accuracy(model, data.x_val, data.y_val),
        "size_mb": size_mb(model),
        "params": float(params),
        **latency.metrics(),
        "latency_stable": float(latency.stable),
    }


def teacher_figures(ctx: TrialContext, time_model: TimeModel) -> tuple[bytes, dict[str, float]]:
    """The fp32 teacher as ONNX and its measured accuracy, size and latency: the baseline every trial is held to."""
    torch.set_num_threads(ctx.train_threads)
    if ctx.onnx_model is not None:
        onnx_bytes, params = ctx.onnx_model, onnx_parameter_count(ctx.onnx_model)
    else:
        teacher = ctx.teacher()
        onnx_bytes, params = to_onnx(teacher, torch.from_numpy(ctx.data.x_val[:1])), parameter_count(teacher)
    latency, _ = time_model(onnx_bytes)
    metrics = _metrics(onnx_bytes, latency, ctx.data, params)
    return onnx_bytes, metrics
