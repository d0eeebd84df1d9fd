"""What a candidate measures: accuracy, size, and latency on ONNX Runtime.

Names load on first use, so importing a light module of the package (`evaluators.errors`, which every layer's
schema uses) does not load ONNX Runtime: an experiment file validates before anything heavy starts.
The functions named like their modules (`accuracy`, `compare`) are imported from those modules:
`from evaluators.accuracy import accuracy`.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "predict": "evaluators.accuracy",
    "ConfigError": "evaluators.errors",
    "SlimsweepError": "evaluators.errors",
    "TrialFailure": "evaluators.errors",
    "LatencyStats": "evaluators.latency",
    "TimingSettings": "evaluators.latency",
    "measure": "evaluators.latency",
    "CompareSettings": "evaluators.compare",
    "Comparison": "evaluators.compare",
    "input_shape": "evaluators.runtime",
    "make_session": "evaluators.runtime",
    "size_mb": "evaluators.size",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'evaluators' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
