"""Shared fixtures: a small, fast experiment on the real digits task, and one teacher cache per test session."""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

BIN = Path(sys.executable).parent
# Where the suite's files go when TMPDIR is not set: memory, where /dev/shm has room. Every sweep here writes its
# study and MLflow store to SQLite, which syncs each commit to disk: on a shared disk that made the driver's tests
# two to three times slower. The files are the same files; only the disk under them changes.
MEMORY_TMP, MEMORY_TMP_ROOM = Path("/dev/shm"), 4 << 30


def pytest_configure(config: pytest.Config) -> None:
    """Put the session's temporary files (tmp_path, Ray's session folders, the CLI's) in memory where there is room."""
    if "TMPDIR" in os.environ or not MEMORY_TMP.is_dir() or not os.access(MEMORY_TMP, os.W_OK):
        return
    room = os.statvfs(MEMORY_TMP)
    if room.f_bavail * room.f_frsize >= MEMORY_TMP_ROOM and not room.f_flag & os.ST_NOEXEC:
        # Ray keeps its session folders (logs) until reboot: on disk where it kept them, not in memory.
        os.environ.setdefault("RAY_TMPDIR", tempfile.gettempdir())
        os.environ["TMPDIR"] = str(MEMORY_TMP)  # read by the workers and the CLI, which start after this
        tempfile.tempdir = None  # tempfile caches the folder it found first


def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """With `--dist loadfile` (setup.cfg): slowest files first, ux_sweep's readers as one unit (tests/schedule.py)."""
    if config.getoption("dist") != "loadfile":
        return None
    from schedule import SlowestFirst

    return SlowestFirst(config, log)


