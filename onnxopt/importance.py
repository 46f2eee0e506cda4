"""Channel importance criteria: one score per unit of every :class:`ChannelGroup`.

- ``l1`` / ``l2``: norm of each filter of every source op (Li et al., 2017).
- ``bn-gamma``: ``|γ|`` of the BatchNormalization members (network slimming); a group
  without BN (folded, or none) falls back to ``l2``.
- ``apoz``: 1 − average percentage of zeros of the group's post-activation values
  (``Relu``/``Clip``/… outputs; the source outputs when there is none) on calibration data.
- ``permutation`` (the thesis, ch. 3): for output channel *i* of layer *l*, permute the
  weights of filter *i* (seeded Fisher–Yates) and measure the change of the layer output
  on real activations of the *original* network::

      D_i = mean_over_samples Σ_{h,w} (Y_i − Y'_i)²,   Y − Y' = conv(X, W − W_perm)

  Permuting filter *i* changes only output channel *i*, and the difference is linear in the
  weights, so the scores of all filters of a layer come from **one** extra convolution of
  the cached input ``X`` with ``W − W_perm`` (every filter permuted at once). All layers'
  extra convolutions are added to a clone of the model, each followed by a sum of squares
  per channel, and the clone runs once over the calibration data in batches — the network
  is never run once per channel, and no activation is kept in memory.

- ``obs``: the output error the consumer layers keep after the best least-squares re-fit
  when the unit goes, units removed greedily per group (:mod:`onnxopt.obs`); groups it cannot
  model fall back to ``permutation``.

A unit of a group spanning several source layers (residual Add, SE gate) gets the **sum**
of its members' scores. Larger score = more important.
"""

from __future__ import annotations

__all__ = ["CRITERIA", "group_importance", "Probe", "value_session"]

from collections.abc import Sequence

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

from onnxopt.calibration import Dataset, batch_keeping_all_values
from onnxopt.errors import OnnxoptError
from onnxopt.evaluate import session
from onnxopt.graph import ancestors, attr, default_opset, subgraphs
from onnxopt.groups import (
    PARAM,
    PRODUCER,
    RECURRENT_GATES,
    ChannelGroup,
    GroupAnalysis,
    Member,
    attention_channel_rows,
    const_array,
    is_fused_attention,
    recurrent_unit_rows,
)
from onnxopt.model_io import _PROTOBUF_LIMIT, model_bytes

CRITERIA = ("l1", "l2", "bn-gamma", "apoz", "permutation", "obs")
_ACTIVATIONS = {"Relu", "Clip", "LeakyRelu", "HardSwish", "Sigmoid", "PRelu", "Elu", "Selu", "Gelu", "HardSigmoid"}


