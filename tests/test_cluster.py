"""The same experiment file on a real Ray cluster: a head node and two worker nodes started with `ray start` on this
machine's loopback; a worker node is killed while a trial runs on it, and the sweep still ends with exactly its
budget of finished trials and one MLflow run per trial. Each trial asks for the resources the file names."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import tempfile
from collections import Counter
from pathlib import Path

import optuna
import pytest
from conftest import BIN, free_port, running_cli, small_experiment, study_if_made, wait_for
from optuna.trial import TrialState

from evaluators.errors import ConfigError
from search.config import load
from search.study import finished, running, spent


def _processes() -> list[tuple[int, int, int, str]]:
    """(pid, parent pid, process group, command line) of every live process."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": state, ppid, pgrp, ...
            if fields[0] != "Z":
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                found.append((int(entry.name), int(fields[1]), int(fields[2]), cmd))
        except (OSError, ValueError):
            continue
    return found


class Node:
    """One Ray node run by `ray start --block` in its own process group, so the test stops exactly its processes."""

    def __init__(self, args: list[str], temp: Path, name: str, env: dict[str, str]) -> None:
        self.log = temp / f"{name}.log"
        common = [
            "--node-ip-address",
            "127.0.0.1",
            "--disable-usage-stats",
            "--block",
            "--dashboard-agent-listen-port",
            str(free_port()),
            "--metrics-export-port",
            str(free_port()),
        ]
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(
                [str(BIN / "ray"), "start", *args, *common],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for(self._started, timeout=180)

    def _started(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"ray start exited {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
        return "Ray runtime started" in self.log.read_text()

    def processes(self) -> list[tuple[int, str]]:
        """The node's processes: its own group (raylet, agents) and the raylet's workers (each in its own group)."""
        every = _processes()
        own = {pid for pid, _, group, _ in every if group == self.proc.pid}
        return [(pid, cmd) for pid, parent, group, cmd in every if pid in own or parent in own]

    def signal(self, sig: signal.Signals) -> None:
        """Send `sig` to every process of the node at once, workers included."""
        for pid, _ in self.processes():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def running_trial(self) -> bool:
        """A worker of this node is running a trial (Ray titles a busy worker after its task)."""
        return any(cmd.startswith("ray::_run_on_node") for _, cmd in self.processes())

    def kill(self) -> None:
        """SIGKILL every process of the node at once, workers included, the way a machine that loses power goes."""
        self.signal(signal.SIGKILL)
        self.proc.wait(timeout=30)


@pytest.fixture
def cluster():
    """A head node with no CPU for trials and two one-CPU worker nodes, on loopback, in its own temp folder: every
    trial runs on a worker, so one can be killed mid-trial while another lives on; the test kills its own nodes."""
    temp = Path(tempfile.mkdtemp(prefix="rc", dir="/tmp"))  # short: Ray's socket paths have a length limit
    # The cluster's own token, as the README's `ray get-auth-token --generate` makes one, but in the test's folder:
    # the nodes and the driver read it from there, and the user's ~/.ray is neither needed nor touched.
    token = temp / "auth_token"
    token.write_text(secrets.token_hex(32))
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token), "RAY_USAGE_STATS_ENABLED": "0"}
    port = free_port()
    nodes: list[Node] = []
    try:
        head = ["--head", "--port", str(port), "--include-dashboard=false", "--temp-dir", str(temp)]
        nodes.append(Node([*head, "--num-cpus", "0"], temp, "head", env))
        for name in ("worker1", "worker2"):
            nodes.append(Node(["--address", f"127.0.0.1:{port}", "--num-cpus", "1"], temp, name, env))
        yield f"127.0.0.1:{port}", nodes[0], nodes[1:], env
    finally:
        for node in reversed(nodes):
            node.kill()
        shutil.rmtree(temp, ignore_errors=True)


def _gone(*nodes: Node) -> bool:
    return any(node.proc.poll() is not None for node in nodes)


def _frozen_mid_trial(workers: list[Node], exp, caught: dict) -> bool:
    """Freeze a worker node seen running a trial, and keep it frozen only if the trial is still on it: a trial
    here can take under a second, so one seen running may have finished before a kill lands."""
    for node in workers:
        if node.running_trial():
            node.signal(signal.SIGSTOP)
            if node.running_trial():
                study = study_if_made(exp)
                caught.update(node=node, numbers=[t.number for t in running(study)] if study else [])
                return True
            node.signal(signal.SIGCONT)
    return False


