"""An exclusive advisory lock on a file, held across processes on one machine (fcntl.flock), waited for at most a
timeout: a process that holds it for ever (hung, stopped with Ctrl-Z) is an error naming the file, not a silent hang."""

from __future__ import annotations

import contextlib
import fcntl
import time
from collections.abc import Iterator
from pathlib import Path

from evaluators.errors import SlimsweepError

# How long a lock is waited for by default: longer than any hand-over (a registration uploads the model) or a first
# migration of an MLflow store takes.
TIMEOUT_S = 600.0
_POLL_S = 0.1


class LockTimeout(SlimsweepError):
    """Another process held the lock for longer than the timeout."""


@contextlib.contextmanager
def held(lock: Path, timeout: float | None = None) -> Iterator[None]:
    """Hold an exclusive lock on the file `lock` (created if missing); another holder is waited for up to timeout
    seconds (None: TIMEOUT_S), then LockTimeout names the file."""
    timeout = TIMEOUT_S if timeout is None else timeout
    with lock.open("a") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LockTimeout(
                        f"the lock file {str(lock)!r} was held by another process for more than {timeout:g} s; "
                        f"another slimsweep driver is handing over or opening the store there (`fuser {lock}` "
                        "names it): wait for it, or stop it if it hangs"
                    ) from None
                time.sleep(_POLL_S)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