class Probe:
    """A clone of a model with extra outputs (statistics of intermediate values), run once
    over a dataset in batches; outputs are summed over batches."""

    def __init__(self, model: ir.Model) -> None:
        self.model = model.clone()
        self.graph = self.model.graph
        self.opset = default_opset(self.model)
        self.values: dict[str, ir.Value] = {v.name: v for v in self.graph.inputs}
        for node in self.graph:
            for out in node.outputs:
                self.values[out.name] = out
        self.graph.outputs.clear()
        self.keys: list[str] = []
        self.weighted: set[str] = set()
        self._count = 0

    def value(self, name: str) -> ir.Value:
        return self.values[name]

    def const(self, array: np.ndarray) -> ir.Value:
        self._count += 1
        name = f"_probe_c{self._count}"
        value = ir.Value(name=name, const_value=ir.tensor(np.asarray(array, order="C"), name=name))
        value.shape = ir.Shape(array.shape)
        value.type = ir.TensorType(ir.DataType.from_numpy(array.dtype))
        self.graph.register_initializer(value)
        return value

    def add(self, op: str, inputs: Sequence[ir.Value | None], **attributes) -> ir.Value:
        self._count += 1
        node = ir.node(op, list(inputs), attributes=attributes or None, name=f"_probe_n{self._count}")
        self.graph.append(node)
        node.outputs[0].name = f"_probe_v{self._count}"
        return node.outputs[0]

    def reduce(self, op: str, x: ir.Value, axes: Sequence[int]) -> ir.Value:
        """``op`` (ReduceSum, ReduceMean, ReduceSumSquare, ReduceMax) over ``axes``, no keepdims."""
        if self.opset >= 18 or (op == "ReduceSum" and self.opset >= 13):
            return self.add(op, [x, self.const(np.asarray(list(axes), dtype=np.int64))], keepdims=0)
        return self.add(op, [x], axes=list(axes), keepdims=0)

    def output(self, key: str, value: ir.Value, *, batch_mean: bool = False) -> None:
        """Add ``value`` as output ``key``. ``batch_mean``: the value is a mean over the
        batch, so :meth:`run` weights it by the batch size (divide the sum by ``n``)."""
        if batch_mean:
            self.weighted.add(key)
        if value.dtype != ir.DataType.FLOAT:
            # read as float32 (a float16 model's values; an untyped value may be either, and
            # onnxruntime drops a Cast to the type it already has)
            value = self.add("Cast", [value], to=ir.DataType.FLOAT)
        elif value.name in self.values and self.values[value.name] is value:
            value = self.add("Identity", [value])  # keep the model's own names intact
        value.name = key
        value.type = ir.TensorType(ir.DataType.FLOAT)
        self.graph.outputs.append(value)
        self.keys.append(key)

    def session(self):
        """An onnxruntime session of the probe, without the nodes its outputs do not need:
        onnxruntime runs every node of a graph whatever outputs are asked for, and a probe of
        an early layer would run the rest of the network (ssdlite's re-fit spent 4.6× longer
        per wave on its unused head and NMS)."""
        self._drop_unneeded_nodes()
        return session(self.model)

    def _drop_unneeded_nodes(self) -> None:
        producers = [v.producer() for v in self.graph.outputs if v.producer() is not None]
        needed = ancestors(producers) | {id(n) for n in producers}
        if any(id(node) in needed and subgraphs(node) for node in self.graph):
            return  # a branch or loop body may read any outer value: keep everything
        unneeded = [node for node in self.graph if id(node) not in needed]
        for node in unneeded:  # detached first, inside branches and loop bodies too (they read outer values)
            for inner in [node, *(n for g in subgraphs(node) for n in g.all_nodes())]:
                for i in range(len(inner.inputs)):
                    inner.replace_input_with(i, None)
        self.graph.remove(unneeded, safe=False)
        inputs = set(map(id, self.graph.inputs))
        for name, value in list(self.graph.initializers.items()):
            if not value.uses() and id(value) not in inputs:
                del self.graph.initializers[name]

    def run(self, data: Dataset, batch_size: int = 16) -> tuple[dict[str, np.ndarray], int]:
        if not self.keys:
            return {}, len(data)
        sess = self.session()
        names = [i.name for i in sess.get_inputs()]
        step = batch_keeping_all_values(self.model, data, batch_size)  # statistics come last
        sums: dict[str, np.ndarray] = {}
        n = len(data)
        for part in data.parts(step):
            feed = {k: part.feed[k] for k in names}
            rows = len(part)
            for key, out in zip(self.keys, sess.run(self.keys, feed)):
                out = np.asarray(out, dtype=np.float64) * (rows if key in self.weighted else 1)
                sums[key] = sums[key] + out if key in sums else out
        return sums, n


