"""The SQLite files slimsweep makes in an output folder (`study.db`, `mlflow.db`): a write-ahead log (WAL), no disk
flush per commit.

A trial's record is about ten small commits (its user attributes, constraints, the tell), its MLflow run a dozen
more. In SQLite's default mode (a rollback journal, synchronous=FULL) each commit flushes the disk: 65-190 ms per
trial's record on the 2-core machine the benchmarks run on, against 10-12 ms in WAL with synchronous=NORMAL (WAL
alone: 34-45 ms). In WAL with synchronous=NORMAL a commit is durable once the operating system has it: a driver
killed with kill -9 loses nothing it committed; a power cut may lose the last commits (those trials run again),
never the file's consistency.

WAL needs memory shared between the processes that open a file, which a network filesystem (NFS, SMB, ...) does
not give, and drivers on several machines may share one study file there: such a file keeps SQLite's rollback
journal. A store the user names (`search.storage`, `tracking.uri`) is opened as given. The WAL lives in two side
files beside its database (`study.db-wal`, `study.db-shm`): what deletes or moves a database takes them too
(search/fresh.py does); when the driver exits, the WAL is folded back into the database file and the file returns
to SQLite's usual journal, so a copy of the file alone holds everything, and a file at rest reads where the reader
cannot write and on a network filesystem.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sqlite3
import weakref
from pathlib import Path
from typing import Any

import optuna
from sqlalchemy import Engine, event
from sqlalchemy.pool import Pool

log = logging.getLogger("slimsweep.study")

SIDE_FILES = ("-wal", "-shm")  # the WAL's files beside its database
# Filesystems where SQLite's shared memory (and so WAL) is unsafe across machines (fstype as /proc/mounts names it).
# Shared-disk cluster filesystems (gfs2, ocfs2) and a VM's shared folder (vboxsf) count too: other machines write there.
NETWORK_FS = frozenset(
    "nfs nfs4 cifs smb3 smbfs ncpfs afs 9p ceph glusterfs lustre gpfs beegfs gfs2 ocfs2 davfs vboxsf".split()
)
_NETWORK_FUSE = tuple(f"fuse.{name}" for name in "sshfs glusterfs ceph s3fs gcsfuse rclone juicefs davfs2".split())
_FILES: set[str] = set()  # the files this process opens write-ahead (real paths)
_ENGINES: weakref.WeakSet[Engine] = weakref.WeakSet()  # engines with a connection to one of them (closed at exit)


def filesystem(path: Path, mounts: str | None = None) -> str | None:
    """The type of the filesystem that holds `path` (the deepest mount above it in `/proc/mounts`, or the `mounts`
    text given); None where the mount table cannot be read (not Linux)."""
    if mounts is None:
        try:
            mounts = Path("/proc/mounts").read_text()
        except OSError:
            return None
    resolved = path.resolve()
    best, kind = -1, None
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = Path(fields[1].replace("\\040", " "))
        if (resolved == point or point in resolved.parents) and len(point.parts) > best:
            best, kind = len(point.parts), fields[2]
    return kind


def on_network(path: Path, mounts: str | None = None) -> bool:
    """Whether `path` lies on a network filesystem (an unknown mount table counts as a local disk)."""
    kind = filesystem(path, mounts)
    return kind is not None and (kind in NETWORK_FS or kind.startswith(_NETWORK_FUSE))


def write_ahead(path: Path) -> bool:
    """Open every later connection of this process to the SQLite file `path` in WAL with synchronous=NORMAL, and fold
    the WAL back into the file when the process exits; not on a network filesystem (False there)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if on_network(path.parent):
        return False
    if not _FILES:
        # On every pool: MLflow makes its engines itself; a connection to another database is left as it is.
        event.listen(Pool, "connect", _on_connect)
        event.listen(Engine, "engine_connect", _note_engine)
        atexit.register(_fold_back)
    _FILES.add(os.path.realpath(path))
    return True


def storage(path: Path) -> optuna.storages.RDBStorage:
    """Optuna's storage on the study file `path` that slimsweep makes, written ahead (`write_ahead`)."""
    write_ahead(path)
    store = optuna.storages.RDBStorage(f"sqlite:///{path}")
    # Once the storage is gone (or at exit) its connections close; the last one to close removes the side files.
    weakref.finalize(store, store.engine.dispose)
    return store


def _on_connect(dbapi_connection: Any, _record: Any) -> None:
    """A new connection to one of this process's write-ahead files: WAL (kept by the file once set), no disk flush
    per commit."""
    if not isinstance(dbapi_connection, sqlite3.Connection):
        return
    try:
        main = dbapi_connection.execute("PRAGMA database_list").fetchone()
        if not main or not main[2] or os.path.realpath(main[2]) not in _FILES:
            return
        mode = dbapi_connection.execute("PRAGMA journal_mode").fetchone()[0]
        if str(mode).lower() != "wal":
            dbapi_connection.execute("PRAGMA journal_mode=WAL")
        dbapi_connection.execute("PRAGMA synchronous=NORMAL")
    except sqlite3.Error as err:  # another process holds the file this instant: this connection stays as it was
        log.debug("a database file stays in its journal mode for now: %s", err)


def _note_engine(connection: Any) -> None:
    """Remember an engine that connects to one of this process's write-ahead files, to close its pool at exit."""
    database = connection.engine.url.database
    if connection.engine.url.get_backend_name() == "sqlite" and database and os.path.realpath(database) in _FILES:
        _ENGINES.add(connection.engine)


def _fold_back() -> None:
    """At exit: close this process's idle connections to its write-ahead files, copy each WAL into its file and put
    the file back in SQLite's usual journal mode, so a file at rest reads anywhere (a folder the reader cannot write,
    a network filesystem); a file another process still uses is left as it is, without waiting for it."""
    for engine in list(_ENGINES):
        engine.dispose()  # idle pooled connections: a connection open elsewhere keeps a WAL file in WAL
    for path in sorted(_FILES):
        if not os.path.exists(path):
            continue
        try:
            with contextlib.closing(sqlite3.connect(path, timeout=0.5)) as conn:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                conn.execute("PRAGMA journal_mode=DELETE")
        except sqlite3.Error as err:
            log.debug("the WAL of %s stays beside it: %s", path, err)


def journal_mode(path: Path) -> str:
    """The journal mode the SQLite file `path` is in (a file made WAL stays WAL)."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower()
