"""Named targets: where a candidate's latency is measured (ONNX Runtime's CPU, CUDA, TensorRT or OpenVINO provider
on this host, or a device agent elsewhere), with the threads and batch size that are part of the target.

Each kind is one small class registered by name in TARGETS (register_target, from any module: an extension named in
SLIMSWEEP_EXTENSIONS is reachable from an experiment file). Its capability flags (uses_gpu, times_on_local_cpu,
runtime_build, takes_url) are what the schema, the build check, the executor and the bench station ask, never its
kind's name. `check()` runs when an experiment starts, so a target that cannot run here fails at once, not mid-sweep.

Light on import (no ONNX Runtime, no numpy): the schema validates a file's target kind against this registry before
anything heavy loads; a target's methods import the runtime when it checks or measures.
"""

from __future__ import annotations

import os
import platform
from abc import ABC, abstractmethod
from dataclasses import dataclass, fields
from functools import cache
from typing import TYPE_CHECKING, Any, ClassVar

from evaluators.errors import ConfigError, SlimsweepError, not_allowed
from evaluators.registry import Registry
from evaluators.secrets import MASK, mask_secrets

if TYPE_CHECKING:  # the heavy half: imported by the methods that check or measure
    from evaluators.latency import LatencyStats, TimingSettings

# An entry of ONNX Runtime's `providers` list: a name, or a name with its provider options.
Provider = str | tuple[str, dict[str, Any]]


@dataclass(frozen=True)
class TargetSpec:
    """Where and how a model is timed: the target kind, threads, batch size, GPU, or device agent."""

    kind: str  # a kind registered in TARGETS: "cpu" | "cuda" | "tensorrt" | "openvino" | "remote" | an extension's
    threads: int = 1
    batch_size: int = 1
    device_id: int = 0  # cuda / tensorrt
    url: str | None = None  # remote
    token: str | None = None  # remote

    def __repr__(self) -> str:
        # A spec is logged and shown in tracebacks: the token never, a password in the URL masked.
        token = None if self.token is None else MASK
        url = None if self.url is None else mask_secrets(self.url)
        return (
            f"TargetSpec(kind={self.kind!r}, threads={self.threads!r}, batch_size={self.batch_size!r}, "
            f"device_id={self.device_id!r}, url={url!r}, token={token!r})"
        )

    def __post_init__(self) -> None:
        minimums = {"threads": 1, "batch_size": 1, "device_id": 0}
        for name, minimum in minimums.items():
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise ConfigError(f"TargetSpec.{name} = {value!r}; it must be an integer >= {minimum}")
        if self.kind in TARGETS and not TARGETS.get(self.kind).takes_url:  # an unknown kind fails in make_target
            for name in ("url", "token"):
                if getattr(self, name) is not None:
                    raise ConfigError(
                        f"TargetSpec.{name} is set for target kind {self.kind!r}; only kinds that take a URL "
                        f"({', '.join(url_kinds())}) take a {name}"
                    )


class Target(ABC):
    """One place to time models; subclasses say whether it can run here and how it measures.

    Subclass it (or OnnxRuntimeTarget), give it a `kind` and the capability flags that apply, and register it with
    register_target: the kind is then allowed as `target.kind` in experiment files.
    """

    kind: ClassVar[str]
    # Capability flags, read by the schema, the build check, the executor and the bench station.
    uses_gpu: ClassVar[bool] = False  # the bench station holds one GPU; no memory cap (CUDA reserves address space)
    times_on_local_cpu: ClassVar[bool] = False  # timing runs on this host's cores, which trials then leave free
    runtime_build: ClassVar[str | None] = None  # the ONNX Runtime package it needs (None: any build, or none here)
    takes_url: ClassVar[bool] = False  # timed elsewhere, by a device agent at target.url with target.token_file

    def __init__(self, spec: TargetSpec) -> None:
        self.spec = spec

    @abstractmethod
    def check(self) -> None:
        """Raise SlimsweepError now if this target cannot run here (say why and what to install/do)."""

    @abstractmethod
    def measure(self, model: bytes, settings: TimingSettings) -> LatencyStats:
        """Time one model on this target with the project's timing method."""

    def describe(self) -> dict[str, Any]:
        """Kind, providers, threads, batch and device, as JSON-ready values (MLflow params, model cards, cache keys)."""
        return {"kind": self.kind, "threads": self.spec.threads, "batch_size": self.spec.batch_size}

    def local_cpu(self) -> bool:
        """True when timing runs on this host's CPU cores, which the caller then keeps free of other work."""
        return self.times_on_local_cpu

    def _require_own_settings(self, settings: TimingSettings) -> None:
        # Threads and batch are part of the target: a timing taken with other values would be filed under it wrongly.
        for name in ("threads", "batch_size"):
            if getattr(settings, name) != getattr(self.spec, name):
                raise ConfigError(
                    f"TimingSettings.{name} = {getattr(settings, name)} but target {self.kind!r} has "
                    f"{name} = {getattr(self.spec, name)}; build the settings with settings_for(spec)"
                )


