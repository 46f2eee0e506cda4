"""int8 quantization through ``onnxruntime.quantization`` (not re-implemented here).

Static QDQ: for a tensor ``x`` with calibrated range, onnxruntime inserts
``DequantizeLinear(QuantizeLinear(x, s, z), s, z)`` with ``s = (max − min)/255`` (u8) and
weights are stored as int8 per output channel, ``W ≈ s_c · (q_c − 0)``; the CPU execution
provider fuses ``DQ → Conv/MatMul → Q`` into integer kernels at session load.

What this module adds around onnxruntime (which works on files, so every call goes through a
temporary directory):

1. :func:`preprocess` — onnxruntime's recommended ``quant_pre_process`` (symbolic shape
   inference, basic graph optimisation, ONNX shape inference); when symbolic shape inference
   fails it retries without it, and without any pre-processing as the last resort (the note
   says which).
2. :func:`quantize_static_int8` — ``quantize_static`` with a :class:`DatasetReader` over our
   :class:`~onnxopt.calibration.Dataset`, QDQ format, per-channel weights, MinMax / entropy /
   percentile calibration, ``nodes_to_exclude``, and ``QDQKeepRemovableActivations`` (Relu/Clip
   stay in the graph instead of being implied by the u8 range, so a layer can be turned back
   to float; onnxruntime still fuses them at load — measured no slower). On x86 CPUs without
   VNNI, onnxruntime's fused u8 × s8 kernels add pairs of products in int16
   (``vpmaddubsw``), which saturates with full-range weights: on a small Conv/MatMul model the
   fused result was 4× further from float than the QDQ reference math (relative error 0.100
   vs 0.025). There weights are quantized to 7 bits (``reduce_range``; :func:`u8s8_saturates`
   decides), as onnxruntime's documentation advises: 0.037, the same fused and unfused.
3. :func:`quantize_dynamic_int8` — ``quantize_dynamic`` for MatMul-heavy transformer models
   and recurrent models (weights int8, activations quantized at run time); by default only
   MatMul/Gemm/Attention and LSTM (``DynamicQuantizeLSTM``), because dynamic int8 convolutions
   (ConvInteger) are slower than fp32 on x86 CPUs.
4. :func:`keep_float` — turns chosen layers of an already-quantized QDQ model back to float
   without re-calibrating: a ``DQ(Q(x))`` input is bypassed to ``x``, a ``DQ(int8 weight)``
   input is replaced by the original float weight, and a graph output produced by ``DQ(Q(y))``
   of a float layer is rewired to ``y``. This makes per-layer sensitivity and the fallback
   search cost one calibration in total. It must not act on nodes absent from the float
   model (their float weights are unknown): those names are ignored and returned.
5. :func:`splice_quantized` — the float model with one layer replaced by its quantized nodes
   from a model quantized as a whole: a dynamic-int8 layer's sensitivity without running
   ``quantize_dynamic`` once per layer (on maxvit_t that was 5.8 s a layer, 90 layers).
6. :func:`with_quantized_copies` — the float model with every layer's quantized nodes
   copied beside it, reading float inputs: each layer's local quantization error, all layers
   in one session run.
"""

from __future__ import annotations

__all__ = [
    "METHODS",
    "QUANT_TYPES",
    "DatasetReader",
    "preprocess",
    "quantize_static_int8",
    "quantize_dynamic_int8",
    "quantized_nodes",
    "keep_float",
    "splice_quantized",
    "with_quantized_copies",
    "dynamic_quantized",
    "name_unnamed_nodes",
    "resolve_reduce_range",
    "u8s8_saturates",
]

import contextlib
import functools
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import onnx
import onnx_ir as ir
import onnx_ir.passes.common as common
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)

from onnxopt.calibration import Dataset, batch_keeping_all_values
from onnxopt.cpu import cpu_flags, is_x86
from onnxopt.errors import OnnxoptError
from onnxopt.graph import (
    const_array,
    consumers,
    new_initializer,
    producer,
    quiet_loggers,
    value_names,
)
from onnxopt.model_io import _drop_untyped_value_info, _embedded_proto

logger = logging.getLogger(__name__)

METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}
QUANT_TYPES = {"u8": QuantType.QUInt8, "s8": QuantType.QInt8}
_QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
DYNAMIC_OPS = ("MatMul", "Gemm", "Attention", "LSTM")


class DatasetReader(CalibrationDataReader):
    """Feeds a :class:`Dataset` to onnxruntime's calibrators, ``batch_size`` samples at a time."""

    def __init__(self, data: Dataset, batch_size: int = 1) -> None:
        self.data = data
        self.batch_size = max(1, batch_size)
        self.rewind()

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._iter, None)

    def rewind(self) -> None:
        self._iter = iter(self.data.batches(self.batch_size))


def name_unnamed_nodes(model: ir.Model) -> None:
    """Give every unnamed node a unique name (``nodes_to_exclude`` and reports need names)."""
    taken = {n.name for n in model.graph if n.name}
    for i, node in enumerate(model.graph):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)


def _save(model: ir.Model, path: str) -> None:
    onnx.save_model(_embedded_proto(model), path)


SMALL_SHARED = 4096  # elements: per-channel vectors, not weight matrices (ALBERT shares those)


def _unshare_small_initializers(proto: onnx.ModelProto) -> None:
    """Give every node its own copy of a small initializer that several nodes read. The
    dynamo exporter's GroupNorm feeds one scale and one bias to every InstanceNormalization;
    onnxruntime's QDQ quantizer copies such a tensor per reader as ``<name><k>``, and where
    that name is taken (bias ``val_34``, value ``val_341``) it stops with "Quantization
    parameter shared mode is not supported for weight yet". Lossless; large shared weights
    (ALBERT's layers) are left shared."""
    graph = proto.graph
    small = {t.name: t for t in graph.initializer if 0 < int(np.prod(t.dims)) <= SMALL_SHARED}
    seen: dict[str, int] = {}
    taken = {t.name for t in graph.initializer} | {o for n in graph.node for o in n.output}
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name not in small:
                continue
            seen[name] = seen.get(name, 0) + 1
            if seen[name] == 1:
                continue
            copy = onnx.TensorProto()
            copy.CopyFrom(small[name])
            copy.name = f"{name}_copy{seen[name] - 1}"
            while copy.name in taken:
                copy.name += "_"
            taken.add(copy.name)
            graph.initializer.append(copy)
            node.input[i] = copy.name


def _load(path: str) -> ir.Model:
    proto = onnx.load(path)
    # onnxruntime's quantizer can leave value_info entries without a type (seen after a
    # low-rank split); the checker rejects those, and they carry no information.
    _drop_untyped_value_info(proto.graph)
    model = ir.serde.deserialize_model(proto)
    # Its node order can put an If whose branch reads another If's output before that If
    # (silero-vad): onnxruntime accepts it, but copying the graph needs producers first.
    common.TopologicalSortPass()(model)
    return model


