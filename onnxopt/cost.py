"""Parameters and multiply-accumulates (MACs) per node and per model.

Counting rules (one MAC = one multiply + one add; per inference of the given input shape):
- Conv (and its int8 forms): ``out_elements * (C_in / group) * prod(kernel)``; ConvTranspose: ``in_elements *
  (C_out / group) * prod(kernel)``.
- Gemm / MatMul: ``prod(output batch dims) * M * N * K``; their int8 and 4-bit forms
  (``MatMulInteger``, ``QLinearMatMul``, ``QGemm``, ``DynamicQuantizeMatMul``,
  ``MatMulIntegerToFloat``, ``MatMulNBits``) alike.
- onnxruntime's fused attention (``com.microsoft``, written by ``onnxruntime.transformers``):
  ``Attention`` (and its int8 form ``QAttention``, from ``quantize_dynamic``) counts its packed Q/K/V projection ``B·S·H_in·(H_q + H_k + H_v)`` and the
  score and value products ``B·S·L·(H_q + H_v)`` (L: the key length, past included);
  ``MultiHeadAttention`` (projections outside) the latter only. ``FusedConv`` / ``FusedGemm``
  / ``FusedMatMul`` count as Conv / Gemm / MatMul, the fused normalisations and bias
  activations as element-wise ops.
- LSTM / GRU / RNN: per time step and sample, the input and recurrent products of every
  gate and direction: ``seq · batch · (prod(W) + prod(R))`` (``W: [dirs, gates·H, I]``,
  ``R: [dirs, gates·H, H]``); the gate arithmetic is not counted.
- Element-wise arithmetic, activations, normalisations, pooling: about one MAC per output
  element (pooling: per window element), so cheap ops are visible but never dominate.
  (De)quantization nodes count nothing: onnxruntime fuses a QDQ pair around a Conv or
  MatMul into its int8 kernel, so an int8 model shows the MACs of its layers, not more.
- Parameters: elements of the node's constant inputs — initializers, Constant nodes, or
  values computed from constants only (a DequantizeLinear of int8 weights, the decode
  subgraph of packed ternary weights), counted at their decoded shape, or the int8 weights of
  dynamic-int8 kernels (``MatMulInteger``, ``DynamicQuantizeLSTM``, …) with their scales and
  zero points; a weight shared by several nodes is counted once per model.
Nodes computed from constants only are folded by onnxruntime at load and count nothing.
Shapes come from ONNX shape inference with the inputs pinned (dynamic dims: given by the
user, else 1). A node whose shapes stay unknown counts 0 MACs and is flagged ``unknown``.
"""

from __future__ import annotations

__all__ = ["NodeCost", "ModelCost", "model_cost"]

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np
import onnx_ir as ir

from onnxopt.graph import attr, has_subgraph, static_shapes, subgraphs

_ELEMENTWISE = {
    "Add", "Sub", "Mul", "Div", "Relu", "LeakyRelu", "PRelu", "Sigmoid", "Tanh", "Clip",
    "HardSigmoid", "HardSwish", "Elu", "Selu", "Gelu", "Erf", "Sqrt", "Pow", "Exp", "Log",
    "Softmax", "LogSoftmax", "Max", "Min", "Sum", "Mean", "Neg", "Abs", "Mish", "Softplus",
    "BatchNormalization", "InstanceNormalization", "LayerNormalization",
    "GroupNormalization", "Where",
    # onnxruntime's fused forms (com.microsoft)
    "SkipLayerNormalization", "SkipSimplifiedLayerNormalization", "SimplifiedLayerNormalization",
    "EmbedLayerNormalization", "BiasGelu", "FastGelu", "QuickGelu", "BiasAdd", "BiasSoftmax",
}
_POOLS = {"MaxPool", "AveragePool", "LpPool"}
# A (the activations) is the first input of each; onnxruntime's int8 and 4-bit forms too
_MATMULS = {"Gemm", "MatMul", "MatMulInteger", "QLinearMatMul", "FusedGemm", "FusedMatMul", "QGemm", "MatMulIntegerToFloat",
            "DynamicQuantizeMatMul", "MatMulNBits"}  # fmt: skip
_RECURRENT = {"LSTM", "GRU", "RNN", "DynamicQuantizeLSTM"}
_GLOBAL_POOLS = {"GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool", "ReduceMean", "ReduceSum", "ReduceMax"}


@dataclasses.dataclass
class NodeCost:
    name: str
    op_type: str
    macs: int
    params: int
    unknown: bool = False


