"""What a run against ONNX Runtime's OpenVINO build found (onnxruntime-openvino 1.24 beside the CPU build's 1.32):
the OpenVINO target runs at its own thread count, `compare` times on a target's provider, a model the target cannot
run (OpenVINO rejects int8_dynamic's ConvInteger graphs) is left off a retargeted front instead of ending the run,
slimsweep imports without the CPU build's newer quantization API, and (from the server-CPU check at batch 64) a
side-by-side timing cut off by its cap says so. The suite passes without OpenVINO; where it is installed, the same
tests open real OpenVINO sessions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import small_experiment
from onnx import TensorProto, helper
from test_retarget import _dense as _dense_latest
from test_retarget import _finish, _teacher_weights

from evaluators.errors import ConfigError, SlimsweepError
from evaluators.runtime import make_session
from evaluators.targets import TargetSpec, make_target
from search.cli import main
from search.config import Target, load
from search.retarget import retarget, stored
from search.station import compare_on
from search.study import TrialRecord, open_study, record
from search.timing_cli import compare_models
from search.tracking import Tracker

OPENVINO = "OpenVINOExecutionProvider" in ort.get_available_providers()


def _dense(weights: np.ndarray) -> bytes:
    """test_retarget's dense classifier, at an IR version that onnxruntime-openvino 1.24 reads too."""
    model = onnx.load_from_string(_dense_latest(weights))
    model.ir_version = 8
    return model.SerializeToString()


