"""Probes (the extra outputs importance, bias compensation and the re-fit read) run only the
part of the network their outputs need."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxopt import calibration, evaluate
from onnxopt.calibration import Dataset
from onnxopt.errors import OnnxoptError
from onnxopt.importance import Probe
from tests import builders


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


@pytest.mark.parametrize("dtype", [TensorProto.FLOAT, TensorProto.FLOAT16])
def test_a_value_session_reads_values_without_running_the_rest(dtype, tmp_path, monkeypatch):
    """The re-fit's probes only read values: :func:`value_session` serializes the nodes
    they need (no clone of the model) and reads them as float32. The failing tail is left
    out; a value the If's branch needs keeps the whole graph (the Probe path)."""
    from onnxopt.importance import value_session
    from onnxopt.model_io import load_model

    model = _model_with_a_failing_tail()
    if dtype == TensorProto.FLOAT16:  # x → Cast(fp16) → Relu …: the probe casts back to float32
        model = ir.from_proto(_fp16_head(ir.to_proto(model)))
    x = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    with monkeypatch.context() as patch:  # what makes it cheap: no clone of the model
        patch.setattr(ir.Model, "clone", lambda self: pytest.fail("value_session cloned the model"))
        sess, keys = value_session(model, ["a"])
    (a,) = sess.run(keys, {"x": x})
    assert a.dtype == np.float32
    np.testing.assert_allclose(a, np.maximum(x, 0), rtol=1e-3, atol=1e-3)
    assert len(model.graph) == (5 if dtype == TensorProto.FLOAT else 7)  # untouched
    sess, keys = value_session(model, ["b"])  # needs the If: every node is kept, the tail fails
    with pytest.raises(Exception, match="Reshape|reshape|shape"):
        sess.run(keys, {"x": x})
    # weights stored outside the file are read in
    path = tmp_path / "m.onnx"
    ir.save(_with_weight(), str(path), external_data="m.onnx.data", size_threshold_bytes=0)
    loaded = load_model(path)
    sess, keys = value_session(loaded, ["y"])
    np.testing.assert_allclose(sess.run(keys, {"x": x})[0], x @ np.full((3, 2), 0.5, np.float32), rtol=1e-6)


def _fp16_head(proto):
    relu = proto.graph.node[0]
    relu.input[0] = "x16"
    proto.graph.node.insert(0, helper.make_node("Cast", ["x"], ["x16"], to=TensorProto.FLOAT16))
    for node in proto.graph.node[2:]:  # the tail reads float32 again
        node.input[0] = "a32" if node.input[0] == "a" else node.input[0]
    proto.graph.node.insert(2, helper.make_node("Cast", ["a"], ["a32"], to=TensorProto.FLOAT))
    branch = proto.graph.node[-1].attribute[0].g
    branch.node[0].input[0] = "a32"
    proto.graph.node[-1].attribute[1].g.CopyFrom(branch)
    del proto.graph.value_info[:]
    return proto


def _with_weight() -> ir.Model:
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "mm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])], [numpy_helper.from_array(np.full((3, 2), 0.5, np.float32), "w")],
    )  # fmt: skip
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_a_probe_runs_few_enough_samples_that_all_their_values_fit_the_budget(monkeypatch):
    # its statistics are read after the model's last node, so every value of a run stays alive
    model = ir.from_proto(builders.conv_bn_relu_gemm())
    x = np.random.default_rng(0).standard_normal((10, 3, 8, 8)).astype(np.float32)
    data = Dataset({"input": x})

    def relu_sums() -> tuple[np.ndarray, list[int]]:
        probe = Probe(model)
        probe.output("s", probe.reduce("ReduceSum", probe.value("r"), [0, 2, 3]))
        sess = probe.session()
        rows = []
        monkeypatch.setattr(probe, "session", lambda: _Counting(sess, rows))
        sums, n = probe.run(data)
        return sums["s"], rows

    whole, rows = relu_sums()
    assert rows == [10]
    monkeypatch.setattr(calibration, "ACTIVATION_BUDGET", 4 * 4 * 1000)  # 4 samples of ~970 floats (input, Conv, BN, Relu)
    capped, rows = relu_sums()
    assert rows == [4, 4, 2] and np.allclose(capped, whole, rtol=1e-6)


class _Counting:
    """A session that records the samples of each run."""

    def __init__(self, sess, rows: list[int]) -> None:
        self.sess, self.rows = sess, rows

    def get_inputs(self):
        return self.sess.get_inputs()

    def run(self, names, feed):
        self.rows.append(len(feed["input"]))
        return self.sess.run(names, feed)
