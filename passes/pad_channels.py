"""Pad channel groups with zero channels up to a multiple (lossless; the inverse of pruning).

onnxruntime's CPU convolutions run in a blocked layout (NCHWc: blocks of 8 channels with
AVX2, 16 with AVX-512) only when channel counts divide into blocks; otherwise they take a
slower path with layout reorders around it. Models pruned with exact channel counts (e.g.
by a PyTorch pruning library, then exported) lose much of their speed-up that way
(prune.md: mobilenet_v2 with 30 % of its channels removed at exact counts runs 0.90× as
fast as the original). Padding each :class:`~onnxopt.groups.ChannelGroup` with zero
channels brings the counts back to multiples at a small MAC cost.

For a group of ``c`` units padded to ``c' = ⌈c / m⌉·m``, ``c' − c`` channels are inserted
right after the group's last channel in every value of the group, and every member grows
its tensor there (the exact mirror of :class:`~onnxopt.passes.prune.PruneChannelsPass`):

- producer Conv / Gemm / MatMul, depthwise Conv: zero filters and zero bias entries (a
  depthwise ``group`` grows with the channels), so the new channels are 0 after the source;
- per-channel constants: 0, but 1 where a 0 would make the new channels NaN or infinite
  (BatchNormalization variance, a ``Div`` divisor, a ``Pow`` exponent); BN with scale 0 maps
  0 to its bias 0;
- consumer Conv / Gemm / MatMul: zero input columns, so whatever the new channels hold
  after element-wise ops (``Sigmoid(0) = 0.5`` in an SE gate) never reaches an output;
- Reshape target shapes that spell the channel count: rewritten.

Rules:
1. Only prunable groups are padded (the same analysis proves that the channels of a group
   reach nothing but its members), and only those whose channels sit contiguously in each
   of their values; others are skipped with the reason.
2. Groups of fewer than ``multiple`` channels are left alone (a 4-channel head would double).
3. The result computes the same outputs (up to float summation order); whether it is
   *faster* depends on the kernels, so ``optimize`` keeps it only when it measures faster.
"""

from __future__ import annotations

__all__ = ["PadChannelsPass"]

from collections.abc import Mapping, Sequence

import numpy as np
import onnx_ir as ir

from onnxopt.cpu import nchwc_block
from onnxopt.graph import attr
from onnxopt.groups import (
    PARAM,
    RECURRENT_GATES,
    SCALE,
    SHAPE,
    SLICE,
    SPLIT,
    ChannelGroup,
    GroupAnalysis,
    Member,
    analyze_groups,
    const_array,
)
from onnxopt.passes.base import LoggedPass
from onnxopt.passes.prune import refresh_shapes, resize_member

# (op type, input index) of per-channel constants whose padding must be 1, not 0
_ONE_FILLED = {("BatchNormalization", 4), ("Div", 1), ("Pow", 1)}


# ops that carry a per-channel constant to the op using it (the chains of
# :func:`onnxopt.groups._table_operand`): input index -> passes its values on
_CARRYING = {"Expand": (0,), "Reshape": (0,), "Transpose": (0,), "Unsqueeze": (0,), "Squeeze": (0,),
             "Identity": (0,), "Cast": (0,), "Where": (1, 2)}  # fmt: skip


def _one_filled(node: ir.Node, index: int) -> bool:
    """Whether a per-channel constant, input ``index`` of ``node``, is padded with 1: a
    divisor or exponent, also when ops carry it there first (``x / scale.expand_as(x)``,
    ``x / Reshape(scale, [1, C, 1, 1])``)."""
    if (node.op_type, index) in _ONE_FILLED:
        return True
    return index in _CARRYING.get(node.op_type, ()) and any(_one_filled(u, i) for u, i in node.outputs[0].uses())


class PadChannelsPass(LoggedPass):
    """Pad every prunable channel group to a multiple of ``multiple`` channels (default:
    onnxruntime's NCHWc block on this CPU, :func:`onnxopt.cpu.nchwc_block`) with zero
    channels (module docstring)."""

    def __init__(self, multiple: int | None = None, *, shapes: Mapping[str, Sequence[int]] | None = None) -> None:
        super().__init__()
        multiple = nchwc_block() if multiple is None else multiple
        if multiple < 1:
            raise ValueError(f"multiple must be positive, got {multiple}")
        self.multiple = multiple
        self.shapes = shapes

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        if self.multiple == 1 or not any(self._misaligned(n) for n in model.graph):
            return ir.passes.PassResult(model, modified=False)  # no group to pad: skip the analysis
        analysis = analyze_groups(model, self.shapes)
        # member key → [(insert at channel position, channels to insert)], value → added channels
        inserts: dict[tuple[int, str, int, int], tuple[Member, list[tuple[int, int]]]] = {}
        added: dict[str, int] = {}
        for group in analysis.groups:
            pad = self._padding(group)
            if not pad:
                continue
            if any(m.role in (SPLIT, SLICE) for m in group.members):
                self.skip(group.name, "split or sliced along the channel axis: not padded")
                continue
            starts = {value: _start(idx, group.units) for value, idx in group.index.items()}
            if any(s is None for s in starts.values()):
                self.skip(group.name, "its channels are not contiguous in every value: not padded")
                continue
            for value in starts:
                added[value] = added.get(value, 0) + pad
            seen: set[tuple[int, str, int, int]] = set()
            for member in group.members:
                key = (id(member.node), member.role, member.input_index, id(member.via))
                if key in seen:  # listed twice in one group: grow it once
                    continue
                seen.add(key)
                entry = inserts.setdefault(key, (member, []))
                if member.role not in (SHAPE, SCALE):
                    entry[1].append((starts[member.value] + group.units, pad))
            self.did(group.name, f"{group.units} → {group.units + pad} channels (zero-padded)")
        for member, where in inserts.values():
            self._apply(member, where, analysis, added)
        if inserts:
            refresh_shapes(model)
        return ir.passes.PassResult(model, modified=bool(inserts))

    def _misaligned(self, node: ir.Node) -> bool:
        """Whether ``node`` is a source whose output channel count a group would pad (groups
        start at sources: Conv / ConvTranspose / Gemm / MatMul with constant weights)."""
        if node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul") or len(node.inputs) < 2:
            return False
        if node.outputs[0].is_graph_output():  # a classifier head: its group is unprunable
            return False
        weight = const_array(node.inputs[1])
        if weight is None or weight.ndim < 2:
            return False
        if node.op_type == "Conv":
            channels = weight.shape[0]
        elif node.op_type == "ConvTranspose":
            channels = weight.shape[1] * attr(node, "group", 1)
        elif node.op_type == "Gemm":
            channels = weight.shape[0] if attr(node, "transB", 0) else weight.shape[1]
        else:
            channels = weight.shape[-1]
        return channels >= self.multiple and channels % self.multiple != 0

    def _padding(self, group: ChannelGroup) -> int:
        if group.units % self.multiple == 0 or group.units < self.multiple:
            return 0
        if any(m.node.op_type in RECURRENT_GATES for m in group.sources):
            return 0  # an RNN's hidden size has no NCHWc blocking to fill
        if not group.prunable:
            self.skip(group.name, "not padded: " + "; ".join(group.reasons[:2]))
            return 0
        return -group.units % self.multiple

    def _apply(self, m: Member, where: list[tuple[int, int]], analysis: GroupAnalysis, added: Mapping[str, int]) -> None:
        # only per-channel constants (never a producer with a bias) are filled with 1
        fill = 1.0 if m.role == PARAM and _one_filled(m.node, m.input_index) else 0.0
        resize_member(m, analysis.channels[m.value] + added[m.value],
                      lambda a, axis, block: _insert(a, where, axis, block, fill))  # fmt: skip


def _start(index: np.ndarray, units: int) -> int | None:
    """First position of the group's channels in a value when they are ``0 … units-1`` in
    order and contiguous there, else None."""
    positions = np.nonzero(index >= 0)[0]
    if len(positions) != units or positions[-1] - positions[0] + 1 != units:
        return None
    if not np.array_equal(index[positions], np.arange(units)):
        return None
    return int(positions[0])


def _insert(array: np.ndarray, where: list[tuple[int, int]], axis: int, block: int, fill: float) -> np.ndarray:
    """``array`` with ``count·block`` entries of ``fill`` inserted at ``position·block`` along
    ``axis`` for each ``(position, count)``; positions refer to the original layout."""
    for position, count in sorted(where, reverse=True):  # later positions first: earlier ones stay valid
        shape = list(array.shape)
        shape[axis] = count * block
        array = np.concatenate(
            [np.take(array, range(position * block), axis=axis), np.full(shape, fill, array.dtype),
             np.take(array, range(position * block, array.shape[axis]), axis=axis)], axis=axis,
        )  # fmt: skip
    return array
