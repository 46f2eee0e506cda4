"""Probes (the extra outputs importance, bias compensation and the re-fit read) run only the
part of the network their outputs need."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxopt import evaluate
from onnxopt.calibration import Dataset
from onnxopt.errors import OnnxoptError
from onnxopt.importance import Probe


def _model_with_a_failing_tail() -> ir.Model:
    """a = Relu(x) feeds a tail that fails at run time (a Reshape to 7 elements) and an If
    whose branch reads ``a`` from the outer scope."""
    branch = helper.make_graph([helper.make_node("Neg", ["a"], ["n"])], "then", [],
                               [helper.make_tensor_value_info("n", TensorProto.FLOAT, None)])  # fmt: skip
    nodes = [
        helper.make_node("Relu", ["x"], ["a"]),
        helper.make_node("Reshape", ["a", "seven"], ["bad"]),
        helper.make_node("ReduceSum", ["a"], ["s"], keepdims=0),
        helper.make_node("Greater", ["s", "zero"], ["flag"]),
        helper.make_node("If", ["flag"], ["b"], then_branch=branch, else_branch=branch),
    ]
    graph = helper.make_graph(
        nodes, "tail", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("bad", TensorProto.FLOAT, None), helper.make_tensor_value_info("b", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array([7], np.int64), "seven"), numpy_helper.from_array(np.array(0, np.float32), "zero")],
    )  # fmt: skip
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_a_probe_runs_only_what_its_outputs_need():
    """onnxruntime runs every node of a graph, whatever outputs are asked for: a probe of an
    early layer ran the rest of the network too (ssdlite's re-fit: 277 s → 37 s without its
    unused head and NMS). Here the unneeded tail would fail, so the probe runs only if it is
    left out; the model itself is untouched."""
    model = _model_with_a_failing_tail()
    x = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    data = Dataset({"x": x})
    with pytest.raises(OnnxoptError):
        evaluate.run(model, data)
    probe = Probe(model)
    probe.output("relu", probe.value("a"))
    sums, n = probe.run(data, batch_size=2)
    np.testing.assert_allclose(sums["relu"], np.maximum(x, 0).reshape(2, 2, 3).sum(0))
    assert [node.op_type for node in probe.model.graph][0] == "Relu"
    assert not {"Reshape", "ReduceSum", "Greater", "If"} & {node.op_type for node in probe.model.graph}
    assert [node.op_type for node in model.graph] == ["Relu", "Reshape", "ReduceSum", "Greater", "If"]
