"""Models with If branches that read outer-scope values (silero-vad's exports): the clean-up
keeps them valid and loading a quantizer's output copes with its node order."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

from onnxopt import evaluate
from onnxopt.passes.cleanup import CleanupPass
from onnxopt.passes.quantize import _load


def _branch(name: str, nodes, out: str):
    return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(out, TensorProto.FLOAT, [2, 3])])


def outer_identity_model() -> onnx.ModelProto:
    """a = Relu(x) is a graph output; If(flag): then = Identity(a) (an outer value written
    to the branch output through an Identity), else = Neg(a) → Identity → output."""
    then = _branch("then", [helper.make_node("Identity", ["a"], ["t"])], "t")
    other = _branch("else", [helper.make_node("Neg", ["a"], ["n"]), helper.make_node("Identity", ["n"], ["e"])], "e")
    nodes = [
        helper.make_node("Relu", ["x"], ["a"]),
        helper.make_node("Identity", ["a"], ["a2"]),
        helper.make_node("If", ["flag"], ["b"], then_branch=then, else_branch=other),
        helper.make_node("Add", ["b", "a2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]), helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 3]), helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])


def test_cleanup_keeps_identities_that_write_a_branch_output():
    proto = outer_identity_model()
    onnx.checker.check_model(proto)
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    for rules in (True, False):
        model = ir.from_proto(proto)
        CleanupPass(onnxscript_rules=rules)(model)
        onnx.checker.check_model(ir.to_proto(model))
        assert "a2" not in {v.name for n in model.graph for v in n.outputs}  # the main-graph Identity went
        for flag in (True, False):
            feed = {"x": x, "flag": np.array(flag)}
            got, want = evaluate.run(model, feed), evaluate.run(ir.from_proto(proto), feed)
            for g, w in zip(got, want):
                np.testing.assert_array_equal(g, w)


def test_a_quantizer_output_with_a_branch_reading_a_later_node_loads_in_order(tmp_path):
    """onnxruntime's quantizer wrote silero-vad's If_1 (whose branch reads If's output)
    before If: onnxruntime runs it, but copying the graph needs producers first."""
    inner = _branch("then", [helper.make_node("Neg", ["a"], ["t"])], "t")
    same = _branch("else", [helper.make_node("Abs", ["a"], ["e"])], "e")
    nodes = [
        helper.make_node("If", ["flag"], ["y"], then_branch=inner, else_branch=same, name="reads_a"),
        helper.make_node("Relu", ["x"], ["a"], name="makes_a"),
    ]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]), helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        [numpy_helper.from_array(np.zeros(1, np.float32), "unused")],
    )  # fmt: skip
    path = tmp_path / "q.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)]), str(path))
    model = _load(str(path))
    assert [n.name for n in model.graph] == ["makes_a", "reads_a"]
    model.clone()  # raised before the sort: an outer-scope value not yet copied


def test_cleanup_does_not_store_a_shared_weight_twice():
    """A weight read through a Transpose by a Gemm and directly by a MatMul: folding the
    Transpose would keep both copies (silero-vad's LSTM weights, read in the graph and in an
    If branch, grew its file by 38 %), so the clean-up leaves that subgraph alone."""
    weight = np.random.default_rng(0).standard_normal((128, 128)).astype(np.float32)  # above onnxscript's folding limit
    nodes = [
        helper.make_node("Transpose", ["w"], ["wt"], perm=[1, 0]),
        helper.make_node("Gemm", ["x", "wt"], ["a"]),
        helper.make_node("MatMul", ["x", "w"], ["b"]),
        helper.make_node("Add", ["a", "b"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 128])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 128])], [numpy_helper.from_array(weight, "w")],
    )  # fmt: skip
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    for rules in (True, False):
        model = ir.from_proto(proto)
        CleanupPass(onnxscript_rules=rules)(model)
        stored = sum(v.const_value.size for v in model.graph.initializers.values())
        assert stored == weight.size
        x = {"x": np.ones((2, 128), np.float32)}
        np.testing.assert_allclose(evaluate.run(model, x)[0], evaluate.run(ir.from_proto(proto), x)[0], rtol=1e-6)


def _matmul_branch(name: str, weight: np.ndarray, outer: str | None = None) -> onnx.GraphProto:
    """``y = x @ W``: W stored in the branch (a Constant node) or read from the outer graph."""
    nodes = [helper.make_node("MatMul", ["x", outer or f"{name}_w"], [f"{name}_y"])]
    if outer is None:
        nodes.insert(0, helper.make_node("Constant", [], [f"{name}_w"], value=numpy_helper.from_array(weight, f"{name}_w")))
    return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, [2, weight.shape[1]])])


def test_costs_count_the_weights_and_macs_inside_branches():
    """silero-vad keeps every weight inside If branches: `inspect` said 0 parameters and a
    clean-up that inlined a branch seemed to add 130 k."""
    from onnxopt.cost import model_cost

    rng = np.random.default_rng(0)
    big, small, shared = (rng.standard_normal(s).astype(np.float32) for s in ((8, 6), (8, 6), (8, 6)))
    then = _matmul_branch("then", big)
    other = _matmul_branch("else", small[:, :6], outer="w_outer")  # reads an outer initializer
    graph = helper.make_graph(
        [helper.make_node("If", ["flag"], ["y"], then_branch=then, else_branch=other)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8]), helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 6])],
        [numpy_helper.from_array(shared, "w_outer")],
    )  # fmt: skip
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    onnx.checker.check_model(proto)
    cost = model_cost(ir.from_proto(proto))
    assert cost.params == 2 * 8 * 6  # the branch's constant and the outer weight, once each
    assert cost.macs == 2 * 8 * 6  # one branch runs
    assert [(n.op_type, n.macs) for n in cost.nodes] == [("If", 2 * 8 * 6)]

    # a Loop body runs M times
    cost = model_cost(_loop_model(trip_count=5))
    assert cost.macs == 5 * 2 * 8 * 8 and not cost.nodes[0].unknown
    assert cost.params == 64  # the trip count is no parameter


def test_a_loop_with_a_run_time_trip_count_reports_its_macs_as_a_lower_bound():
    from rich.console import Console

    from onnxopt.report import before_after_table, summarize

    model = _loop_model(trip_count=None)
    summary = summarize(model)
    assert summary.macs == 2 * 8 * 8 and summary.macs_unknown == 1  # one iteration counted
    console = Console(record=True, width=120)
    console.print(before_after_table(summary, summary))
    row = next(line for line in console.export_text().splitlines() if "MACs" in line)
    assert "≥ 128" in row and "×" not in row


def _loop_model(trip_count: int | None) -> ir.Model:
    """``h = x @ I`` repeated by a Loop: ``trip_count`` times (a constant ``M``), or as often
    as the graph input ``m`` says (None)."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("MatMul", ["h_in", "w"], ["h_out"])], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []), helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("h_in", TensorProto.FLOAT, [2, 8])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), helper.make_tensor_value_info("h_out", TensorProto.FLOAT, [2, 8])],
    )  # fmt: skip
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8]), helper.make_tensor_value_info("cond", TensorProto.BOOL, [])]
    inits = [numpy_helper.from_array(np.eye(8, dtype=np.float32), "w")]
    if trip_count is None:
        inputs.append(helper.make_tensor_value_info("m", TensorProto.INT64, []))
    else:
        inits.append(numpy_helper.from_array(np.array(trip_count, np.int64), "m"))
    graph = helper.make_graph([helper.make_node("Loop", ["m", "cond", "x"], ["h"], body=body)], "g", inputs,
                              [helper.make_tensor_value_info("h", TensorProto.FLOAT, [2, 8])], inits)  # fmt: skip
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    onnx.checker.check_model(proto)
    return ir.from_proto(proto)
