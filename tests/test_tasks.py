"""Tasks on real files: the shipped MNIST test set, a CIFAR-10-format folder, an image folder, a plugin module,
teacher checkpoints in three formats and an ONNX-only task, all written by the tests themselves (no downloads)."""

from __future__ import annotations

import gzip
import hashlib
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
import yaml
from PIL import Image
from torch import nn

import experiments
from evaluators.accuracy import predict
from evaluators.errors import ConfigError
from experiments.readers import DataError, read_idx
from experiments.schema import SHIPPED_MNIST, TeacherSpec, parse_task
from experiments.tasks import Task, load_task
from experiments.teacher import resolve_teacher, teacher_from_bytes, teacher_to_bytes
from spaces.export import to_onnx

pytestmark = pytest.mark.fast

# ---------------------------------------------------------------- the shipped MNIST test set (IDX files)


def test_shipped_mnist_files_are_the_published_ones_with_their_attribution():
    readme = (SHIPPED_MNIST / "README.md").read_text()
    assert "LeCun" in readme and "Creative Commons Attribution-Share Alike 3.0" in readme
    for name, md5 in re.findall(r"\| (t10k-\S+\.gz) \| ([0-9a-f]{32}) \|", readme):
        assert hashlib.md5((SHIPPED_MNIST / name).read_bytes()).hexdigest() == md5
    images = read_idx(SHIPPED_MNIST / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(SHIPPED_MNIST / "t10k-labels-idx1-ubyte.gz")
    assert images.shape == (10_000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10_000,) and sorted(np.unique(labels)) == list(range(10))


def test_mnist_idx_splits_the_shipped_set_three_ways_seeded_and_stratified():
    task = load_task({"name": "mnist-idx", "seed": 0})
    d = task.data
    assert (d.name, d.input_shape, d.num_classes) == ("mnist-idx", (1, 28, 28), 10)
    assert (len(d.x_train), len(d.x_calib), len(d.x_val)) == (7_500, 500, 2_000)
    x_all = np.concatenate([d.x_train, d.x_calib, d.x_val])
    y_all = np.concatenate([d.y_train, d.y_calib, d.y_val])
    assert x_all.dtype == np.float32 and 0.0 <= x_all.min() and x_all.max() <= 1.0
    # The three parts are the whole set, each image once: same label counts and same pixel total as the file.
    raw_images = read_idx(SHIPPED_MNIST / "t10k-images-idx3-ubyte.gz")
    raw_labels = read_idx(SHIPPED_MNIST / "t10k-labels-idx1-ubyte.gz")
    assert np.array_equal(np.bincount(y_all), np.bincount(raw_labels))
    assert np.isclose(x_all.sum(dtype=np.float64), raw_images.sum(dtype=np.float64) / 255.0)
    # Stratified: every class is in the calibration split in about its share.
    assert np.bincount(d.y_calib, minlength=10).min() >= 35
    assert task.teacher is None and task.teacher_spec == TeacherSpec() and task.onnx_model is None

    again = load_task({"name": "mnist-idx", "seed": 0}).data
    other = load_task({"name": "mnist-idx", "seed": 1}).data
    assert np.array_equal(again.x_val, d.x_val) and np.array_equal(again.y_train, d.y_train)
    assert not np.array_equal(other.y_val, d.y_val)


def test_mnist_idx_limit_keeps_a_stratified_subsample_with_its_own_teacher_key():
    small = load_task({"name": "mnist-idx", "limit": 400, "seed": 0})
    d = small.data
    assert len(d.x_train) + len(d.x_calib) + len(d.x_val) == 400
    assert set(np.unique(d.y_val)) == set(range(10))
    assert small.cache_key != load_task({"name": "mnist-idx", "limit": 500}).cache_key


def _write_idx(path: Path, magic: bytes, dims: tuple[int, ...], data: bytes, *, compress: bool = True) -> None:
    raw = magic + b"".join(d.to_bytes(4, "big") for d in dims) + data
    path.write_bytes(gzip.compress(raw) if compress else raw)


def test_a_folder_of_own_idx_files_loads_gzipped_or_raw(tmp_path):
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (60, 6, 5), dtype=np.uint8), np.arange(60, dtype=np.uint8) % 3
    _write_idx(tmp_path / "mine-images-idx3-ubyte", b"\x00\x00\x08\x03", images.shape, images.tobytes(), compress=False)
    _write_idx(tmp_path / "mine-labels-idx1-ubyte.gz", b"\x00\x00\x08\x01", labels.shape, labels.tobytes())
    d = load_task({"name": "mnist-idx", "path": str(tmp_path)}).data
    assert d.input_shape == (1, 6, 5) and d.num_classes == 3
    assert np.array_equal(np.bincount(np.concatenate([d.y_train, d.y_calib, d.y_val])), [20, 20, 20])
    # Every image of the file is in exactly one split, unchanged (bytes -> [0, 1] -> bytes).
    x_all = np.concatenate([d.x_train, d.x_calib, d.x_val])
    got = sorted((x[0] * 255).round().astype(np.uint8).tobytes() for x in x_all)
    assert got == sorted(image.tobytes() for image in images)


