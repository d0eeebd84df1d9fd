"""Nothing runs that the user did not install or ask for: a sweep started from a folder holding an `onnx.py` and a
stray `*.dist-info` that declares a slimsweep extension imports neither, in the driver, the trial workers or the bench
station; the local Ray listens on loopback only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# The driver: a real RayExecutor started from the launch folder (its current folder), its bench station timing a
# model, and a task that asks a worker what it sees (onnx imported, the extensions loaded).
DRIVER = r"""
import json, os, sys
import ray
import psutil  # after ray, which ships it
from onnx import TensorProto, helper

from evaluators.latency import TimingSettings
from evaluators.targets import TargetSpec
from search.executor import RayExecutor

graph = helper.make_graph(
    [helper.make_node("Relu", ["x"], ["y"])], "relu",
    [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
executor = RayExecutor(address=None)
executor.open_station(TargetSpec(kind="cpu", threads=1), reserve_cores=False)
stats, _ = executor.time_model(model, TimingSettings(threads=1, batch_size=1, max_seconds=0.3))


@ray.remote
def look():
    from evaluators.registry import installed_entry_points, load_extensions

    load_extensions()
    import onnx
    try:
        import my_plugin
        plugin = my_plugin.__file__
    except ImportError:
        plugin = None
    return {"cwd": os.getcwd(), "path": sys.path, "onnx": onnx.__file__, "plugin": plugin,
            "points": [p.name for p in installed_entry_points()]}


seen = ray.get(look.remote())
me = psutil.Process()
listening = sorted(
    {(c.laddr.ip, p.name()) for p in [me, *me.children(recursive=True)]
     for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}
)
print("RESULT " + json.dumps({**seen, "p50_ms": stats.p50_ms, "listening": listening}))
ray.shutdown()
"""

STRAY_ENTRY_POINTS = "[slimsweep.extensions]\nstray = stray_extension\n"


def _launch_folder(tmp_path: Path) -> Path:
    """A folder with files that must never run: each writes a marker when imported."""
    launch = tmp_path / "launch"
    launch.mkdir()
    for name in ("onnx", "stray_extension"):
        marker = tmp_path / f"ran-{name}"
        (launch / f"{name}.py").write_text(f"open({str(marker)!r}, 'w').write('imported')\n")
    dist = launch / "stray-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: stray\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(STRAY_ENTRY_POINTS)
    (launch / "my_plugin.py").write_text("TASK = 'a plugin task kept beside the experiment file'\n")
    return launch


def _drive(tmp_path: Path, launch: Path, **env: str) -> dict:
    """Run DRIVER with the launch folder as its current folder; -P: Python itself puts no folder of it first."""
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    done = subprocess.run(
        [sys.executable, "-P", str(script)],
        cwd=launch,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (line,) = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    return json.loads(line.removeprefix("RESULT "))


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    tmp_path = tmp_path_factory.mktemp("plain")
    launch = _launch_folder(tmp_path)
    return tmp_path, launch, _drive(tmp_path, launch)


def test_workers_import_nothing_from_the_folder_a_sweep_was_started_in(plain) -> None:
    tmp_path, launch, seen = plain
    assert not (tmp_path / "ran-onnx").exists()  # not in the driver, the station or the worker
    assert not (tmp_path / "ran-stray_extension").exists()
    assert seen["p50_ms"] > 0  # the station timed a model: the sweep's machinery works
    assert Path(seen["onnx"]).parent.parent.name == "site-packages"
    assert str(launch) not in seen["path"] and "" not in seen["path"]
    assert Path(seen["cwd"]).resolve() != launch.resolve()  # workers start in a folder of slimsweep's own
    assert seen["plugin"] is None and "stray" not in seen["points"]


def test_the_local_ray_listens_on_loopback_only(plain) -> None:
    _, _, seen = plain
    addresses = {ip for ip, _ in seen["listening"]}
    assert {name for _, name in seen["listening"]} >= {"gcs_server", "raylet"}  # the servers were seen at all
    assert addresses <= {"127.0.0.1", "::ffff:127.0.0.1", "::1"}, seen["listening"]


def test_a_plugin_tasks_folder_comes_after_the_installed_packages(tmp_path: Path) -> None:
    """A plugin task's module may live in the launch folder (search.cli._importable_here names it): workers find
    it there, but only after the installed packages, and the folder's stray dist-info is still no extension."""
    launch = _launch_folder(tmp_path)
    seen = _drive(tmp_path, launch, SLIMSWEEP_LAUNCH_FOLDER=str(launch))
    assert seen["plugin"] == str(launch / "my_plugin.py")
    installed = next(i for i, p in enumerate(seen["path"]) if p.endswith("site-packages"))
    assert seen["path"].index(str(launch)) > installed
    assert Path(seen["onnx"]).parent.parent.name == "site-packages"
    assert "stray" not in seen["points"]
    assert not (tmp_path / "ran-onnx").exists() and not (tmp_path / "ran-stray_extension").exists()
