"""The work of the commands that time models outside a sweep (`bench`, `compare`) and serve a device (`agent`).

Flags are validated by the experiment file's own schema, so a bad one gets the same message as in a file; models are
timed by the sweep's own method (evaluators/latency.py, evaluators/compare.py). `cli.py` only parses and prints.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evaluators.errors import ConfigError

if TYPE_CHECKING:  # the schema imports the registries: loaded on use, after main decides about extensions
    from evaluators.compare import CompareSettings, Comparison
    from evaluators.latency import LatencyStats
    from evaluators.targets import TargetSpec


@dataclass(frozen=True)
class BenchPlan:
    """One model and the validated target it is to be timed on, with the batch it is timed at."""

    model: Path
    kind: str
    spec: TargetSpec
    batch_note: str | None  # why the batch is the model's own, when the flag was not given


@dataclass(frozen=True)
class BenchResult:
    """The statistics of one model timed on one target."""

    plan: BenchPlan
    stats: LatencyStats

    def to_dict(self) -> dict[str, Any]:
        """The figures as `slimsweep bench --json` prints them."""
        return {
            "model": str(self.plan.model),
            "target": self.plan.kind,
            "threads": self.plan.spec.threads,
            "batch_size": self.plan.spec.batch_size,
            "batch_note": self.plan.batch_note,
            # The sweep's metric names (latency_p50_ms, ...), as MLflow, pareto.csv and the card say them.
            **self.stats.metrics(),
            "repeats": self.stats.repeats,
            "stable": self.stats.stable,
            "retried": self.stats.retried,
        }


@dataclass(frozen=True)
class CompareResult:
    """Models timed side by side, the settings they were timed with and why the batch is what it is."""

    comparison: Comparison
    settings: CompareSettings
    batch_note: str | None
    kind: str = "cpu"  # the target kind whose ONNX Runtime provider timed them

    def to_dict(self) -> dict[str, Any]:
        """The figures as `slimsweep compare --json` prints them."""
        return {
            **self.comparison.to_dict(),
            "target": self.kind,
            "threads": self.settings.threads,
            "batch_size": self.settings.batch_size,
            "batch_note": self.batch_note,
        }


def plan_bench(
    model: Path,
    *,
    kind: str = "cpu",
    threads: int | None = 1,
    batch_size: int | None = None,
    device_id: int | None = 0,
    url: str | None = None,
    token_file: str | None = None,
) -> BenchPlan:
    """Check the model file and validate the target flags (ConfigError naming the flag); times nothing."""
    from search.config import Target

    if not model.is_file():
        raise ConfigError(f"{model}: no such ONNX file")
    batch, note = batch_for([model], batch_size)
    fields = {
        "kind": kind,
        "threads": threads,
        "batch_size": batch,
        "device_id": device_id,
        "url": url,
        "token_file": token_file,
    }
    target = validated(Target, {k: v for k, v in fields.items() if v is not None}, "--target flags")
    return BenchPlan(model=model, kind=target.kind, spec=target.spec(), batch_note=note)


def bench(plan: BenchPlan, *, max_seconds: float = 3.0) -> BenchResult:
    """Time the planned model on its target as a trial is timed, with max_seconds as the repeat loop's cap."""
    from evaluators.latency import TRIAL_TIMING
    from evaluators.targets import make_target, settings_for

    settings = settings_for(plan.spec, **{**TRIAL_TIMING, "max_seconds": max_seconds})
    return BenchResult(plan=plan, stats=make_target(plan.spec).measure(plan.model.read_bytes(), settings))