def test_a_train_set_and_a_test_set_of_idx_files_keep_the_official_split(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 90), ("t10k", 30)):
        images, labels = rng.integers(0, 256, (n, 4, 4), dtype=np.uint8), np.arange(n, dtype=np.uint8) % 3
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", b"\x00\x00\x08\x03", images.shape, images.tobytes())
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", b"\x00\x00\x08\x01", labels.shape, labels.tobytes())
    d = load_task({"name": "mnist-idx", "path": str(tmp_path)}).data
    assert np.array_equal((d.x_val[:, 0] * 255).round().astype(np.uint8), images)  # the test set validates, as is
    assert len(d.x_train) + len(d.x_calib) == 90 and len(d.x_calib) >= 3


@pytest.mark.parametrize(
    "damage, message",
    [
        ("truncated", "truncated or corrupt: its header declares shape (10000,)"),
        ("bad magic", "not an IDX file: it starts with 0x504b0304"),
        ("cut gzip", "a damaged or truncated gzip file"),
    ],
)
def test_a_damaged_idx_file_is_refused_naming_the_file(tmp_path, damage, message):
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes((SHIPPED_MNIST / "t10k-images-idx3-ubyte.gz").read_bytes())
    labels = gzip.decompress((SHIPPED_MNIST / "t10k-labels-idx1-ubyte.gz").read_bytes())
    bad = tmp_path / "t10k-labels-idx1-ubyte.gz"
    if damage == "truncated":
        bad.write_bytes(gzip.compress(labels[:-100]))
    elif damage == "bad magic":
        bad.write_bytes(gzip.compress(b"PK\x03\x04" + labels[4:]))
    else:
        bad.write_bytes(gzip.compress(labels)[:-40])
    with pytest.raises(DataError) as info:
        load_task({"name": "mnist-idx", "path": str(tmp_path)})
    assert str(bad) in str(info.value) and message in str(info.value)


# ---------------------------------------------------------------- CIFAR-10 through torchvision


