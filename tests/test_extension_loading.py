"""Extensions load only in the commands that read an experiment file, and a broken one is a one-line error that
names it (exit 2), never a traceback. Each command runs as the real console script in a fresh process."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from conftest import BIN, free_port, small_experiment, wait_for

from evaluators.errors import SlimsweepError
from evaluators.remote import AgentClient

TOKEN = "an-agent-token-of-32-characters!"


def _relu(path: Path) -> Path:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
    )
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    return path


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """A folder with a marker extension (writes `imported` when loaded) and a broken one, in ext/ (on PYTHONPATH)."""
    ext = tmp_path / "ext"
    ext.mkdir()
    (ext / "marker_ext.py").write_text(f"open({str(tmp_path / 'imported')!r}, 'w').write('yes')\n")
    (ext / "broken_ext.py").write_text("ready = True\nraise RuntimeError('the extension wants a GPU it cannot see')\n")
    return tmp_path


def _cli(work: Path, *args: str, extensions: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "SLIMSWEEP_EXTENSIONS": extensions, "PYTHONPATH": str(work / "ext")}
    return subprocess.run(
        [str(BIN / "slimsweep"), *args], cwd=work, env=env, capture_output=True, text=True, timeout=300
    )


def test_version_bench_and_compare_import_no_extension(work: Path) -> None:
    model = _relu(work / "m.onnx")
    for args in (["--version"], ["bench", str(model), "--max-seconds", "0.2"], ["compare", str(model), str(model)]):
        done = _cli(work, *args, extensions="marker_ext,broken_ext")
        assert "Traceback" not in done.stderr
        assert not (work / "imported").exists(), args
    assert _cli(work, "--version", extensions="broken_ext").stdout.startswith("slimsweep ")


def test_the_agent_imports_no_extension(work: Path) -> None:
    token = work / "token"
    token.write_text(TOKEN)
    token.chmod(0o600)
    port = free_port()
    env = {**os.environ, "SLIMSWEEP_EXTENSIONS": "marker_ext,broken_ext", "PYTHONPATH": str(work / "ext")}
    agent = subprocess.Popen(
        [str(BIN / "slimsweep"), "agent", "--port", str(port), "--token-file", str(token)],
        cwd=work,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    client = AgentClient(f"http://127.0.0.1:{port}", TOKEN, timeout=5)

    def up() -> bool:
        assert agent.poll() is None, agent.stderr.read()
        try:
            return client.info()["agent"]["protocol"] == 1
        except SlimsweepError:
            return False

    try:
        wait_for(up, timeout=120, every=0.2)
    finally:
        agent.terminate()
        agent.wait(timeout=60)
    assert not (work / "imported").exists()


def test_a_command_that_reads_an_experiment_file_loads_the_extensions(work: Path) -> None:
    path = small_experiment(work, name="ext")
    done = _cli(work, "front", str(path), extensions="marker_ext")
    assert "no sweep found" in done.stderr  # it went on past the extensions to the study
    assert (work / "imported").read_text() == "yes"


def test_a_broken_extension_module_is_one_line_naming_it(work: Path) -> None:
    path = small_experiment(work, name="ext")
    done = _cli(work, "status", str(path), extensions="marker_ext,broken_ext")
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        "error: SLIMSWEEP_EXTENSIONS: extension module 'broken_ext' failed to import: RuntimeError: the extension "
        "wants a GPU it cannot see (broken_ext.py, line 2); fix it or remove it from SLIMSWEEP_EXTENSIONS"
    ]


def test_a_broken_entry_point_names_the_extension_and_its_package(work: Path) -> None:
    """An installed package (its dist-info on PYTHONPATH, as site-packages would hold it) whose entry point raises."""
    (work / "ext" / "broken_point.py").write_text("LIMIT = 1 / 0\n")
    dist = work / "ext" / "broken_pkg-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-pkg\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[slimsweep.extensions]\nbroken = broken_point\n")
    path = small_experiment(work, name="ext")
    done = _cli(work, "run", str(path), "--dry-run")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("error: extension 'broken' (broken_point, entry point slimsweep.extensions of the ")
    assert "package 'broken-pkg') failed to load: ZeroDivisionError: division by zero (broken_point.py, line 1)" in line


def test_a_stray_dist_info_in_the_current_folder_is_no_extension(work: Path) -> None:
    """Entry points come from installed packages: one declared by a `*.dist-info` in the folder a command runs in
    (on sys.path when run as `python -m`) is not loaded, in the driver as in Ray's workers."""
    stray = work / "stray-1.0.dist-info"
    stray.mkdir()
    (stray / "METADATA").write_text("Metadata-Version: 2.1\nName: stray\nVersion: 1.0\n")
    (stray / "entry_points.txt").write_text("[slimsweep.extensions]\nstray = marker_ext\n")
    path = small_experiment(work, name="ext")
    env = {**os.environ, "SLIMSWEEP_EXTENSIONS": "", "PYTHONPATH": str(work / "ext")}
    done = subprocess.run(
        [str(BIN / "python"), "-m", "search.cli", "front", str(path)],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "no sweep found" in done.stderr, done.stderr
    assert not (work / "imported").exists()