def _unrunnable() -> bytes:
    """A well-formed ONNX classifier of 8x8 digits whose one operator no ONNX Runtime provider implements."""
    graph = helper.make_graph(
        [helper.make_node("NoSuchOp", ["input"], ["logits"], domain="org.slimsweep.test")],
        "unrunnable",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("org.slimsweep.test", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    return model.SerializeToString()


def test_the_openvino_target_runs_at_its_own_threads_on_the_cpu():
    # OpenVINO ignores ONNX Runtime's intra_op_num_threads: the thread count must reach it as its own option, or an
    # openvino-t2 target is timed at OpenVINO's default instead.
    for threads in (1, 3):
        target = make_target(TargetSpec("openvino", threads=threads))
        (entry,) = target.providers()
        assert entry == ("OpenVINOExecutionProvider", {"device_type": "CPU", "num_of_threads": str(threads)})
    if OPENVINO:  # the real provider accepts the options and gets the session
        providers = make_target(TargetSpec("openvino", threads=2)).providers()
        session = make_session(_dense(np.eye(64, 10)), threads=2, providers=providers)
        assert session.get_providers()[0] == "OpenVINOExecutionProvider"


def test_compare_times_on_the_target_provider_and_refuses_what_it_cannot(tmp_path: Path):
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    a.write_bytes(_dense(np.eye(64, 10)))
    b.write_bytes(_dense(np.ones((64, 10))))
    done = compare_models([a, b], kind="cpu", threads=1, max_seconds=0.5)
    assert done.to_dict()["target"] == "cpu" and [m.name for m in done.comparison.models] == ["a.onnx", "b.onnx"]
    with pytest.raises(ConfigError, match="--target 'remote'.*bench --target remote"):
        compare_models([a, b], kind="remote")
    if OPENVINO:
        assert compare_models([a, b], kind="openvino", max_seconds=0.5).to_dict()["target"] == "openvino"
    else:  # never timed on the CPU provider in OpenVINO's name: the check says what to install
        with pytest.raises(SlimsweepError, match="OpenVINOExecutionProvider.*make install-openvino"):
            compare_models([a, b], kind="openvino", max_seconds=0.5)


def test_retarget_leaves_off_a_model_the_target_cannot_run_and_says_why(tmp_path: Path, capsys):
    path = small_experiment(
        tmp_path, name="partly", constraints={"max_accuracy_drop": 100.0}, pick={"max_accuracy_drop": 100.0}
    )
    exp = load(path)
    w = _teacher_weights(exp)
    host = _finish(exp, _dense(w), [(_dense(w), 0.01), (_dense(w + 0.01), 0.02)])
    # A third trained trial whose model the target refuses (as OpenVINO refuses int8_dynamic's ConvInteger graphs).
    study = open_study(exp)
    trial = study.ask()
    (exp.out / "trials" / f"trial-{trial.number}.onnx").write_bytes(_unrunnable())
    metrics = {"accuracy": 99.0, "accuracy_drop": 0.0, "latency_p50_ms": 0.001, "latency_p95_ms": 0.001}
    metrics.update(size_mb=0.001, params=1.0)
    rec = TrialRecord(plan={"model": trial.number}, describe="unrunnable", metrics=metrics, feasible=True)
    record(study, trial, rec, values=[99.0, 0.001, 0.001], constraints={"accuracy_drop": -1.0})
    bad = str(trial.number)

    lines: list[str] = []
    tracker = Tracker(exp.tracking_uri, exp.name, exp.out / "mlartifacts")
    done = retarget(exp, open_study(exp), Target(kind="cpu"), tracker, compare_seconds=0.5, say=lines.append)

    kept = stored(open_study(exp), done.view.slug)
    assert set(kept["models"]) == {str(n) for n in host} and bad in kept["not_runnable"]
    assert "NoSuchOp" in kept["not_runnable"][bad]
    assert int(bad) not in {c.trial for c in done.view.models} and done.choice.candidate.trial in host
    said = "\n".join(lines)
    assert f"could not run on {done.view.slug} and are left off its front (trials {bad}; scheme " in said, said
    card = json.loads(done.card_path.read_text())
    assert "NoSuchOp" in card["not_runnable"][bad]
    # The card says what timed there and that a session falling back to another provider is never timed.
    assert card["timed_with"]["providers"] == ["CPUExecutionProvider"] and card["timed_with"]["onnxruntime"]
    assert "CPUExecutionProvider first" in card["provider_checked"]
    # `front --target` says both too, from the study.
    capsys.readouterr()
    assert main(["front", str(path), "--target", done.view.slug, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert bad in shown["not_runnable"] and shown["timed_with"]["providers"] == ["CPUExecutionProvider"]
    assert main(["front", str(path), "--target", done.view.slug]) == 0
    out = capsys.readouterr().out
    assert "timed with CPUExecutionProvider" in out and f"left off this front: trials {bad}" in out, out

    # Again: what was timed is kept (the teacher too); only the refused model is tried again.
    lines.clear()
    again = retarget(exp, open_study(exp), Target(kind="cpu"), tracker, say=lines.append)
    assert again.timed == 0 and again.choice.candidate.trial == done.choice.candidate.trial
    assert not any(line.startswith("timing ") for line in lines) and any("trying again" in line for line in lines)
    assert stored(open_study(exp), done.view.slug)["teacher"] == kept["teacher"]


def test_a_teacher_the_target_cannot_run_ends_retarget_saying_so(tmp_path: Path):
    path = small_experiment(tmp_path, name="noteacher", constraints={"max_accuracy_drop": 100.0})
    exp = load(path)
    _finish(exp, _dense(_teacher_weights(exp)), [(_dense(_teacher_weights(exp)), 0.01)])
    (exp.out / "teacher.onnx").write_bytes(_unrunnable())
    tracker = Tracker(exp.tracking_uri, exp.name, exp.out / "mlartifacts")
    with pytest.raises(SlimsweepError, match="the fp32 teacher cannot run on target 'cpu' .*NoSuchOp"):
        retarget(exp, open_study(exp), Target(kind="cpu"), tracker, compare_seconds=0.5)


def test_slimsweep_imports_on_a_build_without_the_calibration_cache():
    # onnxruntime-openvino 1.24 has no calibrate.save_tensors_data (the CPU build's 1.32 has): every command died on
    # import. Now they load, and a static int8 scheme calibrates through quantize_static's own data reader.
    code = (
        "import onnxruntime.quantization.calibrate as c; vars(c).pop('save_tensors_data', None)\n"
        "import search.cli, search.resync, search.retarget\n"
        "import numpy as np, onnx\n"
        "from spaces.quantization import quantize\n"
        f"model = {_dense(np.eye(64, 10))!r}\n"
        "int8 = quantize(model, 'int8_static_qdq', np.random.default_rng(0).random((4, 1, 8, 8), np.float32))\n"
        "print(sorted({n.op_type for n in onnx.load_from_string(int8).graph.node}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "QuantizeLinear" in done.stdout, done.stdout


def test_a_side_by_side_timing_cut_off_by_its_cap_is_said_and_timed_again_on_request(tmp_path: Path):
    # At batch 64 on a busy 2-core machine the side-by-side timing ended at its cap with intervals so wide that
    # every member tied, and the slowest one won on size, with nothing said. Here a 0.2 s cap cannot reach the
    # verification's 30 rounds, so the intervals never narrow.
    path = small_experiment(tmp_path, name="loose", constraints={"max_accuracy_drop": 100.0})
    exp = load(path)
    w = _teacher_weights(exp)
    _finish(exp, _dense(w), [(_dense(w), 0.01), (_dense(w + 0.01), 0.02)])
    tracker = Tracker(exp.tracking_uri, exp.name, exp.out / "mlartifacts")
    handed: list[list[str]] = []

    def retime(models, names, settings):
        handed.append(list(names))
        return compare_on(make_target(TargetSpec("cpu")), models, names, settings)

    def run(seconds: float | None) -> tuple[list[str], Path]:
        lines: list[str] = []
        done = retarget(exp, open_study(exp), Target(kind="cpu"), tracker, compare_seconds=seconds, retime=retime,
                        say=lines.append)  # fmt: skip
        return lines, done.card_path

    lines, card_path = run(0.2)
    assert len(handed) == 1 and any("reached its time cap" in line and "--seconds" in line for line in lines), lines
    assert json.loads(card_path.read_text())["side_by_side"]["intervals_narrowed"] is False
    lines, _ = run(None)  # resumed: the same members are not timed again unasked, and the warning stays
    assert len(handed) == 1 and any("reached its time cap" in line for line in lines)
    run(0.2)  # the same cap again: nothing new to learn
    assert len(handed) == 1
    run(0.4)  # a larger --seconds: timed side by side again
    assert len(handed) == 2


def test_a_target_timed_by_another_runtime_before_is_timed_again(tmp_path: Path):
    # `make install-openvino` replaces ONNX Runtime 1.32 by 1.24 under the same target names (cpu-t2-b64 among
    # them): a resumed retarget must not hand over the other runtime's timings as this one's.
    path = small_experiment(tmp_path, name="upgraded", constraints={"max_accuracy_drop": 100.0})
    exp = load(path)
    w = _teacher_weights(exp)
    host = _finish(exp, _dense(w), [(_dense(w), 0.01), (_dense(w + 0.01), 0.02)])
    tracker = Tracker(exp.tracking_uri, exp.name, exp.out / "mlartifacts")
    first = retarget(exp, open_study(exp), Target(kind="cpu"), tracker, compare_seconds=0.5)
    assert first.timed == len(host)
    study = open_study(exp)
    key = "slimsweep.retarget:" + first.view.slug
    kept = dict(study.user_attrs[key])
    kept["runtime"] = {**kept["runtime"], "onnxruntime": "0.0.1"}  # as another build left it
    study.set_user_attr(key, kept)

    lines: list[str] = []
    again = retarget(exp, open_study(exp), Target(kind="cpu"), tracker, compare_seconds=0.5, say=lines.append)
    assert again.timed == len(host), lines
    assert any("onnxruntime 0.0.1" in line and "timing it again" in line for line in lines), lines
    assert stored(open_study(exp), first.view.slug)["runtime"]["onnxruntime"] == ort.__version__
    assert retarget(exp, open_study(exp), Target(kind="cpu"), tracker).timed == 0  # the same runtime: resumed
