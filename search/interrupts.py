"""Ctrl-C held back while the driver's bookkeeping is half done, then raised where the loop can clean up.

A trial asked from Optuna but not yet in flight, or taken out of flight but not yet told, is known to no one: an
interrupt there would leave it RUNNING with no driver to queue it again. Those steps take milliseconds; a second
Ctrl-C during one stops at once, as the user insists."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import Any

log = logging.getLogger("slimsweep.sweep")


@dataclass
class Held:
    """Counts the half-done steps under way; a Ctrl-C during one is raised when the last ends."""

    depth: int = 0
    pending: bool = False

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        if self.depth and not self.pending:
            self.pending = True
            log.warning("Ctrl-C: stopping once the step under way is recorded (Ctrl-C again stops at once)")
            return
        raise KeyboardInterrupt

    @contextmanager
    def installed(self) -> Iterator[Held]:
        """Route SIGINT through this holder for the block (only the main thread may set a signal handler; elsewhere
        the block runs with Python's own handling)."""
        if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) in (
            signal.SIG_IGN,
            None,
        ):
            yield self  # and a process started with Ctrl-C ignored (a background job) keeps ignoring it
            return
        before: Any = signal.signal(signal.SIGINT, self._on_sigint)
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, before)
            self.depth, self.pending = 0, False

    @contextmanager
    def step(self) -> Iterator[None]:
        """A step that must finish once begun; a Ctrl-C during it is raised as it ends."""
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
        if not self.depth and self.pending:  # not reached when the step raised: its own error goes first
            self.pending = False
            raise KeyboardInterrupt