def test_a_sweep_survives_the_death_of_the_worker_node_running_a_trial(cluster, tmp_path):
    address, head, workers, env = cluster
    # The station shares cores here (reserve_cores: false) so that each one-CPU node can take a trial.
    path = small_experiment(
        tmp_path,
        name="cluster",
        target={"kind": "cpu", "reserve_cores": False},
        search={"sampler": "random", "trials": 3, "parallel": 2, "seed": 0, "resources": {"num_cpus": 1}},
    )
    exp = load(path)
    caught: dict = {}
    with running_cli("run", str(path), "--ray-address", address, cwd=tmp_path, env=env) as driver:
        # A trial can be short: look often (a look reads /proc, a few ms).
        wait_for(
            lambda: driver.poll() is not None or _gone(head, *workers) or _frozen_mid_trial(workers, exp, caught),
            timeout=600,
            every=0.05,
        )
        assert not _gone(head, *workers), "a node of the test's cluster died early: did something run `ray stop`?"
        assert driver.poll() is None, driver.stdout.read()[-3000:]
        caught["node"].kill()
        out, _ = driver.communicate(timeout=600)
    assert driver.returncode == 0, out[-3000:]

    study = optuna.load_study(study_name=exp.name, storage=exp.storage_url)
    done = finished(study)
    assert len(spent(study)) == 3  # exactly the budget: the trial lost with the node ran again, it did not add one
    assert caught["numbers"] and set(caught["numbers"]) <= {t.number for t in done}  # under its own number
    # Losing a node is not a plan's failure: its trial ran again, and a bench station that lived there came back
    # on a live node for the trials waiting on it.
    assert [t.number for t in done if t.state != TrialState.COMPLETE] == []
    # Each trial ran with the one CPU the file asked for, reserved by Ray.
    assert all(t.user_attrs["info"]["resources"].get("CPU") == 1 for t in done if "info" in t.user_attrs)
    import mlflow

    runs = mlflow.tracking.MlflowClient(exp.tracking_uri).search_runs(
        [mlflow.tracking.MlflowClient(exp.tracking_uri).get_experiment_by_name(exp.name).experiment_id],
        "tags.`slimsweep.role` = 'trial'",
    )
    per_trial = Counter(int(r.data.tags["optuna.trial_number"]) for r in runs)
    assert per_trial == Counter(t.number for t in done)  # one MLflow run per finished trial, none doubled


def test_each_trial_asks_for_the_resources_the_experiment_names(tmp_path):
    import ray

    from evaluators.targets import TargetSpec
    from search.executor import RayExecutor

    cpus = os.cpu_count() or 1
    # A trial that needs every CPU of the only node, with the station keeping one, fits nowhere: refused up front
    # (Ray would keep it pending forever), naming the field.
    whole = RayExecutor(address=None, num_cpus=cpus)
    with pytest.raises(ConfigError, match=rf"search.resources: a trial asks for num_cpus={cpus}, num_gpus=0"):
        whole.open_station(TargetSpec(kind="cpu", threads=1), reserve_cores=True)
    gpu = RayExecutor(address=None, num_gpus=1)
    if not ray.cluster_resources().get("GPU"):
        with pytest.raises(ConfigError, match="num_gpus=1, but no node"):
            gpu.open_station(TargetSpec(kind="cpu", threads=1), reserve_cores=False)
    # With the station sharing cores, as many one-CPU trials fit as the node has CPUs; two-CPU trials half as many.
    one = RayExecutor(address=None, num_cpus=1)
    one.open_station(TargetSpec(kind="cpu", threads=1), reserve_cores=False)
    assert one.trial_slots() == cpus
    assert RayExecutor(address=None, num_cpus=2).trial_slots() == cpus // 2


def _relu_model() -> bytes:
    """A one-node ONNX model (Relu on a 1x8 input): enough to be timed."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def test_a_bench_station_that_dies_comes_back_and_times_the_next_model(tmp_path):
    import ray

    from evaluators.latency import TimingSettings
    from evaluators.targets import TargetSpec
    from search.executor import RayExecutor

    executor = RayExecutor(address=None)
    executor.open_station(TargetSpec(kind="cpu", threads=1), reserve_cores=False)
    settings = TimingSettings(threads=1, batch_size=1, max_seconds=0.5)
    first, _ = executor.time_model(_relu_model(), settings)
    # A station lost with its node (or crashed by a model) is restarted by Ray; the callers wait for it instead of
    # failing the trial whose model it was timing.
    pid = ray.get(executor.station.__ray_call__.remote(lambda station: os.getpid()))
    os.kill(pid, signal.SIGKILL)  # the way a crash or a lost node takes it: no goodbye
    again, cached = executor.time_model(_relu_model(), settings)
    assert again.p50_ms > 0 and first.p50_ms > 0 and not cached  # a fresh station: its cache went with it


@pytest.mark.parametrize(
    "resources, message",
    [
        ({"num_cpus": 0}, "search.resources.num_cpus: Input should be greater than or equal to 1"),
        ({"num_cpus": 400}, "search.resources.num_cpus: Input should be less than or equal to 256"),
        ({"num_gpus": 1.5}, "search.resources.num_gpus: a fraction of a GPU must be below 1"),
        ({"num_gpus": 64}, "search.resources.num_gpus: Input should be less than or equal to 16"),
        ({"gpus": 1}, "search.resources.gpus: unknown key; 'gpus' is not allowed; choose one of: num_cpus, num_gpus"),
    ],
)
def test_resources_out_of_bounds_are_refused_naming_the_field(tmp_path, resources, message):
    path = small_experiment(tmp_path, search={"trials": 2, "resources": resources})
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("'", "'")):
        load(path)


def test_the_driver_presents_a_cluster_token_wherever_ray_would_find_it(tmp_path, monkeypatch):
    from search.cli import _ray_auth_for

    token = tmp_path / "auth_token"
    token.write_text(secrets.token_hex(32))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.ray/auth_token
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("RAY_AUTH_MODE", "")  # recorded, so that what the driver sets is undone after the test
    monkeypatch.delenv("RAY_AUTH_MODE")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "missing"))
    _ray_auth_for("127.0.0.1:6379")
    assert "RAY_AUTH_MODE" not in os.environ  # no token anywhere: a cluster without authentication
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token))
    _ray_auth_for(None)
    assert "RAY_AUTH_MODE" not in os.environ  # a local Ray decides for itself
    _ray_auth_for("127.0.0.1:6379")
    assert os.environ["RAY_AUTH_MODE"] == "token"
