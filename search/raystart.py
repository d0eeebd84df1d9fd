"""How slimsweep starts or joins Ray: workers in a folder of slimsweep's own, with installed packages (and
slimsweep) on their path and nothing of the folder a sweep was started from; a local Ray on loopback only.

Ray's driver puts its current folder (and its script's folder) first on every worker's sys.path unless the job
names a working folder (ray/_private/worker.py, `connect`: `_py_driver_sys_path`). A file in the launch folder (an
`onnx.py`, a stray `*.dist-info` declaring slimsweep extensions) then ran in every trial worker and in the bench
station. Our job names an empty folder: Ray copies it for each worker, which starts in it with it first on its path.
slimsweep itself stays importable there through its installation (an editable install's finder included).

A local Ray's gRPC servers listen on loopback only when the node's address is 127.0.0.1, and ray.init rewrites
`_node_ip_address="127.0.0.1"` to the routable address unless it holds clusters to be off
(ray._private.services.get_node_ip_address, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER, read at import).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

import ray
from ray._private import ray_constants

from evaluators.registry import LAUNCH_FOLDER_VARIABLE

LOOPBACK = "127.0.0.1"
_CLUSTERS_VARIABLE = ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR  # "0": clusters off, the node stays on loopback
SETUP_HOOK = f"{__name__}.worker_setup"
# Paths users give relative to the folder they launch from: workers start elsewhere, so they travel absolute.
_PATH_VARIABLES = ("PYTHONPATH", "SLIMSWEEP_CACHE")


def start_ray(address: str | None) -> None:
    """Join the Ray cluster at `address`, or start a local Ray on loopback; either way the job's workers start in a
    folder of their own (errors are Ray's: ConnectionError, RuntimeError, ValueError)."""
    with tempfile.TemporaryDirectory(prefix="slimsweep-workers-") as own:  # Ray uploads it at init: empty
        env = runtime_env(own, local=not address)
        if address:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False, runtime_env=env)
            return
        # address="local": without it, ray.init attaches to any cluster `ray start` left recorded on this machine
        # (another user's, or a dead one), and a local sweep then fails or runs elsewhere depending on what ran before.
        with loopback_only(), token_notice_silenced():
            ray.init(
                address="local",
                num_cpus=os.cpu_count(),
                include_dashboard=False,
                logging_level=logging.WARNING,
                log_to_driver=False,
                _node_ip_address=LOOPBACK,
                runtime_env=env,
            )


def runtime_env(own_folder: str, *, local: bool) -> dict[str, Any]:
    """The job's runtime environment: its working folder, relative paths of a local launch made absolute, and the
    launch folder after the installed packages when a plugin task's module lives there."""
    env_vars: dict[str, str] = {}
    if local:  # a cluster's nodes keep their own environment
        for name in _PATH_VARIABLES:
            if os.environ.get(name):
                env_vars[name] = os.pathsep.join(os.path.abspath(p) for p in os.environ[name].split(os.pathsep) if p)
    env: dict[str, Any] = {"working_dir": own_folder}
    launch = os.environ.get(LAUNCH_FOLDER_VARIABLE)
    if launch:
        env_vars[LAUNCH_FOLDER_VARIABLE] = launch
        env["worker_process_setup_hook"] = SETUP_HOOK
    if env_vars:
        env["env_vars"] = env_vars
    return env


def worker_setup() -> None:
    """In each worker, before its first task: the launch folder (a plugin task's module) last on the path, so a file
    there never shadows an installed package."""
    launch = os.environ.get(LAUNCH_FOLDER_VARIABLE)
    if launch and launch not in sys.path:
        sys.path.append(launch)


# Ray's advice when ray.init starts a local Ray with token authentication on by default (Ray >= 2.60). slimsweep
# starts that Ray itself, on loopback, for this sweep alone: the notice tells a user nothing to act on, and its advice
# (RAY_AUTH_MODE=disabled) would weaken it. Auth stays on; a cluster joined with --ray-address keeps Ray's messages.
_TOKEN_NOTICE = "Token authentication is enabled for this Ray cluster"
_TOKEN_LOGGER = "ray._private.authentication.authentication_token_setup"


def _not_token_notice(record: logging.LogRecord) -> bool:
    """Every log record but Ray's token-authentication notice."""
    return not record.getMessage().startswith(_TOKEN_NOTICE)


@contextlib.contextmanager
def token_notice_silenced() -> Iterator[None]:
    """While a local Ray starts: Ray's notice that token authentication is on is dropped, every other line kept."""
    logger = logging.getLogger(_TOKEN_LOGGER)
    logger.addFilter(_not_token_notice)
    try:
        yield
    finally:
        logger.removeFilter(_not_token_notice)


@contextlib.contextmanager
def loopback_only() -> Iterator[None]:
    """While a local Ray starts: node address 127.0.0.1 kept as given, in this process and in the Ray processes it
    starts (they inherit the environment); restored afterwards, so a later ray.init may join a cluster."""
    before_env, before = os.environ.get(_CLUSTERS_VARIABLE), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[_CLUSTERS_VARIABLE] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before
        if before_env is None:
            os.environ.pop(_CLUSTERS_VARIABLE, None)
        else:
            os.environ[_CLUSTERS_VARIABLE] = before_env
