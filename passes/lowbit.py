"""Ternary (TWN) and binary weights, stored compactly and decoded to float for onnxruntime.

For every weighted layer, per output channel ``c`` with weights ``W_c``:

**Ternary** (Ternary Weight Networks, seed 002)::

    Δ_c = 0.7 · mean(|W_c|)
    α_c = mean(|W_ci|  for |W_ci| > Δ_c)          (0 when no weight exceeds Δ_c)
    W'_ci = α_c · t_ci,   t_ci = sign(W_ci) if |W_ci| > Δ_c else 0    ∈ {−α_c, 0, +α_c}

**Binary** (BWN / XNOR-Net, seed 000)::

    α_c = mean(|W_c|),   W'_ci = α_c · b_ci,   b_ci = +1 if W_ci ≥ 0 else −1

Storage (``storage=``):

- ``"packed"`` (default): the codes are packed into a ``uint8`` initializer — ternary digits
  ``t + 1 ∈ {0, 1, 2}`` five per byte in base 3 (``Σ d_k·3^k ≤ 242``, 1.6 bits/weight), binary
  bits eight per byte — plus one float ``α`` per channel. A small constant subgraph decodes
  them with plain arithmetic, ``d_k = q_k − B·⌊q_k/B⌋`` with ``q_k = ⌊byte / B^k⌋``
  (Cast, Div, Floor, Mul, Sub, Reshape, Slice; exact in float32 since every value is an
  integer below 256), then ``W' = (d − 1)·α`` (ternary) or ``(2d − 1)·α`` (binary).
  All its inputs are initializers, so onnxruntime constant-folds it once at session load and
  runs the float Conv/Gemm at fp32 speed (measured: ``benchmarks/results/quantize.md``).
  These ops exist at every opset onnxopt accepts (≥ 7), so the model keeps its opset. A
  BitShift/BitwiseAnd decoder would need opset 18 and cannot express base 3, which is why
  the arithmetic form was chosen: 20× fewer code bytes than fp32 for ternary, 32× for binary.
- ``"dq"``: codes as an ``INT2`` (opset ≥ 25) or ``INT4`` (opset ≥ 21) initializer with a
  per-channel ``DequantizeLinear`` (scale ``α``, zero point 0). Needs the opset raised first
  (:func:`onnxopt.quantization.quantize_model` does it with ``onnx.version_converter``); the
  pass itself never changes the opset. onnxruntime keeps a DequantizeLinear on a weight in
  its graph (it expects QDQ fusion), so it runs at every inference and blocks Conv layout
  optimisations — slower than ``"packed"``, kept for runtimes that consume DQ weights.
  onnxruntime 1.32 with ENABLE_ALL returns wrong results for such a DQ with ``axis=1``
  feeding MatMul/Gemm (measured), so a Gemm weight is stored transposed (axis 0, ``transB=1``)
  and a MatMul is left float in this storage (reason in ``skipped``).

Rules (which nodes are touched):

1. Conv (weight input 1, channel axis 0), ConvTranspose with ``group == 1`` (axis 1), Gemm
   (input B: axis 0 if ``transB`` else 1) and MatMul with a 2-D constant right operand
   (axis 1) are candidates, in graph order.
2. Not touched, each with its reason in ``skipped``: a weight that is not a constant
   initializer or is a graph input/output, a non-float weight, a weight of fewer than
   ``min_params`` elements, a grouped ConvTranspose, a node named in ``exclude``, and —
   when ``skip_first_last`` — the first and the last candidate layer (they carry most of the
   accuracy loss for little size: seed 002).
3. An initializer shared by several nodes is replaced for the quantized node only; the old
   one disappears when nothing reads it any more.
4. Storage ``"dq"`` on a model whose opset is too low for INT4 is skipped for every node
   with the reason ("opset 17 < 21").
"""

from __future__ import annotations

__all__ = ["LowBitWeightPass", "ternary_codes", "binary_codes", "decode_packed", "pack_codes"]

import logging
from collections.abc import Iterable

import ml_dtypes
import numpy as np
import onnx_ir as ir

from onnxopt.graph import (
    attr,
    const_array,
    default_opset,
    new_initializer,
    unique_name,
    value_names,
)
from onnxopt.passes.base import LoggedPass

logger = logging.getLogger(__name__)

_FLOAT_TYPES = frozenset({ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.DOUBLE})
_DIGITS_PER_BYTE = {2: 5, 1: 8}  # base 3 for ternary, base 2 for binary
_BASE = {2: 3, 1: 2}