TARGETS: Registry[type[Target]] = Registry("target.kind", key="kind")


def register_target(target: type[Target]) -> type[Target]:
    """Make a target kind usable as `target.kind` in every experiment file; usable as a class decorator."""
    if not (isinstance(target, type) and issubclass(target, Target)):
        raise TypeError(f"register_target takes a subclass of evaluators.targets.Target, got {target!r}")
    return TARGETS.register(target)


_register = register_target


def target_class(kind: str) -> type[Target]:
    """The registered class of a kind (unknown kind -> ConfigError listing the registered kinds)."""
    return TARGETS.get(kind)


def url_kinds() -> list[str]:
    """The registered kinds timed by a device agent at a URL."""
    return [t.kind for t in TARGETS if t.takes_url]


def make_target(spec: TargetSpec) -> Target:
    """The target a spec names (unknown kind -> ConfigError listing the valid kinds)."""
    return TARGETS.get(spec.kind)(spec)


def settings_for(spec: TargetSpec, **overrides: Any) -> TimingSettings:
    """Timing settings with the spec's threads and batch size; overrides set the rest (warm-up, repeats, caps)."""
    from evaluators.latency import TimingSettings

    valid = {f.name for f in fields(TimingSettings)} - {"threads", "batch_size"}
    for name in overrides:
        if name in ("threads", "batch_size"):
            raise ConfigError(f"settings_for: {name} comes from the target spec; set TargetSpec.{name} instead")
        if name not in valid:
            raise ConfigError(f"settings_for: unknown timing setting: {not_allowed(name, sorted(valid))}")
    return TimingSettings(threads=spec.threads, batch_size=spec.batch_size, **overrides)


class OnnxRuntimeTarget(Target):
    """A target timed on this host by an ONNX Runtime execution provider (subclass it with `provider` and
    `install_hint` for another provider)."""

    provider: ClassVar[str]  # the execution provider that must run the model
    install_hint: ClassVar[str]  # what to do when it is missing

    def providers(self) -> list[Provider]:
        """The `providers` list given to ONNX Runtime, first choice first."""
        return [self.provider]

    def check(self) -> None:
        self._require_available()
        # A provider can be compiled in and still fail to start (no device, driver, or library); ONNX Runtime then
        # falls back to the CPU with only a log line, so open a real session and see who got it.
        self._require_provider(_tiny_model(), what="a one-node test model")

    def measure(self, model: bytes, settings: TimingSettings) -> LatencyStats:
        from evaluators.latency import measure

        self._require_own_settings(settings)
        self._require_available()
        # Never report CPU timings as GPU timings: the session that times the model must have our provider.
        return measure(model, settings, providers=self.providers(), require_provider=self.provider)

    def describe(self) -> dict[str, Any]:
        import onnxruntime as ort

        return {
            **super().describe(),
            "providers": [_provider_text(p) for p in self.providers()],
            "onnxruntime": ort.__version__,
        }

    def _require_available(self) -> None:
        import onnxruntime as ort

        available = ort.get_available_providers()
        if self.provider not in available:
            raise SlimsweepError(
                f"target {self.kind!r}: ONNX Runtime here has no {self.provider} "
                f"(available: {', '.join(available)}); {self.install_hint}"
            )

    def _require_provider(self, model: bytes, *, what: str, threads: int = 1) -> None:
        from evaluators.runtime import make_session

        try:
            session = make_session(model, threads=threads, providers=self.providers())
        except Exception as exc:  # any failure to open is this target failing
            raise SlimsweepError(
                f"target {self.kind!r}: ONNX Runtime could not open {what} with {self.provider} "
                f"({type(exc).__name__}: {exc}); {self.install_hint}"
            ) from exc
        got = session.get_providers()
        if not got or got[0] != self.provider:
            raise SlimsweepError(
                f"target {self.kind!r}: ONNX Runtime fell back to {got[0] if got else 'no provider'} for {what} "
                f"instead of {self.provider} (the device or its libraries did not start); {self.install_hint}"
            )


_OnnxRuntimeTarget = OnnxRuntimeTarget  # its former name


@_register
class CpuTarget(OnnxRuntimeTarget):
    """ONNX Runtime's default CPU provider with a fixed thread count."""

    kind = "cpu"
    times_on_local_cpu = True
    provider = "CPUExecutionProvider"
    install_hint = "the standard onnxruntime package provides it"

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), **_cpu_info()}


@_register
class CudaTarget(OnnxRuntimeTarget):
    """ONNX Runtime's CUDA provider on one NVIDIA GPU."""

    kind = "cuda"
    uses_gpu = True
    runtime_build = "onnxruntime-gpu"
    provider = "CUDAExecutionProvider"
    install_hint = (
        "install onnxruntime-gpu on a machine with an NVIDIA GPU (and its CUDA/cuDNN libraries), "
        "or use target kind 'cpu'"
    )

    def providers(self) -> list[Provider]:
        return [("CUDAExecutionProvider", {"device_id": self.spec.device_id}), "CPUExecutionProvider"]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "device_id": self.spec.device_id}


