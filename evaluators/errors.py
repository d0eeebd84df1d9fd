"""The one exception base every slimsweep error derives from.

It lives in the lowest package (evaluators imports nothing else of ours) so that every layer can raise it.
"""


class SlimsweepError(Exception):
    """Base of every error slimsweep raises on purpose."""


class ConfigError(SlimsweepError):
    """An experiment file or a command-line flag is invalid."""


class TrialFailure(SlimsweepError):
    """A trial could not produce a candidate (NaN loss, failed export, ...); the sweep records it and goes on."""