def _cifar_folder(root: Path, per_class_train: int = 1, test_per_class: int = 2) -> dict[str, np.ndarray]:
    """A CIFAR-10-format folder (five train batches, a test batch, batches.meta), pickled like the real one."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    written = {}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        n = per_class_train if name != "test_batch" else test_per_class
        labels = [c for c in range(10) for _ in range(n)]
        data = rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8)
        with open(folder / name, "wb") as f:
            pickle.dump({"batch_label": name, "labels": labels, "data": data, "filenames": []}, f)
        written[name] = data
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump(
            {
                "label_names": [
                    "airplane",
                    "automobile",
                    "bird",
                    "cat",
                    "deer",
                    "dog",
                    "frog",
                    "horse",
                    "ship",
                    "truck",
                ],
                "num_cases_per_batch": 10,
                "num_vis": 3072,
            },
            f,
        )
    return written


def _trust_written_cifar(monkeypatch, root: Path) -> None:
    # torchvision checks each batch file against the md5 of the real CIFAR-10 files, which no file a test writes
    # can match. The check itself stays on: it is pointed at the sums of the files this test wrote (so a changed
    # byte still fails it, see below); CIFAR10 reads the files exactly as it reads the real ones.
    from torchvision.datasets import CIFAR10

    folder = root / CIFAR10.base_folder

    def md5(name: str) -> str:
        return hashlib.md5((folder / name).read_bytes()).hexdigest()

    monkeypatch.setattr(CIFAR10, "train_list", [[name, md5(name)] for name, _ in CIFAR10.train_list])
    monkeypatch.setattr(CIFAR10, "test_list", [[name, md5(name)] for name, _ in CIFAR10.test_list])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": md5(CIFAR10.meta["filename"])})


def test_cifar10_reads_a_cifar_format_folder_through_torchvision(tmp_path, monkeypatch):
    written = _cifar_folder(tmp_path, per_class_train=4)
    _trust_written_cifar(monkeypatch, tmp_path)
    task = load_task({"name": "cifar10", "root": str(tmp_path), "seed": 0})
    d = task.data
    assert (d.name, d.input_shape, d.num_classes) == ("cifar10", (3, 32, 32), 10)
    # The official test batch validates; calibration comes out of the 200 training images.
    assert len(d.x_val) == 20 and len(d.x_train) + len(d.x_calib) == 200 and len(d.x_calib) == 10
    first = written["test_batch"][0].reshape(3, 32, 32)  # CIFAR rows are channel-major: R plane, G, B
    assert np.array_equal((d.x_val[0] * 255).round().astype(np.uint8), first) and d.y_val[0] == 0
    assert d.x_train.dtype == np.float32 and d.x_train.max() <= 1.0


def test_cifar10_integrity_check_still_refuses_a_changed_file(tmp_path, monkeypatch):
    _cifar_folder(tmp_path)
    _trust_written_cifar(monkeypatch, tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:-1] + b"\x00")
    with pytest.raises(DataError, match="CIFAR-10 not found or corrupted.*download: true"):
        load_task({"name": "cifar10", "root": str(tmp_path)})


def test_cifar10_without_download_needs_an_existing_root(tmp_path):
    with pytest.raises(ConfigError, match=r"task\.root: no such folder .*set download: true"):
        parse_task({"name": "cifar10", "root": str(tmp_path / "nowhere")})
    assert parse_task({"name": "cifar10", "root": str(tmp_path / "nowhere"), "download": True}).download


# ---------------------------------------------------------------- an image folder


def _image_folder(root: Path, colours: dict[str, tuple[int, int, int]], per_class: int = 10) -> Path:
    for name, colour in colours.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (12 + i, 10), colour).save(root / name / f"{i}.png")
    return root


@pytest.mark.parametrize("grayscale", [False, True])
def test_imagefolder_resizes_to_float_chw_with_one_class_per_folder(tmp_path, grayscale):
    root = _image_folder(tmp_path / "pets", {"cat": (255, 0, 0), "dog": (0, 0, 255)})
    task = load_task({"name": "imagefolder", "root": str(root), "image_size": 8, "grayscale": grayscale})
    d = task.data
    channels = 1 if grayscale else 3
    assert (d.input_shape, d.num_classes) == ((channels, 8, 8), 2)
    assert len(d.x_train) + len(d.x_calib) + len(d.x_val) == 20 and min(len(d.x_calib), len(d.x_val)) >= 2
    x = np.concatenate([d.x_train, d.x_calib, d.x_val])
    y = np.concatenate([d.y_train, d.y_calib, d.y_val])
    assert x.dtype == np.float32 and np.bincount(y).tolist() == [10, 10]
    cat, dog = x[y == 0], x[y == 1]  # classes in sorted folder order
    if grayscale:  # PIL's luma: L = 0.299 R + 0.587 G + 0.114 B, rounded
        assert np.allclose(cat, round(0.299 * 255) / 255, atol=1 / 255) and np.allclose(dog, 29 / 255, atol=1 / 255)
    else:
        assert np.allclose(cat[:, 0], 1.0) and np.allclose(cat[:, 1:], 0.0) and np.allclose(dog[:, 2], 1.0)


def test_imagefolder_limit_and_a_wrong_root(tmp_path):
    root = _image_folder(tmp_path / "pets", {"a": (1, 2, 3), "b": (4, 5, 6)}, per_class=20)
    d = load_task({"name": "imagefolder", "root": str(root), "image_size": 8, "limit": 20}).data
    assert len(d.x_train) + len(d.x_calib) + len(d.x_val) == 20
    with pytest.raises(DataError, match="not an image folder"):
        load_task({"name": "imagefolder", "root": str(tmp_path / "pets" / "a"), "image_size": 8})


# ---------------------------------------------------------------- a plugin module:function

PLUGIN = """
import numpy as np
import torch
from torch import nn

