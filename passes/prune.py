"""Structured channel pruning on dependency groups (removes channels from every member).

For each :class:`~onnxopt.groups.ChannelGroup` and the units chosen for removal, every
value of the group loses the channel positions mapped to those units, and every member
slices its tensor (``P`` = removed positions of the member's value; a channel owns ``block``
consecutive entries after a Flatten, so position *c* expands to ``c·block … c·block+block-1``):

- producer Conv / Gemm / MatMul: ``W ← W[keep]`` along the output axis, ``b ← b[keep]``;
- consumer Conv / Gemm / MatMul: ``W ← W[:, keep]`` along the input axis; LSTM / GRU /
  RNN: ``W ← W[:, :, keep]`` (their input features);
- producer LSTM / GRU / RNN (hidden units): the unit's rows of ``W``, ``R``, ``B``, ``P`` in
  every gate and direction, its column of ``R``, its entry of a constant initial state, and
  ``hidden_size``;
- depthwise Conv: ``W ← W[keep]``, ``b ← b[keep]``, ``group ← |keep|``; grouped Conv
  (whole groups are the units): the same on its output channels, ``group`` falls by the
  removed groups;
- per-channel constants (BatchNormalization scale/B/mean/var, bias ``Add``, PRelu slope,
  SE ``Mul`` constants): sliced along their channel axis;
- Reshape target shapes that spell the channel (or feature) count: rewritten;
- a Split along the channel axis: each output's size loses the removed positions in its range;
  a Slice of a channel range: its start and end move down by the removed positions before them.

**Bias compensation** (optional, needs the mean ``x̄_c`` of every removed input feature of a
consumer over calibration data): a removed channel is not zero on average, so its average
contribution moves into the consumer's bias::

    b'[o] = b[o] + Σ_{c ∈ P} x̄_c · Σ_k W[o, c, k]        (Conv: k runs over the kernel)
    b'[n] = b[n] + Σ_{c ∈ P} x̄_c · W[c, n]              (Gemm/MatMul, W as K×N)
    Wb[d, g] = Wb[d, g] + Σ_{c ∈ P} x̄_c · W[d, g, c]    (LSTM/GRU/RNN input bias)
    Rb[d, g] = Rb[d, g] + Σ_{j ∈ P} h̄_j · R[d, g, j]    (its own removed hidden units)

(exact for the mean output away from zero padding). A Conv or Gemm without a bias gets one.

Constants are never changed in place; :func:`onnxopt.graph.set_const_input` copies an
initializer shared by several nodes before slicing it for one of them.
"""

from __future__ import annotations

__all__ = ["PruneChannelsPass", "refresh_shapes", "resize_member"]

import logging
import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common

from onnxopt.errors import OnnxoptError
from onnxopt.graph import attr, new_initializer, quiet_loggers, set_const_input, unique_name
from onnxopt.groups import (
    CONSUMER,
    CONTRACTED,
    DEPTHWISE,
    GROUPED,
    PARAM,
    PRODUCER,
    RECURRENT_GATES,
    RECURRENT_STATES,
    SCALE,
    SHAPE,
    SLICE,
    SPLIT,
    GroupAnalysis,
    Member,
    analyze_groups,
    const_array,
    is_fused_attention,
    slice_range,
    split_sizes,
)
from onnxopt.passes.base import LoggedPass

logger = logging.getLogger(__name__)


def _expand(positions: np.ndarray, block: int) -> np.ndarray:
    if block == 1:
        return positions
    return (positions[:, None] * block + np.arange(block)[None, :]).reshape(-1)


