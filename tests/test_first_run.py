"""What a new user sees on every run: no advice from Ray they cannot act on, the same metric names everywhere."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

from conftest import small_experiment

from search.raystart import token_notice_silenced

# A local Ray started the way `slimsweep run` starts it; the child reports the authentication mode Ray runs with.
START_LOCAL_RAY = r"""
import ray
from ray._raylet import AuthenticationMode, get_authentication_mode

from search.raystart import start_ray

start_ray(None)
print("AUTH", get_authentication_mode() == AuthenticationMode.TOKEN)
ray.shutdown()
"""


def test_a_local_ray_starts_without_the_token_notice_and_with_token_auth_on(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}  # Ray's default: mode unset
    env.update(HOME=str(tmp_path), RAY_USAGE_STATS_ENABLED="0")  # Ray makes its token in this home, not the user's
    done = subprocess.run([sys.executable, "-c", START_LOCAL_RAY], env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "AUTH True" in done.stdout  # authentication stays on
    assert (tmp_path / ".ray" / "auth_token").is_file()  # the token Ray made for it
    assert "Token authentication is enabled" not in done.stderr, done.stderr
    assert "RAY_AUTH_MODE=disabled" not in done.stderr


class _Kept(logging.Handler):
    """The messages that reach a handler on the logger itself (Ray's loggers need not propagate to the root)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_only_the_token_notice_is_dropped_and_only_while_a_local_ray_starts() -> None:
    logger, kept = logging.getLogger("ray._private.authentication.authentication_token_setup"), _Kept()
    notice = "Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=disabled to opt out."
    logger.addHandler(kept)
    try:
        with token_notice_silenced():
            logger.warning(notice)
            logger.warning("Token authentication is enabled but no authentication token was found")
        logger.warning(notice)  # joining a cluster (--ray-address): Ray's own messages stay
    finally:
        logger.removeHandler(kept)
    assert kept.messages == ["Token authentication is enabled but no authentication token was found", notice]


def test_fewer_trials_at_once_than_search_parallel_says_why(tmp_path: Path) -> None:
    from search.at_once import fewer_at_once
    from search.config import load

    exp = load(small_experiment(tmp_path), {"search.parallel": 2})
    assert fewer_at_once(exp, 2, cluster=False, cpus=2) is None  # as asked: nothing to explain
    why = fewer_at_once(exp, 1, cluster=False, cpus=2)  # `make run` on 2 cores: the station keeps one
    assert why.startswith("1 at a time, not search.parallel's 2: this machine's 2 CPUs hold 1 of 1 CPU each")
    assert "the bench station's 1 reserved core" in why and "target.reserve_cores: false" in why
    shared = load(small_experiment(tmp_path), {"search.parallel": 4, "target.reserve_cores": False})
    why = fewer_at_once(shared, 2, cluster=True)
    assert "the Ray cluster's live nodes hold 2 of 1 CPU each" in why and "reserved" not in why


def test_the_commands_slimsweep_prints_run_without_an_activated_environment(tmp_path: Path) -> None:
    from search.commands import tool

    beside = Path(sys.executable).parent / "mlflow"  # this installation's, as `run`'s review line names it
    # A console script of this environment: its first line names this environment's python, so it runs as pasted
    # without activating anything.
    assert tool("mlflow", cwd=str(tmp_path)) == str(beside) and beside.is_file()
    assert beside.read_text().splitlines()[0].startswith(f"#!{beside.parent}/python")
    assert tool("mlflow", cwd=str(beside.parent.parent)) == f"{beside.parent.name}/mlflow"  # from the checkout
    assert tool("no-such-tool") == "no-such-tool"
