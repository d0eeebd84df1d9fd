"""The same experiment file on a real Ray cluster: a head and a worker node started with `ray start` on this machine."""

from __future__ import annotations

import os
import subprocess

import optuna
import pytest

from conftest import BIN, run_cli, small_experiment
from search.config import load
from search.study import finished

PORT = "6391"


@pytest.fixture
def cluster(tmp_path):
    """A two-node Ray cluster (one CPU each) on loopback, stopped afterwards."""
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0"}
    ray = str(BIN / "ray")
    common = ["--num-cpus", "1", "--node-ip-address", "127.0.0.1", "--disable-usage-stats"]
    try:
        subprocess.run([ray, "start", "--head", "--port", PORT, "--include-dashboard=false", *common],
                       env=env, check=True, capture_output=True, timeout=180)
        address = f"127.0.0.1:{PORT}"
        subprocess.run([ray, "start", "--address", address, *common], env=env, check=True, capture_output=True,
                       timeout=180)
        yield address
    finally:
        subprocess.run([ray, "stop", "--force"], env=env, capture_output=True, timeout=120)


def test_the_same_file_runs_on_a_two_node_cluster(cluster, tmp_path):
    # The station shares cores here (reserve_cores: false) so that each one-CPU node can take a trial.
    path = small_experiment(tmp_path, name="cluster", target={"kind": "cpu", "reserve_cores": False})
    result = run_cli("run", str(path), "--ray-address", cluster, "--trials", "4", "--parallel", "2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    exp = load(path)
    study = optuna.load_study(study_name=exp.name, storage=exp.storage_url)
    done = finished(study)
    assert len(done) == 4
    # One CPU per node and two trials in flight: both nodes ran trials.
    assert len({t.user_attrs["info"]["ray_node"] for t in done}) == 2
