"""The machine a report ran on, read from the system rather than typed: CPU, cores, int8 flags, library versions."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path

INT8_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_int8", "amx_tile")
LIBRARIES = ("onnxruntime", "torch", "torch-pruning", "optuna", "ray", "mlflow", "onnx", "numpy")


def cpu_info(text: str | None = None) -> tuple[str, set[str]]:
    """The CPU's model name and its flags, from /proc/cpuinfo (or the given text)."""
    if text is None:
        path = Path("/proc/cpuinfo")
        text = path.read_text() if path.is_file() else ""
    model, flags = platform.processor() or platform.machine(), set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
            model = value.strip()
        elif key.strip() == "flags":
            flags = set(value.split())
    return model, flags


def version(name: str) -> str:
    """An installed distribution's version, or 'not installed'."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def section() -> str:
    """The machine as a markdown section."""
    model, flags = cpu_info()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    rows = [
        ("CPU", model),
        ("cores usable", str(usable)),
        ("cores in the machine", str(os.cpu_count())),
        ("memory", _memory()),
        ("system", f"{platform.system()} {platform.release()}, Python {platform.python_version()}"),
        ("load average (1, 5, 15 min) as the report ended", _load()),
        ("int8-relevant flags", ", ".join(f"{f} {'yes' if f in flags else 'no'}" for f in INT8_FLAGS)),
    ]
    rows += [(name, version(name)) for name in LIBRARIES]
    lines = ["## The machine", "", "| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(lines) + "\n"


def _load() -> str:
    # Other users' work on a shared machine moves every timing; the reader should see how busy it was.
    if not hasattr(os, "getloadavg"):
        return "unknown"
    return ", ".join(f"{x:.1f}" for x in os.getloadavg()) + f" on {os.cpu_count()} cores"


def _memory() -> str:
    path = Path("/proc/meminfo")
    if not path.is_file():
        return "unknown"
    for line in path.read_text().splitlines():
        if line.startswith("MemTotal:"):
            return f"{int(line.split()[1]) / 2**20:.0f} GiB"
    return "unknown"
