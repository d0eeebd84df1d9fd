"""The ONNX Runtime half of the built-in quantization schemes, and `quantize`, which applies any registered one.

The schemes themselves are registered in spaces/quantization_schemes.py; their `apply` calls the functions here.
The options of a scheme come from its QuantizationChoice (spaces.quantization_knobs), which the search samples.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper
from onnxruntime.capi._pybind_state import quantize_matmul_4bits
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    create_calibrator,
    quantize_dynamic,
    quantize_static,
)

try:
    from onnxruntime.quantization.calibrate import save_tensors_data
except ImportError:  # builds before the calibration cache (onnxruntime-openvino 1.24): quantize_static calibrates
    save_tensors_data = None
from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry
from onnxruntime.quantization.shape_inference import quant_pre_process
from onnxruntime.transformers.float16 import convert_float_to_float16
from onnxruntime.transformers.onnx_model import OnnxModel

from evaluators.errors import ConfigError, SlimsweepError, TrialFailure
from spaces.quantization_knobs import SCHEMES, QuantizationChoice

LAYER_OPS = ("Conv", "Gemm", "MatMul")  # the layers "first_last" and "sensitive" choose among
SENSITIVITY_SAMPLES = 64  # calibration samples the sensitivity pass compares logits on: keeps it quick
INT4_BLOCK_SIZE = 32  # weights per scale; MatMulNBits takes a power of two >= 16
CALIBRATION_BATCH = 32  # samples per calibration run when the batch axis is dynamic
# ONNX Runtime's entropy calibrator defaults to as many histogram bins as quantized bins (128): the only threshold
# it can then try is the full range, and "entropy" gives exactly MinMax's ranges. With 256 bins it searches
# thresholds from half the range to all of it. More bins search further but cost more: its search is pure Python
# (on the digits CNN, 2 cores: 256 bins ~1.5 s, 512 ~4 s, 1024 ~9 s).
ENTROPY_BINS = 256
_CALIBRATED_OPS = sorted(set(QLinearOpsRegistry) | set(QDQRegistry))  # what quantize_static itself calibrates
_CALIBRATION = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}
_SENSITIVITY: dict[str, list[tuple[str, float]]] = {}  # the in-process cache when no cache_dir is given
# Whether this build can measure activation ranges once and hand them to quantize_static as a file. Without it
# (onnxruntime-openvino 1.24) quantize_static calibrates on the same samples with the same method through its own
# data reader, at each call: the same ranges, measured again.
CALIBRATION_CACHE = save_tensors_data is not None


def quantize(
    model: bytes, choice: QuantizationChoice | str, calibration: np.ndarray, *, cache_dir: Path | None = None
) -> bytes:
    """Apply a registered scheme with its options (a name alone takes the default options)."""
    if isinstance(choice, str):
        choice = QuantizationChoice(scheme=choice)
    scheme = SCHEMES.get(choice.scheme)  # an unknown name is a ConfigError naming the registered ones
    try:
        return scheme.apply(model, choice, calibration, None if cache_dir is None else Path(cache_dir))
    except SlimsweepError:
        raise
    except Exception as exc:
        raise TrialFailure(f"Quantization {choice.describe()!r} failed: {type(exc).__name__}: {exc}") from exc


def fp16(model: bytes) -> bytes:
    """Weights and compute in half precision, float32 inputs and outputs kept."""
    half = convert_float_to_float16(onnx.load_from_string(model), keep_io_types=True)
    # The converter appends the input casts at the end of the node list; ONNX wants topological order.
    OnnxModel(half).topological_sort()
    return half.SerializeToString()


def int8_dynamic(model: bytes) -> bytes:
    """int8 weights, activations quantized at run time."""
    with tempfile.TemporaryDirectory(prefix="slimsweep-quant-") as tmp:
        src, dst = _preprocessed(model, Path(tmp)), Path(tmp, "int8.onnx")
        quantize_dynamic(src, dst, weight_type=QuantType.QInt8)
        return dst.read_bytes()


def int8_static(
    model: bytes,
    choice: QuantizationChoice,
    calibration: np.ndarray,
    cache_dir: Path | None,
    *,
    qdq: bool,
    calibration_cache: bool = CALIBRATION_CACHE,
) -> bytes:
    """int8 weights and calibrated activations, as QDQ pairs or quantized operators; float_layers stay float.

    `calibration_cache=False` calibrates inside each quantize_static call, as builds without the cache must.
    """
    fmt = QuantFormat.QDQ if qdq else QuantFormat.QOperator
    with tempfile.TemporaryDirectory(prefix="slimsweep-quant-") as tmp:
        src, dst = _preprocessed(model, Path(tmp)), Path(tmp, "int8.onnx")
        ranges = _calibrated(src, choice, calibration, Path(tmp), cache=calibration_cache)
        layers = quantizable_layers(onnx.load(src))
        if choice.float_layers == "first_last":
            keep = sorted({layers[0], layers[-1]}) if layers else []
        elif choice.float_layers == "sensitive":
            ranking = layer_sensitivity(model, choice, calibration, cache_dir=cache_dir, prepared=(src, ranges))
            keep = [name for name, _ in ranking[: choice.sensitive_layers]]
        else:
            keep = []
        _static(src, dst, fmt, choice, ranges, _samples(choice, calibration), exclude=keep)
        return dst.read_bytes()


def int4_weight_only(model: bytes, block_size: int = INT4_BLOCK_SIZE) -> bytes:
    """MatMul/Gemm weights in 4 bits as MatMulNBits, one scale per block_size weights; a model without any is a
    trial failure."""
    if block_size < 16 or block_size & (block_size - 1):
        raise ConfigError(f"int4 block_size = {block_size!r}; MatMulNBits takes a power of two >= 16 (16, 32, 64, ...)")
    proto = onnx.load_from_string(model)
    if not _int4_matmuls(proto, block_size):
        ops = sorted({node.op_type for node in proto.graph.node})
        raise TrialFailure(
            f"int4_weight_only found no MatMul or Gemm with a constant 2-D weight to quantize "
            f"(the model has: {', '.join(ops)}); use another scheme for this model"
        )
    return proto.SerializeToString()


def quantizable_layers(model: onnx.ModelProto) -> list[str]:
    """Names of the Conv/Gemm/MatMul nodes in topological order (the order ONNX keeps nodes in)."""
    return [node.name for node in model.graph.node if node.op_type in LAYER_OPS]


def layer_sensitivity(
    model: bytes,
    choice: QuantizationChoice,
    calibration: np.ndarray,
    *,
    cache_dir: Path | None = None,
    prepared: tuple[Path, Path | None] | None = None,
) -> list[tuple[str, float]]:
    """Layers ranked by the logits' MSE when only that layer is quantized, most sensitive first (cached).

    `prepared` is the pre-processed model file and its activation ranges (None: no cache, see _calibrated) when the
    caller has them already.
    """
    key = _sensitivity_key(model, choice, calibration)
    cached = _cached_ranking(key, cache_dir)
    if cached is not None:
        return cached
    with tempfile.TemporaryDirectory(prefix="slimsweep-quant-") as tmp:
        if prepared is None:
            src = _preprocessed(model, Path(tmp))
            prepared = (src, _calibrated(src, choice, calibration, Path(tmp)))
        src, ranges = prepared
        return _store_ranking(key, cache_dir, _rank_layers(src, choice, ranges, calibration, Path(tmp)))


def _calibrated(
    src: Path, choice: QuantizationChoice, calibration: np.ndarray, folder: Path, *, cache: bool = CALIBRATION_CACHE
) -> Path | None:
    """Measure the activation ranges on the choice's calibration samples; return the file quantize_static reads.

    None without the cache: quantize_static then calibrates on the same samples itself (see _static).
    """
    if not cache:
        if choice.calibration == "entropy":
            # quantize_static passes its calibrator no bin count: with ONNX Runtime's default, entropy would give
            # MinMax's ranges under entropy's name (see ENTROPY_BINS).
            raise TrialFailure(
                f"calibration 'entropy' ({choice.describe()!r}) needs ONNX Runtime's calibration cache, which this "
                f"build (onnxruntime {ort.__version__}) lacks; use calibration minmax or percentile here, or run the "
                "sweep with the CPU build (package onnxruntime) and time it on this target with `slimsweep retarget`"
            )
        return None
    samples = _samples(choice, calibration)
    options = {"num_bins": ENTROPY_BINS, "num_quantized_bins": 128} if choice.calibration == "entropy" else {}
    calibrator = create_calibrator(
        src,
        _CALIBRATED_OPS,
        augmented_model_path=str(folder / "augmented.onnx"),
        calibrate_method=_CALIBRATION[choice.calibration],
        extra_options=options,
    )
    calibrator.collect_data(_ArrayReader(onnx.load(src), samples))
    ranges = folder / "ranges.json"
    save_tensors_data(calibrator.compute_data(), ranges)
    return ranges


def _samples(choice: QuantizationChoice, calibration: np.ndarray) -> np.ndarray:
    """The calibration samples the choice reads."""
    return calibration[: choice.calibration_samples] if choice.calibration_samples else calibration


def _static(
    src: Path,
    dst: Path,
    fmt: QuantFormat,
    choice: QuantizationChoice,
    ranges: Path | None,
    samples: np.ndarray,
    *,
    only: list[str] | None = None,
    exclude: list[str] | None = None,
) -> None:
    """ONNX Runtime's static quantization with the choice's options, from measured activation ranges (or, with no
    ranges file, calibrating on `samples` with the choice's method)."""
    symmetric = choice.activations == "int8_sym"
    # Builds without the cache do not know the calibration_cache_path argument either.
    cached = {"calibration_cache_path": ranges} if ranges is not None else {}
    quantize_static(
        src,
        dst,
        None if ranges is not None else _ArrayReader(onnx.load(src), samples),
        quant_format=fmt,
        per_channel=choice.per_channel,
        reduce_range=choice.reduce_range,
        activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=_CALIBRATION[choice.calibration],
        nodes_to_quantize=only,
        nodes_to_exclude=exclude,
        extra_options={"ActivationSymmetric": symmetric},
        **cached,
    )


def _rank_layers(
    src: Path, choice: QuantizationChoice, ranges: Path | None, calibration: np.ndarray, folder: Path
) -> list[tuple[str, float]]:
    """Quantize one layer at a time (with the full model's ranges); rank the layers by how far the logits move."""
    # Without the cache (ranges None) each one-layer model calibrates again on the choice's samples: the same
    # ranges, one calibration per layer (the tests' 4-layer digits CNN, 200 MinMax samples, 2 cores: a mixed model
    # in ~0.2 s, ~0.1 s with the cache). Measuring once and passing the ranges some other way would mean
    # TensorQuantOverrides, which quantize_static applies after its own Relu/Clip range adjustments, so the model
    # would not be the one the cache path makes.
    data = calibration[:SENSITIVITY_SAMPLES]
    # Rank in the format the model will be quantized in (the scheme says which).
    fmt = QuantFormat.QDQ if getattr(SCHEMES.get(choice.scheme), "qdq", True) else QuantFormat.QOperator
    reference = _logits(src.read_bytes(), data)
    scores = []
    dst = folder / "one-layer.onnx"
    for layer in quantizable_layers(onnx.load(src)):
        _static(src, dst, fmt, choice, ranges, _samples(choice, calibration), only=[layer])
        scores.append((layer, float(np.mean((_logits(dst.read_bytes(), data) - reference) ** 2))))
    # sorted() is stable: equally sensitive layers keep their order in the graph.
    return sorted(scores, key=lambda item: -item[1])


def _logits(model: bytes, data: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    reader = _ArrayReader(onnx.load_from_string(model), data)
    return np.concatenate([session.run(None, feed)[0] for feed in iter(reader.get_next, None)])


def _sensitivity_key(model: bytes, choice: QuantizationChoice, calibration: np.ndarray) -> str:
    """The model, the options that change a layer's quantization error, and the data it is measured on."""
    options = [
        choice.scheme,
        choice.per_channel,
        choice.activations,
        choice.calibration,
        choice.calibration_samples,
        choice.reduce_range,
        SENSITIVITY_SAMPLES,
    ]
    digest = hashlib.sha256(model)
    digest.update(json.dumps(options).encode())
    digest.update(np.ascontiguousarray(calibration, dtype=np.float32).tobytes())
    return digest.hexdigest()


def _cache_file(cache_dir: Path, key: str) -> Path:
    """Where a sensitivity ranking is kept on disk."""
    return Path(cache_dir) / f"quant-sensitivity-{key[:32]}.json"


def _cached_ranking(key: str, cache_dir: Path | None) -> list[tuple[str, float]] | None:
    if cache_dir is None:
        return _SENSITIVITY.get(key)
    path = _cache_file(cache_dir, key)
    if not path.exists():
        return None
    return [(name, float(mse)) for name, mse in json.loads(path.read_text())["layers"]]


def _store_ranking(key: str, cache_dir: Path | None, ranking: list[tuple[str, float]]) -> list[tuple[str, float]]:
    if cache_dir is None:
        _SENSITIVITY[key] = ranking
        return ranking
    path = _cache_file(cache_dir, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Parallel trials may rank the same model: write aside and rename, so no reader sees half a file.
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as out:
        json.dump({"layers": ranking}, out)
    os.replace(tmp, path)
    return ranking


def _int4_matmuls(model: onnx.ModelProto, block_size: int = INT4_BLOCK_SIZE) -> int:
    """Replace each MatMul/Gemm with a constant 2-D weight by MatMulNBits (+ Add for a bias); return how many."""
    graph = model.graph
    weights = {init.name: init for init in graph.initializer}
    nodes, count = [], 0
    for node in graph.node:
        replacement = _int4_layer(node, weights, block_size)
        nodes.extend(replacement or [node])
        count += replacement is not None
    if not count:
        return 0
    del graph.node[:]
    graph.node.extend(nodes)
    # The float weights the new nodes replaced go; that is where the file shrinks.
    used = {name for node in graph.node for name in node.input} | {out.name for out in graph.output}
    del graph.initializer[:]
    graph.initializer.extend(init for name, init in weights.items() if name in used)
    if not any(op.domain == "com.microsoft" for op in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    return count


def _int4_layer(
    node: onnx.NodeProto, weights: dict[str, onnx.TensorProto], block_size: int = INT4_BLOCK_SIZE
) -> list[onnx.NodeProto] | None:
    """The MatMulNBits node(s) standing in for one MatMul/Gemm (new initializers go into `weights`), or None."""
    if node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2 or node.input[1] not in weights:
        return None
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    w = numpy_helper.to_array(weights[node.input[1]]).astype(np.float32)
    bias = node.input[2] if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2] else None
    if w.ndim != 2 or attrs.get("transA", 0) or (bias and bias not in weights and attrs.get("beta", 1.0) != 1.0):
        return None
    if node.op_type == "Gemm":
        w = (w.T if attrs.get("transB", 0) else w) * attrs.get("alpha", 1.0)
    k, n = w.shape
    blocks = -(-k // block_size)
    padded = np.ascontiguousarray(np.pad(w, ((0, blocks * block_size - k), (0, 0))))
    packed = np.zeros((n, blocks, block_size // 2), np.uint8)
    scales = np.zeros((n, blocks), np.float32)
    zero_points = np.zeros((n, (blocks + 1) // 2), np.uint8)  # unused when symmetric (zero point 8)
    # ONNX Runtime's own packing kernel, the one its MatMulNBitsQuantizer calls; that class itself needs the
    # onnx-ir package, which this environment does not have.
    quantize_matmul_4bits(packed, padded, scales, zero_points, block_size, n, k, True)
    stem = (node.name or node.output[0]) + "_Q4"
    for init in (numpy_helper.from_array(packed, f"{stem}_weight"), numpy_helper.from_array(scales, f"{stem}_scales")):
        weights[init.name] = init
    out = f"{stem}_out" if bias else node.output[0]
    nodes = [
        onnx.helper.make_node(
            "MatMulNBits",
            [node.input[0], f"{stem}_weight", f"{stem}_scales"],
            [out],
            name=stem,
            domain="com.microsoft",
            K=k,
            N=n,
            bits=4,
            block_size=block_size,
        )
    ]
    if bias:
        beta = attrs.get("beta", 1.0)
        if beta != 1.0:
            scaled = numpy_helper.from_array(numpy_helper.to_array(weights[bias]) * beta, f"{stem}_bias")
            weights[scaled.name], bias = scaled, scaled.name
        nodes.append(onnx.helper.make_node("Add", [out, bias], [node.output[0]], name=f"{stem}_bias_add"))
    return nodes


def _preprocessed(model: bytes, folder: Path) -> Path:
    """Write the float model to folder after ONNX Runtime's pre-quantization pass; return its path."""
    raw, prepared = folder / "float.onnx", folder / "float.prep.onnx"
    raw.write_bytes(model)
    # Shape inference and graph optimization (e.g. batch-norm folding) first, as ONNX Runtime's tools advise:
    # quantization parameters are then computed for the graph that will actually run.
    quant_pre_process(raw, prepared)
    proto = onnx.load(prepared)
    unnamed = [node for node in proto.graph.node if not node.name]
    if unnamed:  # float layers are named to the quantizer, so every node needs a name
        for i, node in enumerate(unnamed):
            node.name = f"{node.op_type}_{i}"
        onnx.save(proto, prepared)
    return prepared


class _ArrayReader(CalibrationDataReader):
    """Feeds a (N, C, H, W) array to the calibrator in batches the model accepts."""

    def __init__(self, model: onnx.ModelProto, calibration: np.ndarray) -> None:
        initializers = {init.name for init in model.graph.initializer}
        graph_input = next(i for i in model.graph.input if i.name not in initializers)
        self._input_name = graph_input.name
        batch_dim = graph_input.type.tensor_type.shape.dim[0]
        fixed = batch_dim.dim_value if batch_dim.HasField("dim_value") and batch_dim.dim_value > 0 else 0
        data = np.ascontiguousarray(calibration, dtype=np.float32)
        if len(data) < fixed:
            raise ConfigError(
                f"Calibration has {len(data)} samples; the model's fixed batch size is {fixed}: "
                f"give at least {fixed} samples."
            )
        # A fixed batch axis must be fed exactly that many samples. A dynamic one takes up to CALIBRATION_BATCH at a
        # time (calibrating one sample per run was mostly session overhead), in equal batches that cover every
        # sample: ONNX Runtime's histogram calibrators stack the batches and need them the same size.
        batch = fixed or max(b for b in range(1, CALIBRATION_BATCH + 1) if len(data) % b == 0)
        self._batches = iter(data[start : start + batch] for start in range(0, len(data) - batch + 1, batch))

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {self._input_name: batch}