from experiments.tasks import Task, TaskData


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(torch.flatten(x, 1))


def arrays(n=30, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    x = (rng.random((n, 16)) * scale).astype(np.float32)  # flat: input_shape says how to read them
    y = np.arange(n) % 3
    return x, y


def as_dict(seed, scale=1.0):
    x, y = arrays(seed=seed, scale=scale)
    return {"x_train": x[:18], "y_train": y[:18], "x_calib": x[18:24], "y_calib": y[18:24],
            "x_val": x[24:], "y_val": y[24:], "teacher": Net(), "input_shape": (1, 4, 4), "name": "own"}


def data_only(seed):
    out = as_dict(seed)
    del out["teacher"]
    return out


def as_task():
    x, y = arrays()
    x = x.reshape(-1, 1, 4, 4)
    return Task(TaskData("own", x[:18], y[:18], x[18:24], y[18:24], x[24:], y[24:], 3), teacher=Net())


def wrong():
    return [1, 2, 3]


def broken(**options):
    raise KeyError("no such table")
"""


@pytest.fixture
def plugin(tmp_path, monkeypatch, request) -> str:
    """A plugin module the test writes, importable under a name of its own."""
    name = f"slimsweep_plugin_{request.node.name.replace('[', '_').replace(']', '').replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def test_plugin_returns_arrays_a_teacher_and_the_input_shape(plugin):
    task = load_task({"name": "plugin", "entry": f"{plugin}:as_dict", "options": {"scale": 0.5}, "seed": 7})
    module = sys.modules[plugin]
    d = task.data
    assert (d.name, d.input_shape, d.num_classes) == ("own", (1, 4, 4), 3)
    assert (len(d.x_train), len(d.x_calib), len(d.x_val)) == (18, 6, 6)
    x, _ = module.arrays(seed=7, scale=0.5)  # the seed reached the function, the options too
    assert np.array_equal(d.x_val.reshape(6, 16), x[24:])
    assert isinstance(task.teacher, module.Net) and task.teacher_spec is None and task.seed == 7
    assert resolve_teacher(task)[0] is task.teacher


def test_plugin_returns_a_task_or_data_only_with_the_configured_teacher(plugin):
    task = load_task({"name": "plugin", "entry": f"{plugin}:as_task"})
    assert isinstance(task, Task) and task.data.input_shape == (1, 4, 4) and task.teacher is not None
    data_only = load_task(
        {"name": "plugin", "entry": f"{plugin}:data_only", "teacher": {"width": 0.25, "depth": 1, "epochs": 1}}
    )
    assert data_only.teacher is None and data_only.teacher_spec.width == 0.25


def test_plugin_mistakes_are_named(plugin):
    with pytest.raises(ConfigError, match=r"task\.entry: no module named 'no_such_plugin_mod'"):
        load_task({"name": "plugin", "entry": "no_such_plugin_mod:make"})
    with pytest.raises(ConfigError, match=r"has no function 'as_dikt' \(did you mean 'as_dict'\?\)"):
        load_task({"name": "plugin", "entry": f"{plugin}:as_dikt"})
    with pytest.raises(DataError, match=r"returned list; it must return an experiments\.tasks\.Task or a dict"):
        load_task({"name": "plugin", "entry": f"{plugin}:wrong"})
    with pytest.raises(DataError, match=r":broken\(\*\*options\) raised KeyError"):
        load_task({"name": "plugin", "entry": f"{plugin}:broken"})
    with pytest.raises(ConfigError, match=r"task\.entry: expected 'module:function'"):
        load_task({"name": "plugin", "entry": "just_a_module"})


# ---------------------------------------------------------------- teacher checkpoints


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, Path]:
    """A torchvision model with non-trivial weights, saved whole, as TorchScript and as a state dict."""
    folder = tmp_path_factory.mktemp("checkpoints")
    torch.manual_seed(0)
    model = torchvision.models.get_model("resnet18", weights=None, num_classes=2).eval()
    with torch.no_grad():  # running statistics and a head that are not the defaults, so a lost tensor would show
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
        model.fc.weight.normal_(0, 1.0)
    paths = {"pickle": folder / "whole.pt", "torchscript": folder / "scripted.pt", "state_dict": folder / "weights.pt"}
    torch.save(model, paths["pickle"])
    torch.jit.save(torch.jit.script(model), paths["torchscript"])
    torch.save(model.state_dict(), paths["state_dict"])
    return {**paths, "model": model}  # type: ignore[dict-item]


@pytest.fixture(scope="module")
def pets(tmp_path_factory) -> Path:
    rng = np.random.default_rng(1)
    root = tmp_path_factory.mktemp("pets")
    for name in ("cat", "dog"):
        (root / name).mkdir()
        for i in range(10):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


@pytest.mark.parametrize("kind", ["pickle", "torchscript", "state_dict"])
def test_checkpoint_teachers_predict_like_the_model_they_were_saved_from(saved, pets, kind):
    base = {"name": "imagefolder", "root": str(pets), "image_size": 32}
    x = None
    if kind == "pickle":  # auto never unpickles: a pickled model is loaded only when asked for by name
        with pytest.raises(ConfigError, match="format auto never runs code from a file; .* set format: pickle"):
            load_task({**base, "teacher": {"checkpoint": str(saved[kind])}})
    for fmt in (kind, "auto") if kind != "pickle" else (kind,):
        teacher = {"checkpoint": str(saved[kind]), "format": fmt}
        if kind == "state_dict":
            teacher["arch"] = "resnet18"
        task = load_task({**base, "teacher": teacher})
        x = torch.from_numpy(task.data.x_val)
        with torch.no_grad():
            expected, got = saved["model"](x), task.teacher(x)
        assert expected.std() > 0.1  # logits that differ, so agreeing means something
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
        assert not task.teacher.training and resolve_teacher(task) == (task.teacher, False)
    # What a trial worker rebuilds from the bytes the driver sends predicts the same.
    rebuilt = teacher_from_bytes(teacher_to_bytes(task.teacher))
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), saved["model"](x), rtol=1e-4, atol=1e-5)


def test_checkpoint_mistakes_are_named(saved, pets, tmp_path):
    base = {"name": "imagefolder", "root": str(pets), "image_size": 32}
    with pytest.raises(
        ConfigError,
        match=r"task\.teacher\.arch: 'mobilenet_v3_smal' is not a torchvision "
        r"classification architecture; close names: mobilenet_v3_small",
    ):
        load_task({**base, "teacher": {"checkpoint": str(saved["state_dict"]), "arch": "mobilenet_v3_smal"}})
    with pytest.raises(ConfigError, match="holds a state dict, not a model; give arch"):
        load_task({**base, "teacher": {"checkpoint": str(saved["state_dict"])}})
    with pytest.raises(DataError, match=r"does not fit torchvision 'resnet34' with 2 classes: \d+ missing key"):
        load_task({**base, "teacher": {"checkpoint": str(saved["state_dict"]), "arch": "resnet34"}})
    three = _image_folder(tmp_path / "three", {"a": (9, 9, 9), "b": (99, 99, 99), "c": (199, 199, 199)}, per_class=6)
    with pytest.raises(DataError, match=r"with 3 classes: .*size mismatch for fc\.weight"):
        load_task({**base, "root": str(three), "teacher": {"checkpoint": str(saved["state_dict"]), "arch": "resnet18"}})
    gray = {**base, "grayscale": True}  # one channel in, the teacher wants three
    with pytest.raises(DataError, match=r"the teacher does not run on the task's inputs \(shape \(1, 32, 32\)\)"):
        load_task({**gray, "teacher": {"checkpoint": str(saved["pickle"]), "format": "pickle"}})
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="not a TorchScript file"):
        load_task({**base, "teacher": {"checkpoint": str(junk), "format": "torchscript"}})


def test_a_trained_teacher_is_cached_per_training_data(tmp_path, monkeypatch):
    monkeypatch.setenv("SLIMSWEEP_CACHE", str(tmp_path))
    config = {"name": "mnist-idx", "limit": 200, "teacher": {"width": 0.25, "depth": 1, "epochs": 1}}
    first, cached = resolve_teacher(load_task(config))
    again, cached_again = resolve_teacher(load_task(config))
    assert (cached, cached_again) == (False, True)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values()))
    _, other = resolve_teacher(load_task({**config, "limit": 300}))
    assert other is False  # other data, another teacher


# ---------------------------------------------------------------- an ONNX-only task


@pytest.fixture
def onnx_files(tmp_path) -> tuple[Path, Path, nn.Module]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)).eval()
    path = tmp_path / "model.onnx"
    path.write_bytes(to_onnx(model, torch.zeros(1, 1, 8, 8)))
    rng = np.random.default_rng(0)
    data = tmp_path / "data.npz"
    np.savez(
        data,
        x_calib=rng.random((16, 1, 8, 8), dtype=np.float32),
        x_val=rng.random((20, 1, 8, 8), dtype=np.float32),
        y_val=np.arange(20) % 5,
    )
    return path, data, model


def test_onnx_only_task_loads_the_model_and_the_data(onnx_files):
    model_path, data_path, model = onnx_files
    task = load_task({"name": "onnx", "model": str(model_path), "data": str(data_path)})
    assert task.onnx_only and task.onnx_model == model_path.read_bytes() and task.teacher is None
    d = task.data
    assert (d.input_shape, d.num_classes, len(d.x_calib), len(d.x_val)) == ((1, 8, 8), 5, 16, 20)
    assert (d.y_calib == -1).all()  # the npz gave no calibration labels, and nothing trains
    with torch.no_grad():
        expected = model(torch.from_numpy(d.x_val)).numpy()
    assert np.allclose(predict(task.onnx_model, d.x_val), expected, atol=1e-5)
    with pytest.raises(ConfigError, match="ONNX-only task has no PyTorch teacher"):
        resolve_teacher(task)


def test_onnx_only_mistakes_are_named(onnx_files, tmp_path):
    model_path, data_path, _ = onnx_files
    bad_model = tmp_path / "bad.onnx"
    bad_model.write_bytes(b"\x08\x07garbage")
    with pytest.raises(DataError, match=f"{re.escape(str(bad_model))}: not a valid ONNX model"):
        load_task({"name": "onnx", "model": str(bad_model), "data": str(data_path)})
    no_labels = tmp_path / "no_labels.npz"
    np.savez(no_labels, x_calib=np.zeros((2, 1, 8, 8), np.float32), x_val=np.zeros((2, 1, 8, 8), np.float32))
    with pytest.raises(DataError, match="missing array.s. y_val"):
        load_task({"name": "onnx", "model": str(model_path), "data": str(no_labels)})
    wrong_shape = tmp_path / "wrong_shape.npz"
    np.savez(
        wrong_shape,
        x_calib=np.zeros((2, 3, 8, 8), np.float32),
        x_val=np.zeros((2, 3, 8, 8), np.float32),
        y_val=np.zeros(2, np.int64),
    )
    with pytest.raises(DataError, match=r"does not run on x_val .*samples of shape \(3, 8, 8\)"):
        load_task({"name": "onnx", "model": str(model_path), "data": str(wrong_shape)})


# ---------------------------------------------------------------- the schema


def test_the_shipped_digits_experiment_task_still_parses_with_its_flat_teacher():
    section = yaml.safe_load((Path(experiments.__file__).parent / "digits.yaml").read_text())["task"]
    task = parse_task(section)
    assert (task.name, task.seed, task.teacher.kind) == ("digits", 0, "train")
    assert task.teacher.train_settings() == {"width": 1.0, "depth": 2, "epochs": 30, "lr": 0.003}
    nested = parse_task({"name": "digits", "teacher": {"train": section["teacher"]}})
    assert nested == task and parse_task({}) == parse_task({"name": "digits"})


@pytest.mark.parametrize(
    "section, message",
    [
        ({"name": "mnist-idx", "path": "/no/such/mnist"}, "task.path: no such folder (got '/no/such/mnist')"),
        ({"name": "imagefolder", "root": "/no/pets", "image_size": 8}, "task.root: no such folder (got '/no/pets')"),
        ({"name": "onnx", "model": "/no/m.onnx", "data": "/no/d.npz"}, "task.model: no such file (got '/no/m.onnx')"),
        (
            {"name": "digits", "teacher": {"checkpoint": "/no/t.pt"}},
            "task.teacher.checkpoint: no such file (got '/no/t.pt')",
        ),
        ({"name": "imagefolder", "root": "."}, "task.image_size: required but missing"),
        ({"name": "mnist", "seed": 0}, "task.name: unknown task 'mnist'; choose one of: digits, mnist-idx, cifar10"),
        ({"name": "mnist-idx", "limt": 5}, "task.limt: unknown key; choose one of: name, path, limit, seed, teacher"),
        ({"teacher": {"epohcs": 3}}, "task.teacher.epohcs: unknown key; choose one of: width, depth, epochs, lr"),
        ({"name": "mnist-idx", "limit": 5}, "task.limit: Input should be greater than or equal to 20"),
    ],
)
def test_schema_errors_name_the_field_and_the_value(section, message):
    with pytest.raises(ConfigError) as info:
        parse_task(section)
    assert message in str(info.value)


def test_teacher_spec_refuses_mixed_or_incomplete_checkpoints(tmp_path):
    ckpt = tmp_path / "t.pt"
    ckpt.write_bytes(b"x")
    cases = {
        "either a checkpoint or training settings, not both (drop epochs)": {"checkpoint": str(ckpt), "epochs": 3},
        "a state_dict checkpoint needs arch": {"checkpoint": str(ckpt), "format": "state_dict"},
        "format and arch describe a checkpoint": {"arch": "resnet18"},
        "arch is for a state_dict checkpoint": {"checkpoint": str(ckpt), "format": "torchscript", "arch": "resnet18"},
    }
    for message, teacher in cases.items():
        with pytest.raises(ConfigError, match=re.escape(message)):
            parse_task({"name": "digits", "teacher": teacher})
    spec = parse_task({"name": "digits", "teacher": {"checkpoint": str(ckpt), "arch": "resnet18"}}).teacher
    assert (spec.kind, spec.format, spec.arch) == ("checkpoint", "auto", "resnet18")


def test_the_schema_module_stays_light():
    heavy = "{'torch', 'torchvision', 'onnx', 'sklearn'}"
    code = f"import sys, experiments.schema; print(sorted({heavy} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
