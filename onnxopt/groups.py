"""Channel dependency groups: which channels of an ONNX graph must be removed together.

Idea (Torch-Pruning's DepGraph, done on ONNX values and at the granularity of single
channels): every output channel of a *source* op (a Conv / ConvTranspose / Gemm / MatMul
with a constant weight) is an element of a union-find structure. Walking the graph in topological order, a
table of small handlers (one per op type, :data:`HANDLERS`) says how the channels of a node's
output relate to the channels of its inputs:

- *pass-through* ops (activations, pooling, BatchNormalization, Pad, Resize, …) give their
  output the same channel elements as their input; pooling and reductions (ReduceMean …
  ReduceL2, Swin V2's cosine attention) only where they leave the channel axis alone;
- element-wise ops with several channel-carrying operands (residual ``Add``, SE ``Mul``)
  **unite** channel *c* of every operand: the channels become one *unit*;
- ``Concat`` on the channel axis lays the operands' elements side by side (channel ranges
  map to inputs), and ``Split`` or a constant ``Slice`` on it hands each output its range;
  ``Flatten``/``Reshape`` that merge ``C×H×W`` (or ``C×H``) into one axis give each
  channel a *block* of ``H·W`` (``H``) consecutive entries; a Reshape target built at run
  time by a ``Concat`` is rewritten in its constant piece, and ``Shape`` may read every size
  but the channel count;
- depthwise Conv ties input channel *c* to output channel *c*; a grouped Conv unites the
  input and output channels of each of its groups into one unit (whole groups are pruned),
  or, where its output is split into its groups afterwards (ResNeSt's radix splits),
  prunes output channel *j* of every group as one unit and keeps its inputs;
- LSTM / GRU / RNN read their input features like a Gemm (a CRNN's convolutional
  features, a speech model's front end), and their hidden units are a source (one unit
  spans both directions of a bidirectional layer); a ``Reshape`` that merges the
  directions with the hidden axis (``[T, N, 2, H] → [T, N, 2H]``) repeats the units;
- a ``Reshape`` that splits the channel axis into ``G`` groups (``[N, C, …] → [N, G,
  (C/G)·…]``: GroupNorm's decomposition, a channel shuffle, attention heads) unites each
  group's ``C/G`` channels into one unit, and the groups are the channels after it; reshaped
  back (``[N, G, …] → [N, C, …]``) each group owns its ``C/G`` channels again. So GroupNorm
  prunes by whole groups (:attr:`ChannelGroup.unit_width` channels per unit), as does the
  opset-21 ``GroupNormalization`` op;
- a MatMul of two activations with the same tracked batch axis (attention's ``Q·Kᵀ`` and
  ``scores·V`` on ``[N, H, S, d]``) unites head *h* of both operands: with the split above,
  attention heads prune as units (Q, K, V columns and the output projection's rows);
  one that sums over both operands' channels (single-head attention's ``Q·Kᵀ``, a
  non-local block's affinity) unites channel *c* of both, whose term of the sum goes with
  it, and ``scores·V`` passes V's channels on;
- attention heads merged back into channels (``[N, H·d, h, w]``, EfficientViT's linear
  attention) are blocks of ``d`` input channels of a dense or depthwise Conv; heads merged
  into the batch axis (MViT pools ``[N·H, d, h, w]``) pass a Conv, whose weights every
  batch entry shares;
- ``Einsum`` passes a tracked operand's channels on where their letter stays in the
  output, uniting the operands that share the letter; a letter summed over or shared with
  a weight blocks them;
- LayerNormalization over axes after the channel axis (a per-head query/key norm) passes
  the channels on; over the channel axis it blocks them;
- ``Expand`` passes the channels on where their axis is not broadcast: grouped-query
  attention repeats each key/value head for its query heads (``expand`` + ``reshape``),
  so key/value head *g* and its query heads are one unit;
- an operand computed from sizes and constants that carries the channels (T5's relative
  position bias gathered from a ``[buckets, heads]`` table, a ``ConstantOfShape`` zero
  bias) is pruned in its table column or shape entry, and every reader of it is united;
- ``RoiAlign`` passes a feature map's channels to the regions it pools; a tensor shaped at
  run time by a channel count ``Shape`` read (a ``ConstantOfShape``, an ``Expand`` of a
  tensor of size 1 there) has those channels, and ``ScatterElements`` / ``GatherElements``
  along another axis unite their inputs' channels (torchvision's ``MultiScaleRoIAlign``
  scatters each level's regions into zeros shaped like them);

A connected component of elements is a **unit**: the set of (value, channel) positions that
disappear when one channel is pruned. Units created by the same source ops form one
:class:`ChannelGroup`; importance criteria score its units and allocation removes units.

Anything a handler cannot prove safe marks the elements it touches as unprunable with a
reason, instead of guessing: graph outputs, reshapes that mix channels,
non-constant weights, ops that read the channel axis (Softmax over
channels, Shape, Gather, …), and any op without a handler.
"""

from __future__ import annotations

__all__ = [
    "const_array", "Member", "ChannelGroup", "GroupAnalysis", "analyze_groups", "HANDLERS", "RECURRENT_GATES", "RECURRENT_STATES",
    "is_zero_tensor", "recurrent_unit_rows", "slice_range", "split_sizes",
]  # fmt: skip

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import onnx_ir as ir

from onnxopt.graph import attr, static_shapes
from onnxopt.graph import const_array as _const_array


def const_array(value: ir.Value | None) -> np.ndarray | None:
    """:func:`onnxopt.graph.const_array`, also through ``Identity`` chains (the TorchScript
    exporter routes de-duplicated initializers, e.g. shared zero biases, through Identity)."""
    for _ in range(8):
        arr = _const_array(value)
        if arr is not None or value is None:
            return arr
        node = value.producer()
        if node is None or node.op_type != "Identity" or not node.inputs:
            return None
        value = node.inputs[0]
    return None


# Member roles (what the pruning pass does to ``node`` for removed channels of ``value``):
PRODUCER = "producer"  # slice the weight's output axis (and the bias) of a source op
CONSUMER = "consumer"  # slice the weight's input axis (blocks of ``block`` columns)
DEPTHWISE = "depthwise"  # slice weight/bias axis 0 and lower the ``group`` attribute
GROUPED = "grouped"  # a grouped Conv's output ``value``: slice weight/bias axis 0, whole groups go
PARAM = "param"  # slice a per-channel constant input along ``axis``
SHAPE = "shape"  # rewrite entry ``axis`` of a constant Reshape / Expand target or Resize sizes
SCALE = "scale"  # scale a computed target entry (piece ``input_index`` of the Concat ``node``) by kept / ``scale_from``
SPLIT = "split"  # recount the sizes of a Split along the channel axis of ``value`` (its input)
SLICE = "slice"  # move entry ``input_index`` of a channel-axis Slice's starts/ends of ``value``
CONTRACTED = "contracted"  # a MatMul of two activations summing over the channels of ``value``: nothing to slice


@dataclasses.dataclass(frozen=True)
class Member:
    """One place that changes when channels of ``value`` are removed.

    ``input_index`` is the input of ``node`` holding the tensor to slice, ``axis`` the axis
    of that tensor, ``block`` how many consecutive entries one channel owns there (``H·W``
    after a Flatten, else 1). ``via``: for a shape entry written in a piece of the
    ``Concat`` ``node``, the node reading that shape, when other nodes read it too (dynamo
    builds one ``Expand`` shape for every layer's keys and values): the pass rewrites a
    copy of the ``Concat`` for ``via`` alone.
    """

    node: ir.Node
    role: str
    value: str
    input_index: int
    axis: int
    block: int = 1
    via: ir.Node | None = None
    scale_from: int = 0  # SCALE: the count (channels × block) the entry holds at the analysed sizes

    def describe(self) -> str:
        name = self.node.name or self.node.op_type
        return f"{self.role} {self.node.op_type} {name} (input {self.input_index}, axis {self.axis}, block {self.block})"


@dataclasses.dataclass
class ChannelGroup:
    """Channels that must be pruned together.

    ``index[value_name][p]`` is the unit (0 … ``units``-1) that channel ``p`` of that value
    belongs to, or -1 when that channel belongs to another group (a Concat output holds
    the channels of several groups). Pruning unit *u* removes every position mapped to *u*
    from every value, and every :class:`Member` slices its tensor accordingly.

    Worked example — ``Conv_a(16 filters) → BN → Relu → Conv_b`` and a residual
    ``Add(Relu_out, Conv_c_out)`` feeding ``Conv_d``::

        group "a_out": 16 units, sources Conv_a, Conv_c
          index: a_out [0..15], bn_out [0..15], relu_out [0..15], c_out [0..15], add_out [0..15]
          members: producer Conv_a (W axis 0 + bias), param BN (scale, B, mean, var, axis 0),
                   consumer Conv_b (W axis 1), producer Conv_c (W axis 0),
                   consumer Conv_d (W axis 1)

    Removing unit 3 removes filter 3 of Conv_a and of Conv_c, entry 3 of the BN parameters,
    and input channel 3 of Conv_b and of Conv_d.
    """

    name: str
    units: int
    index: dict[str, np.ndarray]
    members: list[Member]
    reasons: list[str] = dataclasses.field(default_factory=list)

    @property
    def prunable(self) -> bool:
        return not self.reasons

    @property
    def sources(self) -> list[Member]:
        return [m for m in self.members if m.role == PRODUCER]

    @property
    def unit_width(self) -> int:
        """Channels one unit spans in a source's output: 1, or the channels per group of a
        GroupNorm that the group passes through (its groups are the units)."""
        for m in self.sources:
            idx = self.index.get(m.value)
            if idx is not None and self.units:
                return max(1, int(np.count_nonzero(idx >= 0)) // self.units)
        return 1

    def removed_positions(self, value: str, units: Sequence[int] | np.ndarray) -> np.ndarray:
        """Channel positions of ``value`` that disappear when ``units`` are pruned."""
        idx = self.index.get(value)
        if idx is None or len(units) == 0:
            return np.zeros(0, dtype=np.int64)
        return np.nonzero(np.isin(idx, np.asarray(units)))[0]

    def describe(self) -> str:
        lines = [f"group {self.name}: {self.units} units" + ("" if self.prunable else " (unprunable)")]
        lines += [f"  {m.describe()}" for m in self.members]
        lines += [f"  unprunable: {r}" for r in self.reasons]
        return "\n".join(lines)


@dataclasses.dataclass
class GroupAnalysis:
    groups: list[ChannelGroup]
    channels: dict[str, int] = dataclasses.field(default_factory=dict)  # value → channel count
    axes: dict[str, int] = dataclasses.field(default_factory=dict)  # value → channel axis
    blocks: dict[str, int] = dataclasses.field(default_factory=dict)  # value → features per channel
    ranks: dict[str, int] = dataclasses.field(default_factory=dict)  # value → rank (when known)

    @property
    def prunable(self) -> list[ChannelGroup]:
        return [g for g in self.groups if g.prunable]

    @property
    def unprunable(self) -> list[ChannelGroup]:
        return [g for g in self.groups if not g.prunable]

    def by_name(self) -> dict[str, ChannelGroup]:
        return {g.name: g for g in self.groups}

    def removed_positions(self, removals: Mapping[str, Sequence[int]]) -> dict[str, np.ndarray]:
        """value name → sorted channel positions removed by ``removals`` (group → units),
        the union over all groups a value holds channels of (Concat outputs)."""
        by_name = self.by_name()
        removed: dict[str, set[int]] = {}
        for name, units in removals.items():
            group = by_name[name]
            for value in group.index:
                removed.setdefault(value, set()).update(group.removed_positions(value, units).tolist())
        return {k: np.asarray(sorted(v), dtype=np.int64) for k, v in removed.items() if v}


@dataclasses.dataclass
class _Track:
    """Channel bookkeeping of one value: element ids per channel, the channel axis, block."""

    elems: np.ndarray
    axis: int
    block: int = 1

    @property
    def channels(self) -> int:
        return len(self.elems)


class _Walker:
    """Union-find over channel elements plus the tracked values and members."""

    def __init__(self, model: ir.Model, shapes: Mapping[str, tuple]) -> None:
        self.model = model
        self.shapes = shapes
        self.parent: list[int] = []
        self.reasons: dict[int, list[str]] = {}
        self.tracks: dict[str, _Track] = {}
        self.members: list[Member] = []
        self.handled: set[int] = set()
        self.expand_as: dict[int, list[tuple[_Track, int]]] = {}  # Expand node id → (track, rank) of the tensors whose Shape is its target
        self.sized: dict[int, list[_Track]] = {}  # ConstantOfShape / Expand node id → tracks whose channel count its sizes read
        self._values: dict[str, ir.Value] | None = None
        self._other_shapes: Mapping[str, tuple] | None = None

    # union-find -----------------------------------------------------------------------
    def new_elems(self, n: int) -> np.ndarray:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        return np.arange(start, start + n)

    def find(self, e: int) -> int:
        parent = self.parent
        while parent[e] != e:
            parent[e] = parent[parent[e]]
            e = parent[e]
        return e

    def roots(self, elems: np.ndarray) -> list[int]:
        """The unit each element belongs to (its union-find root), in order."""
        return [self.find(e) for e in elems.tolist()]

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        for x, y in zip(a.tolist(), b.tolist()):
            rx, ry = self.find(x), self.find(y)
            if rx != ry:
                self.parent[ry] = rx

    # bookkeeping ----------------------------------------------------------------------
    def track(self, value: ir.Value | None) -> _Track | None:
        return None if value is None else self.tracks.get(value.name)

    def set_track(self, value: ir.Value, track: _Track) -> None:
        self.tracks[value.name] = track

    def block(self, track: _Track | None, reason: str) -> None:
        if track is None:
            return
        for e in track.elems.tolist():
            self.reasons.setdefault(e, []).append(reason)

    def blocked(self, track: _Track) -> bool:
        """Whether the channels of ``track`` already carry a reason (they never change)."""
        roots = {self.find(e) for e in track.elems.tolist()}
        return any(self.find(e) in roots for e in self.reasons)

    def fixed_size(self, name: str, axis: int) -> int | None:
        """The size of value ``name`` along ``axis`` when neither pruning nor the input sizes
        can change it: static in the model, and not its channel axis, or channels already
        blocked, or computed by a node whose channel inputs are blocked (a LayerNorm's
        output); else None. A Reshape target may then read
        it like a constant (TorchScript reads a transformer's hidden size off its
        LayerNorm)."""
        size = self._static_size(self._value(name), axis)
        return size if size is not None and self.unchanged_size(name, axis) else None

    def unchanged_size(self, name: str, axis: int) -> bool:
        """Whether pruning leaves the size of value ``name`` along ``axis`` alone (it may still
        follow the model's input sizes, a dynamic batch): not the channel axis of a group
        that may still be pruned."""
        track = self.tracks.get(name)
        if track is not None:
            return track.axis != axis or self.blocked(track)
        # Untracked: no channels reach it. Every handler gives its output the channels of
        # a tracked input or blocks that input, and a Shape read of a channel count is only
        # allowed into targets that are checked, so its sizes cannot change; checked here
        # for the node that computes it.
        value = self._value(name)
        node = value.producer() if value is not None else None
        return node is None or not any(t is not None and not self.blocked(t) for t in map(self.track, node.inputs))

    def _value(self, name: str) -> ir.Value | None:
        if self._values is None:
            graph = self.model.graph
            self._values = {v.name: v for v in [*graph.inputs, *graph.initializers.values(), *(o for n in graph for o in n.outputs)]}
        return self._values.get(name)

    def _static_size(self, value: ir.Value | None, axis: int) -> int | None:
        """``value``'s size along ``axis`` if it is the same whatever the model's dynamic
        input sizes (a spatial size of a model that takes any resolution is no constant):
        static in the model, or the same at the analysed sizes and at twice every dynamic
        input size (one more shape inference, done once and only when asked)."""
        if value is None:
            return None
        declared = value.shape
        if declared is not None and axis < len(declared) and isinstance(declared[axis], int):
            return int(declared[axis])
        if self._other_shapes is None:
            self._other_shapes = _shapes_at_other_sizes(self.model, self.shapes)
        here, there = self.shape(value), self._other_shapes.get(value.name)
        if here is None or there is None or axis >= min(len(here), len(there)):
            return None
        return here[axis] if isinstance(here[axis], int) and here[axis] == there[axis] else None

    def member(self, node: ir.Node, role: str, value: ir.Value, input_index: int, axis: int, block: int = 1,
               via: ir.Node | None = None, scale_from: int = 0) -> None:  # fmt: skip
        self.members.append(Member(node, role, value.name, input_index, axis, block, via, scale_from))

    def shape(self, value: ir.Value | None) -> tuple | None:
        if value is None:
            return None
        s = self.shapes.get(value.name)
        if s is None and value.shape is not None:
            s = tuple(d if isinstance(d, int) else None for d in value.shape)
        return s

    def rank(self, value: ir.Value | None) -> int | None:
        s = self.shape(value)
        return None if s is None else len(s)


def _label(node: ir.Node) -> str:
    return f"{node.op_type} {node.name or '?'}"


def _known(dims: Sequence | None) -> bool:
    return dims is not None and all(isinstance(d, int) and d >= 0 for d in dims)


# --------------------------------------------------------------------------- handlers
# A handler ``(walker, node)`` is called for every node of the main graph in topological
# order; it reads the tracks of the node's inputs and sets the tracks of its outputs.

Handler = Callable[[_Walker, ir.Node], None]


def _block_inputs(w: _Walker, node: ir.Node, why: str) -> None:
    for value in node.inputs:
        w.block(w.track(value), f"{_label(node)}: {why}")


def _unknown(w: _Walker, node: ir.Node) -> None:
    _block_inputs(w, node, "reads the channels in a way onnxopt does not model")


def _passthrough(w: _Walker, node: ir.Node) -> None:
    """Output 0 has the input's channels (activations, pooling, casts)."""
    t = w.track(node.inputs[0]) if node.inputs else None
    for extra in node.inputs[1:]:  # e.g. Clip min/max, Dropout ratio: must be scalars
        arr = const_array(extra) if extra is not None else None
        if w.track(extra) is not None or (extra is not None and arr is None and (w.rank(extra) or 0) > 0):
            _block_inputs(w, node, "non-scalar extra operand")
            return
    if t is not None and node.outputs:
        w.set_track(node.outputs[0], t)


def _pool(w: _Walker, node: ir.Node) -> None:
    """Pooling windows slide over the axes after the channel axis: channels on the batch or
    channel axis pass on; on a pooled axis (``MaxPool1d`` over a ``[N, T, C]`` sequence's
    features) a window would mix them. MaxPool's ``Indices`` count the channels before each
    entry, so a read of them blocks."""
    t = w.track(node.inputs[0])
    if t is None:
        return
    if t.axis >= 2:
        w.block(t, f"{_label(node)}: pools over the channel axis")
    elif len(node.outputs) > 1 and node.outputs[1].uses():
        w.block(t, f"{_label(node)}: its indices count the channels")
    else:
        w.set_track(node.outputs[0], t)


def _roi_align(w: _Walker, node: ir.Node) -> None:
    """``RoiAlign`` / ``MaxRoiPool``: output ``[regions, C, h, w]`` samples every channel of
    ``X [N, C, H, W]`` on its own (a detector's box and mask heads read the FPN's maps so), so
    the channels of ``X`` pass on; regions and batch indices must not carry channels."""
    t = w.track(node.inputs[0])
    if any(w.track(v) is not None for v in node.inputs[1:]):
        _block_inputs(w, node, "regions computed from the channels")
        return
    if t is None or not node.outputs:
        return
    if t.axis != 1 or t.block != 1:
        w.block(t, f"{_label(node)}: channels not on axis 1")
        return
    w.set_track(node.outputs[0], t)


def _channel_axis_safe(axis_attr: str, default: int) -> Handler:
    """Pass-through unless the op works along the channel axis (Softmax, LpNormalization)."""

    def handler(w: _Walker, node: ir.Node) -> None:
        t = w.track(node.inputs[0])
        if t is None:
            return
        rank = w.rank(node.inputs[0])
        axis = attr(node, axis_attr, default)
        if rank is None or axis % rank == t.axis:
            w.block(t, f"{_label(node)}: works along the channel axis")
            return
        w.set_track(node.outputs[0], t)

    return handler


def _layer_norm(w: _Walker, node: ir.Node) -> None:
    """LayerNormalization / RMSNormalization normalise over the axes from ``axis`` on: over
    the channels, removing one changes the mean and variance the others see (a transformer's
    residual stream stays whole); over later axes only (a per-head norm of the head size),
    the channels pass on and the scale and bias, shaped like those axes, stay."""
    t = w.track(node.inputs[0])
    if t is None:
        return
    rank = w.rank(node.inputs[0])
    if rank is None or attr(node, "axis", -1) % rank <= t.axis:
        w.block(t, f"{_label(node)}: normalizes over the channel axis (removing a channel changes the others' mean and variance)")
        return
    if any(w.track(v) is not None for v in node.inputs[1:]) or any(o.uses() for o in node.outputs[1:]):
        _block_inputs(w, node, "a channel-carrying scale or bias, or a used mean / inverse deviation output")
        return
    w.set_track(node.outputs[0], t)


def _batchnorm(w: _Walker, node: ir.Node) -> None:
    t = w.track(node.inputs[0])
    if t is None:
        return
    if len([o for o in node.outputs if o is not None and o.uses()]) > 1:
        w.block(t, f"{_label(node)}: training-mode outputs")
        return
    for i in range(1, min(5, len(node.inputs))):
        if const_array(node.inputs[i]) is None:
            w.block(t, f"{_label(node)}: parameter {i} is not constant")
            return
    if t.axis != 1 or t.block != 1:
        w.block(t, f"{_label(node)}: channel axis is not 1")
        return
    for i in range(1, min(5, len(node.inputs))):
        w.member(node, PARAM, node.inputs[0], i, 0)
    w.set_track(node.outputs[0], t)


def _scale_bias_norm(w: _Walker, node: ir.Node) -> None:
    """InstanceNormalization: per-channel scale and bias (inputs 1, 2)."""
    t = w.track(node.inputs[0])
    if t is None:
        return
    if t.axis != 1 or any(const_array(v) is None for v in node.inputs[1:3]):
        w.block(t, f"{_label(node)}: scale/bias not constant or channel axis is not 1")
        return
    for i in (1, 2):
        w.member(node, PARAM, node.inputs[0], i, 0)
    w.set_track(node.outputs[0], t)


def _group_normalization(w: _Walker, node: ir.Node) -> None:
    """GroupNormalization (opset 21: per-channel scale and bias): each group's ``C / G``
    channels are one unit; pruning slices scale and bias and lowers ``num_groups``. The
    opset-18 form scales per group, which is not modelled."""
    t = w.track(node.inputs[0])
    if t is None:
        return
    groups = attr(node, "num_groups", 0)
    params = [const_array(v) if v is not None else None for v in node.inputs[1:3]]
    channels = t.channels
    if t.axis != 1 or t.block != 1 or not groups or channels % groups or any(a is None or a.ndim != 1 for a in params):
        w.block(t, f"{_label(node)}: scale/bias not constant, or channel axis is not 1")
        return
    if any(a.shape[0] != channels for a in params):
        w.block(t, f"{_label(node)}: per-group scale and bias (the opset-18 form), which onnxopt does not prune")
        return
    rows = t.elems.reshape(groups, channels // groups)
    for j in range(1, rows.shape[1]):
        w.union(rows[:, 0], rows[:, j])
    for i in (1, 2):
        w.member(node, PARAM, node.inputs[0], i, 0)
    w.set_track(node.outputs[0], t)


def _constant_weights(w: _Walker, node: ir.Node) -> np.ndarray | None:
    """The constant weight of a Conv/ConvTranspose, or None (its input blocked) when the
    weight or the bias is computed."""
    weight = const_array(node.inputs[1])
    bias_value = node.inputs[2] if len(node.inputs) > 2 else None
    if weight is None or (bias_value is not None and const_array(bias_value) is None):
        w.block(w.track(node.inputs[0]), f"{_label(node)}: weight or bias is not constant")
        return None
    return weight


def _new_source(w: _Walker, node: ir.Node, in_axis: int, out_axis: int, channels: int) -> None:
    """A dense (group 1) source: input channels on weight axis ``in_axis`` (consumer; a
    unit may own a block of them, an attention head merged back into the channels),
    ``channels`` fresh output channels on ``out_axis`` (producer)."""
    x = node.inputs[0]
    t = w.track(x)
    if t is not None:
        if t.axis != 1 or t.channels * t.block != const_array(node.inputs[1]).shape[in_axis]:
            w.block(t, f"{_label(node)}: input channel axis is not 1")
        else:
            w.member(node, CONSUMER, x, 1, in_axis, t.block)
    out = node.outputs[0]
    w.set_track(out, _Track(w.new_elems(channels), 1))
    w.member(node, PRODUCER, out, 1, out_axis)


def _on_batch_axis(w: _Walker, node: ir.Node, t: _Track | None) -> bool:
    """Channels merged into the batch axis (MViT pools each head as ``[N·H, d, h, w]``)
    pass a convolution untouched: its weights are shared by every batch entry. Its own
    output channels then have no track (one per value), so they are left alone."""
    if t is None or t.axis != 0:
        return False
    w.set_track(node.outputs[0], t)
    return True


def _einsum(w: _Walker, node: ir.Node) -> None:
    """An Einsum (MViT's relative positions ``byhwc,hkc->byhwk``) passes the channels of a
    tracked operand on when their letter stays in the output and every other operand that
    has the letter carries the same channels there (united); a summed-over letter, or one
    that a weight also has, is blocked (its sliced side is not modelled)."""
    equation = str(attr(node, "equation", "")).replace(" ", "")
    lhs, _, out = equation.partition("->")
    terms = lhs.split(",")
    tracked = [(i, t) for i, t in enumerate(map(w.track, node.inputs)) if t is not None]
    if "." in equation or not out or len(terms) != len(node.inputs) or any(t.axis >= len(terms[i]) for i, t in tracked):
        _block_inputs(w, node, "an Einsum with ellipsis or an implicit output")
        return
    letter = terms[tracked[0][0]][tracked[0][1].axis]
    ref = tracked[0][1]
    sharing = [i for i, term in enumerate(terms) if letter in term]
    agree = all(
        (t := w.track(node.inputs[i])) is not None and terms[i][t.axis] == letter
        and terms[i].count(letter) == 1 and t.channels == ref.channels and t.block == ref.block
        for i in sharing
    )  # fmt: skip
    if letter not in out or out.count(letter) != 1 or not agree or len(tracked) != len(sharing):
        _block_inputs(w, node, f"Einsum {equation!r}: the channels are summed over, or met by a weight or by other channels")
        return
    for _, t in tracked[1:]:
        w.union(ref.elems, t.elems)
    w.set_track(node.outputs[0], _Track(ref.elems, out.index(letter), ref.block))


def _conv(w: _Walker, node: ir.Node) -> None:
    weight = _constant_weights(w, node)
    if weight is None:
        return
    x = node.inputs[0]
    t = w.track(x)
    if _on_batch_axis(w, node, t):
        return
    groups = attr(node, "group", 1)
    cout, cin_per_group = weight.shape[:2]
    cin = cin_per_group * groups
    if groups == 1:
        _new_source(w, node, 1, 0, cout)
        return
    if groups == cin and cout == cin and cin_per_group == 1:
        if t is not None:  # depthwise: input channel c is output channel c (block: a head's)
            if t.axis != 1:
                w.block(t, f"{_label(node)}: input channel axis is not 1")
                return
            w.member(node, DEPTHWISE, x, 1, 0, t.block)
            w.set_track(node.outputs[0], t)
        return
    if t is not None and t.axis == 1 and t.block == 1 and t.channels == cin and cout % groups == 0:
        _grouped_conv(w, node, t, groups, cout)
        return
    why = f"{_label(node)}: grouped convolution (group={groups}) whose input channels cannot be removed with it (a graph input, or not on axis 1)"
    w.block(t, why)
    _blocked_source(w, node, cout, why)


def _grouped_conv(w: _Walker, node: ir.Node, t: _Track, groups: int, cout: int) -> None:
    """A grouped Conv (ResNeXt, RegNet, a depthwise channel multiplier): output group *k*
    reads input group *k* alone, so its ``C_in/g`` input and ``C_out/g`` output channels are
    one unit, removed together (``group`` falls by one per removed unit). Each group must
    keep as many channels as the others, so whole groups are the only removable part.
    Where the output is split into its groups afterwards (ResNeSt's ``[N, R, C, h, w]``,
    summed over the R radix splits), output channel *j* of every group is one unit instead,
    removed from each group (``group`` stays); the input channels are then kept."""
    per_in, per_out = t.channels // groups, cout // groups
    if _split_into_groups(w, node.outputs[0], groups, per_out):
        w.block(t, f"{_label(node)}: a grouped convolution pruned within its groups keeps its input channels")
        out = np.tile(w.new_elems(per_out), groups)
        w.member(node, PRODUCER, node.outputs[0], 1, 0)
        w.set_track(node.outputs[0], _Track(out, 1))
        return
    for k in range(groups):
        w.union(np.repeat(t.elems[k * per_in], per_in), t.elems[k * per_in:(k + 1) * per_in])
    out = w.new_elems(cout)
    w.union(np.repeat(t.elems[::per_in], per_out), out)
    w.member(node, GROUPED, node.outputs[0], 1, 0)
    w.set_track(node.outputs[0], _Track(out, 1))


def _split_into_groups(w: _Walker, value: ir.Value, groups: int, per_group: int, depth: int = 0) -> bool:
    """Whether ``value`` ``[N, G·C, …]`` (through activations and per-channel norms) only
    reaches a Reshape to ``[N, G, C, …]`` (a Shape may read its sizes: it has a handler)."""
    users = [n for n, _ in value.uses() if n.op_type != "Shape"]
    if len(users) != 1 or value.is_graph_output() or depth > 4:
        return False
    user = users[0]
    if user.op_type == "Reshape" and user.inputs[0] is value:
        shape = w.shape(user.outputs[0])
        return shape is not None and len(shape) >= 3 and tuple(shape[1:3]) == (groups, per_group)
    if user.op_type in _PASSTHROUGH or user.op_type == "BatchNormalization":
        return user.inputs[0] is value and _split_into_groups(w, user.outputs[0], groups, per_group, depth + 1)
    return False


def _blocked_source(w: _Walker, node: ir.Node, channels: int, why: str) -> None:
    """Output channels that cannot be removed (a grouped convolution's: every group must keep
    as many as the others) still form a group, reported unprunable with ``why``: its
    consumers would otherwise be left out of the analysis without a word."""
    out = node.outputs[0]
    track = _Track(w.new_elems(channels), 1)
    w.set_track(out, track)
    w.member(node, PRODUCER, out, 1, 0 if node.op_type == "Conv" else 1)
    w.block(track, why)


def _conv_transpose(w: _Walker, node: ir.Node) -> None:
    """ConvTranspose (weight ``[C_in, C_out/group, k…]``): input channels on weight axis 0,
    output channels on axis 1 (and the bias). Only ``group=1`` is modelled."""
    weight = _constant_weights(w, node)
    if weight is None:
        return
    if _on_batch_axis(w, node, w.track(node.inputs[0])):
        return
    if attr(node, "group", 1) != 1:
        why = f"{_label(node)}: grouped transposed convolution couples channels across groups"
        w.block(w.track(node.inputs[0]), why)
        _blocked_source(w, node, weight.shape[1] * attr(node, "group", 1), why)
        return
    _new_source(w, node, 0, 1, weight.shape[1])


def _gemm(w: _Walker, node: ir.Node) -> None:
    a = node.inputs[0]
    t = w.track(a)
    weight = const_array(node.inputs[1])
    bias_value = node.inputs[2] if len(node.inputs) > 2 else None
    bias = const_array(bias_value) if bias_value is not None else None
    if weight is None or weight.ndim != 2 or attr(node, "transA", 0) or (bias_value is not None and bias is None):
        w.block(t, f"{_label(node)}: weight not a constant matrix, transA, or bias not constant")
        return
    trans_b = attr(node, "transB", 0)
    k_axis, n_axis = (1, 0) if trans_b else (0, 1)
    if t is not None:
        if t.axis != 1 or t.channels * t.block != weight.shape[k_axis]:
            w.block(t, f"{_label(node)}: input features do not match the channel layout")
        else:
            w.member(node, CONSUMER, a, 1, k_axis, t.block)
    n = weight.shape[n_axis]
    if bias is not None and bias.size not in (1, n):
        return  # a bias broadcast over the batch cannot be sliced per feature
    out = node.outputs[0]
    w.set_track(out, _Track(w.new_elems(n), 1))
    w.member(node, PRODUCER, out, 1, n_axis)


def _matmul(w: _Walker, node: ir.Node) -> None:
    a = node.inputs[0]
    t = w.track(a)
    weight = const_array(node.inputs[1])
    rank = w.rank(a)
    if weight is None and (w.track(node.inputs[1]) is not None or t is not None) and (
        _batched_heads(w, node) or _activation_product(w, node)
    ):
        return
    if weight is None or weight.ndim != 2 or rank is None or rank < 2:
        if weight is None and w.track(node.inputs[1]) is not None:
            _block_inputs(w, node, "multiplies two activations (attention scores or context) whose channels are not "
                                   "the same heads on a batch axis")  # fmt: skip
            return
        w.block(t, f"{_label(node)}: weight is not a constant matrix")
        _block_inputs(w, node, "non-constant MatMul operand")
        return
    if t is not None:
        if t.axis != rank - 1 or t.channels * t.block != weight.shape[0]:
            w.block(t, f"{_label(node)}: channels are not the contracted axis")
        else:
            w.member(node, CONSUMER, a, 1, 0, t.block)
    out = node.outputs[0]
    w.set_track(out, _Track(w.new_elems(weight.shape[1]), rank - 1))
    w.member(node, PRODUCER, out, 1, 1)


def _batched_heads(w: _Walker, node: ir.Node) -> bool:
    """Attention's ``Q·Kᵀ`` and ``scores·V``: a MatMul of two activations whose tracked axis
    is the same batch axis (``[N, H, S, d] @ [N, H, d, S]``: the heads, split off the
    projections' channels by a Reshape). Each product is per head, so head *h* of both
    operands is one unit and the output carries the heads on that axis. A head axis in
    blocks (grouped-query attention's key/value heads, each repeated for its queries and
    merged back) unites each key/value head with its block of query heads. Whether handled."""
    a, b = node.inputs[0], node.inputs[1]
    ta, tb = w.track(a), w.track(b)
    ra, rb = w.rank(a), w.rank(b)
    if ta is None or tb is None or ra is None or ra != rb or ra < 3:
        return False
    heads_a, heads_b = np.repeat(ta.elems, ta.block), np.repeat(tb.elems, tb.block)  # one entry per head
    if ta.axis != tb.axis or ta.axis >= ra - 2 or len(heads_a) != len(heads_b):
        return False
    w.union(heads_a, heads_b)
    w.set_track(node.outputs[0], _Track(heads_a, ta.axis))
    return True


def _activation_product(w: _Walker, node: ir.Node) -> bool:
    """A MatMul of two activations that keeps each channel apart (single-head attention,
    SegFormer's first stage or a non-local block, whose channels are not split into heads):

    - ``Q·Kᵀ`` with the channels on the contracted axis of both operands (``[…, S, C] @
      […, C, S]``) sums one term per channel: channel *c* of both is one unit, removing it
      drops its term (a :data:`CONTRACTED` member, where the exactness check masks it), and
      the product carries no channels;
    - ``scores·V`` with the channels on the last axis of the right operand only (or the rows
      of the left one) gives each output channel from that channel alone: they pass on.

    Whether handled."""
    a, b = node.inputs[0], node.inputs[1]
    ta, tb = w.track(a), w.track(b)
    ra, rb, ro = w.rank(a), w.rank(b), w.rank(node.outputs[0])
    if ra is None or rb is None or ro is None or min(ra, rb) < 2 or const_array(a) is not None:
        return False
    if ta is not None and tb is not None:
        if ta.axis != ra - 1 or tb.axis != rb - 2 or ta.channels != tb.channels or ta.block != tb.block:
            return False
        w.union(ta.elems, tb.elems)
        w.member(node, CONTRACTED, a, 0, ra - 1, ta.block)
        return True
    if ta is None and tb.axis == rb - 1:
        w.set_track(node.outputs[0], _Track(tb.elems, ro - 1, tb.block))
        return True
    if tb is None and ta.axis == ra - 2:
        w.set_track(node.outputs[0], _Track(ta.elems, ro - 2, ta.block))
        return True
    return False


RECURRENT_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
RECURRENT_STATES = {"LSTM": (5, 6), "GRU": (5,), "RNN": (5,)}  # initial_h (, initial_c) inputs
_ZERO_KEEPING = ("Slice", "Gather", "Reshape", "Squeeze", "Unsqueeze", "Identity", "Transpose", "Cast", "Expand", "RoiAlign",
                 "MaxRoiPool")  # fmt: skip


def is_zero_tensor(value: ir.Value | None, depth: int = 0) -> bool:
    """Whether ``value`` is all zeros whatever the inputs: a ``ConstantOfShape`` of 0 (the
    TorchScript exporter's default RNN state), an ``Expand`` of a zero constant (dynamo's),
    or a slice / reshape of one."""
    if value is None or depth > 8:
        return False
    array = const_array(value)
    if array is not None:
        return array.size > 0 and not np.any(array)
    node = value.producer()
    if node is None:
        return False
    if node.op_type == "ConstantOfShape":
        fill = attr(node, "value")
        return fill is None or not np.any(fill.numpy())
    return node.op_type in _ZERO_KEEPING and is_zero_tensor(node.inputs[0], depth + 1)


def recurrent_unit_rows(node: ir.Node) -> np.ndarray:
    """``[hidden, …]``: every weight of hidden unit *j* of an LSTM / GRU / RNN — its row of
    ``W`` and ``R`` in every gate and direction, and its column of ``R`` (what it feeds
    back) — for norm-based criteria."""
    gates = RECURRENT_GATES[node.op_type]
    w, r = (const_array(node.inputs[i]).astype(np.float64) for i in (1, 2))
    d, _, hidden = r.shape
    rows = [np.moveaxis(a.reshape(d, gates, hidden, -1), 2, 0).reshape(hidden, -1) for a in (w, r)]
    rows.append(np.moveaxis(r, 2, 0).reshape(hidden, -1))
    return np.concatenate(rows, axis=1)


def _recurrent(w: _Walker, node: ir.Node) -> None:
    """LSTM / GRU / RNN: the input features (``X``'s last axis, in either ``layout``) meet
    ``W [directions, gates·hidden, features]`` on axis 2, so channels of ``X`` are a
    consumer like a Gemm's. The hidden units are a source: unit *j* is entry *j* of the
    last axis of ``Y`` / ``Y_h`` / ``Y_c`` in every direction (directions share
    ``hidden_size``); removing it removes its rows of ``W``, ``R``, ``B``, ``P`` in every
    gate, its column of ``R`` and its entry of a constant initial state (a zero state
    computed at run time is dropped: zero is the default). States read from graph inputs,
    or computed otherwise, make the hidden units unprunable."""
    x = node.inputs[0]
    t = w.track(x)
    weight = const_array(node.inputs[1]) if len(node.inputs) > 1 else None
    bias = node.inputs[3] if len(node.inputs) > 3 else None
    if t is not None:
        if weight is None or weight.ndim != 3 or (bias is not None and const_array(bias) is None):
            w.block(t, f"{_label(node)}: input weight or bias is not constant")
        elif t.axis != 2 or t.channels * t.block != weight.shape[2]:
            w.block(t, f"{_label(node)}: input features do not match the channel layout")
        else:
            w.member(node, CONSUMER, x, 1, 2, t.block)
    for value in node.inputs[2:]:
        w.block(w.track(value), f"{_label(node)}: channels reach the recurrence, bias or state")
    hidden = attr(node, "hidden_size", 0)
    outputs = [o for o in node.outputs if o is not None and o.name]
    if not outputs or not hidden:
        return
    elems = w.new_elems(hidden)
    for i, out in enumerate(node.outputs):
        if out is not None and out.name:
            w.set_track(out, _Track(elems, 3 if i == 0 else 2))
    w.member(node, PRODUCER, outputs[0], 1, 1)
    why = _recurrent_blocker(node, hidden)
    if why:
        w.block(_Track(elems, 0), f"{_label(node)}: {why}")


def is_fused_attention(node: ir.Node) -> bool:
    """Whether ``node`` is onnxruntime's fused self-attention (``com.microsoft`` Attention)."""
    return node.op_type == "Attention" and node.domain == "com.microsoft"


def attention_channel_rows(node: ir.Node) -> np.ndarray:
    """``[H, 3·H_in]``: every weight of output channel *c* of a fused Attention — column *c*
    of its Q, K and V thirds of the packed weight — for norm-based criteria."""
    weight = const_array(node.inputs[1]).astype(np.float64)  # [H_in, 3·H]
    return np.concatenate(np.split(weight, 3, axis=1), axis=0).T


def _fused_attention(w: _Walker, node: ir.Node) -> None:
    """com.microsoft ``Attention`` (``onnxruntime.transformers``' fusion of a self-attention
    block): ``input [B, S, H_in] · weights [H_in, 3·H] + bias [3·H]`` packs Q, K and V side
    by side, ``num_heads`` heads of ``d = H / num_heads`` channels each, and the output
    ``[B, S, H]`` holds each head's context in V's channel order. Output channel *c* is
    column *c* of Q, K and V; a head's ``d`` channels are one unit, and removing it removes
    its columns in all three thirds and lowers ``num_heads``. The input's channels (the
    residual stream, behind a LayerNorm) are not followed into the packed weight.
    Unprunable: weights or bias not constant, Q/K/V of different sizes
    (``qkv_hidden_sizes``), a past state or present output (the cache fixes the heads), or
    an attention bias input (one per head)."""
    for value in node.inputs:
        w.block(w.track(value), f"{_label(node)}: read by a fused Attention's packed weights")
    weight = const_array(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] is not None else None
    heads = attr(node, "num_heads", 0)
    sizes = [int(x) for x in attr(node, "qkv_hidden_sizes", None) or []]
    out = node.outputs[0]
    if weight is None or weight.ndim != 2 or heads <= 0 or w.rank(out) is None:
        return
    hidden = sizes[2] if len(sizes) == 3 else weight.shape[1] // 3  # the output holds V's channels
    if hidden % heads:
        return
    d = hidden // heads
    elems = w.new_elems(hidden)
    w.union(elems, np.repeat(elems[::d], d))  # a head's channels are one unit
    w.set_track(out, _Track(elems, w.rank(out) - 1))
    w.member(node, PRODUCER, out, 1, 1)
    why = _fused_attention_blocker(node)
    if why:
        w.block(_Track(elems, 0), f"{_label(node)}: {why}")


def _fused_attention_blocker(node: ir.Node) -> str | None:
    """Why the heads of a fused Attention cannot be pruned, or None."""
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    if bias is not None and const_array(bias) is None:
        return "bias not constant"
    sizes = attr(node, "qkv_hidden_sizes", None)
    if sizes and len(set(int(x) for x in sizes)) != 1:
        return "Q, K and V of different sizes (qkv_hidden_sizes)"
    if len(node.inputs) > 4 and node.inputs[4] is not None:
        return "a past state (the cache fixes the heads)"
    if len(node.outputs) > 1 and node.outputs[1] is not None and node.outputs[1].name:
        return "a present state output (the cache fixes the heads)"
    if len(node.inputs) > 5 and node.inputs[5] is not None:
        return "an attention bias input (one per head)"
    return None


def _recurrent_blocker(node: ir.Node, hidden: int) -> str | None:
    """Why the hidden units of a recurrent node cannot be pruned, or None."""
    gates = RECURRENT_GATES[node.op_type]
    arrays = [const_array(v) if v is not None else None for v in node.inputs[1:4]]
    if any(a is None for a in arrays[:2]) or (node.inputs[3:4] and node.inputs[3] is not None and arrays[2] is None):
        return "weights, recurrence or bias not constant"
    if arrays[0].shape[1] != gates * hidden or arrays[1].shape[1:] != (gates * hidden, hidden):
        return "weight shapes do not match hidden_size"
    if node.op_type == "LSTM" and len(node.inputs) > 7 and node.inputs[7] is not None and const_array(node.inputs[7]) is None:
        return "peephole weights not constant"
    for i in RECURRENT_STATES[node.op_type]:
        state = node.inputs[i] if len(node.inputs) > i else None
        if state is not None and const_array(state) is None and not is_zero_tensor(state):
            return "an initial state comes from outside (a graph input or a computed value)"
    return None


def _operand_dim(shape: tuple, out_rank: int, out_axis: int) -> int | None:
    """Size of an operand's dimension that broadcasts onto output axis ``out_axis``."""
    offset = out_rank - len(shape)
    i = out_axis - offset
    if i < 0:
        return 1
    d = shape[i]
    return d if isinstance(d, int) else None


def _elementwise(w: _Walker, node: ir.Node) -> None:
    """Add/Sub/Mul/Div/…: tracked operands unite channel-wise; constants are sliced."""
    out = node.outputs[0]
    out_rank = w.rank(out)
    tracked = [(i, w.track(v)) for i, v in enumerate(node.inputs) if w.track(v) is not None]
    if out_rank is None:
        _block_inputs(w, node, "output rank unknown")
        return
    # one channel broadcast over the other operand's channels (MobileViTv2's context scores
    # [N, 1, P, S] times its keys [N, C, P, S]): the keys' channels pass on; the lone channel
    # is a unit a layer keeps anyway
    wide = [(i, t) for i, t in tracked if t.channels * t.block > 1]
    if wide and len(wide) < len(tracked):
        for _, t in tracked:
            if t.channels * t.block == 1:
                w.block(t, f"{_label(node)}: one channel broadcast over the other operand's channels")
        tracked = wide
    ref: _Track | None = None
    out_axis = None
    for i, t in tracked:
        axis = t.axis + out_rank - (w.rank(node.inputs[i]) or out_rank)
        if ref is None:
            ref, out_axis = t, axis
        elif axis != out_axis or t.channels != ref.channels or t.block != ref.block:
            _block_inputs(w, node, "operands disagree on the channel layout")
            return
    assert ref is not None and out_axis is not None
    width = ref.channels * ref.block
    for i, v in enumerate(node.inputs):
        if v is None or w.track(v) is not None:
            continue
        arr = const_array(v)
        shape = arr.shape if arr is not None else w.shape(v)
        if shape is None:
            _block_inputs(w, node, "operand of unknown shape")
            return
        d = _operand_dim(tuple(shape), out_rank, out_axis)
        if d == 1:
            continue
        if arr is not None and d == width:
            w.member(node, PARAM, node.inputs[tracked[0][0]], i, out_axis - (out_rank - arr.ndim), ref.block)
            continue
        if arr is None and d == width and ref.block == 1 and (table := _table_operand(w, node, v, out_rank, out_axis)) is not None:
            tracked.append((i, table))
            continue
        _block_inputs(w, node, _fixed_operand_reason(v, arr, d, width))
        return
    for _, t in tracked[1:]:
        w.union(ref.elems, t.elems)
    w.set_track(out, _Track(ref.elems, out_axis, ref.block))


def _fixed_operand_reason(value: ir.Value, array: np.ndarray | None, size: int, width: int) -> str:
    """Why an element-wise operand stops the channels, by kind (reports count these)."""
    if array is not None or size != width:
        return f"an operand of another size on the channel axis ({size}, not {width})"
    producer = value.producer()
    if producer is None:
        return "an operand of fixed channel count (a graph input)"
    # a transformer's residual stream: its channels are normalised together downstream
    return f"an operand of fixed channel count (from {producer.op_type}, outside the group)"


def _table_operand(w: _Walker, node: ir.Node, value: ir.Value, out_rank: int, out_axis: int) -> _Track | None:
    """Channels of an operand computed from constants and sizes: a ``Gather`` of a
    constant table along another axis, moved by ``Transpose`` / ``Unsqueeze`` (T5's
    relative position bias: a ``[buckets, heads]`` table gathered by computed buckets into
    ``[1, heads, S, S]`` and added to every layer's scores), or a ``ConstantOfShape`` fill.
    The table's column axis, or the fill's shape entry, becomes a member, so ``value`` is
    tracked from here on (every layer reading it prunes the same heads); None (nothing
    registered) when the chain is anything else or a node already walked reads it."""
    rank = w.rank(value)
    axis = None if rank is None else out_axis - (out_rank - rank)
    if axis is None or axis < 0 or any(id(user) in w.handled and user is not node for user, _ in value.uses()):
        return None
    current, a = value, axis
    reader: tuple[ir.Node, int] | None = None  # the chain's node that reads ``current``, and which input
    # Expand / Reshape targets that name the channel count, rewritten when a constant ends the
    # chain (a table or fill end takes none, as before; a Reshape entry computed at run time
    # leaves a constant end unproven)
    resized: list[tuple[ir.Node, int, int, ir.Node | None]] = []
    reshaped: list[tuple[ir.Node, int, int, ir.Node | None]] = []
    reshape_open = False
    for _ in range(8):
        if reader is not None and (constant := const_array(current)) is not None:
            # a per-channel constant broadcast by the chain (``gamma.expand_as(x)``, a bias
            # expanded over the batch or reshaped to ``[1, C, 1, 1]``): sliced like any
            # per-channel constant
            if reshape_open or not 0 <= a < constant.ndim or constant.shape[a] != w.shape(value)[axis]:
                return None
            track = _Track(w.new_elems(constant.shape[a]), axis)
            w.set_track(value, track)
            w.member(reader[0], PARAM, value, reader[1], a)
            for holder, index, offset, via in resized + reshaped:
                w.member(holder, SHAPE, value, index, offset, via=via)
            return track
        producer = current.producer()
        if producer is None or resized and producer.op_type in ("ConstantOfShape", "Gather"):
            return None
        upstream = producer.inputs[0]  # the chain's next step (a Where's: the bias branch)
        if producer.op_type == "ConstantOfShape" and current is value:
            # one value everywhere (T5's zero cross-attention bias [1, heads, S, S]): only
            # the head entry of its shape changes
            found = _target_entry(w, producer, a, shared=True, index=0)
            if found is None or found[0] != w.shape(value)[a]:
                return None
            _, holder, index, offset = found
            track = _Track(w.new_elems(found[0]), axis)
            w.set_track(value, track)
            w.member(holder, SHAPE, value, index, offset, via=None if holder is producer else producer)
            return track
        if producer.op_type == "Gather" and producer.domain in ("", "ai.onnx"):
            table = const_array(producer.inputs[0])
            indices = w.rank(producer.inputs[1])
            if table is None or indices is None or w.track(producer.inputs[1]) is not None:
                return None
            gathered = attr(producer, "axis", 0) % table.ndim
            if gathered <= a < gathered + indices:
                return None  # the channels are the looked-up entries, not a column
            column = a if a < gathered else a - indices + 1
            track = _Track(w.new_elems(table.shape[column]), axis)
            w.set_track(value, track)
            w.member(producer, PARAM, value, 0, column)
            return track
        if producer.op_type == "Transpose" and (perm := attr(producer, "perm", None)) is not None:
            a = list(perm)[a]
        elif producer.op_type == "Unsqueeze" and (axes := _axes_of(producer)) is not None and (out_rank_here := w.rank(current)):
            inserted = {x % out_rank_here for x in axes}
            if a in inserted:
                return None
            a -= sum(1 for x in inserted if x < a)
        elif producer.op_type == "Reshape":  # Swin's table lookup viewed as [N, N, heads]
            found = _target_entry(w, producer, a, shared=True)
            if found is not None and found[0] == w.shape(current)[a]:
                _, holder, index, offset = found
                reshaped.append((holder, index, offset, None if holder is producer else producer))
            elif found is None or found[0] != -1:
                reshape_open = True
            a = _kept_axis(w.shape(producer.inputs[0]), w.shape(current), a)
            if a is None:
                return None
        elif producer.op_type == "Expand":  # MPNet expands its bias over the batch
            dims, rank_in, rank_here = _dims_of(w, producer.inputs[1]), w.rank(producer.inputs[0]), w.rank(current)
            if dims is None or rank_in is None or rank_here is None:
                return None
            entry = a - (rank_here - len(dims))
            # 1 keeps the input's size (-1 too: TorchScript turns it into 1 with a Where); the
            # count itself (``b.expand(1, 16, h, w)``) is rewritten when a constant ends the chain
            if entry >= 0 and (dims[entry].sizes or dims[entry].factor not in (1, -1)):
                found = None if dims[entry].sizes else _target_entry(w, producer, entry, shared=True)
                if found is None or found[0] != w.shape(current)[a]:
                    return None
                _, holder, index, offset = found
                resized.append((holder, index, offset, None if holder is producer else producer))
            a -= rank_here - rank_in
            if a < 0:
                return None
        elif producer.op_type == "Where":  # HuggingFace T5 masks its bias: Where(mask, bias, fill)
            found = _where_branch(w, producer, current, a)
            if found is None:
                return None
            upstream, a = found
            if (table := const_array(upstream)) is not None and not resized:  # the bias folded (a static sequence)
                track = _Track(w.new_elems(table.shape[a]), axis)
                w.set_track(value, track)
                w.member(producer, PARAM, value, list(producer.inputs).index(upstream), a)
                return track
        elif producer.op_type not in ("Identity", "Cast"):
            return None
        current, reader = upstream, (producer, list(producer.inputs).index(upstream))
        if current is None or len(current.uses()) != 1:  # a step of the chain read by anything else
            return None
    return None


def _where_branch(w: _Walker, node: ir.Node, out: ir.Value, axis: int) -> tuple[ir.Value, int] | None:
    """The one operand of ``Where`` that holds ``axis`` of its output, and that axis in it;
    None unless the other two broadcast over it (a mask ``[N, 1, S, S]``, a scalar fill)."""
    rank = w.rank(out)
    held = []
    for v in node.inputs:
        shape = None if v is None else w.shape(v)
        if rank is None or shape is None:
            return None
        if _operand_dim(tuple(shape), rank, axis) != 1:
            held.append((v, axis - (rank - len(shape))))
    return held[0] if len(held) == 1 and held[0][0] is not node.inputs[0] else None


def _kept_axis(in_shape: Sequence | None, out_shape: Sequence | None, axis: int) -> int | None:
    """The input axis that a Reshape's output ``axis`` holds unchanged (same size, same
    number of elements before and after it), or None."""
    if not _known(in_shape) or not _known(out_shape):
        return None
    before, after = math.prod(out_shape[:axis]), math.prod(out_shape[axis + 1 :])
    for a, size in enumerate(in_shape):
        if size == out_shape[axis] and math.prod(in_shape[:a]) == before and math.prod(in_shape[a + 1 :]) == after:
            return a
    return None


def _prelu(w: _Walker, node: ir.Node) -> None:
    _elementwise(w, node)


def _concat(w: _Walker, node: ir.Node) -> None:
    out = node.outputs[0]
    rank = w.rank(out)
    tracked = [w.track(v) for v in node.inputs]
    if rank is None:
        _block_inputs(w, node, "rank unknown")
        return
    axis = attr(node, "axis", 1) % rank
    ref = next(t for t in tracked if t is not None)
    if axis != ref.axis:
        # Concat along another axis: the operands keep their channels, all must agree.
        if any(t is None or t.axis != ref.axis or t.channels != ref.channels or t.block != ref.block for t in tracked):
            _block_inputs(w, node, "concatenation along a non-channel axis with fixed-channel operands")
            return
        for t in tracked[1:]:
            w.union(ref.elems, t.elems)
        w.set_track(out, ref)
        return
    parts = []
    for v, t in zip(node.inputs, tracked):
        if t is not None and t.block == 1 and t.axis == axis:
            parts.append(t.elems)
            continue
        shape = w.shape(v)
        if shape is None or not isinstance(shape[axis], int):
            _block_inputs(w, node, "operand of unknown channel count")
            return
        fresh = _Track(w.new_elems(shape[axis]), axis)
        w.block(fresh, f"{_label(node)}: operand with fixed channels")
        w.block(t, f"{_label(node)}: operand with a flattened layout")
        parts.append(fresh.elems)
    w.set_track(out, _Track(np.concatenate(parts), axis))


def _flatten(w: _Walker, node: ir.Node) -> None:
    t = w.track(node.inputs[0])
    shape = w.shape(node.inputs[0])
    if t is None:
        return
    axis = attr(node, "axis", 1)
    if shape is None:
        w.block(t, f"{_label(node)}: input shape unknown")
        return
    axis %= max(len(shape), 1)
    inner = shape[t.axis + 1 :]
    if axis != t.axis or axis == 0 or not _known(inner):
        w.block(t, f"{_label(node)}: flattening mixes the channel axis with the batch")
        return
    w.set_track(node.outputs[0], _Track(t.elems, 1, t.block * math.prod(inner)))


def _reshape(w: _Walker, node: ir.Node) -> None:
    t = w.track(node.inputs[0])
    if t is None:
        return
    in_shape, out_shape = w.shape(node.inputs[0]), w.shape(node.outputs[0])
    if not _known(in_shape) or not _known(out_shape) or len(node.inputs) < 2:
        w.block(t, f"{_label(node)}: shapes unknown")
        return
    prefix = math.prod(in_shape[: t.axis])
    inner = math.prod(in_shape[t.axis + 1 :])
    # The output axis that starts after the same leading elements (prefer the same axis:
    # with batch 1 several axes qualify).
    candidates = [b for b in range(len(out_shape)) if math.prod(out_shape[:b]) == prefix]
    ok = bool(candidates)
    # An axis of the same size with the same elements after it holds the channels unchanged
    # (dynamo's attention: K [1, H, T, D] → [H, T, D] → Kᵀ → [1, H, D, T], the batch of 1
    # dropped and put back around the head axis).
    same = [b for b in candidates if out_shape[b] == in_shape[t.axis] and math.prod(out_shape[b + 1 :]) == inner]
    b = t.axis if t.axis in same else same[0] if same else t.axis if t.axis in candidates else candidates[-1] if ok else 0
    merged = out_shape[b] // in_shape[t.axis] if ok and in_shape[t.axis] and out_shape[b] % in_shape[t.axis] == 0 else 0
    repeats = 1
    spelled, spelled_block = node.inputs[0], None  # the value whose channel count a constant target entry spells
    if ok and out_shape[b] == in_shape[t.axis] and math.prod(out_shape[b + 1 :]) == inner:
        new = _Track(t.elems, b, t.block)  # channel axis kept, other axes regrouped
        merged_axes = _merged_axes(in_shape, t.axis, 1)
    elif ok and t.block == 1 and inner == 1 and (packed := _packed_heads(in_shape[t.axis], out_shape, b)):
        # [B, N, P·H·d] → [B, N, P, H, d]: a packed projection (timm's and torchvision's
        # qkv, P = 3; a packed key/value, P = 2), taken apart later along the P axis. Head h
        # of every part is one unit (the P·d channels are removed together, which keeps the
        # parts equal), so the H axis holds the channels from here on and P is an axis like
        # any other: selecting q, k and v keeps the heads.
        rows = t.elems.reshape(packed).transpose(1, 0, 2).reshape(packed[1], -1)
        for j in range(1, rows.shape[1]):
            w.union(rows[:, 0], rows[:, j])
        b += 1
        new, merged_axes = _Track(rows[:, 0].copy(), b), []
        spelled, spelled_block = node.outputs[0], 1
    elif ok and t.block == 1 and inner == 1 and (packed := _packed_parts(w, node, in_shape[t.axis], out_shape, b)):
        # [B, N, P·C] → [B, N, P, C], the P axis taken apart later (torch's
        # nn.MultiheadAttention packs q, k, v so, and splits the heads off each part): channel
        # c of every part is one unit, and the C axis holds the channels from here on.
        parts, b = packed
        rows = t.elems.reshape(parts, -1)
        for j in range(1, parts):
            w.union(rows[0], rows[j])
        b += 1
        new, merged_axes = _Track(rows[0].copy(), b), []
        spelled, spelled_block = node.outputs[0], 1
    elif (heads := _heads_into_batch(in_shape, out_shape, t)) is not None:
        # [T, N, H·d] → [T, N·H, d] (nn.MultiheadAttention): head h of every sample is one
        # unit, and the merged axis holds the heads N times over, sample-major
        b, size = heads
        rows = t.elems.reshape(-1, size)
        for j in range(1, size):
            w.union(rows[:, 0], rows[:, j])
        new, merged_axes = _Track(np.tile(rows[:, 0], out_shape[b] // len(rows)), b), []
        spelled, spelled_block = node.outputs[0], 1
    elif (split := _heads_out_of_batch(w, in_shape, out_shape, t)) is not None:
        # [N·H, T, d] → [N, H, T, d]: the heads N times over become the H axis
        b = split
        new, merged_axes = _Track(t.elems[: out_shape[b] // t.block].copy(), b, t.block), []
        spelled, spelled_block = node.outputs[0], t.block
    elif ok and t.block == 1 and (size := _group_size(in_shape[t.axis], inner, out_shape, b)):
        # [N, C, …] → [N, G, (C/G)·…]: channel g·k + j is group g's entry j (row-major), so
        # the k channels of a group become one unit and the groups are the channels from here
        # on: GroupNorm's decomposition, a channel shuffle (whole groups interleave), attention
        # heads (blocked later, at Q·Kᵀ)
        rows = t.elems.reshape(-1, size)
        for j in range(1, size):
            w.union(rows[:, 0], rows[:, j])
        new, merged_axes = _Track(rows[:, 0].copy(), b), []
        spelled, spelled_block = node.outputs[0], 1
    elif merged and inner % merged == 0 and math.prod(out_shape[b + 1 :]) == inner // merged and _prefix_of(in_shape[t.axis + 1 :], merged):
        new = _Track(t.elems, b, t.block * merged)  # C×H(×W) merged into one axis: blocks of H(·W)
        merged_axes = _merged_axes(in_shape, t.axis, merged)
    elif ok and t.block == 1 and merged > 1 and math.prod(out_shape[b + 1 :]) > 1 and (
        math.prod(in_shape[t.axis + 1 :]) == merged * math.prod(out_shape[b + 1 :])
    ):
        # [N, G, k·…] → [N, G·k, …] with a feature map left, k not an axis of its own: group g
        # owns channels g·k … g·k + k − 1 (GroupNorm reshaped back to [N, C, H, W])
        new, merged_axes = _Track(np.repeat(t.elems, merged), b), []
        spelled, spelled_block = node.outputs[0], 1
    elif (outer := _outer_merge(in_shape, out_shape, t)) is not None:
        b, repeats, first, last = outer  # D×C(×K) merged into one axis
        new = _Track(np.tile(t.elems, repeats), b, math.prod(in_shape[t.axis + 1 : last + 1]))  # the channels D times over
        merged_axes = list(range(first, last + 1))
    else:
        w.block(t, f"{_label(node)}: reshape mixes channels (e.g. channel shuffle)")
        return
    name = node.inputs[0].name
    dims = _dims_of(w, node.inputs[1])
    own = _same_channels(w, t) if dims is not None else set()
    # where the output's channel entry counts the groups' channels, it is read off tensors with those
    entry_own = _same_channels(w, new) if spelled_block is not None and dims is not None else own
    if dims is not None and b < len(dims) and dims[b].sizes:
        # An entry computed from the input's own sizes follows the pruning by itself when it
        # is the product of exactly the merged axes (``x.view(b, c * h, w)`` exported with
        # dynamic shapes; dynamo's bidirectional RNN output: Shape[2]·Shape[3]); no other
        # entry may read the channel count. A size-1 factor is not ignored: it may be a batch
        # pinned to 1 here (so a one-direction RNN's [T, N, 1, H] → [T, N, H] is not followed
        # here; the clean-up folds such static sizes into a constant entry first).
        # Where the channel axis is not merged, the size may be read from any tensor with the
        # same channels (SegFormer's ``x.transpose(1, 2).view(B, C, H, W)`` with C read
        # before the Transpose; GroupNorm reshaped back to ``Shape`` of its input).
        expected = sorted((name, a) for a in merged_axes)
        sizes = sorted(dims[b].sizes)
        # A dynamic batch, 1 here, merged with the heads right after it (TorchScript's MViT
        # pools each head as ``[N·H, d, h, w]``, the entry ``Shape[0]·Shape[1]``): the entry
        # follows, and the merged axis holds the heads N times over, as analysed at N = 1.
        batch = [(name, a) for a in range(b, t.axis) if in_shape[a] == 1 and w._static_size(node.inputs[0], a) is None]
        if batch and len(batch) == t.axis - b:
            expected = sorted(expected + batch)
        follows = (bool(merged_axes) and sizes == expected) or (
            (merged_axes == [t.axis] or spelled_block is not None) and len(sizes) == 1 and sizes[0] in entry_own
        )
        follows = (follows and dims[b].factor == 1) or _merged_entry_follows(dims[b], name, merged_axes, t.axis, in_shape, own)
        reads_elsewhere = any(own & set(d.sizes) for i, d in enumerate(dims) if i != b)
        if not follows and not reads_elsewhere:
            # read off a size that pruning leaves alone (the merge back of attention heads,
            # ``reshape(B, N, C)`` with C read off the LayerNorm before): spelled as a constant
            block = new.block * repeats if spelled_block is None else spelled_block
            piece = _fixed_entry_piece(w, node, dims[b], b, new.channels * block)
            if piece is not None:
                holder, index = piece
                w.member(holder, SHAPE, spelled, index, 0, block, via=None if holder is node else node)
                w.set_track(node.outputs[0], new)
                return
            piece = _scaled_entry_piece(w, node, dims[b], b, new, block)
            if piece is not None:  # the count times sizes pruning leaves alone: scaled
                holder, index = piece
                w.member(holder, SCALE, spelled, index, 0, block, via=node, scale_from=new.channels * block)
                w.set_track(node.outputs[0], new)
                return
        if not follows or reads_elsewhere:
            w.block(t, f"{_label(node)}: the target's channel entry is computed from other sizes")
            return
        w.set_track(node.outputs[0], new)
        return
    if dims is not None and any(own & set(d.sizes) for d in dims):
        w.block(t, f"{_label(node)}: the target reads the channel count into another entry")
        return
    # a Concat other Reshapes read too (TorchScript's q and k of a dynamic-batch attention,
    # merged by onnxscript) is copied for this one by the pass
    entry = _target_entry(w, node, b, shared=True)
    if entry is None:
        w.block(t, f"{_label(node)}: the target's channel entry is computed")
        return
    value, holder, index, offset = entry
    if value == 0 and (b != t.axis or repeats > 1):
        w.block(t, f"{_label(node)}: target shape copies a channel dimension")
        return
    if value > 0:  # the entry spells the channel count times the block (or the repeats)
        block = new.block * repeats if spelled_block is None else spelled_block
        w.member(holder, SHAPE, spelled, index, offset, block, via=None if holder is node else node)
    w.set_track(node.outputs[0], new)


def _fixed_entry_piece(w: _Walker, node: ir.Node, dim: _Dim, b: int, expected: int) -> tuple[ir.Node, int] | None:
    """``(Concat, input)`` of the one-entry piece that writes entry ``b`` of a Reshape's
    computed target, when that entry is a size pruning cannot change and equals
    ``expected`` (the channel count times its block): the pass then writes the new count
    there as a constant. None otherwise."""
    fixed = [w.fixed_size(name, axis) for name, axis in dim.sizes]
    if any(f is None for f in fixed) or dim.factor * math.prod(fixed) != expected:
        return None
    return _one_entry_piece(w, node, b)


def _scaled_entry_piece(w: _Walker, node: ir.Node, dim: _Dim, b: int, new: _Track, block: int) -> tuple[ir.Node, int] | None:
    """``(Concat, input)`` of the one-entry piece that writes entry ``b`` of a Reshape's
    computed target, when that entry is a constant factor holding the channel count times
    sizes that pruning leaves alone but the input sizes may not (``bsz · num_heads`` of
    TorchScript's ``nn.MultiheadAttention`` with a dynamic batch): the pass then scales the
    entry by the kept share. None otherwise."""
    sizes = [(w.shape(w._value(name)) or (None,) * (axis + 1))[axis] for name, axis in dim.sizes]
    if not all(isinstance(n, int) for n in sizes) or not all(w.unchanged_size(*size) for size in dim.sizes):
        return None
    # each unit as often on the axis (heads N times over): the entry then scales by the kept
    # share of units exactly, since the constant factor holds their count
    _, repeats = np.unique([w.find(e) for e in new.elems.tolist()], return_counts=True)
    if dim.factor * math.prod(sizes) != new.channels * block or dim.factor % len(repeats) or len(set(repeats.tolist())) != 1:
        return None
    return _one_entry_piece(w, node, b)


def _one_entry_piece(w: _Walker, node: ir.Node, b: int) -> tuple[ir.Node, int] | None:
    """``(Concat, input)`` when entry ``b`` of a Reshape's target is a one-entry piece of the
    ``Concat`` that builds it; None otherwise."""
    concat = node.inputs[1].producer()
    found = _concat_piece(w, concat, b) if concat is not None and concat.op_type == "Concat" else None
    if found is None or found[1] != 0 or w.shape(found[2]) != (1,):
        return None
    return concat, found[0]


def _concat_piece(w: _Walker, concat: ir.Node, b: int) -> tuple[int, int, ir.Value] | None:
    """``(input, offset, piece)``: where entry ``b`` of a ``Concat`` of 1-D size vectors
    lies; None when a piece's length is unknown."""
    start = 0
    for index, piece in enumerate(concat.inputs):
        shape = w.shape(piece)
        if shape is None or len(shape) != 1 or not _known(shape):
            return None
        if start <= b < start + shape[0]:
            return index, b - start, piece
        start += shape[0]
    return None


def _merged_entry_follows(dim: _Dim, name: str, merged_axes: list[int], axis: int, in_shape: Sequence[int],
                          own: set[tuple[str, int]]) -> bool:  # fmt: skip
    """Whether a computed entry for the channel axis merged with the axes after it reads
    the channel count off a tensor with the same channels, and each other merged axis off
    the input or as the constant factor (TorchScript's grouped-query attention:
    ``Shape(k)[1] · n_rep`` for ``[N, H_kv, n_rep, S, d] → [N, H_kv·n_rep, S, d]``)."""
    if axis not in merged_axes or len(merged_axes) < 2:
        return False
    channel = [size for size in dim.sizes if size in own]
    if len(channel) != 1:
        return False
    read = [size for size in dim.sizes if size != channel[0]]
    rest = [a for a in merged_axes if a != axis]
    if any(size not in {(name, a) for a in rest} for size in read) or len(set(read)) != len(read):
        return False
    return dim.factor == math.prod(in_shape[a] for a in rest if (name, a) not in read)


def _packed_heads(channels: int, out_shape: Sequence[int], b: int) -> tuple[int, int, int] | None:
    """``(P, H, d)`` when a Reshape puts ``channels`` (the last axis) as ``[P, H, d]`` on the
    axes from ``b`` on, with ``P`` 2 or 3 parts (packed k/v or q/k/v); None otherwise."""
    if len(out_shape) != b + 3 or out_shape[b] not in (2, 3) or out_shape[b + 1] < 2:
        return None
    return tuple(out_shape[b:]) if math.prod(out_shape[b:]) == channels else None


def _packed_parts(w: _Walker, node: ir.Node, channels: int, out_shape: Sequence[int], b: int) -> tuple[int, int] | None:
    """``(P, its axis)`` when a Reshape puts ``channels`` (the last axis) as ``[P, C]`` on its
    last two axes (after axes of size 1: ResNeSt's ``[N, 1, R, C]`` of one cardinal group),
    ``P`` 2 or 3, and every reader takes the P axis apart (a constant scalar Gather or a
    Split along it, through Unsqueeze / Squeeze / Transpose) or takes a Softmax over it
    (ResNeSt's split attention weighs the parts of each channel); None otherwise. The
    readers decide it: ``[N, T, 3, d]`` may as well be three attention heads."""
    while b + 2 < len(out_shape) and out_shape[b] == 1:
        b += 1
    if len(out_shape) != b + 2 or out_shape[b] not in (2, 3) or out_shape[b] * out_shape[b + 1] != channels:
        return None
    return (out_shape[b], b) if _taken_apart(w, node.outputs[0], b) else None


def _taken_apart(w: _Walker, value: ir.Value, axis: int, depth: int = 0) -> bool:
    """Whether every reader of ``value`` takes axis ``axis`` apart, see :func:`_packed_parts`."""
    users = [n for n, _ in value.uses()]
    if not users or depth > 8 or value.is_graph_output():
        return False
    for user in users:
        rank = w.rank(user.inputs[0])
        if rank is None or user.inputs[0] is not value:
            return False
        if user.op_type == "Gather":
            indices = const_array(user.inputs[1])
            if indices is None or indices.ndim != 0 or attr(user, "axis", 0) % rank != axis:
                return False
            continue
        if user.op_type == "Split":
            if attr(user, "axis", 0) % rank != axis:
                return False
            continue
        if user.op_type == "Softmax":
            if attr(user, "axis", -1) % rank != axis:
                return False
            continue
        out = user.outputs[0]
        if user.op_type == "Transpose" and attr(user, "perm") is not None:
            moved = list(attr(user, "perm")).index(axis)
        elif user.op_type in ("Unsqueeze", "Squeeze") and (axes := _axes_of(user)) is not None:
            out_rank = w.rank(out)
            if out_rank is None:
                return False
            if user.op_type == "Unsqueeze":
                inserted = {a % out_rank for a in axes}
                moved = [i for i in range(out_rank) if i not in inserted][axis]
            else:
                squeezed = {a % rank for a in axes}
                if axis in squeezed:
                    return False
                moved = axis - sum(a < axis for a in squeezed)
        else:
            return False
        if not _taken_apart(w, out, moved, depth + 1):
            return False
    return True


def _heads_into_batch(in_shape: Sequence[int], out_shape: Sequence[int], t: _Track) -> tuple[int, int] | None:
    """``(output axis, channels per head)`` when a Reshape merges the axis before the channel
    axis (a batch ``N``) with the heads split off the channels: ``[…, N, H·d] → […, N·H,
    d]``, the channel axis last; None otherwise."""
    a = t.axis
    if t.block != 1 or a < 1 or a != len(in_shape) - 1 or len(out_shape) != len(in_shape) or in_shape[a - 1] < 2:
        return None
    b, size = a - 1, out_shape[-1]
    if list(out_shape[:b]) != list(in_shape[:b]) or size < 1 or in_shape[a] % size or in_shape[a] // size < 2:
        return None
    return (b, size) if out_shape[b] == in_shape[a - 1] * (in_shape[a] // size) else None


def _heads_out_of_batch(w: _Walker, in_shape: Sequence[int], out_shape: Sequence[int], t: _Track) -> int | None:
    """The output axis of the heads when a Reshape splits an axis that holds them ``N``
    times over (sample-major, from :func:`_heads_into_batch`; each head in a block of ``r``
    after grouped-query attention's repeat) into ``[N, H]``: ``[N·H, T, d] → [N, H, T, d]``,
    the axes after it perhaps regrouped (MViT's pooled ``[N·H, d, h, w] → [N, H, d, h·w]``).
    The same holds for any axis whose outer entries repeat the same units: a grouped Conv
    pruned within its groups split into them (ResNeSt's ``[N, R·C, h, w] → [N, R, C, h, w]``).
    None otherwise."""
    a = t.axis
    b = a + 1
    if len(out_shape) <= b:
        return None
    heads = out_shape[b]
    if list(out_shape[:a]) != list(in_shape[:a]) or math.prod(out_shape[b + 1 :]) != math.prod(in_shape[a + 1 :]):
        return None
    if heads < 1 or out_shape[a] * heads != in_shape[a] or out_shape[a] < 2 or heads % t.block:
        return None
    roots = np.array([w.find(e) for e in t.elems.tolist()]).reshape(out_shape[a], heads // t.block)
    return b if (roots == roots[0]).all() else None


def _group_size(channels: int, inner: int, out_shape: Sequence[int], b: int) -> int | None:
    """Channels per group when a Reshape puts ``channels`` (followed by ``inner`` elements
    per channel) as ``G = out_shape[b]`` groups on axis ``b`` and each group's
    ``(channels / G) · inner`` elements on the axes after it; None otherwise."""
    groups = out_shape[b]
    if not 1 < groups < channels or channels % groups:
        return None
    size = channels // groups
    return size if math.prod(out_shape[b + 1 :]) == size * inner else None


def _same_channels(w: _Walker, t: _Track) -> set[tuple[str, int]]:
    """``(value, axis)`` of every tracked value whose channel axis holds exactly ``t``'s
    channels (as far as the walk has united them): their sizes there are ``t``'s count."""
    roots = w.roots(t.elems)
    return {
        (name, other.axis) for name, other in w.tracks.items()
        if other.block == t.block and other.channels == t.channels and w.roots(other.elems) == roots
    }  # fmt: skip


def _outer_merge(in_shape: Sequence[int], out_shape: Sequence[int], t: _Track) -> tuple[int, int, int, int] | None:
    """``(output axis, repeats, first and last merged input axes)`` when a Reshape merges the
    axes right before the channel axis into it, outermost first, and perhaps axes right
    after it (``[…, D, C, K, …] → […, D·C·K, …]``): the merged axis holds the channels
    ``D`` times over, each in a block of ``K`` (a bidirectional RNN's ``[T, N, 2, H]`` →
    ``[T, N, 2H]``; dynamo's grouped-query attention, ``[N, H_kv, r, T, d]`` →
    ``[N·H_kv·r, T, d]``). None otherwise."""
    if t.block != 1:
        return None
    for last in range(t.axis, len(in_shape)):
        block = math.prod(in_shape[t.axis + 1 : last + 1])
        inner = math.prod(in_shape[last + 1 :])
        for first in range(t.axis - 1, -1, -1):
            repeats = math.prod(in_shape[first : t.axis])
            prefix = math.prod(in_shape[:first])
            for b in range(len(out_shape)):
                if (math.prod(out_shape[:b]) == prefix and out_shape[b] == repeats * in_shape[t.axis] * block
                        and math.prod(out_shape[b + 1 :]) == inner and repeats > 1):
                    return b, repeats, first, last
    return None


def _prefix_of(dims: Sequence[int], size: int) -> bool:
    """Whether the leading ``dims`` multiply to exactly ``size`` (the axes merged into the
    channel axis are the ones right after it)."""
    product = 1
    for d in dims:
        if product == size:
            return True
        product *= d
    return product == size


def _target_entry(w: _Walker, node: ir.Node, b: int, shared: bool = False, index: int = 1) -> tuple[int, ir.Node, int, int] | None:
    """Entry ``b`` of a Reshape's (or Expand's) target shape and where it is written: ``(value, node,
    input, offset)``, the constant target itself or the constant piece of the ``Concat``
    that builds a computed one (a dynamic-batch export: ``Concat(Shape(x)[0:1], [64],
    Shape(x)[3:4])``; ``index``: the node's shape input). None when that entry is computed.
    A ``Concat`` read by other nodes too is only returned when ``shared``: the pass then
    gives the reader a copy of it (:attr:`Member.via`)."""
    target = node.inputs[index]
    array = const_array(target)
    if array is not None:
        return (int(array.reshape(-1)[b]), node, index, b) if b < array.size else None
    concat = target.producer() if target is not None else None
    if concat is None or concat.op_type != "Concat" or (len(target.uses()) != 1 and not shared):
        return None
    found = _concat_piece(w, concat, b)
    array = const_array(found[2]) if found is not None else None
    return None if array is None else (int(array.reshape(-1)[found[1]]), concat, found[0], found[1])


def _merged_axes(shape: Sequence[int], axis: int, block: int) -> list[int]:
    """The channel axis and the axes after it whose sizes multiply to ``block``."""
    axes, product = [axis], 1
    for a in range(axis + 1, len(shape)):
        if product == block:
            break
        product *= shape[a]
        axes.append(a)
    return axes


@dataclasses.dataclass(frozen=True)
class _Dim:
    """One entry of a computed shape: ``factor`` × the sizes of ``(value, axis)`` pairs."""

    factor: int
    sizes: tuple[tuple[str, int], ...] = ()

    def __mul__(self, other: _Dim) -> _Dim:
        return _Dim(self.factor * other.factor, tuple(sorted(self.sizes + other.sizes)))


_SIZE_PICKS = ("Gather", "Slice", "Unsqueeze", "Squeeze", "Cast", "Identity", "Concat", "Mul", "Div", "Reshape")


def _dims_of(w: _Walker, value: ir.Value | None, depth: int = 0) -> list[_Dim] | None:
    """The entries of a small integer tensor built from constants and ``Shape`` reads (a
    Reshape target), as products; None when built any other way."""
    if value is None or depth > 16:
        return None
    array = const_array(value)
    if array is not None:
        return [_Dim(int(v)) for v in array.reshape(-1)] if array.dtype.kind in "iu" and array.size <= 16 else None
    node = value.producer()
    if node is not None and node.op_type == "Where" and _where_keeps_sizes(node):
        return _dims_of(w, node.inputs[2], depth + 1)
    if node is None or node.op_type not in ("Shape", *_SIZE_PICKS):
        return None
    if node.op_type == "Shape":
        rank = w.rank(node.inputs[0])
        if rank is None:
            return None
        axes = list(range(rank))[attr(node, "start", 0) : attr(node, "end", rank)]
        return [_Dim(1, ((node.inputs[0].name, a),)) for a in axes]
    if node.op_type == "Div":
        numerator, divisor = _dims_of(w, node.inputs[0], depth + 1), const_array(node.inputs[1])
        if numerator is None or divisor is None or divisor.size != 1 or int(divisor.reshape(-1)[0]) <= 0:
            return None
        d = int(divisor.reshape(-1)[0])
        # an exact division of the constant factor (a pruned SCALE entry); otherwise a size
        # divided (MaxViT's ``H // P`` windows): the quotient is marked by a size no tensor
        # has, so it matches no expected entry, and the sizes it reads stay visible
        return [_Dim(n.factor // d, n.sizes) if n.factor % d == 0 else _Dim(n.factor, (*n.sizes, (f"/{d}", 0))) for n in numerator]
    parts = [_dims_of(w, v, depth + 1) for v in (node.inputs if node.op_type in ("Concat", "Mul") else node.inputs[:1])]
    if any(p is None for p in parts):
        return None
    if node.op_type == "Concat":
        return [d for p in parts for d in p]
    if node.op_type == "Mul":
        a, b = parts
        if len(a) != len(b) and 1 not in (len(a), len(b)):
            return None
        n = max(len(a), len(b))
        return [a[i if len(a) > 1 else 0] * b[i if len(b) > 1 else 0] for i in range(n)]
    if node.op_type == "Gather":
        picks = const_array(node.inputs[1])
        if picks is None or attr(node, "axis", 0) != 0 or any(not -len(parts[0]) <= int(i) < len(parts[0]) for i in picks.reshape(-1)):
            return None
        return [parts[0][int(i)] for i in picks.reshape(-1)]
    if node.op_type == "Slice":
        bounds = _shape_slice(node)
        return None if bounds is None else parts[0][slice(*bounds)]
    if node.op_type == "Reshape" and len(w.shape(value) or ()) != 1:
        return None  # a sizes vector reshaped to anything but a vector
    return parts[0]  # Unsqueeze / Squeeze / Cast / Identity / Reshape to a vector keep the entries


def _where_keeps_sizes(node: ir.Node) -> bool:
    """``Where(Equal(x, −1…), ones, x)``: the TorchScript exporter's ``expand`` turns −1
    entries of a size vector into 1. Its result is ``x`` when ``x`` holds no negative entry,
    which the caller's :func:`_dims_of` of ``x`` settles (sizes and the constants it accepts
    are read off shapes); here: the condition compares ``x`` with negative numbers only."""
    cond = node.inputs[0].producer() if node.inputs[0] is not None else None
    if cond is None or cond.op_type != "Equal" or node.inputs[2] not in cond.inputs:
        return False
    other = cond.inputs[1] if cond.inputs[0] is node.inputs[2] else cond.inputs[0]
    fill = _fill_values(other)
    return fill is not None and fill.size > 0 and bool((fill < 0).all())


def _fill_values(value: ir.Value | None, depth: int = 0) -> np.ndarray | None:
    """The entries of a constant, or of a ``ConstantOfShape`` (its fill value, which every
    entry holds), or of a product of such (broadcast); None for anything else."""
    if value is None or depth > 4:
        return None
    array = const_array(value)
    if array is not None:
        return array
    node = value.producer()
    if node is not None and node.op_type == "ConstantOfShape":
        fill = node.attributes.get("value")
        return np.zeros(1) if fill is None else np.asarray(fill.as_tensor().numpy()).reshape(-1)
    if node is not None and node.op_type == "Mul":
        parts = [_fill_values(v, depth + 1) for v in node.inputs]
        if any(p is None for p in parts):
            return None
        try:
            return np.multiply(*parts)
        except ValueError:
            return None
    return None


def _shape(w: _Walker, node: ir.Node) -> None:
    """``Shape`` reads sizes, not values: safe unless its users read the channel count.
    Proven only for users that are constant ``Gather``/``Slice`` picks of other entries (a
    dynamic-batch export reads the batch and spatial sizes to build a Reshape target)."""
    t = w.track(node.inputs[0])
    rank = w.rank(node.inputs[0])
    if t is None:
        return
    if rank is None:
        w.block(t, f"{_label(node)}: the channel count is read")
        return
    axes = list(range(rank))[attr(node, "start", 0) : attr(node, "end", rank)]
    sized: list[ir.Node] = []  # tensors shaped by the count: their handlers decide
    for user, index in node.outputs[0].uses():
        read = _shape_entries_read(user, index, axes)
        if read is None and user.op_type == "Expand" and index == 1 and len(axes) == rank:
            w.expand_as.setdefault(id(user), []).append((t, rank))  # ``y.expand_as(x)``: the Expand decides
            continue
        if read is None:  # the whole shape (GroupNorm reshaped back, dynamo's Resize sizes)
            if not _sizes_user_safe(user, index, node.inputs[0]):
                w.block(t, f"{_label(node)}: the channel count is read")
                return
        elif t.axis in read and not _only_reshapes(user.outputs[0], node.inputs[0], sized=sized):
            w.block(t, f"{_label(node)}: the channel count is read")
            return
    for user in sized:
        w.sized.setdefault(id(user), []).append(t)


def _carries_channels_of(value: ir.Value | None, x: ir.Value, depth: int = 0) -> bool:
    """Whether ``value`` is ``x`` or computed from it by ops that keep its channels apart
    (a Transpose, activations, per-channel norms and constants, or as the right operand of
    attention's ``scores·V``, or through a convolution when they are merged into its batch
    axis). The Reshape handler then checks that the channels really are the same ones; a
    tensor reached any other way would take the channel count without being pruned with it."""
    if value is x:
        return True
    node = value.producer() if value is not None else None
    if node is None or depth > 16 or (node.op_type not in _CHANNEL_KEEPING and node.op_type not in ("MatMul", "Conv")):
        return False
    inputs = node.inputs[1:] if node.op_type == "MatMul" else node.inputs[:1] if node.op_type == "Conv" else node.inputs
    return any(v is not None and const_array(v) is None and _carries_channels_of(v, x, depth + 1) for v in inputs)


def _only_reshapes(sizes: ir.Value, x: ir.Value, depth: int = 0, sized: list[ir.Node] | None = None) -> bool:
    """Whether every path from ``sizes`` (picked out of ``Shape(x)``) through size arithmetic
    ends in the target of a Reshape or Expand of ``x`` (or the output sizes of a Resize of
    it), or of a tensor carrying its channels (whose handler checks the entry). With
    ``sized``, also in the sizes of a ``ConstantOfShape`` or the target of an ``Expand`` of
    another tensor, which are collected there: their handlers (:func:`_sized_by_count`)
    check that the count shapes one axis of a tensor that then has x's channels there."""
    return depth <= 16 and all(_sizes_user_safe(user, index, x, depth, sized) for user, index in sizes.uses())


def _sizes_user_safe(user: ir.Node, index: int, x: ir.Value, depth: int = 0, sized: list[ir.Node] | None = None) -> bool:
    """:func:`_only_reshapes` for one reader ``user`` (input ``index``) of sizes of ``x``."""
    if user.op_type in ("Reshape", "Expand") and index == 1 and _carries_channels_of(user.inputs[0], x):
        return True
    if user.op_type == "Resize" and index == 3 and _carries_channels_of(user.inputs[0], x):
        return True  # the output sizes of a Resize of x: its handler checks the channel entry
    if sized is not None and (user.op_type, index) in (("ConstantOfShape", 0), ("Expand", 1)):
        sized.append(user)  # a tensor shaped like x (MultiScaleRoIAlign's zeros, its scatter indices)
        return True
    if user.op_type in ("Reshape", "Expand", "Resize") and index != 0:  # another tensor shaped by these sizes
        return False
    # a size that leaves the graph is read by whoever runs it
    return user.op_type in _SIZE_ARITHMETIC and all(
        not o.is_graph_output() and _only_reshapes(o, x, depth + 1, sized) for o in user.outputs
    )  # fmt: skip


def _shape_entries_read(user: ir.Node, index: int, axes: list[int]) -> set[int] | None:
    """The axes (of the tensor behind a ``Shape`` that gives the sizes of ``axes``) whose
    sizes ``user`` picks; None when it is not a constant pick."""
    if index != 0:
        return None
    if user.op_type == "Gather" and attr(user, "axis", 0) == 0 and const_array(user.inputs[1]) is not None:
        picks = const_array(user.inputs[1]).reshape(-1).tolist()
        if any(not -len(axes) <= int(i) < len(axes) for i in picks):
            return None
        return {axes[int(i)] for i in picks}
    if user.op_type == "Slice":
        bounds = _shape_slice(user)
        return None if bounds is None else set(axes[slice(*bounds)])
    return None


def _shape_slice(node: ir.Node) -> tuple[int, int, int] | None:
    """``(start, end, step)`` of a 1-D Slice with constant bounds (inputs, or attributes
    before opset 10)."""
    if len(node.inputs) >= 3:
        values = [const_array(node.inputs[i]) if len(node.inputs) > i and node.inputs[i] is not None else None
                  for i in (1, 2, 3, 4)]  # fmt: skip
        if values[0] is None or values[1] is None or any(
            v is None for i, v in zip((3, 4), values[2:]) if len(node.inputs) > i and node.inputs[i] is not None
        ):
            return None
        starts, ends, axes, steps = values
    else:
        starts, ends, axes, steps = attr(node, "starts"), attr(node, "ends"), attr(node, "axes"), None
        if starts is None or ends is None:
            return None
    if np.size(starts) != 1 or (axes is not None and int(np.reshape(axes, -1)[0]) not in (0, -1)):
        return None
    step = 1 if steps is None else int(np.reshape(steps, -1)[0])
    return int(np.reshape(starts, -1)[0]), int(np.reshape(ends, -1)[0]), step


def _axes_of(node: ir.Node, index: int = 1) -> list[int] | None:
    axes = attr(node, "axes")
    if axes is None and len(node.inputs) > index and node.inputs[index] is not None:
        arr = const_array(node.inputs[index])
        if arr is None:
            return None
        axes = arr.reshape(-1).tolist()
    return axes


def _squeeze(w: _Walker, node: ir.Node) -> None:
    t = w.track(node.inputs[0])
    rank = w.rank(node.inputs[0])
    if t is None:
        return
    axes = _axes_of(node)
    if axes is None or rank is None:
        w.block(t, f"{_label(node)}: axes not constant")
        return
    axes = [a % rank for a in axes]
    if t.axis in axes:
        w.block(t, f"{_label(node)}: squeezes the channel axis")
        return
    w.set_track(node.outputs[0], _Track(t.elems, t.axis - sum(a < t.axis for a in axes), t.block))


def _unsqueeze(w: _Walker, node: ir.Node) -> None:
    t = w.track(node.inputs[0])
    out_rank = w.rank(node.outputs[0])
    if t is None:
        return
    axes = _axes_of(node)
    if axes is None or out_rank is None:
        w.block(t, f"{_label(node)}: axes not constant")
        return
    inserted = {a % out_rank for a in axes}
    kept = [i for i in range(out_rank) if i not in inserted]
    w.set_track(node.outputs[0], _Track(t.elems, kept[t.axis], t.block))


def _tile(w: _Walker, node: ir.Node) -> None:
    """``Tile`` repeats whole slices along each axis: channels pass on where their axis is
    repeated once (GCViT's global query tiled over the windows); repeats that must be read
    at run time count as once only when spelled as a constant 1 there."""
    t = w.track(node.inputs[0])
    if t is None:
        return
    repeats = _dims_of(w, node.inputs[1]) if len(node.inputs) > 1 and w.track(node.inputs[1]) is None else None
    if repeats is None or t.axis >= len(repeats) or repeats[t.axis] != _Dim(1):
        w.block(t, f"{_label(node)}: repeats the channel axis, or repeats not known")
        return
    w.set_track(node.outputs[0], t)


def _expand(w: _Walker, node: ir.Node) -> None:
    """Expand broadcasts size-1 axes: the channels pass on where their axis is not one of
    them (LLaMA's grouped-query attention repeats each key/value head over a new axis, and
    a Reshape merging it into the heads repeats the units). The target's channel entry is
    1 (keeps the input's size), read off a tensor with the same channels, or the count
    itself, which is rewritten."""
    t = w.track(node.inputs[0])
    if id(node) in w.expand_as:
        _expand_as(w, node, t, w.expand_as.pop(id(node)))
        return
    pending = w.sized.pop(id(node), [])
    if t is None:
        if pending:
            _sized_by_count(w, node, pending)
        return
    roots = w.roots(t.elems)
    for other in pending:  # the target reads the count of other channels than the input's
        if w.roots(other.elems) != roots:
            w.block(other, f"{_label(node)}: expands a tensor of other channels to this one's channel count")
            w.block(t, f"{_label(node)}: expands to the channel count of a tensor of other channels")
            return
    in_shape, out_shape = w.shape(node.inputs[0]), w.shape(node.outputs[0])
    if in_shape is None or out_shape is None:
        w.block(t, f"{_label(node)}: shapes unknown")
        return
    axis = t.axis + len(out_shape) - len(in_shape)
    if out_shape[axis] != in_shape[t.axis]:
        w.block(t, f"{_label(node)}: broadcasts the channel axis")
        return
    dims = _dims_of(w, node.inputs[1])
    if dims is None:
        w.block(t, f"{_label(node)}: the target shape is computed")
        return
    entry = axis - (len(out_shape) - len(dims))  # the target may be shorter than the output
    own = _same_channels(w, t)
    if any(own & set(d.sizes) for i, d in enumerate(dims) if i != entry):
        w.block(t, f"{_label(node)}: the target reads the channel count into another entry")
        return
    if entry >= 0 and dims[entry].sizes:
        if dims[entry].factor != 1 or len(dims[entry].sizes) != 1 or dims[entry].sizes[0] not in own:
            w.block(t, f"{_label(node)}: the target's channel entry is computed from other sizes")
            return
    elif entry >= 0 and dims[entry].factor != 1:
        found = _target_entry(w, node, entry, shared=True)
        if found is None or found[0] != t.channels * t.block:
            w.block(t, f"{_label(node)}: the target's channel entry is computed")
            return
        _, holder, index, offset = found
        w.member(holder, SHAPE, node.inputs[0], index, offset, t.block, via=None if holder is node else node)
    w.set_track(node.outputs[0], _Track(t.elems, axis, t.block))


def _sized_by_count(w: _Walker, node: ir.Node, pending: list[_Track]) -> None:
    """A ``ConstantOfShape`` (or an ``Expand`` of an untracked tensor) whose sizes read the channel count of the ``pending`` tracks at run
    time: torchvision's ``MultiScaleRoIAlign`` fills zeros of the pooled maps' shape and
    expands each level's region indices to it, then scatters the levels into the zeros.
    When exactly one entry of the sizes is that count (read off a tensor with the same
    channels) and the filled or broadcast values are the same for every channel (the
    Expand's input has size 1 there), the output has those channels on that axis: pruning
    shrinks it with them and nothing is rewritten. Any other use of the count blocks."""
    dims = _dims_of(w, node.inputs[0] if node.op_type == "ConstantOfShape" else node.inputs[1])
    out_rank = w.rank(node.outputs[0])
    entries: dict[int, list[_Track]] = {}
    for t in pending:
        own = _same_channels(w, t)
        hits = [] if dims is None else [i for i, d in enumerate(dims) if own & set(d.sizes)]
        if dims is not None and not hits:  # the sizes read no count (TorchScript's expand: the rank)
            continue
        exact = len(hits) == 1 and dims[hits[0]].factor == 1 and len(dims[hits[0]].sizes) == 1
        if not exact or out_rank is None:
            w.block(t, f"{_label(node)}: its sizes read the channel count in a way onnxopt does not model")
            continue
        entries.setdefault(out_rank - len(dims) + hits[0], []).append(t)
    if len(entries) > 1:  # the counts of two groups shape one tensor
        for tracks in entries.values():
            for t in tracks:
                w.block(t, f"{_label(node)}: its sizes read the channel counts of several groups")
        return
    for axis, (t, *more) in entries.items():
        if node.op_type == "Expand":
            data_shape = w.shape(node.inputs[0])
            broadcast = axis - (out_rank - len(data_shape)) if data_shape is not None else None
            if broadcast is None or (broadcast >= 0 and data_shape[broadcast] != 1):
                for other in (t, *more):
                    w.block(other, f"{_label(node)}: expands a tensor of other channels to this one's channel count")
                return
        for other in more:
            w.union(t.elems, other.elems)
        w.set_track(node.outputs[0], _Track(t.elems, axis, t.block))


def _constant_of_shape(w: _Walker, node: ir.Node) -> None:
    """A fill tensor whose sizes read a channel count (see :func:`_sized_by_count`)."""
    pending = w.sized.pop(id(node), [])
    if pending:
        _sized_by_count(w, node, pending)


def _scatter_gather_elements(w: _Walker, node: ir.Node) -> None:
    """``ScatterElements(data, indices, updates)`` / ``GatherElements(data, indices)`` move
    elements along ``axis`` only and match the inputs element by element on every other
    axis: with the channels on another axis, output channel *c* depends on channel *c* of
    each input alone, so the inputs' channels are one unit (MultiScaleRoIAlign scatters
    each level's pooled regions, axis 0, into one tensor). Every input must carry the
    channels (indices shaped at run time do, see :func:`_sized_by_count`); a constant of a
    fixed channel count, or moving along the channel axis, blocks them."""
    tracks = [w.track(v) for v in node.inputs]
    known = [t for t in tracks if t is not None]
    rank = w.rank(node.inputs[0])
    if not known:
        return
    first = known[0]
    axis = attr(node, "axis", 0)
    if (
        rank is None or len(known) != len(tracks) or axis % rank == first.axis
        or any((t.axis, t.channels, t.block) != (first.axis, first.channels, first.block) for t in known)
    ):  # fmt: skip
        for t in known:
            w.block(t, f"{_label(node)}: moves elements along the channel axis, or meets a tensor of other channels")
        return
    for t in known[1:]:
        w.union(first.elems, t.elems)
    w.set_track(node.outputs[0], first)


def _expand_as(w: _Walker, node: ir.Node, t: _Track | None, targets: list[tuple[_Track, int]]) -> None:
    """``y.expand_as(x)`` with sizes read at run time (TorchScript with a dynamic batch):
    ``Expand(y, Shape(x))`` takes x's channel count. The channels of y, on the same axis,
    become one unit with x's, so both lose the same ones (an SE gate, MobileViTv2's context
    vector); a y broadcast along that axis takes x's channels; anything else blocks."""
    in_shape, out_rank = w.shape(node.inputs[0]), w.rank(node.outputs[0])
    (x, rank), *more = targets
    if more or in_shape is None or out_rank != rank:
        for other, _ in targets:
            w.block(other, f"{_label(node)}: the channel count is read")
        w.block(t, f"{_label(node)}: shapes unknown")
        return
    shift = rank - len(in_shape)
    if t is not None and t.axis + shift == x.axis and t.channels == x.channels and t.block == x.block:
        w.union(t.elems, x.elems)
        w.set_track(node.outputs[0], _Track(t.elems, x.axis, t.block))
    elif t is None and (x.axis < shift or in_shape[x.axis - shift] == 1):
        w.set_track(node.outputs[0], x)
    elif t is None and const_array(node.inputs[0]) is not None and in_shape[x.axis - shift] == x.channels * x.block:
        w.set_track(node.outputs[0], x)  # ``gamma.expand_as(x)``: a per-channel constant, sliced with x
        w.member(node, PARAM, node.outputs[0], 0, x.axis - shift, x.block)
    else:
        w.block(x, f"{_label(node)}: expands a tensor of other channels to this one's shape")
        w.block(t, f"{_label(node)}: expands to the shape of a tensor of other channels")


def _transpose(w: _Walker, node: ir.Node) -> None:
    t = w.track(node.inputs[0])
    rank = w.rank(node.inputs[0])
    if t is None:
        return
    perm = attr(node, "perm") or (list(range(rank))[::-1] if rank else None)
    if perm is None:
        w.block(t, f"{_label(node)}: permutation unknown")
        return
    w.set_track(node.outputs[0], _Track(t.elems, list(perm).index(t.axis), t.block))


def _reduce(w: _Walker, node: ir.Node) -> None:
    t = w.track(node.inputs[0])
    rank = w.rank(node.inputs[0])
    if t is None:
        return
    axes = _axes_of(node)
    if not axes or rank is None or t.block != 1:
        w.block(t, f"{_label(node)}: reduces over all axes or axes not constant")
        return
    axes = [a % rank for a in axes]
    if t.axis in axes:
        w.block(t, f"{_label(node)}: reduces over the channel axis")
        return
    keep = attr(node, "keepdims", 1)
    axis = t.axis if keep else t.axis - sum(a < t.axis for a in axes)
    w.set_track(node.outputs[0], _Track(t.elems, axis, t.block))


def _pad(w: _Walker, node: ir.Node) -> None:
    t = w.track(node.inputs[0])
    rank = w.rank(node.inputs[0])
    if t is None:
        return
    pads = attr(node, "pads")
    if pads is None and len(node.inputs) > 1:
        arr = const_array(node.inputs[1])
        pads = None if arr is None else arr.tolist()
    if pads is None or rank is None or len(node.inputs) > 3 or pads[t.axis] or pads[t.axis + rank]:
        w.block(t, f"{_label(node)}: pads the channel axis or pads not constant")
        return
    w.set_track(node.outputs[0], t)


def _resize(w: _Walker, node: ir.Node) -> None:
    t = w.track(node.inputs[0])
    if t is None:
        return
    for i in range(1, len(node.inputs)):
        if w.track(node.inputs[i]) is not None:
            w.block(t, f"{_label(node)}: channel-carrying size input")
            return
    at = 1 if node.op_type == "Upsample" else 2  # Upsample-9's scales input (Upsample-7: an attribute)
    scales = const_array(node.inputs[at]) if len(node.inputs) > at and node.inputs[at] is not None else attr(node, "scales")
    if node.op_type == "Upsample" and scales is None:
        w.block(t, f"{_label(node)}: scales not constant")
        return
    if scales is not None and np.size(scales) > t.axis and np.reshape(scales, -1)[t.axis] != 1:
        w.block(t, f"{_label(node)}: resizes the channel axis")
        return
    if len(node.inputs) > 3 and node.inputs[3] is not None and not _resize_sizes_follow(w, node, t):
        return
    w.set_track(node.outputs[0], t)


def _resize_sizes_follow(w: _Walker, node: ir.Node, t: _Track) -> bool:
    """Whether a Resize's output ``sizes`` keep spelling the channel count once channels
    go: its channel entry read from ``Shape`` of the same channels (a TorchScript upsample:
    ``Concat(Shape(x)[0:2], hw)``, which follows by itself), or written as a constant (the
    shape folded at a static batch), which the pass rewrites (a :data:`SHAPE` member).
    Otherwise the channels are blocked with the reason (returns False)."""
    axes = attr(node, "axes")
    rank = w.rank(node.inputs[0])
    if rank is None:
        w.block(t, f"{_label(node)}: output sizes of unknown rank")
        return False
    axes = list(range(rank)) if axes is None else [int(a) % rank for a in axes]
    if t.axis not in axes:
        return True
    entry = axes.index(t.axis)
    dims = _dims_of(w, node.inputs[3])
    own = _same_channels(w, t)
    if dims is None or len(dims) != len(axes) or any(own & set(d.sizes) for i, d in enumerate(dims) if i != entry):
        w.block(t, f"{_label(node)}: output sizes computed in a way onnxopt does not follow")
        return False
    if dims[entry].sizes:
        if dims[entry].factor == 1 and len(dims[entry].sizes) == 1 and dims[entry].sizes[0] in own:
            return True
        w.block(t, f"{_label(node)}: the channel entry of its output sizes is computed from other sizes")
        return False
    found = _target_entry(w, node, entry, shared=True, index=3)
    if found is None or found[0] != t.channels:
        w.block(t, f"{_label(node)}: its output sizes change the channel count")
        return False
    _, holder, index, offset = found
    w.member(holder, SHAPE, node.inputs[0], index, offset, via=None if holder is node else node)
    return True


def _gather(w: _Walker, node: ir.Node) -> None:
    """Gather with constant indices along another axis keeps the channels (an RNN's last
    layer ``h_n[-1]``, the last step ``out[:, -1]``): the gathered axis is replaced by the
    indices' axes, so the channel axis moves by ``indices.ndim − 1`` when it lies after it."""
    t = w.track(node.inputs[0])
    rank = w.rank(node.inputs[0])
    if w.track(node.inputs[1]) is not None:
        _block_inputs(w, node, "channel values used as indices")
        return
    if t is None:
        return
    indices = const_array(node.inputs[1])
    axis = attr(node, "axis", 0)
    if indices is None or rank is None or axis % rank == t.axis:
        w.block(t, f"{_label(node)}: gathers along the channel axis or indices not constant")
        return
    shift = indices.ndim - 1 if axis % rank < t.axis else 0
    w.set_track(node.outputs[0], _Track(t.elems, t.axis + shift, t.block))


def _slice_like(w: _Walker, node: ir.Node) -> None:
    """Slice / Split along a non-channel axis keep the channels."""
    t = w.track(node.inputs[0])
    rank = w.rank(node.inputs[0])
    if t is None:
        return
    if node.op_type == "Slice":
        axes = _axes_of(node, 3)
        if axes is None and len(node.inputs) > 1:
            starts = const_array(node.inputs[1])
            axes = None if starts is None else list(range(starts.size))
    else:
        axes = [attr(node, "axis", 0)]
    if axes is None or rank is None or t.axis in [a % rank for a in axes]:
        if axes is not None and rank is not None and node.op_type == "Slice" and _channel_slice(w, node, t, rank, axes):
            return
        w.block(t, f"{_label(node)}: slices the channel axis")
        return
    for out in node.outputs:
        w.set_track(out, t)


def slice_range(node: ir.Node, entry: int, channels: int) -> tuple[int, int] | None:
    """``[start, end)`` of entry ``entry`` of a Slice with constant starts/ends and step 1,
    clamped to ``channels`` as onnxruntime does; None otherwise."""
    starts, ends = (const_array(node.inputs[i]) if len(node.inputs) > i and node.inputs[i] is not None else None
                    for i in (1, 2))  # fmt: skip
    steps = const_array(node.inputs[4]) if len(node.inputs) > 4 and node.inputs[4] is not None else None
    if starts is None or ends is None or (steps is not None and int(steps.reshape(-1)[entry]) != 1):
        return None
    start, end = int(starts.reshape(-1)[entry]), int(ends.reshape(-1)[entry])
    start, end = (min(max(v + channels if v < 0 else v, 0), channels) for v in (start, end))
    return (start, end) if end > start else None


def _channel_slice(w: _Walker, node: ir.Node, t: _Track, rank: int, axes: list[int]) -> bool:
    """A Slice of a channel range (``torch.chunk`` exported by TorchScript, once its bounds
    are folded): the output holds that range of the input's channels."""
    entry = [a % rank for a in axes].index(t.axis)
    bounds = slice_range(node, entry, t.channels) if t.block == 1 else None
    if bounds is None:
        return False
    w.member(node, SLICE, node.inputs[0], entry, t.axis)
    w.set_track(node.outputs[0], _Track(t.elems[bounds[0] : bounds[1]], t.axis))
    return True


def split_sizes(node: ir.Node, total: int) -> list[int] | None:
    """The output sizes of a Split of ``total`` entries: its ``split`` input (opset ≥ 13) or
    attribute, else equal parts (the last one smaller, as ``num_outputs`` specifies);
    None when they are not constant or do not add up."""
    given = const_array(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] is not None else None
    sizes = given.reshape(-1).tolist() if given is not None else attr(node, "split")
    if sizes is None:
        if len(node.inputs) > 1 and node.inputs[1] is not None:
            return None  # a computed split input
        n = len(node.outputs)
        part = -(-total // n)
        sizes = [min(part, total - i * part) for i in range(n)]
    sizes = [int(x) for x in sizes]
    return sizes if sum(sizes) == total and len(sizes) == len(node.outputs) and min(sizes) > 0 else None


def _split(w: _Walker, node: ir.Node) -> None:
    """Split along the channel axis hands each output its range of the input's channels,
    as Concat is the inverse (YOLOv5/v8's C3/C2f blocks, CSP nets); the Split member
    recounts the sizes when channels go. Along another axis the channels pass through."""
    t = w.track(node.inputs[0])
    rank = w.rank(node.inputs[0])
    if t is None or rank is None or attr(node, "axis", 0) % rank != t.axis:
        _slice_like(w, node)
        return
    sizes = split_sizes(node, t.channels * t.block) if t.block == 1 else None
    if sizes is None:
        w.block(t, f"{_label(node)}: splits the channel axis in sizes that are not constant")
        return
    w.member(node, SPLIT, node.inputs[0], 1, t.axis)
    start = 0
    for out, size in zip(node.outputs, sizes):
        if out is not None:
            w.set_track(out, _Track(t.elems[start : start + size], t.axis))
        start += size


def _cast_like(w: _Walker, node: ir.Node) -> None:
    """CastLike: input 0's channels; input 1 only lends its element type (dynamo casts a
    GroupNorm's constants like the activations)."""
    t = w.track(node.inputs[0])
    if t is not None:
        w.set_track(node.outputs[0], t)


_PASSTHROUGH = (
    "Relu", "LeakyRelu", "Sigmoid", "Tanh", "Clip", "HardSigmoid", "HardSwish", "Elu", "Selu",
    "Celu", "Gelu", "Erf", "Softplus", "Softsign", "Mish", "Identity", "Dropout", "Cast", "Abs",
    "Neg", "Sqrt", "Exp", "Log", "Reciprocal", "Floor", "Ceil", "Round", "Sign", "ThresholdedRelu",
    "IsNaN", "IsInf", "Not", "Sin", "Cos", "Tan", "Atan", "Asin", "Acos", "Sinh", "Cosh", "Asinh", "Acosh", "Atanh",
)  # fmt: skip
# reductions over other axes keep each channel's values apart (Swin V2's cosine attention
# divides q and k by their ReduceL2 over each head's channels)
_REDUCE = ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceL1", "ReduceL2", "ReduceSumSquare", "ReduceLogSum",
           "ReduceLogSumExp", "ReduceProd")  # fmt: skip
_POOLS = ("MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool")
# element for element over broadcast operands: torch's SDPA export zeroes NaN rows of the
# attention probabilities with ``Where(IsNaN(p), 0, p)``; masks combine with And / Or
_ELEMENTWISE = (
    "Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean", "Pow", "PRelu", "Mod", "Where",
    "And", "Or", "Xor", "Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual",
)  # fmt: skip
# ops after which a tensor still carries its input's channels (for a Reshape target read off
# that input's Shape); their handlers pass the channels on or block them
_CHANNEL_KEEPING = frozenset({*_PASSTHROUGH, *_POOLS, "Transpose", "Reshape", "InstanceNormalization", "GroupNormalization", "BatchNormalization", "Add", "Sub",
                              "Mul", "Div", "Unsqueeze", "Squeeze", "Expand", "RoiAlign", "MaxRoiPool", "Resize", "Upsample"})  # fmt: skip
# size arithmetic that only passes sizes on to a Reshape / Expand target (TorchScript's
# ``expand`` turns −1 entries into 1 with Equal / Where on a ConstantOfShape)
_SIZE_ARITHMETIC = frozenset({*_SIZE_PICKS, "Where", "Equal", "Shape", "ConstantOfShape"})

HANDLERS: dict[str, Handler] = {
    **{op: _passthrough for op in _PASSTHROUGH},
    **{op: _elementwise for op in _ELEMENTWISE},
    **{op: _pool for op in _POOLS},
    "BatchNormalization": _batchnorm,
    "InstanceNormalization": _scale_bias_norm,
    "GroupNormalization": _group_normalization,
    "CastLike": _cast_like,
    "Conv": _conv,
    "ConvTranspose": _conv_transpose,
    "Gemm": _gemm,
    "MatMul": _matmul,
    "Einsum": _einsum,
    "LSTM": _recurrent,
    "GRU": _recurrent,
    "RNN": _recurrent,
    "Concat": _concat,
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Expand": _expand,
    "Tile": _tile,
    "Transpose": _transpose,
    **{op: _reduce for op in _REDUCE},
    "Pad": _pad,
    "Resize": _resize,
    "Upsample": _resize,
    "Slice": _slice_like,
    "Gather": _gather,
    "Split": _split,
    "Shape": _shape,
    "LayerNormalization": _layer_norm,
    "RMSNormalization": _layer_norm,
    "Softmax": _channel_axis_safe("axis", -1),
    "LogSoftmax": _channel_axis_safe("axis", -1),
    "RoiAlign": _roi_align,
    "MaxRoiPool": _roi_align,
    "ConstantOfShape": _constant_of_shape,
    "ScatterElements": _scatter_gather_elements,
    "GatherElements": _scatter_gather_elements,
}
"""op type → handler. Supporting a new op is one entry here. Source ops (Conv, Gemm,
MatMul) create channels even when no input is tracked; the others act only on tracked inputs."""

# onnxruntime's fused element-wise ops (``onnxruntime.transformers`` writes them into BERT /
# GPT-2 / ViT graphs): ``BiasGelu(x, bias)`` and ``FastGelu(x, bias?)`` are ``Gelu(x + bias)``,
# an Add, channel for channel, then a channel-wise activation. (SkipLayerNormalization
# normalises over the channels and stays unknown, so it blocks them, as _layer_norm does.)
CONTRIB_HANDLERS: dict[str, Handler] = {
    **{op: _elementwise for op in ("BiasGelu", "FastGelu")},
    **{op: _passthrough for op in ("Gelu", "QuickGelu")},
    "Attention": _fused_attention,
}
"""com.microsoft op type → handler."""
_CONTRIB_SOURCES = {"Attention"}

_SOURCES = {"Conv", "ConvTranspose", "Gemm", "MatMul", "LSTM", "GRU", "RNN"}
# domain → (handlers, source ops); ops of any other domain read their channels unknown ways
_DOMAINS: dict[str, tuple[dict[str, Handler], set[str]]] = {
    "": (HANDLERS, _SOURCES), "ai.onnx": (HANDLERS, _SOURCES), "com.microsoft": (CONTRIB_HANDLERS, _CONTRIB_SOURCES),
}


def _shapes_at_other_sizes(model: ir.Model, shapes: Mapping[str, tuple]) -> Mapping[str, tuple]:
    """All shapes with every dynamic graph-input dimension at twice its analysed size; empty
    when the model has none or inference fails there (then no size counts as static)."""
    pins, dynamic = {}, False
    for value in model.graph.inputs:
        if value.name in model.graph.initializers or value.shape is None:
            continue
        analysed = shapes.get(value.name)
        if analysed is None or not _known(analysed):
            return {}
        doubled = [d if isinstance(s, int) else 2 * d for s, d in zip(value.shape, analysed)]
        dynamic |= doubled != list(analysed)
        pins[value.name] = doubled
    if not dynamic:
        return dict(shapes)
    try:
        return static_shapes(model, pins)
    except Exception:  # noqa: BLE001 - a model that does not run at other sizes: nothing is static
        return {}


def analyze_groups(model: ir.Model, shapes: Mapping[str, Sequence[int]] | None = None) -> GroupAnalysis:
    """The channel groups of ``model``'s main graph (see the module docstring)."""
    all_shapes = static_shapes(model, shapes)
    w = _Walker(model, all_shapes)
    for node in model.graph:
        w.handled.add(id(node))
        handlers, sources = _DOMAINS.get(node.domain, ({}, set()))
        has_tracked = any(w.track(v) is not None for v in node.inputs)
        if not has_tracked and node.op_type not in sources and id(node) not in w.expand_as and id(node) not in w.sized:
            continue
        handlers.get(node.op_type, _unknown)(w, node)
    for pending in w.expand_as.values():  # an Expand never walked (inside a subgraph) took the count
        for t, _ in pending:
            w.block(t, "the channel count is read")
    for tracks in w.sized.values():  # likewise a ConstantOfShape / Expand sized by it
        for t in tracks:
            w.block(t, "the channel count is read")
    for value in model.graph.outputs:
        w.block(w.track(value), f"{value.name} is a graph output")
    values = {out.name: out for node in model.graph for out in node.outputs}
    for name, t in w.tracks.items():  # uses inside subgraphs or by unhandled nodes
        value = values.get(name)
        if value is not None and any(id(node) not in w.handled for node, _ in value.uses()):
            w.block(t, f"{name} is read inside a subgraph")
    return _collect(w)


def _collect(w: _Walker) -> GroupAnalysis:
    n_elems = len(w.parent)
    roots = np.array([w.find(e) for e in range(n_elems)], dtype=np.int64)
    reasons: dict[int, list[str]] = {}
    for e, rs in w.reasons.items():
        reasons.setdefault(int(roots[e]), []).extend(rs)
    # A unit's signature: the source values that own one of its elements.
    sources = [m for m in w.members if m.role == PRODUCER]
    signature: dict[int, list[str]] = {}
    for m in sources:
        for e in w.tracks[m.value].elems.tolist():
            signature.setdefault(int(roots[e]), []).append(m.value)
    # Units of the same sources form one group, the blocked ones apart: a source whose
    # channels are split (MobileViTv2's qkv into 1 + C + C) keeps its prunable part when
    # another part is blocked (the lone query channel broadcast over the keys).
    by_sig: dict[tuple[tuple[str, ...], bool], list[int]] = {}
    for root, sig in signature.items():
        by_sig.setdefault((tuple(sorted(set(sig))), root in reasons), []).append(root)
    order = {m.value: i for i, m in enumerate(sources)}
    groups: list[ChannelGroup] = []
    unit_of_root: dict[int, tuple[int, int]] = {}
    for (sig, _), group_roots in sorted(by_sig.items(), key=lambda kv: (min(order[v] for v in kv[0][0]), kv[0][1])):
        first = min(sig, key=order.__getitem__)
        # Units numbered by the channel order of the first source.
        first_roots = [int(roots[e]) for e in w.tracks[first].elems.tolist()]
        ordered = list(dict.fromkeys(r for r in first_roots if r in set(group_roots)))
        ordered += [r for r in group_roots if r not in set(ordered)]
        gi = len(groups)
        for u, r in enumerate(ordered):
            unit_of_root[r] = (gi, u)
        why = sorted({x for r in ordered for x in reasons.get(r, [])})
        name = first
        mine = set(ordered)
        at = [p for p, r in enumerate(first_roots) if r in mine]
        if len(at) < len(first_roots):  # a part of the source (behind a Split): name its range
            name = f"{first}[{at[0]}:{at[-1] + 1}]" if at[-1] - at[0] + 1 == len(at) else f"{first}#{gi}"
        groups.append(ChannelGroup(name, len(ordered), {}, [], why))
    group_of = np.full(n_elems, -1, dtype=np.int64)
    unit_of = np.full(n_elems, -1, dtype=np.int64)
    for r, (gi, u) in unit_of_root.items():
        group_of[r], unit_of[r] = gi, u
    for name, t in w.tracks.items():
        rs = roots[t.elems]
        gis, units = group_of[rs], unit_of[rs]
        for gi in np.unique(gis[gis >= 0]).tolist():
            groups[gi].index[name] = np.where(gis == gi, units, -1)
    for m in w.members:
        for g in groups:
            if m.value in g.index:
                g.members.append(m)
    for g in groups:
        if g.units == 1 and g.unit_width > 1 and not g.reasons:
            g.reasons.append(f"its {g.unit_width} channels are one unit (a whole GroupNorm or shuffle group), "
                             "and a layer keeps at least one")  # fmt: skip
    ranks = {}
    for name in w.tracks:
        shape = w.shapes.get(name)
        if shape is not None:
            ranks[name] = len(shape)
    return GroupAnalysis(
        groups,
        {name: t.channels for name, t in w.tracks.items()},
        {name: t.axis for name, t in w.tracks.items()},
        {name: t.block for name, t in w.tracks.items()},
        ranks,
    )