def _rows(weight: np.ndarray, axis: int) -> np.ndarray:
    return np.moveaxis(weight.astype(np.float64), axis, 0).reshape(weight.shape[axis], -1)


def _unrows(rows: np.ndarray, shape: tuple[int, ...], axis: int) -> np.ndarray:
    moved = (shape[axis],) + tuple(d for i, d in enumerate(shape) if i != axis)
    return np.moveaxis(rows.reshape(moved), 0, axis)


def ternary_codes(weight: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """TWN per channel along ``axis``: codes in {−1, 0, 1} (int8, weight's shape), α and Δ."""
    rows = _rows(weight, axis)
    magnitude = np.abs(rows)
    delta = 0.7 * magnitude.mean(axis=1)
    mask = magnitude > delta[:, None]
    count = mask.sum(axis=1)
    alpha = np.where(count > 0, (magnitude * mask).sum(axis=1) / np.maximum(count, 1), 0.0)
    codes = (np.sign(rows) * mask).astype(np.int8)
    return _unrows(codes, weight.shape, axis), alpha, delta


def binary_codes(weight: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Binary weights per channel along ``axis``: codes in {−1, +1} (int8) and α = mean|W|."""
    rows = _rows(weight, axis)
    alpha = np.abs(rows).mean(axis=1)
    codes = np.where(rows >= 0, 1, -1).astype(np.int8)
    return _unrows(codes, weight.shape, axis), alpha


def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack codes (ternary {−1,0,1} or binary {−1,1}) into uint8, C order, shape [bytes, 1]."""
    base, per_byte = _BASE[bits], _DIGITS_PER_BYTE[bits]
    digits = (codes.ravel().astype(np.int64) + 1) // (1 if bits == 2 else 2)
    pad = (-digits.size) % per_byte
    digits = np.concatenate([digits, np.zeros(pad, np.int64)]).reshape(-1, per_byte)
    weights = base ** np.arange(per_byte, dtype=np.int64)
    return (digits @ weights).astype(np.uint8).reshape(-1, 1)


def decode_packed(packed: np.ndarray, bits: int, size: int) -> np.ndarray:
    """Numpy reference of the decode subgraph: the first ``size`` codes as int8."""
    base, per_byte = _BASE[bits], _DIGITS_PER_BYTE[bits]
    q = np.floor(packed.astype(np.float32).reshape(-1, 1) / (base ** np.arange(per_byte)).astype(np.float32))
    digits = (q - base * np.floor(q / base)).ravel()[:size]
    return (digits - 1 if bits == 2 else 2 * digits - 1).astype(np.int8)


def _weight_axis(node: ir.Node) -> tuple[int, int] | str:
    """(weight input index, output-channel axis) of a candidate node, or why it is not one."""
    op = node.op_type
    if op == "Conv":
        return 1, 0
    if op == "ConvTranspose":
        if attr(node, "group", 1) != 1:
            return "grouped ConvTranspose is not supported"
        return 1, 1
    if op == "Gemm":
        return 1, 0 if attr(node, "transB", 0) else 1
    if op == "MatMul":
        return 1, 1
    return "not a weighted layer"


class LowBitWeightPass(LoggedPass):
    """Ternary (``bits=2``) or binary (``bits=1``) weights with compact storage.

    See the module docstring for the formulas, the storage formats and the rules. ``applied``
    lists every quantized node with its code counts; ``skipped`` every candidate left float
    with the reason. ``self.stats`` holds per-layer α, Δ and byte counts for reports.
    """

    def __init__(
        self,
        bits: int = 2,
        storage: str = "packed",
        *,
        skip_first_last: bool = True,
        exclude: Iterable[str] = (),
        min_params: int = 16,
    ) -> None:
        super().__init__()
        if bits not in (1, 2):
            raise ValueError("bits must be 2 (ternary) or 1 (binary)")
        if storage not in ("packed", "dq"):
            raise ValueError("storage must be 'packed' or 'dq'")
        self.bits = bits
        self.storage = storage
        self.skip_first_last = skip_first_last
        self.exclude = set(exclude)
        self.min_params = min_params
        self.stats: list[dict] = []
        self._shared: dict[str, ir.Value] = {}
        self._taken: set[str] = set()  # the graph's value and node names, kept up to date while decoders are added

    # ------------------------------------------------------------------ driver
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self.stats = []
        self._shared = {}
        graph = model.graph
        self._taken = value_names(graph)
        opset = default_opset(model)
        candidates: list[tuple[ir.Node, int, int, np.ndarray]] = []
        for node in list(graph):
            if node.domain not in ("", "ai.onnx"):
                continue
            where = _weight_axis(node)
            if isinstance(where, str):
                continue
            index, axis = where
            reason, weight = self._check(node, index, axis)
            if reason:
                self.skip(node, reason)
                continue
            candidates.append((node, index, axis, weight))
        first_last = set()
        if self.skip_first_last and candidates:
            first_last = {id(candidates[0][0]), id(candidates[-1][0])}
        modified = False
        for position, (node, index, axis, weight) in enumerate(candidates):
            if node.name in self.exclude:
                self.skip(node, "excluded by the user")
                continue
            if id(node) in first_last:
                self.skip(node, "first layer kept float" if position == 0 else "last layer kept float")
                continue
            if self.storage == "dq" and node.op_type == "MatMul":
                self.skip(node, "storage 'dq': onnxruntime 1.32 miscomputes per-axis INT4/INT2 "
                                "DequantizeLinear → MatMul; use storage 'packed'")
                continue
            if self.storage == "dq" and opset < 21:
                self.skip(node, f"opset {opset} < 21: DequantizeLinear cannot read INT4/INT2 weights")
                continue
            modified |= self._try_quantize(graph, node, index, axis, weight, opset)
        return ir.passes.PassResult(model, modified=modified)

    def _check(self, node: ir.Node, index: int, axis: int) -> tuple[str, np.ndarray | None]:
        if len(node.inputs) <= index or node.inputs[index] is None:
            return "has no weight input", None
        value = node.inputs[index]
        if not value.is_initializer() or value.is_graph_input() or value.is_graph_output():
            return "weight is not a constant initializer", None
        if value.dtype not in _FLOAT_TYPES:
            return f"weight dtype {value.dtype} is not float", None
        weight = const_array(value)
        if weight is None:
            return "weight is not readable", None
        if node.op_type == "MatMul" and weight.ndim != 2:
            return "MatMul weight is not 2-D", None
        if weight.ndim <= axis:
            return "weight rank too small", None
        if weight.size < self.min_params:
            return f"only {weight.size} weights (< {self.min_params})", None
        return "", weight

    # ------------------------------------------------------------------ one node
    def _try_quantize(
        self, graph: ir.Graph, node: ir.Node, index: int, axis: int, weight: np.ndarray, opset: int
    ) -> bool:
        old = node.inputs[index]
        if self.bits == 2:
            codes, alpha, delta = ternary_codes(weight, axis)
        else:
            (codes, alpha), delta = binary_codes(weight, axis), None
        base = node.name or old.name or node.op_type
        if self.storage == "packed":
            decoded, stored = self._packed(graph, node, base, codes, alpha, axis, weight.dtype, opset)
        elif axis == 1 and node.op_type == "Gemm":
            # onnxruntime 1.32 (ENABLE_ALL) computes wrong results for an INT4/INT2
            # DequantizeLinear with axis=1 feeding MatMul/Gemm (measured): store Wᵀ per row.
            decoded, stored = self._dequantize(graph, node, base, codes.T, alpha, 0, weight.dtype, opset)
            node.attributes["transB"] = ir.AttrInt64("transB", 1)
        else:
            decoded, stored = self._dequantize(graph, node, base, codes, alpha, axis, weight.dtype, opset)
        node.replace_input_with(index, decoded)
        if not old.uses() and old.name in graph.initializers and not old.is_graph_output():
            graph.initializers.pop(old.name)
        zeros = float(np.mean(codes == 0))
        self.did(node, f"{'ternary' if self.bits == 2 else 'binary'} {self.storage}: "
                       f"{weight.nbytes} → {stored} bytes ({weight.nbytes / max(stored, 1):.1f}×), "
                       f"{zeros:.0%} zeros")  # fmt: skip
        self.stats.append({
            "node": node.name, "op": node.op_type, "shape": list(weight.shape), "axis": axis,
            "float_bytes": int(weight.nbytes), "stored_bytes": int(stored),
            "alpha": alpha.tolist(), "delta": None if delta is None else delta.tolist(),
            "zero_fraction": zeros,
        })  # fmt: skip
        return True

    def _constant(self, graph: ir.Graph, key: str, array: np.ndarray) -> ir.Value:
        """A small initializer shared by every decoder in the graph."""
        if key not in self._shared:
            self._shared[key] = new_initializer(graph, array, f"lowbit_{key}", self._taken)
        return self._shared[key]

    def _node(self, graph: ir.Graph, before: ir.Node, op: str, inputs, name: str, **attributes) -> ir.Value:
        node = ir.node(op, inputs, attributes=attributes or None, name=unique_name(graph, name, self._taken))
        node.outputs[0].name = unique_name(graph, name, self._taken)
        graph.insert_before(before, node)
        return node.outputs[0]

    def _packed(self, graph, node, base, codes, alpha, axis, dtype, opset) -> tuple[ir.Value, int]:
        bits = self.bits
        radix, per_byte = _BASE[bits], _DIGITS_PER_BYTE[bits]
        packed = pack_codes(codes, bits)
        scale = alpha.astype(dtype if dtype != np.float64 else np.float32)
        scale_shape = [1] * codes.ndim
        scale_shape[axis] = codes.shape[axis]
        packed_v = new_initializer(graph, packed, f"{base}_packed", self._taken)
        alpha_v = new_initializer(graph, scale.astype(np.float32).reshape(scale_shape), f"{base}_alpha", self._taken)
        powers = self._constant(graph, f"pow{radix}", (radix ** np.arange(per_byte)).astype(np.float32))
        radix_v = self._constant(graph, f"radix{radix}", np.array(radix, np.float32))
        flat = self._constant(graph, "flat", np.array([-1], np.int64))
        shape_v = new_initializer(graph, np.array(codes.shape, np.int64), f"{base}_shape", self._taken)
        p = f"{base}_decode"
        x = self._node(graph, node, "Cast", [packed_v], p, to=ir.DataType.FLOAT)
        q = self._node(graph, node, "Floor", [self._node(graph, node, "Div", [x, powers], p)], p)
        high = self._node(graph, node, "Floor", [self._node(graph, node, "Div", [q, radix_v], p)], p)
        digits = self._node(graph, node, "Sub", [q, self._node(graph, node, "Mul", [high, radix_v], p)], p)
        digits = self._node(graph, node, "Reshape", [digits, flat], p)
        if packed.size * per_byte != codes.size:
            digits = self._slice(graph, node, digits, codes.size, opset, p)
        digits = self._node(graph, node, "Reshape", [digits, shape_v], p)
        if bits == 2:
            signed = self._node(graph, node, "Sub", [digits, self._constant(graph, "one", np.array(1, np.float32))], p)
        else:
            twice = self._node(graph, node, "Mul", [digits, self._constant(graph, "two", np.array(2, np.float32))], p)
            signed = self._node(graph, node, "Sub", [twice, self._constant(graph, "one", np.array(1, np.float32))], p)
        weight = self._node(graph, node, "Mul", [signed, alpha_v], p)
        if dtype != np.float32:
            weight = self._node(graph, node, "Cast", [weight], p, to=ir.DataType.from_numpy(np.dtype(dtype)))
        return weight, packed.nbytes + alpha.size * 4 + codes.ndim * 8

    def _slice(self, graph, node, value, size, opset, name) -> ir.Value:
        if opset < 10:
            return self._node(graph, node, "Slice", [value], name, starts=[0], ends=[size], axes=[0])
        starts = self._constant(graph, "zero_i64", np.array([0], np.int64))
        ends = new_initializer(graph, np.array([size], np.int64), f"{name}_end", self._taken)
        return self._node(graph, node, "Slice", [value, starts, ends], name)

    def _dequantize(self, graph, node, base, codes, alpha, axis, dtype, opset) -> tuple[ir.Value, int]:
        int2 = opset >= 25
        np_type = ml_dtypes.int2 if int2 else ml_dtypes.int4
        codes_v = new_initializer(graph, codes.astype(np_type), f"{base}_int{2 if int2 else 4}", self._taken)
        scale = alpha.astype(np.float32)
        scale[scale == 0] = np.finfo(np.float32).tiny  # a zero scale is invalid; all codes are 0 there
        scale_v = new_initializer(graph, scale.astype(dtype if dtype in (np.float16,) else np.float32), f"{base}_alpha", self._taken)
        zero_v = new_initializer(graph, np.zeros(codes.shape[axis], np_type), f"{base}_zero", self._taken)
        weight = self._node(graph, node, "DequantizeLinear", [codes_v, scale_v, zero_v], f"{base}_dq", axis=axis)
        if dtype not in (np.float32, np.float16):
            weight = self._node(graph, node, "Cast", [weight], f"{base}_dq", to=ir.DataType.from_numpy(np.dtype(dtype)))
        bits = 2 if int2 else 4
        return weight, (codes.size * bits + 7) // 8 + alpha.size * 4 + (alpha.size * bits + 7) // 8