def value_session(model: ir.Model, names: Sequence[str]) -> tuple[ort.InferenceSession, list[str]]:
    """``(session, keys)``: ``model`` with float32 copies of its values ``names`` as the
    outputs ``keys``, running only the nodes they need — a :class:`Probe` that computes
    nothing new, serialized node by node instead of cloned (ssdlite's 3,400 nodes: a clone
    took 0.3 s, once per re-fit wave, 17 of a candidate's 41 s; its head and NMS are never
    needed). Graphs with subgraphs, and models over the protobuf limit, take the
    :class:`Probe` path."""
    graph = model.graph
    values = {v.name: v for v in graph.inputs} | {o.name: o for node in graph for o in node.outputs}
    targets = [values[name] for name in names]
    producers = [v.producer() for v in targets if v.producer() is not None]
    needed = ancestors(producers) | {id(node) for node in producers}
    kept = [node for node in graph if id(node) in needed]
    if any(subgraphs(node) for node in kept) or model_bytes(model) > _PROTOBUF_LIMIT:
        probe = Probe(model)
        for i, name in enumerate(names):
            probe.output(f"_value{i}", probe.value(name))
        return probe.session(), probe.keys
    keys = [f"_probe_value{i}" for i in range(len(names))]
    while any(key in values for key in keys):
        keys = [f"_{key}" for key in keys]
    proto = onnx.ModelProto(ir_version=model.ir_version)
    for domain, version in model.opset_imports.items():
        proto.opset_import.add(domain=domain, version=version)
    proto.functions.extend(ir.serde.serialize_function(f) for f in model.functions.values())
    g = proto.graph
    g.name = graph.name or "probe"
    g.input.extend(ir.serde.serialize_value(v) for v in graph.inputs)
    g.node.extend(ir.serde.serialize_node(node) for node in kept)
    g.node.extend(
        onnx.helper.make_node("Identity", [v.name], [key]) if v.dtype == ir.DataType.FLOAT
        else onnx.helper.make_node("Cast", [v.name], [key], to=onnx.TensorProto.FLOAT)
        for key, v in zip(keys, targets)
    )  # fmt: skip
    used = {id(v) for node in kept for v in node.inputs if v is not None} | {id(v) for v in graph.inputs}
    for name, value in graph.initializers.items():
        if id(value) in used and value.const_value is not None:
            tensor = value.const_value
            if isinstance(tensor, ir.ExternalTensor):  # read into the protobuf, as a session needs
                tensor = ir.Tensor(tensor.numpy(), name=name)
            t = ir.serde.serialize_tensor(tensor)
            t.name = name
            g.initializer.append(t)
    g.output.extend(onnx.helper.make_tensor_value_info(key, onnx.TensorProto.FLOAT, None) for key in keys)
    return session(proto), keys


def _to_units(group: ChannelGroup, value: str, per_channel: np.ndarray, out: np.ndarray) -> None:
    idx = group.index[value]
    mask = idx >= 0
    np.add.at(out, idx[mask], np.asarray(per_channel, dtype=np.float64)[mask])


def _per_filter(weight: np.ndarray, axis: int) -> np.ndarray:
    return np.moveaxis(weight, axis, 0).reshape(weight.shape[axis], -1)


def _norm_scores(group: ChannelGroup, order: int) -> np.ndarray:
    scores = np.zeros(group.units)
    for m in group.sources:
        if m.node.op_type in RECURRENT_GATES:
            filters = recurrent_unit_rows(m.node)
        elif is_fused_attention(m.node):
            filters = attention_channel_rows(m.node)
        else:
            filters = _per_filter(const_array(m.node.inputs[1]).astype(np.float64), m.axis)
        per = np.abs(filters).sum(1) if order == 1 else np.sqrt((filters**2).sum(1))
        _to_units(group, m.value, per, scores)
    return scores


def _bn_scores(group: ChannelGroup) -> np.ndarray | None:
    scores = np.zeros(group.units)
    found = False
    for m in group.members:
        if m.role == PARAM and m.node.op_type == "BatchNormalization" and m.input_index == 1:
            _to_units(group, m.value, np.abs(const_array(m.node.inputs[1]).astype(np.float64)), scores)
            found = True
    return scores if found else None


def _channel_axes(rank: int, axis: int) -> list[int]:
    return [a for a in range(rank) if a != axis]