class PruneChannelsPass(LoggedPass):
    """Remove the chosen units of each channel group from every member.

    Rules:
    1. ``removals`` maps a group name to the units to remove; the analysis must describe
       this very model (it is computed in ``call`` when not given).
    2. An unprunable group is never touched (its reasons go to ``skipped``); a removal of
       every unit of a group is refused (a layer needs at least one channel).
    3. Each member is changed once, even when it belongs to several groups (a consumer
       after a Concat): the removed positions of a value are the union over its groups.
    4. With ``channel_means`` (value name → mean of every feature on calibration data),
       consumers receive bias compensation (module docstring); a MatMul consumer without a
       following constant bias ``Add`` is not compensated and says so.
    5. Shapes of intermediate values are re-inferred; graph inputs and outputs keep theirs
       (a group that reaches a graph output is unprunable).
    """

    def __init__(
        self,
        removals: Mapping[str, Sequence[int]],
        *,
        analysis: GroupAnalysis | None = None,
        shapes: Mapping[str, Sequence[int]] | None = None,
        channel_means: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        super().__init__()
        self.removals = {k: np.asarray(sorted(set(int(u) for u in v)), dtype=np.int64) for k, v in removals.items()}
        self.analysis = analysis
        self.shapes = shapes
        self.channel_means = dict(channel_means or {})

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        analysis = self.analysis or analyze_groups(model, self.shapes)
        groups = analysis.by_name()
        accepted: dict[str, np.ndarray] = {}
        for name, units in self.removals.items():
            if len(units) == 0:
                continue
            group = groups.get(name)
            if group is None:
                raise OnnxoptError(f"no channel group named {name!r} in this model")
            if not group.prunable:
                self.skip(name, "unprunable: " + "; ".join(group.reasons[:3]))
                continue
            if units.min() < 0 or units.max() >= group.units:
                raise OnnxoptError(f"group {name!r} has {group.units} units; cannot remove unit {units.max()}")
            if len(units) >= group.units:
                raise OnnxoptError(f"group {name!r}: removing all {group.units} channels would cut the network")
            accepted[name] = units
            width = group.unit_width
            self.did(name, f"{group.units * width} → {(group.units - len(units)) * width} channels")
        removed = analysis.removed_positions(accepted)
        done: set[tuple[int, str, int, int]] = set()
        modified = False
        for group in analysis.groups:
            for member in group.members:
                key = (id(member.node), member.role, member.input_index, id(member.via))
                positions = removed.get(member.value, np.zeros(0, dtype=np.int64))
                if key in done or len(positions) == 0:
                    continue
                done.add(key)
                self._apply(member, positions, analysis.channels.get(member.value, 0))
                modified = True
        if modified:
            common.RemoveUnusedNodesPass()(model)  # e.g. the zero RNN states whose inputs went
            refresh_shapes(model)
        return ir.passes.PassResult(model, modified=modified)

    # one member ---------------------------------------------------------------------
    def _apply(self, m: Member, positions: np.ndarray, channels: int) -> None:
        if m.role == SPLIT:
            sizes = split_sizes(m.node, channels)
            bounds = np.cumsum([0, *sizes])
            set_split_sizes(m.node, [size - int(np.count_nonzero((positions >= lo) & (positions < hi)))
                                     for size, lo, hi in zip(sizes, bounds[:-1], bounds[1:])])  # fmt: skip
            return
        if m.role == SLICE:  # each bound moves down by the removed channels before it
            start, end = slice_range(m.node, m.input_index, channels)
            for i, bound in ((1, start), (2, end)):
                values = const_array(m.node.inputs[i]).copy()
                values.reshape(-1)[m.input_index] = bound - int(np.count_nonzero(positions < bound))
                set_const_input(m.node, i, values)
            return
        if m.role == CONSUMER and self.channel_means.get(m.value) is not None:
            self._compensate(m, const_array(m.node.inputs[m.input_index]), _expand(positions, m.block))
        if m.role == PRODUCER and m.node.op_type in RECURRENT_GATES and self.channel_means.get(m.value) is not None:
            self._compensate_feedback(m.node, positions, np.asarray(self.channel_means[m.value], np.float64).reshape(-1))
        resize_member(m, channels - len(positions), lambda a, axis, block: np.delete(a, _expand(positions, block), axis=axis))

    def _compensate(self, m: Member, weight: np.ndarray, cut: np.ndarray) -> None:
        node = m.node
        if node.op_type == "ConvTranspose":
            # A strided transposed convolution spreads each input pixel over the kernel taps
            # unevenly: a constant input channel does not add a constant per output channel.
            self.skip(node, "ConvTranspose consumer: bias compensation skipped (no per-channel constant exists)")
            return
        means = np.asarray(self.channel_means[m.value], dtype=np.float64).reshape(-1)[cut]
        if node.op_type in ("LSTM", "GRU", "RNN"):
            self._compensate_recurrent(node, weight, cut, means)
            return
        if node.op_type == "Conv":
            columns = weight[:, cut].reshape(weight.shape[0], len(cut), -1).sum(axis=2)
            shift = columns.astype(np.float64) @ means
        else:  # Gemm / MatMul, weight K×N (or N×K for transB)
            rows = np.take(weight, cut, axis=m.axis).astype(np.float64)
            shift = means @ rows if m.axis == 0 else rows @ means
        if node.op_type == "MatMul":
            self._compensate_matmul(node, shift)
            return
        bias_value = node.inputs[2] if len(node.inputs) > 2 else None
        bias = const_array(bias_value) if bias_value is not None else None
        if bias is None:
            bias = np.zeros(shift.shape, dtype=weight.dtype)
        if bias.size == 1 and shift.size > 1:
            bias = np.broadcast_to(bias.reshape(-1), shift.shape)
        new_bias = (bias.astype(np.float64) + shift.reshape(bias.shape)).astype(weight.dtype)
        set_const_input(node, 2, new_bias, name_hint=f"{node.name}_bias")

    def _compensate_recurrent(self, node: ir.Node, weight: np.ndarray, cut: np.ndarray, means: np.ndarray) -> None:
        # W·x_t enters every gate next to the input bias Wb (the first gates·hidden entries
        # of B per direction), so the removed features' mean input moves into Wb.
        _add_to_recurrent_bias(node, weight[:, :, cut].astype(np.float64) @ means, recurrence=False)

    def _compensate_feedback(self, node: ir.Node, cut: np.ndarray, means: np.ndarray) -> None:
        # A removed hidden unit's output h_j fed every gate through column j of R: its mean
        # (over steps, samples and directions) moves into the recurrence bias Rb.
        r = const_array(node.inputs[2]).astype(np.float64)  # [directions, gates·H, H]
        shift = r[:, :, cut] @ means[cut]
        if node.op_type == "GRU" and not attr(node, "linear_before_reset", 0):
            shift[:, 2 * r.shape[2] :] = 0  # its candidate gate reads r ⊙ h, not h: mean unknown
        _add_to_recurrent_bias(node, shift, recurrence=True)

    def _compensate_matmul(self, node: ir.Node, shift: np.ndarray) -> None:
        out = node.outputs[0]
        users = [n for n, _ in out.uses()]
        if len(users) == 1 and users[0].op_type == "Add":
            add = users[0]
            other = 1 if add.inputs[0] is out else 0
            bias = const_array(add.inputs[other])
            if bias is not None and bias.shape[-1:] == shift.shape:
                set_const_input(add, other, (bias + shift.astype(bias.dtype)).astype(bias.dtype))
                return
        self.skip(node, "no constant bias Add after this MatMul: bias compensation skipped")


def _add_to_recurrent_bias(node: ir.Node, shift: np.ndarray, *, recurrence: bool) -> None:
    """Add ``shift`` ``[directions, gates·H]`` to an RNN's input bias ``Wb`` or recurrence
    bias ``Rb`` (the halves of ``B``), creating a zero ``B`` when the node has none."""
    weight = const_array(node.inputs[1])
    bias_value = node.inputs[3] if len(node.inputs) > 3 else None
    bias = const_array(bias_value) if bias_value is not None else None
    if bias is None:
        bias = np.zeros((shift.shape[0], 2 * shift.shape[1]), dtype=weight.dtype)
    new_bias = bias.astype(np.float64)
    half = slice(shift.shape[1], None) if recurrence else slice(0, shift.shape[1])
    new_bias[:, half] += shift
    set_const_input(node, 3, new_bias.astype(bias.dtype), name_hint=f"{node.name}_B")


def resize_member(m: Member, channels: int, edit: Callable[[np.ndarray, int, int], np.ndarray]) -> None:
    """Give group member ``m`` ``channels`` channels of its value. A Reshape target spells the
    new count; otherwise ``edit(array, axis, block)`` rewrites the member's tensor and, for a
    producer or depthwise Conv, its bias (block 1), and a depthwise ``group`` becomes
    ``channels``. Pruning deletes entries, :class:`~onnxopt.passes.pad_channels.PadChannelsPass`
    inserts them."""
    node = m.node
    if m.role == CONTRACTED:  # a product of two activations: the sliced operands are elsewhere
        return
    if m.role == PRODUCER and node.op_type in RECURRENT_GATES:
        _resize_recurrent(node, channels, edit)
        return
    if m.role == PRODUCER and is_fused_attention(node):
        _resize_fused_attention(node, channels, edit)
        return
    if m.role == SCALE:
        _scale_entry(m, channels * m.block)
        return
    if m.role == SHAPE:
        node = _own_shape_builder(m)
        target = const_array(node.inputs[m.input_index])
        if target is None:  # a one-entry piece computed from a size that pruning leaves alone
            target = np.zeros(1, dtype=np.int64)
        target = target.copy()
        flat = target.reshape(-1)
        flat[m.axis] = channels * m.block
        set_const_input(node, m.input_index, flat.reshape(target.shape))
        return
    before = const_array(node.inputs[m.input_index])
    set_const_input(node, m.input_index, edit(before, m.axis, m.block))
    if m.role == PARAM and node.op_type == "GroupNormalization" and m.input_index == 1:  # whole groups went
        per_group = before.shape[0] // attr(node, "num_groups", 1)
        node.attributes["num_groups"] = ir.AttrInt64("num_groups", channels // per_group)
    if m.role in (PRODUCER, DEPTHWISE, GROUPED):
        bias_value = node.inputs[2] if len(node.inputs) > 2 else None
        bias = const_array(bias_value) if bias_value is not None else None
        if bias is not None and bias.size > 1:
            set_const_input(node, 2, edit(bias, bias.ndim - 1, m.block))
    if m.role == DEPTHWISE:
        node.attributes["group"] = ir.AttrInt64("group", channels * m.block)
    if m.role == GROUPED:  # whole groups went (or came): each keeps its C_out/g filters
        per_group = before.shape[0] // attr(node, "group", 1)
        node.attributes["group"] = ir.AttrInt64("group", channels // per_group)


def _scale_entry(m: Member, count: int) -> None:
    """Scale the computed piece ``m.input_index`` of the ``Concat`` building ``m.via``'s
    target by ``count / m.scale_from`` as ``Div(Mul(piece, count/g), scale_from/g)`` (``g``
    their gcd; exact, the piece being a multiple of the unit count, see
    :func:`onnxopt.groups._scaled_entry_piece`)."""
    builder = _own_shape_builder(m)
    graph = builder.graph
    assert graph is not None, "node must belong to a graph"
    g = math.gcd(count, m.scale_from)
    piece = builder.inputs[m.input_index]
    dtype = piece.dtype.numpy() if piece.dtype is not None else np.dtype(np.int64)
    scaled = piece
    for op, factor in (("Mul", count // g), ("Div", m.scale_from // g)):
        constant = new_initializer(graph, np.array([factor], dtype=dtype), f"{builder.name or 'Concat'}_scale")
        step = ir.Node("", op, [scaled, constant], name=unique_name(graph, f"{builder.name or 'Concat'}_{op.lower()}"))
        step.outputs[0].name = unique_name(graph, f"{piece.name}_scaled")
        step.outputs[0].shape, step.outputs[0].type = piece.shape, piece.type
        graph.insert_before(builder, step)
        scaled = step.outputs[0]
    builder.replace_input_with(m.input_index, scaled)


def _own_shape_builder(m: Member) -> ir.Node:
    """The node whose input ``m`` rewrites: ``m.node``, or for a shape entry read by
    ``m.via`` a copy of the ``Concat`` building it that ``m.via`` alone reads (other layers
    read the same shape and keep their own counts)."""
    if m.via is None:
        return m.node
    index = {"ConstantOfShape": 0, "Resize": 3}.get(m.via.op_type, 1)  # the shape input (Expand, Reshape: 1)
    shape = m.via.inputs[index]
    builder = shape.producer()
    assert builder is not None and builder.op_type == "Concat", "a shared shape entry is a Concat piece"
    if len(shape.uses()) == 1:
        return builder
    graph = m.via.graph
    assert graph is not None, "node must belong to a graph"
    copy = ir.Node("", "Concat", list(builder.inputs), [ir.AttrInt64("axis", attr(builder, "axis", 0))],
                   name=unique_name(graph, f"{builder.name or 'Concat'}_for_{m.via.name}"))  # fmt: skip
    out = copy.outputs[0]
    out.name, out.shape, out.type = unique_name(graph, shape.name), shape.shape, shape.type
    graph.insert_before(m.via, copy)
    m.via.replace_input_with(index, out)
    return copy


def _resize_recurrent(node: ir.Node, hidden: int, edit: Callable[[np.ndarray, int, int], np.ndarray]) -> None:
    """Give an LSTM / GRU / RNN ``hidden`` units: ``edit`` each gate's block of rows of ``W``
    / ``R`` / ``B`` / ``P`` (``[directions, gates·H, …]``), the columns of ``R``, and the
    last axis of constant initial states; a zero initial state computed at run time (its
    shape spells the old size) is dropped, zero being the default."""
    gates = RECURRENT_GATES[node.op_type]

    def per_gate(array: np.ndarray, blocks: int) -> np.ndarray:
        d, rows = array.shape[:2]
        split = array.reshape(d, blocks, rows // blocks, *array.shape[2:])
        edited = edit(split, 2, 1)
        return edited.reshape(d, blocks * edited.shape[2], *array.shape[2:])

    w, r = const_array(node.inputs[1]), const_array(node.inputs[2])
    set_const_input(node, 1, per_gate(w, gates))
    set_const_input(node, 2, edit(per_gate(r, gates), 2, 1))
    extras = [(3, 2 * gates)] + ([(7, 3)] if node.op_type == "LSTM" else [])
    for index, blocks in extras:
        value = node.inputs[index] if len(node.inputs) > index else None
        if value is not None:
            set_const_input(node, index, per_gate(const_array(value), blocks))
    for index in RECURRENT_STATES[node.op_type]:
        state = node.inputs[index] if len(node.inputs) > index else None
        if state is None:
            continue
        array = const_array(state)
        if array is not None:
            set_const_input(node, index, edit(array, array.ndim - 1, 1))
        else:  # is_zero_tensor (the group analysis proved it)
            node.replace_input_with(index, None)
    node.attributes["hidden_size"] = ir.AttrInt64("hidden_size", hidden)


def _resize_fused_attention(node: ir.Node, hidden: int, edit: Callable[[np.ndarray, int, int], np.ndarray]) -> None:
    """Give a fused Attention ``hidden`` channels: ``edit`` each of the Q, K and V thirds of
    its packed weight's columns and bias; ``num_heads`` (and ``qkv_hidden_sizes``) follow."""
    weight = const_array(node.inputs[1])
    old = weight.shape[1] // 3
    per_head = old // attr(node, "num_heads", 1)

    def per_third(array: np.ndarray, axis: int) -> np.ndarray:
        return np.concatenate([edit(part, axis, 1) for part in np.split(array, 3, axis=axis)], axis=axis)

    set_const_input(node, 1, per_third(weight, 1))
    bias = const_array(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
    if bias is not None:
        set_const_input(node, 2, per_third(bias, 0))
    node.attributes["num_heads"] = ir.AttrInt64("num_heads", hidden // per_head)
    if "qkv_hidden_sizes" in node.attributes:
        node.attributes["qkv_hidden_sizes"] = ir.AttrInt64s("qkv_hidden_sizes", [hidden] * 3)


def set_split_sizes(node: ir.Node, sizes: Sequence[int]) -> None:
    """Write explicit output sizes into a Split: its ``split`` input from opset 13 on (which
    replaces ``num_outputs``), the attribute before."""
    graph = node.graph
    opset = graph.opset_imports.get("", 13) if graph is not None else 13
    if opset >= 13:
        node.attributes.pop("num_outputs", None)
        set_const_input(node, 1, np.asarray(sizes, dtype=np.int64), name_hint=f"{node.name or 'split'}_sizes")
    else:
        node.attributes["split"] = ir.AttrInt64s("split", [int(x) for x in sizes])


def refresh_shapes(model: ir.Model) -> None:
    """Forget stale intermediate shapes and infer them again."""
    outputs = {id(v) for v in model.graph.outputs}
    for node in model.graph:
        for out in node.outputs:
            if id(out) not in outputs:
                out.shape = None
    try:
        with quiet_loggers("onnx_ir.passes.common.shape_inference"):  # it logs its failure with a traceback
            common.ShapeInferencePass()(model)
    except Exception as exc:  # inference is a convenience; onnxruntime infers on load
        logger.debug("shape inference after pruning failed: %s", exc)
