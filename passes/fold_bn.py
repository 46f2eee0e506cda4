"""Fold inference-mode BatchNormalization into a neighbouring linear op (lossless).

In inference a BatchNormalization over channel axis 1 is a per-channel affine map::

    BN(y) = (y − μ) · γ/σ + β = s·y + t,    σ = sqrt(var + ε),  s = γ/σ,  t = β − μ·s

**BN after a linear op** ``y = W * x + b`` (Conv, ConvTranspose, Gemm, MatMul) scales the
op's output channels, so it folds into the op's weights and bias::

    W' = W · γ/σ          (along the output-channel axis of W)
    b' = (b − μ) · γ/σ + β = s·b + t

**BN before a Conv** ``z = Conv(s·x + t)`` scales the conv's *input* channels. Without
padding every output pixel sees only real inputs, so (for group g, ``i`` the input channel
that weight column ``[o, j]`` reads)::

    W'[o, j, k…] = W[o, j, k…] · s[i]
    b'[o]        = b[o] + Σ_{j,k…} W[o, j, k…] · t[i]

With padding, the padded border would see ``t`` instead of 0, so the fold is inexact and is
not done.

The arithmetic runs in float64 and the result is cast back to the weight's dtype (float16
and bfloat16 weights therefore lose nothing beyond their own rounding). The formulas are the
ones of onnxscript's ``_fuse_batchnorm`` rules; this pass applies them itself because those
rules decline shared initializers, ``Constant``-node weights and the dynamo exporter's
computed zero bias, do not cover MatMul or BN-before-Conv, and give no per-node reasons.
"""

from __future__ import annotations

__all__ = ["FoldBatchNormPass"]

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from onnxopt.graph import (
    attr,
    const_array,
    consumers,
    default_opset,
    set_const_input,
    static_shapes,
)
from onnxopt.passes.base import LoggedPass

logger = logging.getLogger(__name__)

_ONNX_DOMAINS = ("", "ai.onnx")
_FLOAT_TYPES = frozenset(
    {ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.DOUBLE}
)
# Ops whose output is all zeros whenever their first input is all zeros (pure data movement
# or casts). Used to recognise computed zero biases such as the dynamo exporter's
# ``Expand(CastLike(0, x), Expand(Shape(W, start=0, end=1), [1]))``.
_ZERO_PRESERVING = frozenset(
    {"Identity", "Cast", "CastLike", "Expand", "Reshape", "Unsqueeze", "Squeeze", "Flatten",
     "Transpose", "Tile"}
)  # fmt: skip

# Producer op type → the method that plans folding a following BN into it.
_AFTER = {
    "Conv": "_plan_conv",
    "ConvTranspose": "_plan_conv_transpose",
    "Gemm": "_plan_gemm",
    "MatMul": "_plan_matmul",
    "Add": "_plan_matmul_add",  # Add(MatMul(A, W), b)
}

# A plan either carries out a fold (a closure that mutates the graph; all checks and all
# arithmetic are done before it is returned) or is the reason why the fold is not possible.
_Plan = Callable[[], str] | str


@dataclass
class _Affine:
    """A BatchNormalization reduced to ``s·y + t`` per channel (float64)."""

    node: ir.Node
    scale: np.ndarray
    shift: np.ndarray

    @property
    def channels(self) -> int:
        return self.scale.shape[0]


