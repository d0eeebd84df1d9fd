"""Whether a driver that ran on this machine is still running, without waiting for its heartbeat to go stale.

A driver killed with kill -9 leaves its trials RUNNING and its last beat fresh: other drivers take its trials over
only once the beat is STALE_BEATS intervals old (40 s at the default 10 s). A driver restarted on the same machine
can know at once: the dead one recorded where it ran (this boot, its PID namespace, its PID and the moment that
process started), and no process runs there under that PID with that start time any more. A start time that
differs is another process that reused the PID; a record from another boot, PID namespace (a container) or
machine says nothing here, and the heartbeat decides as before.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

_PROC = Path("/proc")


@functools.cache  # read once: every liveness check of every driver compares against it
def _boot_and_namespace() -> str | None:
    """This boot and this PID namespace (Linux); None where /proc cannot say."""
    try:
        boot = (_PROC / "sys/kernel/random/boot_id").read_text().strip()
        namespace = os.stat(_PROC / "self/ns/pid").st_ino
    except OSError:
        return None
    return f"{boot}/{namespace}"


def _started(pid: int) -> str | None:
    """When process `pid` started (clock ticks since boot, /proc/PID/stat field 22); None if it cannot be read."""
    try:
        stat = (_PROC / str(pid) / "stat").read_bytes()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces, or bytes of any encoding: the fields after it
    # follow its last ')'.
    after = stat[stat.rfind(b")") + 2 :].split()
    return after[19].decode() if len(after) > 19 else None


def _runs(pid: int) -> bool:
    """Whether a process `pid` exists (another user's too, whose /proc entry may be hidden: hidepid)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        pass
    return True


def here() -> str | None:
    """Where this process runs, to record beside a driver's beats; None where it cannot be told (not Linux, or a
    PID namespace whose /proc is another's, where this process's PID names someone else there)."""
    try:
        if int(os.readlink(_PROC / "self")) != os.getpid():
            return None
    except (OSError, ValueError):
        return None
    where = _boot_and_namespace()
    started = _started(os.getpid())
    return f"{where}/{os.getpid()}/{started}" if where and started else None


def gone(where: object) -> bool:
    """Whether the process recorded as `where` ran on this machine, in this PID namespace, and has ended."""
    if not isinstance(where, str):
        return False
    place, _, rest = where.rpartition("/")  # rest: the start time
    place, _, pid = place.rpartition("/")
    if not pid.isdigit() or place != _boot_and_namespace():
        return False  # another machine, boot or container: only its heartbeat can tell
    started = _started(int(pid))
    if started is None:  # no such process, or one whose /proc entry this user may not read
        return not _runs(int(pid))
    return started != rest  # another start time: a later process took the PID
