"""The bench station: one Ray actor per target that times one model at a time, on cores no trial trains on.

A target timed on this host times in the station's worker process (evaluators/limits.py) under a memory cap and a
deadline per model: a model beyond them fails its trial with the reason, and the station goes on."""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, fields

import ray

from evaluators.compare import CompareSettings, Comparison, compare, interleave_measured
from evaluators.errors import ConfigError
from evaluators.graph_key import graph_key
from evaluators.latency import LatencyStats, TimingSettings
from evaluators.limits import Limits, run_limited
from evaluators.targets import Target, TargetSpec, make_target, target_class

log = logging.getLogger("slimsweep.station")

# A model's time to load (a TensorRT engine build included) before its timing, in a station's deadline; timing then
# gets what the agent gives it: warm-up, the repeat loop and its retry max_seconds each.
LOAD_SECONDS = 300.0


def _capped(spec: TargetSpec) -> bool:
    """Whether a memory cap applies: not for a GPU target, whose runtime reserves address space beyond any cap (CUDA's
    unified addressing), which gets a deadline only."""
    return not target_class(spec.kind).uses_gpu


def measure_limits(spec: TargetSpec, settings: TimingSettings) -> Limits:
    """A station measurement's limits: the default memory cap, and LOAD_SECONDS + 3 x max_seconds + 1 s."""
    return Limits(seconds=LOAD_SECONDS + 3 * settings.max_seconds + 1.0, capped=_capped(spec))


def measure_here(spec: TargetSpec, model: bytes, settings: TimingSettings) -> LatencyStats:
    """The target's measurement of model, in this process (the station worker's side)."""
    return make_target(spec).measure(model, settings)


def limited_measure(spec: TargetSpec, model: bytes, settings: TimingSettings) -> LatencyStats:
    """The target's measurement of model in this process's worker, under measure_limits; a target timed elsewhere
    (a device agent, which has limits of its own) is measured directly."""
    if target_class(spec.kind).takes_url:
        return measure_here(spec, model, settings)
    what = f"timing this model on the {spec.kind} target"
    return run_limited(measure_here, spec, model, settings, limits=measure_limits(spec, settings), what=what)


def _compare_here(models: list[bytes], names: list[str], settings: CompareSettings, spec: TargetSpec) -> Comparison:
    target = make_target(spec)
    return compare(models, settings, names=names, providers=target.providers(), require_provider=target.provider)


def compare_on(target: Target, models: list[bytes], names: list[str], settings: CompareSettings) -> Comparison:
    """Time models side by side on the target (interleaved, round after round); speed-ups are over models[0]. An ONNX
    Runtime provider on this host times in this process's worker, under the memory cap, with its sessions open
    across rounds; a device agent opens a session per request, so each turn there is one short measurement."""
    if getattr(target, "providers", None) is not None:
        # The deadline: each model's load, then all rounds within max_seconds.
        seconds = LOAD_SECONDS * len(models) + 2 * settings.max_seconds + 1.0
        limits = Limits(seconds=seconds, capped=_capped(target.spec))
        what = f"timing {len(models)} models side by side on the {target.spec.kind} target"
        return run_limited(_compare_here, models, names, settings, target.spec, limits=limits, what=what)
    return interleave_measured(target.measure, models, names, settings)


class BenchStation:
    """Times models on the target, caching results by graph structure, target and settings (a sweep times a
    structure once: latency depends on shapes and the scheme, not on trained weights)."""

    def __init__(self, spec: TargetSpec, reserve_cores: bool) -> None:
        self.target = make_target(spec)
        self.target.check()
        self.cores: list[int] = []
        if reserve_cores and self.target.local_cpu():
            # The last `threads` cores time models; trials on this node keep off them (see free_cores).
            self.cores = sorted(os.sched_getaffinity(0))[-spec.threads :]
            os.sched_setaffinity(0, self.cores)
        self.node = ray.get_runtime_context().get_node_id()
        self.cache: dict[str, LatencyStats] = {}
        self.new: list[str] = []  # keys measured since the driver last took them, to keep with the study
        self.hits = self.misses = 0

    def where(self) -> tuple[str, list[int]]:
        """The station's node and the cores it keeps for itself."""
        return self.node, self.cores

    def describe(self) -> dict:
        """The target as it reports itself."""
        return self.target.describe()

    def measure(self, model: bytes, settings: TimingSettings, use_cache: bool = True) -> tuple[LatencyStats, bool]:
        """Statistics of one model, and whether they came from the cache."""
        key = graph_key(model, self.target.describe(), asdict(settings))
        if use_cache and key in self.cache:
            self.hits += 1
            log.info("latency cache hit %s", key[:12])
            return self.cache[key], True
        stats = limited_measure(self.target.spec, model, settings)
        # Kept even when flagged unstable (the flag travels with it): a structure is timed once per sweep, and
        # the front is re-timed in isolation before the pick, where a noisy figure would matter.
        self.cache[key] = stats
        self.new.append(key)
        self.misses += 1
        return stats, False

    def take_new(self) -> dict[str, dict]:
        """Measurements taken since the last call, as plain fields (kept with the study by the driver)."""
        out = {key: asdict(self.cache[key]) for key in self.new}
        self.new = []
        return out

    def seed(self, entries: dict[str, dict]) -> None:
        """Measurements kept from an earlier run of the sweep: a resumed sweep does not time them again."""
        names = {f.name for f in fields(LatencyStats)}
        for key, stats in entries.items():
            if set(stats) == names:  # a layout from another release is simply timed again
                self.cache.setdefault(key, LatencyStats(**stats))

    def compare(self, models: list[bytes], names: list[str], settings: CompareSettings) -> Comparison:
        """Time models side by side on the target (interleaved, round after round); speed-ups are over models[0]."""
        for name in ("threads", "batch_size"):
            if getattr(settings, name) != getattr(self.target.spec, name):
                raise ConfigError(
                    f"CompareSettings.{name} = {getattr(settings, name)} but the target has "
                    f"{name} = {getattr(self.target.spec, name)}"
                )
        return compare_on(self.target, models, names, settings)

    def counts(self) -> dict[str, int]:
        """Cache hits and misses so far."""
        return {"latency_cache_hits": self.hits, "latency_cache_misses": self.misses}


def start_station(spec: TargetSpec, *, reserve_cores: bool) -> ray.actor.ActorHandle:
    """Start the target's station, holding the Ray resources timing needs so trials cannot take them."""
    local_cpu = make_target(spec).local_cpu()
    # max_restarts: a model that crashes the runtime takes the actor down; the next trial gets a fresh one.
    options = {
        "num_cpus": spec.threads if (reserve_cores and local_cpu) else 0,
        "max_concurrency": 1,
        "max_restarts": -1,
    }
    if target_class(spec.kind).uses_gpu:
        options["num_gpus"] = 1
    return ray.remote(BenchStation).options(**options).remote(spec, reserve_cores)


def free_cores(station_node: str, station_cores: list[int]) -> None:
    """Keep a trial's process off the station's cores when it runs on the station's node."""
    if station_cores and ray.get_runtime_context().get_node_id() == station_node:
        others = set(os.sched_getaffinity(0)) - set(station_cores)
        if others:
            os.sched_setaffinity(0, others)