def _permutation_probe(probe: Probe, m: Member, rng: np.random.Generator, ranks: dict[str, int]) -> ir.Value | None:
    node = m.node
    if node.op_type in RECURRENT_GATES:
        return _recurrent_permutation_probe(probe, node, rng)
    if is_fused_attention(node):
        return _attention_permutation_probe(probe, node, rng)
    weight = const_array(node.inputs[1])
    filters = _per_filter(weight, m.axis)
    permuted = rng.permuted(filters, axis=1)  # Fisher–Yates per filter, all filters at once
    diff = np.moveaxis((filters - permuted).reshape(np.moveaxis(weight, m.axis, 0).shape), 0, m.axis)
    x = probe.value(node.inputs[0].name)
    w = probe.const(np.asarray(diff.astype(weight.dtype), order="C"))
    if node.op_type in ("Conv", "ConvTranspose"):
        attrs = {k: a.value for k, a in node.attributes.items()}
        y = probe.add(node.op_type, [x, w], **attrs)
        rank = len(weight.shape)
    elif node.op_type == "Gemm":
        y = probe.add("Gemm", [x, w], transB=attr(node, "transB", 0), alpha=float(attr(node, "alpha", 1.0)))
        rank = 2
    else:  # MatMul
        y = probe.add("MatMul", [x, w])
        # the group analysis knows ranks that the file does not store (TorchScript exports
        # keep no shapes of intermediate values; a [B, T, C] MatMul is not 2-D)
        rank = ranks.get(m.value) or len(probe.value(m.value).shape or ()) or 2
    out_axis = 1 if node.op_type in ("Conv", "ConvTranspose", "Gemm") else rank - 1
    return probe.reduce("ReduceSumSquare", y, _channel_axes(rank, out_axis))


