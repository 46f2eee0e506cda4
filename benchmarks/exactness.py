"""The exactness check of channel pruning, shared by the tests and the architecture sweeps:
removing a random share of every prunable group's units must give the outputs of the
original with those units' contributions zeroed (their consumers' input weights, and a
recurrent layer's own recurrence weights, set to 0)."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from onnxopt import evaluate
from onnxopt.calibration import Dataset
from onnxopt.graph import set_const_input
from onnxopt.groups import (
    CONSUMER,
    PRODUCER,
    RECURRENT_GATES,
    GroupAnalysis,
    analyze_groups,
    const_array,
)
from onnxopt.passes.prune import PruneChannelsPass
from onnxopt.pipeline import check_model


def zero_then_prune(
    model: ir.Model, data: Dataset, fraction: float = 0.4, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, GroupAnalysis, dict[str, np.ndarray], ir.Model]:
    """(zeroed outputs, pruned outputs, analysis, removals, pruned model) for a random
    removal of ``fraction`` of every prunable group's units (at least one); the first
    output of each model on ``data``. ``model`` is left unchanged."""
    rng = np.random.default_rng(seed)
    analysis = analyze_groups(model)
    removals = {
        g.name: rng.choice(g.units, max(1, int(g.units * fraction)), replace=False)
        for g in analysis.prunable if g.units > 1
    }  # fmt: skip
    zeroed = model.clone()
    groups = analyze_groups(zeroed).by_name()
    for name, units in removals.items():
        g = groups[name]
        for m in g.members:
            if m.role == PRODUCER and m.node.op_type in RECURRENT_GATES:
                # an RNN reads its own hidden units through R's columns: a consumer too
                r = const_array(m.node.inputs[2]).copy()
                r[:, :, g.removed_positions(m.value, units)] = 0
                set_const_input(m.node, 2, r)
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
    result = PruneChannelsPass(removals)(pruned)
    assert result.modified == bool(removals)
    check_model(pruned)
    return evaluate.run(zeroed, data)[0], evaluate.run(pruned, data)[0], analysis, removals, pruned
