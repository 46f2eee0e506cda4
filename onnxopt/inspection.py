"""What is in a model: op histogram, inputs/outputs, opset, parameters, MACs per layer."""

from __future__ import annotations

__all__ = ["inspect_model"]

import os
from collections import Counter
from collections.abc import Mapping, Sequence

import onnx_ir as ir

from onnxopt.calibration import input_specs
from onnxopt.cost import model_cost
from onnxopt.model_io import file_size


def _shape(value: ir.Value) -> list | None:
    if value.shape is None:
        return None
    return [d if isinstance(d, int) else (d.value or "?") for d in value.shape]


def inspect_model(
    model: ir.Model,
    path: str | os.PathLike | None = None,
    shapes: Mapping[str, Sequence[int]] | None = None,
) -> dict:
    """A JSON-ready description of ``model`` (MACs per layer with ``shapes`` pinned)."""
    cost = model_cost(model, shapes)
    ops = Counter(n.op_type for n in model.graph)
    outputs = [
        {"name": v.name, "dtype": str(v.dtype.numpy()) if v.dtype is not None else None, "shape": _shape(v)}
        for v in model.graph.outputs
    ]
    inputs = [
        {"name": s.name, "dtype": str(s.dtype), "shape": list(s.shape) if s.shape is not None else None}
        for s in input_specs(model)
    ]
    layers = [
        {"name": n.name, "op_type": n.op_type, "macs": n.macs, "params": n.params}
        for n in cost.nodes
        if n.macs or n.params
    ]
    return {
        "path": str(path) if path else None,
        "file_size": file_size(path) if path else None,
        "ir_version": model.ir_version,
        "opsets": dict(model.opset_imports),
        "producer": f"{model.producer_name or ''} {model.producer_version or ''}".strip(),
        "nodes": len(model.graph),
        "ops": dict(ops.most_common()),
        "functions": len(model.functions),
        "inputs": inputs,
        "outputs": outputs,
        "params": cost.params,
        "macs": cost.macs,
        "macs_unknown_nodes": sum(1 for n in cost.nodes if n.unknown),
        "layers": layers,
    }