@dataclasses.dataclass
class ModelCost:
    nodes: list[NodeCost]
    macs: int
    params: int

    def by_op(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for n in self.nodes:
            out[n.op_type] = out.get(n.op_type, 0) + n.macs
        return out

    def to_dict(self) -> dict:
        return {"macs": self.macs, "params": self.params, "nodes": [dataclasses.asdict(n) for n in self.nodes]}


def _known(shape: Sequence | None) -> bool:
    return shape is not None and all(isinstance(d, int) and d >= 0 for d in shape)


def _prod(shape: Sequence[int]) -> int:
    return int(math.prod(shape)) if shape else 1


def _attention_macs(node: ir.Node, shape_of, out: Sequence[int] | None) -> int | None:
    """com.microsoft Attention / MultiHeadAttention (module docstring); None when the
    shapes are not the plain ``[B, S, H]`` ones (packed or 5-D key/value inputs)."""
    q = shape_of(0)
    if q is None or out is None or len(q) != 3 or len(out) != 3:
        return None
    batch, steps = q[0], q[1]
    if node.op_type == "MultiHeadAttention":
        k, v = shape_of(1), shape_of(2)
        if k is None or v is None or len(k) != 3 or len(v) != 3:
            return None
        return batch * steps * k[1] * (q[2] + v[2])
    w = shape_of(1)
    if w is None or len(w) != 2:
        return None
    sizes = attr(node, "qkv_hidden_sizes", None)
    hq, _, hv = (list(sizes) if sizes else [w[1] // 3] * 3)
    past = shape_of(8 if node.op_type == "QAttention" else 4)
    keys = steps + (past[3] if past is not None and len(past) == 5 else 0)
    return batch * steps * (q[2] * w[1] + keys * (hq + hv))


def _node_macs(node: ir.Node, shapes: Mapping[str, tuple]) -> int | None:
    def shape_of(i: int, outputs: bool = False):
        values = node.outputs if outputs else node.inputs
        if i >= len(values) or values[i] is None:
            return None
        s = shapes.get(values[i].name)
        return s if _known(s) else None

    op = node.op_type
    out = shape_of(0, outputs=True)
    if op in ("Conv", "ConvInteger", "QLinearConv", "FusedConv"):
        w = shape_of(3 if op == "QLinearConv" else 1)
        if out is None or w is None:
            return None
        return _prod(out) * _prod(w[1:])
    if op == "ConvTranspose":
        x, w = shape_of(0), shape_of(1)
        if x is None or w is None:
            return None
        return _prod(x) * _prod(w[1:])
    if op in _MATMULS:
        a = shape_of(0)
        if out is None or a is None:
            return None
        if op in ("Gemm", "FusedGemm", "QGemm"):
            k = a[0] if attr(node, "transA", 0) else a[-1]
        else:
            k = a[-2] if op == "FusedMatMul" and attr(node, "transA", 0) else a[-1]
        return _prod(out) * k
    if op in ("Attention", "QAttention", "MultiHeadAttention"):
        return _attention_macs(node, shape_of, out)
    if op in _RECURRENT:
        x, w, r = shape_of(0), shape_of(1), shape_of(2)
        if x is None or w is None or r is None or len(x) != 3:
            return None
        steps_and_batch = x[0] * x[1]  # [seq, batch, I] or, with layout=1, [batch, seq, I]
        return steps_and_batch * (_prod(w) + _prod(r))
    if op in _POOLS:
        if out is None:
            return None
        return _prod(out) * _prod(attr(node, "kernel_shape", [1]))
    if op in _GLOBAL_POOLS:
        x = shape_of(0)
        return None if x is None else _prod(x)
    if op in _ELEMENTWISE:
        return None if out is None else _prod(out)
    return 0


def _const_params(value: ir.Value | None) -> int:
    if value is None or value.is_graph_input():
        return 0
    tensor = value.const_value
    if tensor is None:
        producer = value.producer()
        if producer is None or producer.op_type != "Constant":
            return 0
        a = producer.attributes.get("value")
        tensor = a.value if a is not None else None
        if tensor is None:
            return 0
    try:
        if np.dtype(tensor.dtype.numpy()).kind not in "fiu":
            return 0
    except Exception:
        return 0
    return _prod(tuple(tensor.shape))


_WEIGHT_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization", "PRelu", "Add", "Mul",
               "LayerNormalization", "InstanceNormalization", "Gather", "LSTM", "GRU", "RNN",
               # int8 kernels whose weights are initializers (dynamic int8, onnxruntime's QOperator format)
               "MatMulInteger", "ConvInteger", "QLinearConv", "QLinearMatMul", "DynamicQuantizeLSTM",
               "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QGemm", "QAttention", "MatMulNBits",
               # onnxruntime's fused float ops (com.microsoft)
               "Attention", "MultiHeadAttention", "EmbedLayerNormalization", "SkipLayerNormalization",
               "SkipSimplifiedLayerNormalization", "SimplifiedLayerNormalization", "BiasGelu", "FastGelu",
               "FusedConv", "FusedGemm", "FusedMatMul"}


def _constant_values(graph: ir.Graph, outer: set[int] | None = None) -> set[int]:
    """ids of the values computed from constants only (no graph input upstream); ``outer``:
    those of the enclosing graphs, which a subgraph may read.

    Forward propagation in graph order, repeated until nothing changes (one sweep for a
    topologically sorted graph); iterative, so arbitrarily deep graphs are fine.
    """
    const = set(outer or ()) | {id(v) for v in graph.initializers.values() if not v.is_graph_input()}
    changed = True
    while changed:
        changed = False
        for node in graph:
            if has_subgraph(node) or all(id(o) in const for o in node.outputs):
                continue
            if all(v is None or id(v) in const for v in node.inputs):
                const.update(id(o) for o in node.outputs)
                changed = True
    return const


def _value_params(value: ir.Value, shapes: Mapping[str, tuple], const: set[int]) -> int:
    direct = _const_params(value)
    if direct or value.const_value is not None:
        return direct
    if id(value) not in const:
        return 0
    shape = shapes.get(value.name)
    return _prod(shape) if _known(shape) else 0


def _through_identities(value: ir.Value) -> ir.Value:
    """The tensor an Identity chain passes on: a weight shared that way (TorchScript's ALBERT
    layers) is counted once."""
    node = value.producer()
    while node is not None and node.op_type == "Identity" and node.inputs and node.inputs[0] is not None:
        value = node.inputs[0]
        node = value.producer()
    return value


def model_cost(model: ir.Model, input_shapes: Mapping[str, Sequence[int]] | None = None) -> ModelCost:
    """MACs and parameters of every main-graph node; a node with subgraphs (If, Loop, Scan)
    carries the cost of its bodies (:func:`_subgraph_cost`)."""
    shapes = static_shapes(model, input_shapes)
    nodes, total_params = _graph_cost(model.graph, shapes, set(), set())
    return ModelCost(nodes, sum(n.macs for n in nodes), total_params)


def _graph_cost(
    graph: ir.Graph, shapes: Mapping[str, tuple], counted: set[str], outer_const: set[int]
) -> tuple[list[NodeCost], int]:
    """(per-node costs, parameters not yet in ``counted``) of one graph; ``outer_const``: the
    constant values of the graphs around it."""
    nodes: list[NodeCost] = []
    const = _constant_values(graph, outer_const)
    total_params = 0
    for node in graph:
        if node.outputs and all(id(v) in const for v in node.outputs):
            # Part of a constant subgraph (weight decoding, shape arithmetic): onnxruntime
            # folds it at load, and its result is counted where it is consumed.
            nodes.append(NodeCost(node.name or node.op_type, node.op_type, 0, 0))
            continue
        if has_subgraph(node):
            cost = _subgraph_cost(node, shapes, counted, const)
            total_params += cost.params
            nodes.append(cost)
            continue
        macs = _node_macs(node, shapes)
        params = 0
        if node.op_type in _WEIGHT_OPS:
            for value in node.inputs:
                p = _value_params(value, shapes, const) if value is not None else 0
                if p and value is not None:
                    params += p
                    source = _through_identities(value).name
                    if source not in counted:
                        counted.add(source)
                        total_params += p
        nodes.append(NodeCost(node.name or node.op_type, node.op_type, macs or 0, params, macs is None))
    return nodes, total_params


def _subgraph_cost(node: ir.Node, shapes: Mapping[str, tuple], counted: set[str], const: set[int]) -> NodeCost:
    """One inference of an If / Loop / Scan: parameters = the numeric constants its bodies
    store (all of them are in the file; a body's weights are often reshaped or sliced per
    branch, so counting them where they are read would count one tensor several times);
    MACs of the costliest If branch (one runs, which one depends on the data), or of a Loop
    / Scan body times its trip count (a constant ``M``; the scan length) — flagged unknown
    when the count is not known (then one iteration is counted)."""
    bodies = subgraphs(node)
    params, body_macs, unknown = 0, [], False
    for body in bodies:
        sub_nodes, _ = _graph_cost(body, shapes, set(), const)
        body_macs.append(sum(n.macs for n in sub_nodes))
        unknown = unknown or any(n.unknown for n in sub_nodes)
    stack = list(bodies)
    while stack:
        body = stack.pop()
        stored = list(body.initializers.values()) + [n.outputs[0] for n in body if n.op_type == "Constant"]
        for value in stored:
            key = f"{id(body)}:{value.name}"
            if key not in counted:
                counted.add(key)
                params += _const_params(value)
        for n in body:  # weights the enclosing graphs store and only a body reads
            for value in n.inputs:
                if value is not None and value.is_initializer() and value.graph is not body and value.name not in counted:
                    counted.add(value.name)
                    params += _const_params(value)
        stack.extend(b for n in body for b in subgraphs(n))
    macs = max(body_macs, default=0)
    if node.op_type in ("Loop", "Scan"):
        trips = _trip_count(node, shapes)
        unknown = unknown or trips is None
        macs *= trips or 1
    return NodeCost(node.name or node.op_type, node.op_type, macs, params, unknown)


def _trip_count(node: ir.Node, shapes: Mapping[str, tuple]) -> int | None:
    if node.op_type == "Loop":
        m = node.inputs[0] if node.inputs else None
        tensor = None if m is None else m.const_value
        return int(tensor.numpy().reshape(-1)[0]) if tensor is not None and tensor.size == 1 else None
    n_scan = attr(node, "num_scan_inputs", 0)
    first = node.inputs[len(node.inputs) - n_scan] if n_scan else None
    shape = None if first is None else shapes.get(first.name)
    axis = (attr(node, "scan_input_axes", None) or [0])[0]
    if not _known(shape) or not -len(shape) <= axis < len(shape):
        return None
    return int(shape[axis])