def compare_models(
    models: list[Path],
    *,
    baseline: Path | None = None,
    threads: int | None = 1,
    batch_size: int | None = None,
    max_seconds: float = 30.0,
    kind: str = "cpu",
) -> CompareResult:
    """Time the models side by side with the ONNX Runtime provider of target `kind` here (default the CPU's);
    speed-ups are over the baseline (default: the first)."""
    from evaluators.compare import CompareSettings, compare
    from evaluators.targets import make_target, target_class
    from search.config import Target

    baseline = baseline or models[0]
    # The baseline goes first; given only as the baseline, it is added.
    paths = [baseline, *[p for p in models if p.resolve() != baseline.resolve()]]
    for p in paths:
        if not p.is_file():
            raise ConfigError(f"{p}: no such ONNX file")
    if len(paths) < 2:
        raise ConfigError(f"compare needs at least two different models; got {[str(p) for p in paths]}")
    if max_seconds <= 0:
        raise ConfigError(f"--max-seconds: {max_seconds} is not allowed; give a time cap > 0")
    batch, note = batch_for(paths, batch_size)
    if getattr(target_class(kind), "provider", None) is None:  # a device agent: its sessions live there
        raise ConfigError(
            f"--target {kind!r}: compare times models in one process here, with an ONNX Runtime provider; a "
            f"{kind} target is not one (time each model with `slimsweep bench --target {kind}`)"
        )
    fields = {"kind": kind, "threads": threads, "batch_size": batch}
    target = validated(Target, {k: v for k, v in fields.items() if v is not None}, "--target/--threads/--batch-size")
    device = make_target(target.spec())
    provider = device.provider
    device.check()  # a provider missing here fails now, saying what to install
    settings = CompareSettings(threads=target.threads, batch_size=target.batch_size, max_seconds=max_seconds)
    # The target's own providers and options (OpenVINO's threads), and no silent fallback to the CPU provider.
    timed = compare(paths, settings, names=short_names(paths), providers=device.providers(), require_provider=provider)
    return CompareResult(timed, settings, note, kind=target.kind)


def serve_agent(
    *,
    port: int,
    host: str,
    token_file: str,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    max_model_mb: float = 64.0,
    max_memory_mb: int = 4096,
    queue: int = 4,
) -> None:
    """Serve this device as a remote target until stopped (blocking); a missing token file is a ConfigError."""
    from evaluators.agent import serve

    if not Path(token_file).is_file():
        raise ConfigError(f"--token-file: {token_file!r} does not exist")
    serve(
        port=port,
        host=host,
        token_file=token_file,
        tls_cert=tls_cert,
        tls_key=tls_key,
        max_model_bytes=int(max_model_mb * 1e6),
        queue_size=queue,
        max_memory_mb=max_memory_mb,
    )


def batch_for(models: list[Path], given: int | None) -> tuple[int | None, str | None]:
    """The batch to time at: the flag, else the one the models fix (said in the note), else None (the default)."""
    from evaluators.runtime import model_batch

    try:
        fixed = {m.name: model_batch(m) for m in models}
    except Exception as exc:  # not a model ONNX Runtime can open: say which and why, as a config error
        raise ConfigError(f"cannot open the model as ONNX: {type(exc).__name__}: {exc}".splitlines()[0]) from None
    batches = {b for b in fixed.values() if b is not None}
    if given is not None:
        clash = {name: b for name, b in fixed.items() if b is not None and b != given}
        if clash:
            raise ConfigError(
                f"--batch-size: {given} is not allowed for a model that fixes its batch ({clash}); "
                "drop the flag or give that batch"
            )
        return given, None
    if len(batches) > 1:
        raise ConfigError(f"--batch-size: the models fix different batch sizes ({fixed}); time models of one batch")
    if not batches:
        return None, None
    batch = batches.pop()
    return batch, f"the model fixes its batch dimension at {batch}: timed at batch {batch} (--batch-size not given)"


def short_names(paths: list[Path]) -> list[str]:
    """File names, or the paths as given where two files share a name."""
    names = [p.name for p in paths]
    return [p.name if names.count(p.name) == 1 else str(p) for p in paths]


def validated(model: Any, data: dict[str, Any], source: str) -> Any:
    """Validate flags with the same schema (and the same messages) as the experiment file."""
    from pydantic import ValidationError

    from search.config import format_errors

    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_errors(exc, data, source)) from None
