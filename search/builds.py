"""Which ONNX Runtime build is installed, and whether it suits the target.

ONNX Runtime's CPU, GPU and OpenVINO builds are separate packages that all install the same `onnxruntime` module,
so two of them in one environment overwrite each other's files. A sweep checks at start that exactly one is
present and that it is the one the target needs (its registered class's `runtime_build`).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from evaluators.targets import TARGETS

BUILDS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino")
ROUTE = {
    "onnxruntime-gpu": "make install-gpu",
    "onnxruntime-openvino": "make install-openvino",
    "onnxruntime": "make install",
}


def installed_builds() -> dict[str, str]:
    """The ONNX Runtime builds installed in this environment, with their versions."""
    found = {}
    for name in BUILDS:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


def needed_build(kind: str) -> str | None:
    """The ONNX Runtime build a target kind needs (None: any build runs it, e.g. the CPU provider)."""
    return TARGETS.get(kind).runtime_build


def build_problem(kind: str, builds: dict[str, str] | None = None) -> str | None:
    """Why this environment's ONNX Runtime cannot serve the target kind, or None when it can."""
    builds = installed_builds() if builds is None else builds
    needed = needed_build(kind)
    if len(builds) > 1:
        keep = needed or next(iter(b for b in builds if b != "onnxruntime"), "onnxruntime")
        return (
            f"two or more ONNX Runtime builds are installed in one environment ({', '.join(builds)}); they "
            f"install the same `onnxruntime` module and overwrite each other. Keep one: `{ROUTE[keep]}` "
            f"leaves only {keep}"
        )
    if needed and builds and needed not in builds:
        have = next(iter(builds))
        return (
            f"target {kind!r} needs the {needed} build, but this environment has {have}; `{ROUTE[needed]}` replaces it"
        )
    return None