class FoldBatchNormPass(LoggedPass):
    """Fold each inference-mode BatchNormalization of the main graph into a linear op.

    Rules, tried per BatchNormalization node ``z = BN(y)`` in graph order:

    1. **Inference form only.** The BN has exactly one output (extra outputs mean training
       mode in opsets 7-13, even when unused: onnxruntime then normalises with batch
       statistics), ``training_mode`` is not 1 (``is_test`` is 1 before opset 7), and
       γ, β, μ, var are constants (initializers or ``Constant`` nodes, also behind
       ``Identity``) of shape ``[C]``.
    2. **BN after a linear op** — ``y`` is produced by
       - ``Conv`` (any group; weight ``[Cout, Cin/g, k…]``, scaled along axis 0),
       - ``ConvTranspose`` (weight ``[Cin, Cout/g, k…]``, scaled per group along axis 1),
       - ``Gemm`` (``transB`` 0/1, any ``alpha``; ``C`` absent, ``[N]``, ``[1, N]`` or
         ``[M, N]``; the new bias is ``beta·C·s + t`` and ``beta`` becomes 1),
       - ``MatMul(A, W)`` with constant 2-D ``W`` and rank-2 ``A`` (a bias-free Linear):
         replaced by ``Gemm(A, W·s, t)``,
       - ``Add(MatMul(A, W), b)`` with constant ``b`` (a Linear exported as MatMul + Add):
         ``W`` and ``b`` are updated in place.
       The op's weight must be constant and floating point; its bias must be absent,
       constant, or *provably zero* (a zero constant passed through Cast/CastLike/Expand/
       Reshape/… or a ``ConstantOfShape`` of 0: the dynamo exporter's bias of bias-free
       convs). ``y`` (and, for MatMul + Add, the MatMul output) must have no other consumer
       and not be a graph output, else the pass must not act ("Conv_3 output has another
       consumer"). For MatMul the channel axis 1 of BN must be the last axis of the product,
       so a MatMul whose input rank is not 2 (or unknown) is left alone.
    3. **BN before a Conv** (tried when rule 2 does not apply) — ``z`` is read only by one
       ``Conv`` as its data input, the conv's weight is constant, its padding is zero
       (``pads`` all 0 and ``auto_pad`` NOTSET/VALID, or SAME_* with 1×1 kernels). A padded
       conv is left alone: the fold would be inexact at the border.
    4. **Result.** The folded op takes over the BN's output value name, so graph outputs
       and downstream names are unchanged; the BN node is removed, and so are the constants
       and the computed zero-bias nodes that nothing reads any more. Shared initializers are
       copied before they change (copy on write); tensors are never modified in place.
    5. **Never crash.** Anything else (subgraphs, functions, non-constant parameters, other
       producers, unknown ops) is left untouched; every BN that stays is recorded in
       ``skipped`` with the reason, every fold in ``applied``. ``modified`` is True exactly
       when at least one BN was folded.
    """

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self._model = model
        self._shapes: dict[str, tuple] | None = None  # static shapes, only if a MatMul needs them
        modified = False
        graph = model.graph
        try:
            for node in list(graph):
                if node.graph is not graph:  # removed earlier in this loop
                    continue
                if node.op_type == "BatchNormalization" and node.domain in _ONNX_DOMAINS:
                    modified |= self._try_fold(node)
        finally:
            self._model = self._shapes = None  # do not keep the model alive
        self._report_unreached(model)
        if modified:
            logger.info("folded %d BatchNormalization node(s)", len(self.applied))
        return ir.passes.PassResult(model, modified=modified)

    def _report_unreached(self, model: ir.Model) -> None:
        """List BNs inside subgraphs (If/Loop/Scan bodies) and functions, which are not visited."""
        for node in ir.traversal.RecursiveGraphIterator(model.graph):
            if node.op_type == "BatchNormalization" and node.graph is not model.graph:
                self.skip(node, "inside a subgraph (If/Loop/Scan body): not visited")
        for function in model.functions.values():
            for node in function:
                if node.op_type == "BatchNormalization":
                    self.skip(node, f"inside local function {function.name!r}: not visited")

    # ------------------------------------------------------------------ driver

    def _try_fold(self, bn: ir.Node) -> bool:
        """Fold one BN into its producer or its consumer Conv. Returns True if folded."""
        try:
            affine = _as_affine(bn, bn.version or default_opset(self._model))
            if not isinstance(affine, str) and not (
                bn.outputs[0].uses() or bn.outputs[0].is_graph_output()
            ):
                affine = "output is unused (dead code is left to cleanup)"
            if isinstance(affine, str):
                self.skip(bn, affine)
                return False
            plans = [self._plan_after(affine), self._plan_before(affine)]
        except Exception as exc:  # a malformed node must not stop the pass
            self.skip(bn, f"not understood ({type(exc).__name__}: {exc})")
            return False
        for plan in plans:
            if callable(plan):
                self.did(bn, plan())
                return True
        self.skip(bn, "; ".join(p for p in plans if isinstance(p, str)))
        return False

    def _plan_after(self, bn: _Affine) -> _Plan:
        y = bn.node.inputs[0]
        producer = y.producer() if y is not None else None
        if producer is None or producer.domain not in _ONNX_DOMAINS:
            return "input is not produced by Conv/ConvTranspose/Gemm/MatMul"
        handler = _AFTER.get(producer.op_type)
        if handler is None:
            return f"input comes from {producer.op_type}, not Conv/ConvTranspose/Gemm/MatMul"
        reason = _sole_consumer(y, bn.node, producer)
        if reason:
            return reason
        return getattr(self, handler)(producer, bn)

    def _plan_before(self, bn: _Affine) -> _Plan:
        z = bn.node.outputs[0]
        users = consumers(z)
        if len(users) != 1 or users[0].op_type != "Conv" or users[0].domain not in _ONNX_DOMAINS:
            return "output is not read by a Conv alone"
        conv = users[0]
        if z.is_graph_output() or len(z.uses()) != 1 or conv.inputs[0] is not z:
            return f"output is not only the data input of {_name(conv)}"
        if _padding(conv):
            return f"{_name(conv)} pads its input, so folding BN into it would be inexact"
        w = _const(conv.inputs[1])
        if w is None or w.ndim < 3:
            return f"{_name(conv)} weight is not a constant"
        if not _is_float(w):
            return f"{_name(conv)} weight is {w.dtype}, not floating point"
        group = int(attr(conv, "group", 1))
        cout, cin_g = w.shape[0], w.shape[1]
        if cin_g * group != bn.channels or cout % group:
            return f"{_name(conv)} input channels do not match BN ({bn.channels})"
        bias = _bias(conv, 2, cout)
        if isinstance(bias, str):
            return bias
        # input channel read by weight column [o, j] is (o // (Cout/g))·(Cin/g) + j
        idx = (np.arange(cout) // (cout // group))[:, None] * cin_g + np.arange(cin_g)[None, :]
        spatial = (1,) * (w.ndim - 2)
        w64 = w.astype(np.float64)
        new_w = w64 * bn.scale[idx].reshape(cout, cin_g, *spatial)
        taps = w64.reshape(cout, cin_g, -1).sum(axis=2)
        new_b = bias + (taps * bn.shift[idx]).sum(axis=1)

        def apply() -> str:
            _set_bias_then_weight(conv, 2, new_b.astype(w.dtype), new_w.astype(w.dtype))
            data = bn.node.inputs[0]
            conv.replace_input_with(0, data)
            _remove_node(bn.node)
            return f"folded into the following {_name(conv)} (unpadded)"

        return apply

    # ------------------------------------------------------------------ after-op handlers

    def _plan_conv(self, conv: ir.Node, bn: _Affine) -> _Plan:
        w = _const(conv.inputs[1]) if len(conv.inputs) > 1 else None
        if w is None or w.ndim < 3:
            return f"{_name(conv)} weight is not a constant"
        if not _is_float(w):
            return f"{_name(conv)} weight is {w.dtype}, not floating point"
        if w.shape[0] != bn.channels:
            return f"{_name(conv)} has {w.shape[0]} output channels, BN has {bn.channels}"
        bias = _bias(conv, 2, bn.channels)
        if isinstance(bias, str):
            return bias
        new_w = w.astype(np.float64) * bn.scale.reshape(-1, *(1,) * (w.ndim - 1))
        new_b = bias * bn.scale + bn.shift
        return self._fold_into(conv, bn, new_w.astype(w.dtype), new_b.astype(w.dtype))

    def _plan_conv_transpose(self, conv: ir.Node, bn: _Affine) -> _Plan:
        w = _const(conv.inputs[1]) if len(conv.inputs) > 1 else None
        if w is None or w.ndim < 3:
            return f"{_name(conv)} weight is not a constant"
        if not _is_float(w):
            return f"{_name(conv)} weight is {w.dtype}, not floating point"
        group = int(attr(conv, "group", 1))
        cin, cout_g = w.shape[0], w.shape[1]
        if cin % group or cout_g * group != bn.channels:
            return f"{_name(conv)} output channels do not match BN ({bn.channels})"
        bias = _bias(conv, 2, bn.channels)
        if isinstance(bias, str):
            return bias
        # [Cin, Cout/g, k…] → [g, Cin/g, Cout/g, k…]; output channel of (gi, ·, j) is gi·Cout/g + j
        spatial = (1,) * (w.ndim - 2)
        s = bn.scale.reshape(group, 1, cout_g, *spatial)
        new_w = (w.astype(np.float64).reshape(group, cin // group, *w.shape[1:]) * s).reshape(
            w.shape
        )
        new_b = bias * bn.scale + bn.shift
        return self._fold_into(conv, bn, new_w.astype(w.dtype), new_b.astype(w.dtype))

    def _plan_gemm(self, gemm: ir.Node, bn: _Affine) -> _Plan:
        w = _const(gemm.inputs[1]) if len(gemm.inputs) > 1 else None
        if w is None or w.ndim != 2:
            return f"{_name(gemm)} weight (input B) is not a constant"
        if not _is_float(w):
            return f"{_name(gemm)} weight is {w.dtype}, not floating point"
        axis = 0 if attr(gemm, "transB", 0) else 1
        if w.shape[axis] != bn.channels:
            return f"{_name(gemm)} has {w.shape[axis]} outputs, BN has {bn.channels}"
        bias = _bias(gemm, 2, bn.channels)
        if isinstance(bias, str):
            return bias
        if bias.ndim > 2 or (bias.ndim >= 1 and bias.shape[-1] not in (1, bn.channels)):
            return f"{_name(gemm)} bias shape {bias.shape} is not broadcastable to the output"
        beta = float(attr(gemm, "beta", 1.0))
        new_w = w.astype(np.float64) * (bn.scale[:, None] if axis == 0 else bn.scale[None, :])
        new_b = beta * bias * bn.scale + bn.shift

        def set_beta() -> None:
            gemm.attributes["beta"] = ir.AttrFloat32("beta", 1.0)

        return self._fold_into(
            gemm, bn, new_w.astype(w.dtype), new_b.astype(w.dtype), before=set_beta
        )

    def _plan_matmul(self, matmul: ir.Node, bn: _Affine) -> _Plan:
        w = self._matmul_weight(matmul, bn)
        if isinstance(w, str):
            return w
        new_w = (w.astype(np.float64) * bn.scale[None, :]).astype(w.dtype)
        new_b = bn.shift.astype(w.dtype)

        def apply() -> str:
            graph = matmul.graph
            gemm = ir.node("Gemm", [matmul.inputs[0], matmul.inputs[1]], name=matmul.name)
            gemm.outputs[0].type = matmul.outputs[0].type
            graph.insert_after(matmul, gemm)
            ir.convenience.replace_all_uses_with(matmul.outputs[0], gemm.outputs[0])
            _remove_node(matmul)
            _set_bias_then_weight(gemm, 2, new_b, new_w)
            _take_over_output(gemm.outputs[0], bn.node)
            return f"folded into {_name(gemm)} (MatMul → Gemm with bias)"

        return apply

    def _plan_matmul_add(self, add: ir.Node, bn: _Affine) -> _Plan:
        for data_index in (0, 1):
            value = add.inputs[data_index]
            matmul = value.producer() if value is not None else None
            if matmul is not None and matmul.op_type == "MatMul":
                break
        else:
            return "input comes from Add, not MatMul + Add"
        bias_index = 1 - data_index
        bias = _const(add.inputs[bias_index])
        if bias is None:
            return f"{_name(add)} bias is not a constant"
        reason = _sole_consumer(matmul.outputs[0], add, matmul)
        if reason:
            return reason
        w = self._matmul_weight(matmul, bn)
        if isinstance(w, str):
            return w
        if bias.ndim > 2 or (bias.ndim >= 1 and bias.shape[-1] not in (1, bn.channels)):
            return f"{_name(add)} bias shape {bias.shape} is not broadcastable to the output"
        new_w = (w.astype(np.float64) * bn.scale[None, :]).astype(w.dtype)
        new_b = (bias.astype(np.float64) * bn.scale + bn.shift).astype(bias.dtype)

        def apply() -> str:
            _replace_const(add, bias_index, new_b)
            _replace_const(matmul, 1, new_w)
            _take_over_output(add.outputs[0], bn.node)
            return f"folded into {_name(matmul)} + {_name(add)}"

        return apply

    # ------------------------------------------------------------------ helpers

    def _matmul_weight(self, matmul: ir.Node, bn: _Affine) -> np.ndarray | str:
        """The constant ``[K, C]`` weight of a MatMul whose output BN may scale, or why not."""
        w = _const(matmul.inputs[1])
        if w is None or w.ndim != 2:
            return f"{_name(matmul)} weight is not a constant 2-D matrix"
        if not _is_float(w):
            return f"{_name(matmul)} weight is {w.dtype}, not floating point"
        if w.shape[1] != bn.channels:
            return f"{_name(matmul)} has {w.shape[1]} outputs, BN has {bn.channels}"
        rank = self._rank(matmul.inputs[0])
        if rank != 2:
            what = "unknown" if rank is None else str(rank)
            return (
                f"{_name(matmul)} input rank is {what}: BN normalises axis 1, "
                "the MatMul's output features are the last axis"
            )
        return w

    def _rank(self, value: ir.Value) -> int | None:
        if value.shape is not None:
            return len(value.shape)
        if self._shapes is None:
            try:
                self._shapes = static_shapes(self._model)
            except Exception:
                self._shapes = {}
        shape = self._shapes.get(value.name or "")
        return None if shape is None else len(shape)

    def _fold_into(
        self,
        op: ir.Node,
        bn: _Affine,
        new_w: np.ndarray,
        new_b: np.ndarray,
        before: Callable[[], None] | None = None,
    ) -> _Plan:
        """Plan: give ``op`` the new weight and bias and let it produce the BN's output."""

        def apply() -> str:
            if before is not None:
                before()
            _set_bias_then_weight(op, 2, new_b, new_w)
            _take_over_output(op.outputs[0], bn.node)
            return f"folded into {_name(op)}"

        return apply


# ---------------------------------------------------------------------- module helpers


def _name(node: ir.Node) -> str:
    return node.name or node.op_type


def _as_affine(bn: ir.Node, opset: int) -> _Affine | str:
    """``BN`` as per-channel scale and shift, or the reason it is not an inference BN."""
    if len(bn.inputs) != 5 or bn.inputs[0] is None:
        return "does not have the 5 inputs of BatchNormalization"
    # Training mode normalises with batch statistics. It is signalled by training_mode=1
    # (opset >= 14), by the extra outputs themselves (opset 7-13: 1 output = test mode,
    # 5 = training, used or not; onnxruntime then computes batch statistics) and by
    # is_test=0, the default, up to opset 6.
    if int(attr(bn, "training_mode", 0)) == 1 or len(bn.outputs) != 1:
        return "is in training mode (training_mode=1 or statistics outputs)"
    if opset < 7 and int(attr(bn, "is_test", 0)) != 1:
        return "is in training mode (is_test is not 1)"
    if int(attr(bn, "spatial", 1)) == 0:
        return "is not spatial (per-activation statistics)"
    params = []
    for label, value in zip(("scale", "B", "mean", "var"), bn.inputs[1:]):
        array = _const(value)
        if array is None:
            return f"{label} is not a constant"
        if not _is_float(array):
            return f"{label} is {array.dtype}, not floating point"
        params.append(np.asarray(array, dtype=np.float64).reshape(-1))
    if len({p.shape for p in params}) != 1:
        return "parameters do not all have one value per channel"
    gamma, beta, mean, var = params
    eps = float(attr(bn, "epsilon", 1e-5))
    scale = gamma / np.sqrt(var + eps)
    if not np.all(np.isfinite(scale)):
        return "γ/sqrt(var + ε) is not finite"
    shape = bn.inputs[0].shape
    if shape is not None:
        if len(shape) < 2:
            return f"input rank is {len(shape)}, BatchNormalization needs at least 2"
        if isinstance(shape[1], int) and shape[1] != gamma.size:
            return f"input has {shape[1]} channels on axis 1, parameters have {gamma.size}"
    return _Affine(bn, scale, beta - mean * scale)


def _const(value: ir.Value | None) -> np.ndarray | None:
    """A constant behind ``value``, looking through ``Identity`` (TorchScript dedup)."""
    for _ in range(8):
        if value is None:
            return None
        array = const_array(value)
        if array is not None:
            return array
        node = value.producer()
        if node is None or node.op_type != "Identity" or node.domain not in _ONNX_DOMAINS:
            return None
        value = node.inputs[0]
    return None


def _is_zero(value: ir.Value | None, depth: int = 8) -> bool:
    """True if ``value`` is provably all zeros (constant, or computed from a zero constant)."""
    if value is None or depth == 0:
        return False
    array = _const(value)
    if array is not None:
        return not np.any(array)
    node = value.producer()
    if node is None or node.domain not in _ONNX_DOMAINS:
        return False
    if node.op_type == "ConstantOfShape":
        fill = attr(node, "value")
        return fill is None or not np.any(fill.numpy())
    if node.op_type in _ZERO_PRESERVING and node.inputs:
        return _is_zero(node.inputs[0], depth - 1)
    return False


def _bias(node: ir.Node, index: int, channels: int) -> np.ndarray | str:
    """The (float64) bias input of ``node``: zeros if absent or provably zero, or why not."""
    value = node.inputs[index] if index < len(node.inputs) else None
    if value is None:
        return np.zeros(channels)
    array = _const(value)
    if array is not None:
        return array.astype(np.float64)
    if _is_zero(value):
        return np.zeros(channels)
    return f"{_name(node)} bias is not a constant"


def _is_float(array: np.ndarray) -> bool:
    try:
        return ir.DataType.from_numpy(array.dtype) in _FLOAT_TYPES
    except TypeError:
        return False


def _sole_consumer(value: ir.Value, user: ir.Node, producer: ir.Node) -> str:
    """'' if ``user`` is the only reader of ``value``, else the reason."""
    if value.is_graph_output():
        return f"{_name(producer)} output is a graph output"
    if len(value.uses()) != 1 or value.uses()[0][0] is not user:
        return f"{_name(producer)} output has another consumer"
    return ""


def _padding(conv: ir.Node) -> bool:
    """True if ``conv`` may pad its input (explicitly or through auto_pad SAME_*)."""
    auto_pad = attr(conv, "auto_pad", "NOTSET")
    if isinstance(auto_pad, bytes):
        auto_pad = auto_pad.decode()
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        # a 1×1 kernel needs no padding for any stride (ceil(n/s)·s − s + 1 ≤ n)
        kernel = attr(conv, "kernel_shape")
        if kernel is None:
            w = _const(conv.inputs[1])
            kernel = None if w is None else list(w.shape[2:])
        return kernel is None or any(int(k) != 1 for k in kernel)
    if auto_pad not in ("NOTSET", "VALID", ""):
        return True
    return auto_pad != "VALID" and any(int(p) != 0 for p in attr(conv, "pads", []) or [])


def _set_bias_then_weight(node: ir.Node, bias_index: int, bias: np.ndarray, w: np.ndarray) -> None:
    """Replace bias and weight of ``node``; drop whatever computed the old bias.

    The bias goes first: the dynamo exporter's zero bias reads ``Shape(W)``, and once that
    chain is gone ``W`` is no longer shared and can be replaced without a copy.
    """
    name = node.inputs[1].name or ""
    hint = name[: -len("weight")] + "bias" if name.endswith("weight") else f"{_name(node)}_bias"
    _replace_const(node, bias_index, bias, name_hint=hint)
    _replace_const(node, 1, w)


def _replace_const(
    node: ir.Node, index: int, array: np.ndarray, name_hint: str | None = None
) -> None:
    """:func:`set_const_input` (copy on write), then drop what computed the old input."""
    old = node.inputs[index] if index < len(node.inputs) else None
    new = set_const_input(node, index, array, name_hint=name_hint)
    if old is not None and old is not new:
        _drop_if_unused(old)


def _take_over_output(value: ir.Value, bn: ir.Node) -> None:
    """Make ``value`` stand for the BN's output (same uses, same name) and remove the BN."""
    z = bn.outputs[0]
    name = z.name
    ir.convenience.replace_all_uses_with(z, value, replace_graph_outputs=True)
    if value.type is None:
        value.type = z.type
    if value.shape is None:
        value.shape = z.shape
    _remove_node(bn)
    value.name = name


def _remove_node(node: ir.Node) -> None:
    """Remove ``node`` (its outputs must be unused) and any constants it alone read."""
    inputs = list(node.inputs)
    node.graph.remove(node, safe=True)
    for value in inputs:
        _drop_if_unused(value)


def _drop_if_unused(value: ir.Value | None) -> None:
    """Remove an unused initializer, or the nodes that computed an unused value.

    Walks up from ``value`` and stops at anything still read, graph inputs and outputs.
    """
    pending = [value]
    while pending:
        value = pending.pop()
        if value is None or value.uses() or value.is_graph_output() or value.is_graph_input():
            continue
        graph = value.graph
        if value.is_initializer():
            if graph is not None and graph.initializers.get(value.name) is value:
                del graph.initializers[value.name]
            continue
        node = value.producer()
        if node is None or node.graph is None:
            continue
        if any(out.uses() or out.is_graph_output() for out in node.outputs):
            continue
        pending.extend(node.inputs)
        node.graph.remove(node, safe=True)
