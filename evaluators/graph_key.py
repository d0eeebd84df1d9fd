"""The latency-cache key: a hash of what an ONNX graph does and of how it is timed, not of its trained weights.

Latency depends on the operators, their attributes and the shapes and dtypes flowing between them, not on the
values in the weights. So a trial can time its untrained structure once, and every model of that structure (trained,
pruned to the same shapes, calibrated again) reuses the timing. What the key keeps and drops:

* kept: op types and domains, attributes, how nodes connect, graph input/output names, every tensor's dtype and
  shape (declared, and inferred by ONNX shape inference, so a Reshape/Resize constant that changes a shape shows),
  the opset imports, and the values of int64 tensors (shapes, axes, pads, indices: they decide what runs);
* dropped: values of every other tensor (float weights, int8 quantized weights, int32 quantized biases,
  quantization scales and zero points), node and intermediate-tensor names (exports number them differently),
  doc strings, producer fields, metadata, the IR version.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable
from typing import Any

import onnx
from google.protobuf.message import DecodeError

from evaluators.errors import SlimsweepError

# Tensors of this dtype carry shapes, axes, pads, starts/ends and indices: their values change what runs.
_STRUCTURAL_DTYPES = {onnx.TensorProto.INT64}


def graph_key(model: bytes, *parts: Any) -> str:
    """sha256 of the ONNX graph's structure and the given parts (target description, timing settings).

    The structure is ops, attributes, input/output and initializer names, shapes and dtypes, and the opset; not the
    initializer values: latency depends on shapes and the scheme, not on trained weights.
    """
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(model)
    except DecodeError as exc:
        raise SlimsweepError(f"graph_key: the {len(model)} bytes given are not an ONNX model ({exc})") from None
    try:
        # Inferred shapes of the intermediate tensors, computed while the constant values are still there.
        inferred = onnx.shape_inference.infer_shapes(proto)
    except onnx.shape_inference.InferenceError:  # a graph ONNX cannot infer is keyed by what it declares
        inferred = proto
    description = {
        "opsets": sorted((_domain(op.domain), op.version) for op in proto.opset_import),
        "graph": _Canonical().graph(inferred.graph),
        "functions": [_Canonical().function(f) for f in proto.functions],
        "parts": [_plain(part) for part in parts],
    }
    text = json.dumps(description, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


class _Canonical:
    """Describes a graph as plain data, naming each intermediate tensor by the order it first appears."""

    def __init__(self) -> None:
        self._names: dict[str, str] = {}

    def graph(self, graph: onnx.GraphProto) -> dict[str, Any]:
        # Graph inputs and outputs keep their names: callers feed and read them by name.
        for value in [*graph.input, *graph.output]:
            self._names.setdefault(value.name, value.name)
        nodes = [self._node(node) for node in graph.node]
        initializers = {init.name: init for init in graph.initializer}
        # Unused initializers (no node reads them) still get a place, after every used tensor, in file order.
        for name in initializers:
            self._name(name)
        types = {self._name(v.name): _type(v.type) for v in [*graph.value_info, *graph.input, *graph.output]}
        return {
            "inputs": [[self._name(v.name), _type(v.type)] for v in graph.input if v.name not in initializers],
            "outputs": [[self._name(v.name), _type(v.type)] for v in graph.output],
            "nodes": nodes,
            "initializers": sorted([self._name(name), _tensor(init)] for name, init in initializers.items()),
            "sparse_initializers": sorted(
                [self._name(s.values.name), _tensor(s.values), list(s.dims)] for s in graph.sparse_initializer
            ),
            "types": sorted([name, kind] for name, kind in types.items()),
        }

    def function(self, function: onnx.FunctionProto) -> dict[str, Any]:
        for name in [*function.input, *function.output]:
            self._names.setdefault(name, name)
        return {
            "name": [function.domain, function.name],
            "inputs": list(function.input),
            "outputs": list(function.output),
            "attributes": sorted(function.attribute),
            "opsets": sorted((_domain(op.domain), op.version) for op in function.opset_import),
            "nodes": [self._node(node) for node in function.node],
        }

    def _node(self, node: onnx.NodeProto) -> list[Any]:
        return [
            _domain(node.domain),
            node.op_type,
            [self._name(name) for name in node.input],
            [self._name(name) for name in node.output],
            sorted([attr.name, self._attribute(attr)] for attr in node.attribute),
        ]

    def _name(self, name: str) -> str:
        if not name:  # an omitted optional input: its position matters, not a name
            return ""
        return self._names.setdefault(name, f"%{len(self._names)}")

    def _attribute(self, attr: onnx.AttributeProto) -> Any:
        kind = onnx.AttributeProto.AttributeType.Name(attr.type)
        if attr.ref_attr_name:  # inside a function: the value comes from the caller
            return [kind, "ref", attr.ref_attr_name]
        match attr.type:
            case onnx.AttributeProto.FLOAT:
                value: Any = attr.f
            case onnx.AttributeProto.INT:
                value = attr.i
            case onnx.AttributeProto.STRING:
                value = attr.s.decode("latin-1")
            case onnx.AttributeProto.FLOATS:
                value = list(attr.floats)
            case onnx.AttributeProto.INTS:
                value = list(attr.ints)
            case onnx.AttributeProto.STRINGS:
                value = [s.decode("latin-1") for s in attr.strings]
            case onnx.AttributeProto.TENSOR:
                value = _tensor(attr.t)
            case onnx.AttributeProto.TENSORS:
                value = [_tensor(t) for t in attr.tensors]
            case onnx.AttributeProto.SPARSE_TENSOR:
                value = [_tensor(attr.sparse_tensor.values), list(attr.sparse_tensor.dims)]
            case onnx.AttributeProto.SPARSE_TENSORS:
                value = [[_tensor(s.values), list(s.dims)] for s in attr.sparse_tensors]
            case onnx.AttributeProto.GRAPH:
                value = self.graph(attr.g)
            case onnx.AttributeProto.GRAPHS:
                value = [self.graph(g) for g in attr.graphs]
            case onnx.AttributeProto.TYPE_PROTO:
                value = _type(attr.tp)
            case onnx.AttributeProto.TYPE_PROTOS:
                value = [_type(tp) for tp in attr.type_protos]
            case _:
                value = None
        return [kind, value]


def _tensor(tensor: onnx.TensorProto) -> list[Any]:
    """dtype and dims always; the values only for dtypes that carry structure (shapes, axes, indices)."""
    values = None
    if tensor.data_type in _STRUCTURAL_DTYPES:
        values = onnx.numpy_helper.to_array(tensor).ravel().tolist()
    return [tensor.data_type, list(tensor.dims), values]


def _type(tp: onnx.TypeProto) -> Any:
    which = tp.WhichOneof("value")
    if which == "tensor_type" or which == "sparse_tensor_type":
        inner = getattr(tp, which)
        shape = [_dim(d) for d in inner.shape.dim] if inner.HasField("shape") else None
        return [which, inner.elem_type, shape]
    if which == "sequence_type":
        return [which, _type(tp.sequence_type.elem_type)]
    if which == "optional_type":
        return [which, _type(tp.optional_type.elem_type)]
    if which == "map_type":
        return [which, tp.map_type.key_type, _type(tp.map_type.value_type)]
    return [which]


def _dim(dim: onnx.TensorShapeProto.Dimension) -> int | str:
    # A symbolic dimension's name ("batch", "unk__3") is a label, not a size.
    return dim.dim_value if dim.HasField("dim_value") else "?"


def _domain(domain: str) -> str:
    return "" if domain == "ai.onnx" else domain


def _plain(value: Any) -> Any:
    """A JSON-ready form of a key part: dataclasses and mappings by field, sequences in order, the rest by repr."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [type(value).__name__, _plain(dataclasses.asdict(value))]
    if isinstance(value, dict):
        return sorted([str(k), _plain(v)] for k, v in value.items())
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted(repr(v) for v in value)
    if isinstance(value, Iterable) and not isinstance(value, (bytes, bytearray)):
        return [_plain(v) for v in value]
    return repr(value)
