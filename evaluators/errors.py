"""The one exception base every slimsweep error derives from.

It lives in the lowest package (evaluators imports nothing else of ours) so that every layer can raise it.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class SlimsweepError(Exception):
    """Base of every error slimsweep raises on purpose."""


class ConfigError(SlimsweepError):
    """An experiment file or a command-line flag is invalid."""


class TrialFailure(SlimsweepError):
    """A trial could not produce a candidate (NaN loss, failed export, ...); the sweep records it and goes on."""


def did_you_mean(value: object, allowed: Iterable[object]) -> str:
    """' (did you mean 'x'?)' for the allowed name closest to value, or '' when none is close."""
    hint = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
    return f" (did you mean {hint[0]!r}?)" if hint else ""


def not_allowed(value: object, allowed: Iterable[object]) -> str:
    """The one wording of a bad name: the value, every allowed one, and the nearest."""
    allowed = list(allowed)
    return f"{value!r} is not allowed; choose one of: {', '.join(map(str, allowed))}{did_you_mean(value, allowed)}"