@_register
class TensorRTTarget(OnnxRuntimeTarget):
    """ONNX Runtime's TensorRT provider on one NVIDIA GPU, with CUDA for the nodes TensorRT does not take."""

    kind = "tensorrt"
    uses_gpu = True
    runtime_build = "onnxruntime-gpu"
    provider = "TensorrtExecutionProvider"
    install_hint = (
        "install onnxruntime-gpu and NVIDIA TensorRT (its libraries on the library path) on a machine with an "
        "NVIDIA GPU, or use target kind 'cuda' or 'cpu'"
    )

    def providers(self) -> list[Provider]:
        options = {"device_id": self.spec.device_id}
        return [
            ("TensorrtExecutionProvider", dict(options)),
            ("CUDAExecutionProvider", dict(options)),
            "CPUExecutionProvider",
        ]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "device_id": self.spec.device_id}


@_register
class OpenVinoTarget(OnnxRuntimeTarget):
    """Intel's OpenVINO runtime through ONNX Runtime's OpenVINO provider, on this host's CPU."""

    kind = "openvino"
    times_on_local_cpu = True
    runtime_build = "onnxruntime-openvino"
    provider = "OpenVINOExecutionProvider"
    install_hint = (
        "replace the plain onnxruntime package by onnxruntime-openvino (`make install-openvino`, or "
        "`pip uninstall onnxruntime && pip install onnxruntime-openvino`), or use target kind 'cpu'"
    )

    def providers(self) -> list[Provider]:
        # OpenVINO runs its own thread pool and ignores ONNX Runtime's intra_op_num_threads: without its own option
        # it takes its default (not the target's threads), and an openvino-t2 timing would not be one at 2 threads.
        return [(self.provider, {"device_type": "CPU", "num_of_threads": str(self.spec.threads)})]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), **_cpu_info()}


@_register
class RemoteTarget(Target):
    """A device agent elsewhere that times models with the same method and sends the figures back."""

    kind = "remote"
    takes_url = True

    def __init__(self, spec: TargetSpec) -> None:
        for name in ("url", "token"):
            if not getattr(spec, name):
                raise ConfigError(f"target 'remote' needs TargetSpec.{name} (the device agent's {name}); it is not set")
        super().__init__(spec)
        self._info: dict[str, Any] | None = None
        self._client: Any = None

    def check(self) -> None:
        self._info = self._fetch_info()

    def measure(self, model: bytes, settings: TimingSettings) -> LatencyStats:
        self._require_own_settings(settings)
        return self._agent().measure(model, settings)

    def describe(self) -> dict[str, Any]:
        if self._info is None:
            self._info = self._fetch_info()
        info = self._info
        agent = info.get("agent") if isinstance(info.get("agent"), dict) else {}
        runtimes = info.get("runtimes") if isinstance(info.get("runtimes"), dict) else {}
        # The URL, the device and its runtime say where; the token is a secret and never leaves this object.
        return {
            **super().describe(),
            "url": mask_secrets(self.spec.url),
            "device": info.get("device"),
            "providers": agent.get("providers"),
            "onnxruntime": runtimes.get("onnxruntime"),
        }

    def _fetch_info(self) -> dict[str, Any]:
        agent = self._agent()
        try:
            return agent.info()
        except SlimsweepError as exc:
            raise SlimsweepError(
                f"target 'remote' cannot use its device agent: {exc}; start the agent on the device "
                "(`slimsweep agent`), and check the target's url and token"
            ) from exc

    def _agent(self) -> Any:
        if self._client is None:
            try:
                # Imported here: only a remote target needs the HTTP client.
                from evaluators.remote import AgentClient
            except ImportError as exc:
                raise SlimsweepError(
                    f"target 'remote': the device-agent client (evaluators.remote) cannot be imported ({exc})"
                ) from exc

            self._client = AgentClient(self.spec.url, self.spec.token)
        return self._client


def _provider_text(provider: Provider) -> str:
    """'CUDAExecutionProvider(device_id=0)': a provider entry as one readable string."""
    if isinstance(provider, str):
        return provider
    name, options = provider
    return f"{name}({', '.join(f'{k}={v}' for k, v in sorted(options.items()))})"


@cache
def _tiny_model() -> bytes:
    """A one-node float model (Y = X + X) that any provider can run: enough to see which provider a session gets."""
    import onnx

    x = onnx.helper.make_tensor_value_info("X", onnx.TensorProto.FLOAT, [1, 4])
    y = onnx.helper.make_tensor_value_info("Y", onnx.TensorProto.FLOAT, [1, 4])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Add", ["X", "X"], ["Y"])], "slimsweep-check", [x], [y])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)])
    model.ir_version = 8  # readable by every ONNX Runtime this project supports
    return model.SerializeToString()


@cache
def _cpu_info() -> dict[str, Any]:
    """This host's CPU model and core count, as the figures of a CPU target depend on them."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass  # not Linux: platform's answer stands
    return {"cpu": name, "cpu_count": os.cpu_count()}
