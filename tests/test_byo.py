"""Bring your own: a plugin task with an unseen network, an ONNX-only task, the shipped MNIST files, end to end."""

from __future__ import annotations

import numpy as np
import onnx
import optuna
import torch
import yaml

from experiments.tasks import digits
from search.cli import main
from search.config import load
from search.study import baseline, finished, read
from spaces.export import to_onnx
from spaces.students import CNN, Distillation, train


def _study(exp):
    return optuna.load_study(study_name=exp.name, storage=exp.storage_url)


def _write(path, data):
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_a_plugin_task_with_residual_concat_and_depthwise_layers_sweeps_end_to_end(tmp_path):
    path = _write(
        tmp_path / "plugin.yaml",
        {
            "name": "plugin",
            "task": {"name": "plugin", "entry": "experiments.plugins.tinynet:make_task", "options": {"epochs": 4}},
            "space": {
                "students": {"teacher": True, "cnn": None},
                "pruning": {"ratio": [0.5], "importance": ["l2", "taylor"], "recover_epochs": 1},
                # Three trials that each prune and train: with models made on the way (tested on their own), the two
                # importances are this space's only trainings, and the sweep answers its other asks from them.
                "quantization": {"schemes": ["fp32", "int8_static_qdq"], "on_the_way": False},
            },
            "constraints": {"max_accuracy_drop": 50.0},
            "search": {"sampler": "random", "trials": 3, "parallel": 2, "seed": 0},
            "pick": {"max_accuracy_drop": 50.0, "verify_seconds": 1.0},  # any pick has the layers checked below
            "output_dir": str(tmp_path / "outputs"),
        },
    )
    assert main(["run", str(path), "--quiet"]) == 0
    exp = load(path)
    done = finished(_study(exp))
    assert len(done) == 3 and all(t.state.name == "COMPLETE" for t in done)
    for t in done:
        info = read(t).info
        # Channels really went: the residual add and the concatenation were pruned consistently, and it ran.
        assert info["channels"] < info["channels_before_pruning"]
        assert read(t).metrics["accuracy"] > 30
    model = onnx.load(str(exp.out / "deployable.onnx"))
    ops = {n.op_type for n in model.graph.node}
    assert "Concat" in ops and "Add" in ops


def test_an_onnx_only_task_searches_the_quantization_knobs(tmp_path):
    data = digits(0)
    torch.manual_seed(0)
    model = CNN(1, 10, width=0.5, depth=1)
    train(model, data.x_train, data.y_train, Distillation(epochs=4, alpha=0.0))
    (tmp_path / "model.onnx").write_bytes(to_onnx(model.eval(), torch.from_numpy(data.x_val[:1])))
    np.savez(tmp_path / "data.npz", x_calib=data.x_calib, x_val=data.x_val, y_val=data.y_val)
    path = _write(
        tmp_path / "onnx.yaml",
        {
            "name": "onnx-only",
            "task": {"name": "onnx", "model": str(tmp_path / "model.onnx"), "data": str(tmp_path / "data.npz")},
            "space": {
                "students": {"teacher": True, "cnn": None},
                "pruning": {"ratio": [0.0]},
                "quantization": {"schemes": ["fp32", "int8_static_qdq", "int8_dynamic"]},
            },
            "constraints": {"max_accuracy_drop": 5.0},
            "search": {"sampler": "random", "trials": 3, "parallel": 2, "seed": 1},
            "pick": {"max_accuracy_drop": 5.0, "verify_seconds": 1.0},  # the pick is not looked at
            "output_dir": str(tmp_path / "outputs"),
        },
    )
    assert main(["run", str(path), "--quiet"]) == 0
    exp = load(path)
    study = _study(exp)
    done = finished(study)
    assert len(done) == 3
    for t in done:
        assert set(t.params) <= {"quantization.scheme"}  # nothing but quantization was searched
        plan = read(t).plan
        assert plan["student.kind"] == "teacher" and plan["pruning.ratio"] == 0.0
        assert all(k.startswith("quantization.") for k in set(plan) - {"student.kind", "pruning.ratio"})
    teacher = baseline(study).teacher
    assert abs(teacher["size_mb"] - (tmp_path / "model.onnx").stat().st_size / 1e6) < 1e-9  # the user's own model


def test_an_onnx_only_task_refuses_other_knobs(tmp_path, capsys):
    path = _write(
        tmp_path / "bad.yaml",
        {
            "name": "bad",
            "task": {"name": "onnx", "model": __file__, "data": __file__},
            "space": {"pruning": {"ratio": [0.0, 0.5]}},
        },
    )
    assert main(["run", str(path)]) == 2
    assert "quantization only" in capsys.readouterr().err


def test_the_shipped_mnist_files_sweep(tmp_path):
    path = _write(
        tmp_path / "mnist.yaml",
        {
            "name": "mnist-small",
            # A half-width teacher: a quarter of the default's convolution work, and 95% on these 1500 samples after 4
            # epochs (the default width reached 93% after 3). The students' accuracy is not looked at: one epoch each.
            "task": {"name": "mnist-idx", "limit": 1500, "teacher": {"epochs": 4, "width": 0.5}},
            "space": {
                "students": {"teacher": True, "cnn": {"width": [0.25], "depth": [1], "epochs": 1}},
                "pruning": {"ratio": [0.0]},
                "quantization": {"schemes": ["fp32"]},
            },
            "constraints": {"max_accuracy_drop": 100.0},
            # Every plan trained whole: the rung rule (on by default) is tested on its own; here, the MNIST files.
            "search": {"sampler": "random", "trials": 2, "parallel": 2, "seed": 0, "early_stopping": {"rungs": []}},
            "pick": {"max_accuracy_drop": 100.0, "verify_seconds": 1.0},  # the pick is not looked at
            "output_dir": str(tmp_path / "outputs"),
        },
    )
    assert main(["run", str(path), "--quiet"]) == 0
    exp = load(path)
    study = _study(exp)
    assert len(finished(study)) == 2
    assert baseline(study).input_shape == [1, 28, 28]
    assert baseline(study).teacher["accuracy"] > 80  # a real MNIST teacher, not chance
