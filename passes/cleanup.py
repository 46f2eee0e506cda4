"""Lossless clean-up: what the ONNX ecosystem already does well, wired as one pass.

Rules, in order:
1. ``onnxscript``'s optimizer: constant folding (shape arithmetic, the dynamo exporter's
   ``Expand(CastLike(0, x))`` zero biases among them), its default rewrite rules (no-op
   removal, BatchNormalization fusion into Conv / ConvTranspose / Gemm, Pad into Conv, …)
   and removal of unused nodes, functions and opsets. Functions are inlined.
2. ``onnx_ir`` common passes: Identity elimination (an Identity between a graph input and
   a graph output is kept), ``Constant`` nodes lifted to initializers (so later passes see
   every weight the same way), unused-node removal, topological sort.
Initializers are never de-duplicated here: a merged tensor would be shared by several
nodes and pruning would then have to copy it back.
``modified`` is computed from a structural fingerprint taken before and after.
"""

from __future__ import annotations

__all__ = ["CleanupPass"]

import onnx_ir as ir
import onnx_ir.passes.common as common
import onnxscript.optimizer

from onnxopt.passes.base import LoggedPass


def _fingerprint(model: ir.Model) -> tuple:
    nodes = tuple(
        (n.op_type, tuple(v.name if v is not None else "" for v in n.inputs)) for n in model.graph
    )
    inits = tuple(sorted((k, id(v.const_value)) for k, v in model.graph.initializers.items()))
    return nodes, inits, len(model.functions)


class CleanupPass(LoggedPass):
    """Constant folding, onnxscript rewrite rules, dead-code and Identity removal."""

    def __init__(self, *, onnxscript_rules: bool = True) -> None:
        super().__init__()
        self.onnxscript_rules = onnxscript_rules

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        before = _fingerprint(model)
        ops_before = _op_counts(model)
        if self.onnxscript_rules:
            onnxscript.optimizer.optimize_ir(model)
        ir.passes.Sequential(
            common.IdentityEliminationPass(),
            common.LiftConstantsToInitializersPass(),
            common.RemoveUnusedNodesPass(),
            common.TopologicalSortPass(),
        )(model)
        ops_after = _op_counts(model)
        for op in sorted(set(ops_before) | set(ops_after)):
            delta = ops_after.get(op, 0) - ops_before.get(op, 0)
            if delta:
                self.did(op, f"{op} {delta:+d}")
        return ir.passes.PassResult(model, modified=_fingerprint(model) != before)


def _op_counts(model: ir.Model) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in model.graph:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts
