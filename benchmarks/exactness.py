"""The exactness check of channel pruning, shared by the tests and the architecture sweeps:
removing a random share of every prunable group's units must give the outputs of the
original with those units' contributions zeroed (their consumers' input weights, and a
recurrent layer's own recurrence weights, set to 0; an operand of a product of two
activations that sums over the units, masked)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx_ir as ir

from onnxopt import evaluate
from onnxopt.calibration import Dataset
from onnxopt.graph import new_initializer, set_const_input, unique_name
from onnxopt.groups import (
    CONSUMER,
    CONTRACTED,
    PRODUCER,
    RECURRENT_GATES,
    GroupAnalysis,
    analyze_groups,
    const_array,
)
from onnxopt.passes.prune import PruneChannelsPass
from onnxopt.pipeline import check_model


def zero_then_prune(
    model: ir.Model, data: Dataset, fraction: float = 0.4, seed: int = 0, shapes: Mapping[str, Sequence[int]] | None = None,
) -> tuple[np.ndarray, np.ndarray, GroupAnalysis, dict[str, np.ndarray], ir.Model]:  # fmt: skip
    """(zeroed outputs, pruned outputs, analysis, removals, pruned model) for a random
    removal of ``fraction`` of every prunable group's units (at least one); the first
    output of each model on ``data``, analysed at ``shapes`` (dynamic sizes at 1 if not
    given). ``model`` is left unchanged."""
    rng = np.random.default_rng(seed)
    analysis = analyze_groups(model, shapes)
    removals = {
        g.name: rng.choice(g.units, max(1, int(g.units * fraction)), replace=False)
        for g in analysis.prunable if g.units > 1
    }  # fmt: skip
    zeroed = model.clone()
    groups = analyze_groups(zeroed, shapes).by_name()
    for name, units in removals.items():
        g = groups[name]
        for m in g.members:
            if m.role == PRODUCER and m.node.op_type in RECURRENT_GATES:
                # an RNN reads its own hidden units through R's columns: a consumer too
                r = const_array(m.node.inputs[2]).copy()
                r[:, :, g.removed_positions(m.value, units)] = 0
                set_const_input(m.node, 2, r)
            if m.role == CONTRACTED:
                _mask_last_axis(m.node, m.input_index, g.removed_positions(m.value, units), m.block,
                                analysis.channels[m.value])  # fmt: skip
            if m.role != CONSUMER:
                continue
            pos = g.removed_positions(m.value, units)
            pos = (pos[:, None] * m.block + np.arange(m.block)).reshape(-1)
            w = const_array(m.node.inputs[1]).copy()
            index = [slice(None)] * w.ndim
            index[m.axis] = pos
            w[tuple(index)] = 0
            set_const_input(m.node, 1, w)
    pruned = model.clone()
    result = PruneChannelsPass(removals, shapes=shapes)(pruned)
    assert result.modified == bool(removals)
    check_model(pruned)
    return evaluate.run(zeroed, data)[0], evaluate.run(pruned, data)[0], analysis, removals, pruned


def _mask_last_axis(node: ir.Node, index: int, positions: np.ndarray, block: int, channels: int) -> None:
    """Multiply input ``index`` of ``node`` by a 0/1 mask that zeroes ``positions`` (in
    channels of ``block`` entries) along its last axis (the contracted one)."""
    mask = np.ones(channels * block, np.float32)
    mask[(positions[:, None] * block + np.arange(block)).reshape(-1)] = 0
    graph = node.graph
    operand = node.inputs[index]
    dtype = operand.dtype.numpy() if operand.dtype is not None else np.dtype(np.float32)
    const = new_initializer(graph, mask.astype(dtype), "contracted_mask")
    name = unique_name(graph, f"{operand.name}_masked")  # value names are unique: the node's too
    mul = ir.Node("", "Mul", [operand, const], name=name)
    mul.outputs[0].name = name
    graph.insert_before(node, mul)
    node.replace_input_with(index, mul.outputs[0])