@pytest.hookimpl(trylast=True)  # after `-m` and `-k` have deselected
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Note whether this session runs any test of the end-to-end tier (those need the digits teacher)."""
    config.stash[_END_TO_END] = any(item.get_closest_marker("fast") is None for item in items)


_END_TO_END = pytest.StashKey[bool]()


@pytest.fixture(scope="session", autouse=True)
def teacher_cache(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Path:
    """Every test (and every CLI subprocess) shares one teacher cache, so the teacher trains once per session: under
    xdist one folder for all workers, where the first worker trains the suite's usual teacher while the others wait
    (two trainings at once on 2 cores would each take twice as long, for one teacher)."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # this session's folder, the same for every worker
    path = root / "slimsweep-cache"
    path.mkdir(exist_ok=True)
    os.environ["SLIMSWEEP_CACHE"] = str(path)
    if os.environ.get("PYTEST_XDIST_WORKER") and request.config.stash.get(_END_TO_END, False):
        with (path / ".lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            _usual_teacher(tmp_path_factory.mktemp("usual-teacher"))
    return path


def _usual_teacher(folder: Path) -> None:
    """Train (or find cached) the teacher of small_experiment's task, as a sweep's preparation would."""
    from experiments.tasks import load_task
    from experiments.teacher import resolve_teacher
    from search.config import load

    resolve_teacher(load_task(load(small_experiment(folder)).task))


@pytest.fixture(scope="module", autouse=True)
def own_ray_per_module():
    """Shut down the Ray a module's in-process sweeps started, so the next module starts (or attaches) afresh."""
    yield
    import ray

    if ray.is_initialized():
        ray.shutdown()


def small_experiment(folder: Path, name: str = "tiny", **changes: Any) -> Path:
    """Write a quick experiment (few epochs, few trials) into `folder`; keyword args replace top-level sections."""
    data: dict[str, Any] = {
        "name": name,
        "task": {"name": "digits", "seed": 0, "teacher": {"epochs": 10}},
        "space": {
            "students": {
                "teacher": True,
                "cnn": {"width": [0.25, 0.5], "depth": [1], "epochs": 3, "temperature": 4.0, "alpha": 0.7},
            },
            "pruning": {"ratio": [0.0, 0.5], "recover_epochs": 1},
            "quantization": {"schemes": ["fp32", "int8_static_qdq"]},
        },
        "constraints": {"max_accuracy_drop": 5.0},
        "search": {"sampler": "random", "trials": 4, "parallel": 2, "seed": 0},
        # Verification's side-by-side timing capped at 2 s (users' default 20 s): the suite runs dozens of sweeps.
        "pick": {"max_accuracy_drop": 5.0, "verify_seconds": 1.0},
        "output_dir": str(folder / "outputs"),
    }
    data.update(changes)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def sweep_here(exp: Any) -> optuna.Study:
    """Sweep `exp` with the driver's loop and the real trial in this process (search/inprocess.py), no Ray and no
    pick; its study. For a test of what the loop records: Ray's start, its workers' imports and the pick's timing
    cost a CLI sweep about 20 s of CPU more."""
    from search.inprocess import InProcessExecutor
    from search.sweep import prepare, sweep

    swept = sweep(exp, InProcessExecutor(exp.target.spec()), prepare(exp), quiet=True)
    swept.tracker.end("FINISHED")  # as the run command does after its pick
    return optuna.load_study(study_name=exp.name, storage=exp.storage_url)


def study_if_made(exp: Any) -> optuna.Study | None:
    """The experiment's Optuna study, or None while its driver has not made it yet."""
    try:
        return optuna.load_study(study_name=exp.name, storage=exp.storage_url)
    except KeyError:
        return None


def kept_its_plan(retry: optuna.trial.FrozenTrial, original: optuna.trial.FrozenTrial) -> bool:
    """A trial run again after an interruption ran the same plan: every knob the original had drawn, the same. A driver
    killed while still drawing a plan leaves it partly drawn; its retry draws the rest."""
    return all(retry.params.get(name) == value for name, value in original.params.items())


def run_cli(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the real console script in a fresh process."""
    return subprocess.run([str(BIN / "slimsweep"), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


@contextlib.contextmanager
def running_cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen]:
    """The console script started in its own process group, so the test can stop it like a user would; on the way
    out, the group is killed if it still runs (a test that fails half-way leaves no driver or Ray of its own)."""
    proc = subprocess.Popen(
        [str(BIN / "slimsweep"), *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def wait_for(predicate, timeout: float = 300, every: float = 0.5) -> None:
    """Poll until predicate() is true (a bounded loop, never a sleep standing in for a condition)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(every)
    raise AssertionError(f"condition not met within {timeout} s")


# --- a real MLflow tracking server ----------------------------------------------------------------------------------


def start_mlflow_server(backend_uri: str, port: int, artifacts: Path | None = None) -> subprocess.Popen:
    """A real `mlflow server` on loopback, in its own process group (stop it with stop_group); returns once it
    answers its health check."""
    from search.tracking import unreachable

    args = [str(BIN / "mlflow"), "server", "--backend-store-uri", backend_uri, "--host", "127.0.0.1"]
    args += ["--port", str(port), "--workers", "1"]
    if artifacts is not None:
        args += ["--default-artifact-root", artifacts.as_uri()]
    # MLflow's server also starts a job runner and three queue consumers by default, each importing mlflow: seconds of
    # CPU per server for a feature slimsweep does not use.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=env)
    up = f"http://127.0.0.1:{port}"
    wait_for(lambda: proc.poll() is not None or unreachable(up, timeout_s=2) is None, timeout=300)
    assert proc.poll() is None, "mlflow server did not start"
    return proc


def stop_group(proc: subprocess.Popen) -> None:
    """Stop a process started in its own group, and all of that group (SIGTERM, then SIGKILL); once is enough."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


# --- a real PostgreSQL server, started by the tests from the system's package --------------------------------------


def _postgres_bin() -> Path | None:
    """The folder holding initdb and pg_ctl: Debian keeps them under /usr/lib/postgresql/VERSION/bin."""
    for folder in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    return Path(initdb).parent if initdb and pg_ctl else None


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """A PostgreSQL server of its own on a free loopback port and a temp data folder, for this session; yields its
    base URL (no database). Skips, saying why, where no server can be had."""
    folder = _postgres_bin()
    if folder is None:
        pytest.skip(
            "no PostgreSQL server here (initdb and pg_ctl not found): `make test` installs Debian's "
            "postgresql when run as root with apt-get; or apt-get install -y postgresql"
        )
    try:
        import psycopg  # noqa: F401  (SQLAlchemy's driver for postgresql:// URLs)
    except ImportError:
        pytest.skip("the PostgreSQL driver is not installed: pip install 'psycopg[binary]'")
    root = Path(tempfile.mkdtemp(prefix="pg", dir="/tmp"))  # short: the server's socket path has a length limit
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root: run it as the user Debian's package creates
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the PostgreSQL server as")
        os.chown(root, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", free_port()
    ctl = [*as_user, str(folder / "pg_ctl"), "-D", str(data)]
    init = subprocess.run(
        [
            *as_user,
            str(folder / "initdb"),
            "-D",
            str(data),
            "-U",
            "slimsweep",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-sync",
        ],
        capture_output=True,
        text=True,
    )
    started = (
        init.returncode == 0
        and subprocess.run(
            [
                *ctl,
                "-l",
                str(root / "server.log"),
                "-w",
                "-t",
                "60",
                "-o",
                f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
                "start",
            ],
            capture_output=True,
            text=True,
        ).returncode
        == 0
    )
    try:
        if not started:
            log = (root / "server.log").read_text()[-1500:] if (root / "server.log").is_file() else init.stderr[-1500:]
            pytest.skip(f"a PostgreSQL server could not be started here: {log}")
        yield f"postgresql://slimsweep@127.0.0.1:{port}"
    finally:
        if started:
            subprocess.run([*ctl, "-m", "fast", "-w", "stop"], capture_output=True)  # only the server we started
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_db(postgres_server: str):
    """A function that creates a fresh, empty database on the session's server and returns its URL."""
    import psycopg

    def create(name: str) -> str:
        # CREATE DATABASE cannot run inside a transaction
        with psycopg.connect(f"{postgres_server}/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"{postgres_server}/{name}"

    return create