def _recurrent_permutation_probe(probe: Probe, node: ir.Node, rng: np.random.Generator) -> ir.Value:
    """An RNN's hidden unit *j*: shuffle its input-weight rows ``W[d, g·H + j]`` (every gate
    and direction), and measure the change of the gate pre-activations ``W·x_t`` summed
    over gates, steps and samples — the thesis's output change taken where the layer is
    still linear (the recurrence and the gates' nonlinearities come after)."""
    gates = RECURRENT_GATES[node.op_type]
    weight = const_array(node.inputs[1])  # [D, G·H, I]
    d, rows, features = weight.shape
    diff = weight - rng.permuted(weight, axis=2)
    x = probe.value(node.inputs[0].name)  # [T, N, I] or, layout 1, [N, T, I]
    y = probe.add("MatMul", [x, probe.const(np.asarray(diff.reshape(d * rows, features).T, dtype=weight.dtype, order="C"))])
    per_row = probe.reduce("ReduceSumSquare", y, [0, 1])  # [D·G·H]
    grid = probe.add("Reshape", [per_row, probe.const(np.array([d * gates, rows // gates], np.int64))])
    return probe.reduce("ReduceSum", grid, [0])


def _attention_permutation_probe(probe: Probe, node: ir.Node, rng: np.random.Generator) -> ir.Value:
    """A fused Attention's output channel *c*: shuffle its columns of the packed Q/K/V weight
    and measure the change of the three projections, summed — taken, like an RNN's, where
    the layer is still linear (the scores' softmax comes after)."""
    weight = const_array(node.inputs[1])  # [H_in, 3·H]
    diff = weight - rng.permuted(weight, axis=0)  # Fisher–Yates within each column
    y = probe.add("MatMul", [probe.value(node.inputs[0].name), probe.const(np.asarray(diff, order="C"))])
    per_column = probe.reduce("ReduceSumSquare", y, [0, 1])  # the op's input is [B, S, H_in]: [3·H]
    thirds = probe.add("Reshape", [per_column, probe.const(np.array([3, weight.shape[1] // 3], np.int64))])
    return probe.reduce("ReduceSum", thirds, [0])


def _activation_values(group: ChannelGroup) -> list[tuple[str, ir.Node | None]]:
    """Post-activation values of the group (apoz looks at these), else its source outputs."""
    found = []
    for m in group.members:
        for user, _ in m.node.outputs[0].uses() if m.role == PRODUCER else []:
            if user.op_type in _ACTIVATIONS and user.outputs[0].name in group.index:
                found.append(user.outputs[0].name)
    if not found:
        found = [m.value for m in group.sources]
    return list(dict.fromkeys(found))


def group_importance(
    model: ir.Model,
    analysis: GroupAnalysis,
    criterion: str = "permutation",
    calib: Dataset | None = None,
    *,
    seed: int = 0,
    batch_size: int = 16,
) -> dict[str, np.ndarray]:
    """Score every unit of every prunable group: group name → array of ``units`` scores."""
    if criterion not in CRITERIA:
        raise OnnxoptError(f"unknown criterion {criterion!r}; choose one of {', '.join(CRITERIA)}")
    groups = analysis.prunable
    if criterion in ("l1", "l2"):
        return {g.name: _norm_scores(g, 1 if criterion == "l1" else 2) for g in groups}
    if criterion == "bn-gamma":
        out = {}
        for g in groups:
            s = _bn_scores(g)
            out[g.name] = s if s is not None else _norm_scores(g, 2)
        return out
    if calib is None or len(calib) == 0:
        raise OnnxoptError(f"criterion {criterion!r} needs calibration data (--data)")
    if criterion == "obs":
        from onnxopt.obs import obs_importance  # obs builds on Probe: imported here, not at the top

        def permutation(fallback_groups: list[ChannelGroup]) -> dict[str, np.ndarray]:
            return _data_scores(model, analysis, fallback_groups, "permutation", calib, seed, batch_size)

        return obs_importance(model, analysis, calib, permutation, seed=seed, batch_size=batch_size)
    return _data_scores(model, analysis, groups, criterion, calib, seed, batch_size)


def _data_scores(
    model: ir.Model, analysis: GroupAnalysis, groups: list[ChannelGroup], criterion: str, calib: Dataset,
    seed: int, batch_size: int,
) -> dict[str, np.ndarray]:  # fmt: skip
    """``permutation`` or ``apoz`` scores of ``groups``: one probe run over ``calib``."""
    if not groups:
        return {}
    probe = Probe(model)
    rng = np.random.default_rng(seed)
    ranks = analysis.ranks
    plan: list[tuple[ChannelGroup, str, str]] = []  # (group, value, output key)
    for gi, g in enumerate(groups):
        if criterion == "permutation":
            for si, m in enumerate(g.sources):
                key = f"perm_{gi}_{si}"
                probe.output(key, _permutation_probe(probe, m, rng, ranks))
                plan.append((g, m.value, key))
        else:
            for vi, name in enumerate(_activation_values(g)):
                x = probe.value(name)
                rank = ranks.get(name) or len(x.shape or ()) or 4
                axis = _value_axis(analysis, g, name, rank)
                x32 = probe.add("Cast", [x], to=ir.DataType.FLOAT)  # a float16 model's activation too
                positive = probe.add("Cast", [probe.add("Greater", [x32, probe.const(np.zeros((), np.float32))])], to=1)
                key = f"apoz_{gi}_{vi}"
                probe.output(key, probe.reduce("ReduceMean", positive, _channel_axes(rank, axis)), batch_mean=True)
                plan.append((g, name, key))
    sums, n = probe.run(calib, batch_size)
    scores = {g.name: np.zeros(g.units) for g in groups}
    counts = {g.name: np.zeros(g.units) for g in groups}
    for g, value, key in plan:
        per = sums[key] / n
        _to_units(g, value, per, scores[g.name])
        _to_units(g, value, np.ones_like(per), counts[g.name])
    if criterion == "apoz":  # mean over the group's activations
        return {k: v / np.maximum(counts[k], 1) for k, v in scores.items()}
    return scores


def _value_axis(analysis: GroupAnalysis, group: ChannelGroup, name: str, rank: int) -> int:
    axis = analysis.axes.get(name)
    return axis if axis is not None else (1 if rank > 1 else 0)