def preprocess(model: ir.Model) -> tuple[ir.Model, str]:
    """onnxruntime's ``quant_pre_process`` on ``model``; returns (model, note)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    attempts = (
        ("quant_pre_process", {}),
        ("quant_pre_process without symbolic shape inference", {"skip_symbolic_shape": True}),
    )
    with tempfile.TemporaryDirectory(prefix="onnxopt-q-") as tmp:
        src, dst = os.path.join(tmp, "in.onnx"), os.path.join(tmp, "pre.onnx")
        _save(model, src)
        errors = []
        for label, kwargs in attempts:
            try:
                # onnxruntime's symbolic shape inference saves sym_shape_infer_temp.onnx and
                # its external data into the working directory when it fails: keep them here.
                # its symbolic shape inference warns about every broadcast it cannot prove
                with contextlib.chdir(tmp), quiet_loggers("onnxruntime.tools.symbolic_shape_infer"):
                    quant_pre_process(src, dst, **kwargs)
                result = _load(dst)
                name_unnamed_nodes(result)
                _rename_added_initializers(model, result)
                return result, label
            except Exception as exc:  # onnxruntime raises many kinds here
                errors.append(f"{label}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    logger.info("pre-processing failed, quantizing the model as is: %s", errors)
    result = model.clone()
    name_unnamed_nodes(result)
    return result, "no pre-processing (" + "; ".join(errors) + ")"


_ORT_FUSION_SHAPE = re.compile(r"gemm_(input|output)_shape(_token_\d+)?")


def _rename_added_initializers(original: ir.Model, result: ir.Model) -> None:
    """Give the initializers pre-processing added names of their own (``pre/…``).

    onnxruntime's MatMulAddFusion writes the Reshape shapes of a 3-D MatMul + Add it fuses as
    initializers named by a unique *node* name, ``gemm_input_shape``. Pre-processing fuses the
    feed-forward layers of a transformer so and saves those names; at session start a second
    fusion (an attention projection whose bias Add the fallback keeps float) asks for the
    same name, which no node holds, and onnxruntime refuses the model ("Attempt to replace the
    existing tensor"): every sensitivity candidate of torchaudio's wav2vec2 failed so. A model
    saved by onnxruntime earlier holds such names too: they are renamed as well."""
    known = set(original.graph.initializers)
    inputs = {v.name for v in result.graph.inputs}
    for name, value in list(result.graph.initializers.items()):
        if name in inputs or (name in known and not _ORT_FUSION_SHAPE.fullmatch(name)):
            continue
        new, i = f"pre/{name}", 0
        while new in result.graph.initializers:
            i += 1
            new = f"pre/{name}_{i}"
        value.name = new


@functools.cache
def u8s8_saturates() -> bool:
    """Whether onnxruntime's int8 CPU kernels can saturate here: an x86 CPU without VNNI
    (AVX-512 VNNI, AVX-VNNI or AMX). An x86 CPU whose flags cannot be read counts as
    saturating — 7-bit weights cost little accuracy, saturation can cost much."""
    if not is_x86():
        return False
    flags = cpu_flags()
    return flags is None or not flags & {"avx512_vnni", "avx_vnni", "amx_int8"}


def resolve_reduce_range(reduce_range: bool | None, weight_type: str) -> bool:
    """``reduce_range`` as given, or for ``None``: s8 weights on a CPU where they saturate."""
    return (weight_type == "s8" and u8s8_saturates()) if reduce_range is None else reduce_range


def quantize_static_int8(
    model: ir.Model,
    calib: Dataset,
    *,
    method: str = "minmax",
    per_channel: bool = True,
    activation_type: str = "u8",
    weight_type: str = "s8",
    exclude: Sequence[str] = (),
    op_types: Sequence[str] | None = None,
    max_samples: int = 256,
    reduce_range: bool | None = None,
) -> ir.Model:
    """``quantize_static`` (QDQ) of an already pre-processed ``model`` on ``calib``;
    ``reduce_range=None``: 7-bit weights where :func:`u8s8_saturates`."""
    if method not in METHODS:
        raise OnnxoptError(f"unknown calibration method {method!r}; choose from {', '.join(METHODS)}")
    for t in (activation_type, weight_type):
        if t not in QUANT_TYPES:
            raise OnnxoptError(f"unknown int8 type {t!r}; choose u8 or s8")
    if len(calib) == 0:
        raise OnnxoptError("static int8 needs calibration data (--data)")
    data = calib.take(slice(0, max_samples))
    # Keep Relu/Clip: onnxruntime would drop them (the u8 range clips at 0), and keep_float
    # must be able to turn a layer back to float without losing its activation.
    extra = {"CalibMovingAverage": False, "QDQKeepRemovableActivations": True}
    if method == "percentile":
        extra["CalibPercentile"] = 99.99
    # onnxruntime widens per-channel weight scales so that each int32 bias stays representable;
    # that step fails on a bias of more than one dimension (a Gemm C of shape [1, N], as
    # tf2onnx writes): the retry skips it, which costs nothing on biases that fit anyway.
    retry = {**extra, "QDQDisableWeightAdjustForInt32Bias": True}
    with tempfile.TemporaryDirectory(prefix="onnxopt-q-") as tmp, _quiet_expected_warnings():
        src, dst = os.path.join(tmp, "float.onnx"), os.path.join(tmp, "int8.onnx")
        proto = _embedded_proto(model)
        _unshare_small_initializers(proto)
        onnx.save_model(proto, src)
        first: Exception | None = None
        batch = batch_keeping_all_values(model, data, 16)
        for options in (extra, retry):
            try:
                quantize_static(
                    src,
                    dst,
                    DatasetReader(data, batch),
                    quant_format=QuantFormat.QDQ,
                    per_channel=per_channel,
                    activation_type=QUANT_TYPES[activation_type],
                    weight_type=QUANT_TYPES[weight_type],
                    nodes_to_exclude=list(exclude),
                    op_types_to_quantize=list(op_types) if op_types else None,
                    calibrate_method=METHODS[method],
                    reduce_range=resolve_reduce_range(reduce_range, weight_type),
                    extra_options=options,
                    calibration_cache_path=None,
                )
                return _load(dst)
            except OnnxoptError:
                raise
            except Exception as exc:
                first = first or exc
        raise OnnxoptError(f"onnxruntime quantize_static failed: {type(first).__name__}: {str(first).splitlines()[0] if str(first) else ''}") from first


def quantize_dynamic_int8(
    model: ir.Model,
    *,
    per_channel: bool = True,
    weight_type: str = "s8",
    exclude: Sequence[str] = (),
    op_types: Sequence[str] = DYNAMIC_OPS,
    reduce_range: bool | None = None,
) -> ir.Model:
    """``quantize_dynamic`` of ``model`` (weights int8, activations quantized at run time);
    ``reduce_range`` as for :func:`quantize_static_int8`. ``model`` may already hold static QDQ
    layers (``int8-mixed``); onnxruntime's warning about that is silenced, it is intended.

    onnxruntime first rewrites every Gemm as ``<name>_MatMul`` (+ ``<name>_Add``) and only
    then reads ``nodes_to_exclude``: an excluded Gemm is excluded under that name too (by
    its own name alone it was quantized anyway — maxvit_t's 89 fused MatMul+Add layers)."""
    gemms = {n.name for n in model.graph if n.op_type == "Gemm"}
    exclude = [*exclude, *(f"{name}_MatMul" for name in exclude if name in gemms)]
    with tempfile.TemporaryDirectory(prefix="onnxopt-q-") as tmp, _quiet_expected_warnings():
        src, dst = os.path.join(tmp, "float.onnx"), os.path.join(tmp, "int8.onnx")
        _save(model, src)
        try:
            quantize_dynamic(
                src,
                dst,
                op_types_to_quantize=list(op_types),
                per_channel=per_channel,
                weight_type=QUANT_TYPES[weight_type],
                nodes_to_exclude=list(exclude),
                reduce_range=resolve_reduce_range(reduce_range, weight_type),
            )
        except Exception as exc:
            raise OnnxoptError(f"onnxruntime quantize_dynamic failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
        return _load(dst)


class _ExpectedWarnings(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return ("already quantized" not in message and not ("Axis" in message and "is out-of-range for weight" in message)
                and not (message.startswith("Expected bias") and "InsertedPrecisionFreeCast" in message))  # fmt: skip


@contextlib.contextmanager
def _quiet_expected_warnings():
    """onnxruntime's quantizer warns on the root logger when a model has QDQ nodes (intended
    in int8-mixed), for every 1-D weight of a per-channel op it does not quantize per
    channel (LayerNormalization's scale: it quantizes it per tensor, which is right), and for
    every bias of an fp16 model, which it reads through its own inserted Cast and leaves float."""
    quiet = _ExpectedWarnings()
    logging.getLogger().addFilter(quiet)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(quiet)


def quantized_nodes(qmodel: ir.Model) -> list[str]:
    """Names of the compute nodes onnxruntime quantized in a QDQ model.

    A node counts when it reads a DequantizeLinear output and either has a quantized constant
    input (a weight) or its output is quantized again (a QuantizeLinear reads it). A float op
    that merely consumes a quantized tensor (e.g. a Sigmoid after a quantized Conv) does not.
    """
    names = []
    for node in qmodel.graph:
        if node.op_type in _QDQ_OPS:
            continue
        if not _dequantized_inputs(node):
            continue
        requantized = any(c.op_type == "QuantizeLinear" for out in node.outputs for c in consumers(out))
        if reads_quantized_weight(node) or requantized:
            names.append(node.name)
    return names


def _dequantized_inputs(node: ir.Node) -> list[ir.Node]:
    """The DequantizeLinear nodes that write ``node``'s inputs."""
    return [p for v in node.inputs if v is not None and (p := producer(v)) is not None and p.op_type == "DequantizeLinear"]


def reads_quantized_weight(node: ir.Node) -> bool:
    """Whether ``node`` reads a quantized constant: a DequantizeLinear of a weight (a Conv's
    kernel, or an embedding table a Gather reads)."""
    return any(const_array(dq.inputs[0]) is not None for dq in _dequantized_inputs(node))


def _dequantized(dq: ir.Node) -> np.ndarray | None:
    """The float value of ``DequantizeLinear`` on constant inputs (numpy reference)."""
    q = const_array(dq.inputs[0])
    scale = const_array(dq.inputs[1])
    if q is None or scale is None:
        return None
    zero = const_array(dq.inputs[2]) if len(dq.inputs) > 2 and dq.inputs[2] is not None else None
    axis = dq.attributes.get("axis")
    axis = axis.value if axis is not None else 1
    shape = [1] * q.ndim
    if scale.ndim == 1 and q.ndim > 0 and scale.size > 1:
        shape[axis] = -1
    x = q.astype(np.float64) - (0 if zero is None else zero.astype(np.float64).reshape(shape))
    return (x * scale.astype(np.float64).reshape(shape)).astype(scale.dtype)


def keep_float(qmodel: ir.Model, float_model: ir.Model, names: Iterable[str]) -> tuple[ir.Model, list[str]]:
    """A copy of ``qmodel`` where the nodes ``names`` compute in float (see module docstring).

    Returns (model, names that were not found in both models).
    """
    names = set(names)
    model = qmodel.clone()
    graph = model.graph
    float_nodes = {n.name: n for n in float_model.graph}
    taken = value_names(graph)
    found = set()
    for node in list(graph):
        if node.name not in names or node.op_type in _QDQ_OPS:
            continue
        original = float_nodes.get(node.name)
        if original is None:
            continue
        found.add(node.name)
        for i, value in enumerate(node.inputs):
            dq = producer(value)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            q = producer(dq.inputs[0])
            if q is not None and q.op_type == "QuantizeLinear":
                node.replace_input_with(i, q.inputs[0])
                continue
            weight = const_array(original.inputs[i]) if i < len(original.inputs) else None
            if weight is None:
                weight = _dequantized(dq)
            if weight is not None:
                node.replace_input_with(i, new_initializer(graph, weight, f"{node.name}_float_in{i}", taken))
        _rewire_quantized_outputs(graph, node)
    ir.passes.Sequential(common.RemoveUnusedNodesPass(), common.TopologicalSortPass())(model)
    return model, sorted(names - found)


def _rewire_quantized_outputs(graph: ir.Graph, node: ir.Node) -> None:
    """Graph outputs computed as DQ(Q(y)) from a now-float node's output y become y itself."""
    for out in node.outputs:
        if out.is_graph_output():
            continue
        for q in consumers(out):
            if q.op_type != "QuantizeLinear":
                continue
            for dq in consumers(q.outputs[0]):
                final = dq.outputs[0]
                if dq.op_type != "DequantizeLinear" or not final.is_graph_output():
                    continue
                index = next(i for i, v in enumerate(graph.outputs) if v is final)
                name = final.name
                final.name = f"{name}_int8"
                out.name = name
                out.type, out.shape = out.type or final.type, out.shape or final.shape
                graph.outputs[index] = out
                return


class _Splicer:
    """Copies, into ``model`` (a clone of the float model), the nodes of ``quantized`` that
    compute a layer's outputs there: walking back from those outputs, every node up to the
    values the float model also has (the layer's activation inputs, shared constants such as a
    Gemm's bias). New constants (int8 weights, scales, zero points) are shared, not copied; a
    node two layers' regions share (one ``DQ(Q(x))`` for two consumers) is copied once."""

    def __init__(self, model: ir.Model, quantized: ir.Model) -> None:
        self.graph = model.graph
        graph = self.graph
        # the float model's values by name (inputs, initializers, node outputs)
        self.known = {v.name: v for v in graph.inputs} | dict(graph.initializers) | {
            v.name: v for node in graph for v in node.outputs
        }
        self.q_values = {v.name: v for v in quantized.graph.inputs} | {v.name: v for node in quantized.graph for v in node.outputs}
        self.q_inits = quantized.graph.initializers
        self.order = {id(n): i for i, n in enumerate(quantized.graph)}
        self.made: dict[str, ir.Value] = {}

    def region(self, layer: ir.Node) -> list[ir.Node] | None:
        """The nodes of ``quantized`` computing ``layer``'s outputs, in graph order; None
        when the layer is not quantized there (the same node computes them from the same
        inputs)."""
        outputs = [v.name for v in layer.outputs if v is not None and v.name]
        region: list[ir.Node] = []
        seen: set[int] = set()
        stack = [self.q_values.get(name) for name in outputs]
        while stack:
            value = stack.pop()
            node = value.producer() if value is not None else None
            if node is None or id(node) in seen:
                continue
            seen.add(id(node))
            region.append(node)
            stack.extend(v for v in node.inputs if v is not None and v.name not in self.known)
        if not region or (len(region) == 1 and region[0].name == layer.name and region[0].op_type == layer.op_type):
            return None
        return sorted(region, key=lambda n: self.order[id(n)])

    def _local(self, value: ir.Value | None) -> ir.Value | None:
        if value is None:
            return None
        if value.name in self.made:
            return self.made[value.name]
        if value.name in self.q_inits and value.name not in self.known:  # a new constant: shared tensor
            copy = ir.Value(name=value.name, shape=value.shape, type=value.type, const_value=value.const_value)
            self.graph.register_initializer(copy)
            self.made[value.name] = copy
            return copy
        return self.known[value.name]

    def rounding(self, name: str) -> list[ir.Node]:
        """The ``QuantizeLinear → DequantizeLinear`` through which value ``name`` reaches a
        graph output in ``quantized``, or []. (Consumers inside the graph are float when one
        layer alone is quantized: they read ``name`` itself.)"""
        value = self.q_values.get(name)
        for q in consumers(value) if value is not None else []:
            for dq in consumers(q.outputs[0]) if q.op_type == "QuantizeLinear" else []:
                if dq.op_type == "DequantizeLinear" and dq.outputs[0].is_graph_output():
                    return [q, dq]
        return []

    def copy(self, region: list[ir.Node], rename: Callable[[str], str], before: ir.Node | None = None,
             private: Mapping[str, ir.Value] | None = None) -> dict[str, ir.Value]:  # fmt: skip
        """Copy ``region`` (before ``before``, else at the end), each output named
        ``rename(its name)``; returns the copies by their names in ``quantized``. Nodes of
        new values only are shared with later calls; ``private`` (an earlier call's result)
        is read first and never shared: a layer's quantized output is not another layer's
        float input."""
        copies: dict[str, ir.Value] = {}
        private = private or {}

        def resolve(value: ir.Value | None) -> ir.Value | None:
            if value is not None and value.name in copies:
                return copies[value.name]
            if value is not None and value.name in private:
                return private[value.name]
            return self._local(value)

        share = not private
        for node in region:
            if share and node.outputs and all(o.name in self.made for o in node.outputs):
                copies.update((o.name, self.made[o.name]) for o in node.outputs)  # copied for an earlier layer
                continue
            new = ir.Node(node.domain, node.op_type, [resolve(v) for v in node.inputs],
                          [ir.Attr(a.name, a.type, a.value) for a in node.attributes.values()],
                          num_outputs=len(node.outputs), name=rename(node.name) if node.name else None,
                          version=node.version)  # fmt: skip
            for old, out in zip(node.outputs, new.outputs):
                out.type, out.shape, out.name = old.type, old.shape, rename(old.name)
                copies[old.name] = out
                if share and old.name not in self.known:
                    self.made[old.name] = out
            if before is not None:
                self.graph.insert_before(before, new)
            else:
                self.graph.append(new)
        return copies


_FLOAT_TYPES = frozenset({ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.DOUBLE})


def _typed(out: ir.Value, copy: ir.Value, layer: ir.Node) -> bool:
    """Give ``out`` and ``copy`` a type (graph outputs need one): either's, else that of the
    layer's first typed float input (exporters leave intermediate values untyped); False when
    none is known."""
    known = out.type or copy.type or next(
        (v.type for v in layer.inputs if v is not None and v.type is not None and v.dtype in _FLOAT_TYPES), None
    )
    if known is None:
        return False
    out.type, copy.type = out.type or known, copy.type or known
    return True


def splice_quantized(float_model: ir.Model, quantized: ir.Model, name: str) -> ir.Model | None:
    """``float_model`` with node ``name`` replaced by the nodes that compute its outputs in
    ``quantized`` (onnxruntime keeps a layer's output names when it quantizes it; see
    :class:`_Splicer`): the same numbers as quantizing that layer alone. None when ``name`` is
    in neither model, or is not quantized in ``quantized``."""
    model = float_model.clone()
    graph = model.graph
    layer = next((n for n in graph if n.name == name), None)
    if layer is None:
        return None
    splicer = _Splicer(model, quantized)
    region = splicer.region(layer)
    if region is None:
        return None
    outputs = {v.name for v in layer.outputs if v is not None and v.name}
    copies = splicer.copy(region, lambda n: f"{n}_spliced" if n in outputs else n, before=layer)
    for old in layer.outputs:
        if old is None or old.name not in copies:
            continue
        new_out = copies[old.name]
        old.replace_all_uses_with(new_out, replace_graph_outputs=True)
        name_of = old.name
        old.name = f"{name_of}_float"
        new_out.name = name_of
    graph.remove(layer, safe=True)
    return model


def with_quantized_copies(float_model: ir.Model, quantized: ir.Model, names: Iterable[str]) -> tuple[ir.Model, dict[str, list[tuple[str, str]]]]:
    """``float_model`` plus, for each layer of ``names`` that ``quantized`` quantizes, a copy
    of its quantized nodes reading the float model's values (and of the Q/DQ that rounds it
    for a graph output, if any): each layer's quantized output next to its float one, for all
    layers in one run (its local error). Returns the model, whose graph outputs now include
    both, and per layer its ``(float, quantized)`` output names. Copies are named
    ``<name>__quantized``."""
    model = float_model.clone()
    graph = model.graph
    splicer = _Splicer(model, quantized)
    nodes = {n.name: n for n in graph if n.name}
    pairs: dict[str, list[tuple[str, str]]] = {}
    present = {v.name for v in graph.outputs}
    for name in names:
        layer = nodes.get(name)
        region = splicer.region(layer) if layer is not None else None
        if region is None:
            continue
        copies = splicer.copy(region, lambda n: f"{n}__quantized")
        pairs[name] = []
        for out in layer.outputs:
            if out is None or out.name not in copies or not _typed(out, copies[out.name], layer):
                continue
            quantized_out = copies[out.name]
            if rounding := splicer.rounding(out.name):  # the graph output reads it rounded: so does the copy
                rounded = splicer.copy(rounding, lambda n, layer=name: f"{n}__{layer}__rounded", private=copies)
                quantized_out = rounded[rounding[-1].outputs[0].name]
            for value in (out, quantized_out):
                if value.name not in present:
                    graph.outputs.append(value)
                    present.add(value.name)
            pairs[name].append((out.name, quantized_out.name))
    common.TopologicalSortPass()(model)
    return model, {k: v for k, v in pairs.items() if v}


def dynamic_quantized(float_model: ir.Model, quantized: ir.Model, names: Iterable[str]) -> list[str]:
    """Which of the nodes ``names`` of ``float_model`` ``quantize_dynamic`` quantized in
    ``quantized``: those whose name is gone (a Gemm under its ``<name>_MatMul`` too)."""
    remaining = {n.name for n in quantized.graph}
    gemms = {n.name for n in float_model.graph if n.op_type == "Gemm"}
    return [n for n in names if n not in remaining and not (n in gemms and f"{n}_MatMul" in remaining)]
