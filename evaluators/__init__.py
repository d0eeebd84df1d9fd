"""What a candidate measures: accuracy, size, and latency on ONNX Runtime."""

from evaluators.accuracy import accuracy, predict
from evaluators.errors import ConfigError, SlimsweepError, TrialFailure
from evaluators.latency import LatencyStats, TimingSettings, measure
from evaluators.runtime import input_shape, make_session
from evaluators.size import size_mb

__all__ = [
    "ConfigError",
    "LatencyStats",
    "SlimsweepError",
    "TimingSettings",
    "TrialFailure",
    "accuracy",
    "input_shape",
    "make_session",
    "measure",
    "predict",
    "size_mb",
]
