"""Graph helpers: shapes that ONNX inference cannot compute, and constant replacement."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

from onnxopt import evaluate
from onnxopt.cost import model_cost
from onnxopt.graph import set_const_input, static_shapes
from onnxopt.groups import analyze_groups
from onnxopt.pruning import prune_model


def dynamic_reshape_model() -> onnx.ModelProto:
    """x[N,3,8,8] → conv1 → Reshape(to Concat(Slice(Shape), [8, 8])) → conv2 → Mul(scale) → conv3.

    In opset 12 ``Slice`` has no data propagation, so ONNX shape inference cannot compute
    the Reshape's target (the pattern of PaddlePaddle's exports) and knows nothing after it.
    """
    rng = np.random.default_rng(0)

    def init(name: str, array: np.ndarray) -> onnx.TensorProto:
        return numpy_helper.from_array(array.astype(np.float32 if array.dtype.kind == "f" else np.int64), name)

    inits = [
        init("w1", rng.standard_normal((4, 3, 3, 3)) * 0.3),
        init("w2", rng.standard_normal((8, 4, 3, 3)) * 0.3),
        init("scale", rng.uniform(0.5, 1.5, (1, 8, 1, 1))),
        init("w3", rng.standard_normal((5, 8, 1, 1)) * 0.3),
        init("starts", np.array([0])),
        init("ends", np.array([2])),
        init("hw", np.array([8, 8])),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Shape", ["a"], ["a_shape"], name="shape"),
        helper.make_node("Slice", ["a_shape", "starts", "ends"], ["nc"], name="slice"),
        helper.make_node("Concat", ["nc", "hw"], ["target"], name="target", axis=0),
        helper.make_node("Reshape", ["a", "target"], ["r"], name="reshape"),
        helper.make_node("Conv", ["r", "w2"], ["b"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Mul", ["b", "scale"], ["s"], name="mul"),
        helper.make_node("Conv", ["s", "w3"], ["y"], name="conv3"),
    ]
    graph = helper.make_graph(
        nodes, "dynamic_reshape",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5, 8, 8])],
        inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)])
    model.ir_version = 7
    onnx.checker.check_model(model)
    return model


def test_shapes_inference_cannot_compute_are_measured_by_one_run():
    model = ir.from_proto(dynamic_reshape_model())
    inferred = static_shapes(model, execute=False)
    assert inferred.get("b") is None  # the premise: inference stops at the Reshape
    shapes = static_shapes(model, {"x": [2, 3, 8, 8]})
    assert shapes["r"] == (2, 4, 8, 8) and shapes["b"] == (2, 8, 8, 8) and shapes["y"] == (2, 5, 8, 8)
    # MACs behind the Reshape are counted: conv1 + conv2 + Mul + conv3 per sample
    assert model_cost(model).macs == 64 * (4 * 3 * 9 + 8 * 4 * 9 + 8 + 5 * 8)


def test_a_group_behind_an_uninferable_reshape_is_pruned_exactly():
    proto = dynamic_reshape_model()
    for name in ("w1", "w2"):  # half the filters of conv1 and conv2 contribute nothing: pruning them is exact
        tensor = next(t for t in proto.graph.initializer if t.name == name)
        dead = numpy_helper.to_array(tensor).copy()
        dead[::2] = 0.0
        tensor.CopyFrom(numpy_helper.from_array(dead, name))
    model = ir.from_proto(proto)
    by_source = {g.name: g for g in analyze_groups(model).groups}
    assert by_source["b"].prunable  # conv2 → Mul(per-channel scale) → conv3
    # conv1 → Reshape to Concat(Shape(a)[0:2], [8, 8]): the target reads the channel count
    # of the very tensor it reshapes, so it follows the pruning
    assert by_source["a"].prunable
    result = prune_model(model, ratio=0.5, criterion="l1", reconstruct=False, round_to=1)
    convs = {n.name: n.inputs[1].const_value.shape for n in result.model.graph if n.op_type == "Conv"}
    assert convs["conv1"][0] == 2 and convs["conv2"][:2] == (4, 2)
    x = {"x": np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)}
    np.testing.assert_allclose(evaluate.run(result.model, x)[0], evaluate.run(model, x)[0], rtol=1e-5, atol=1e-5)


def test_set_const_input_drops_the_constant_node_it_orphans():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    const = helper.make_node("Constant", [], ["c"], name="c", value=numpy_helper.from_array(np.ones(2, np.float32)))
    add = helper.make_node("Add", ["x", "c"], ["y"], name="add")
    model = ir.from_proto(helper.make_model(helper.make_graph([const, add], "g", [x], [y])))
    node = next(n for n in model.graph if n.op_type == "Add")
    set_const_input(node, 1, np.full(2, 3.0, np.float32))
    assert [n.op_type for n in model.graph] == ["Add"]
    np.testing.assert_allclose(evaluate.run(model, {"x": np.zeros(2, np.float32)})[0], [3.0, 3.0])


def test_unique_names_made_in_a_batch_do_not_collide():
    """Many new names at once (keep_float's float weights, lowbit's decoders) share one scan
    of the graph's names: each name returned is fresh and taken from then on."""
    from onnxopt.graph import new_initializer, unique_name, value_names

    graph = ir.Graph([], [], nodes=[], name="g")
    new_initializer(graph, np.zeros(1, np.float32), "w")
    taken = value_names(graph)
    names = [unique_name(graph, "w", taken) for _ in range(3)]
    assert names == ["w_1", "w_2", "w_3"] and {"w", *names} <= taken
    value = new_initializer(graph, np.ones(2, np.float32), "w", taken)
    assert value.name == "w_4" and unique_name(graph, "w") == "w_1"  # without taken: the graph alone


def test_unique_names_avoid_node_names():
    """A name made for a new node must not repeat another node's name (onnxruntime refuses
    the model), though node names live apart from value names in ONNX."""
    from onnxopt.graph import unique_name

    node = ir.Node("", "Relu", [ir.Value(name="x")], name="mask_mul")
    node.outputs[0].name = "y"
    graph = ir.Graph([node.inputs[0]], [node.outputs[0]], nodes=[node], name="g")
    assert unique_name(graph, "mask_mul") == "mask_mul_1"


def test_onnxruntime_fused_attention_counts_its_projections_and_products():
    """A graph after onnxruntime.transformers: the packed Q/K/V weights of a com.microsoft
    Attention are parameters and its projections and score/value products MACs."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(a.astype(np.float32), n) for n, a in [
        ("qkv_w", rng.standard_normal((8, 24))), ("qkv_b", rng.standard_normal(24)),
        ("gelu_b", rng.standard_normal(8)), ("w", rng.standard_normal((8, 2)))]]  # fmt: skip
    nodes = [
        helper.make_node("Attention", ["x", "qkv_w", "qkv_b"], ["a"], name="attention", domain="com.microsoft", num_heads=2),
        helper.make_node("FastGelu", ["a", "gelu_b"], ["g"], name="gelu", domain="com.microsoft"),
        helper.make_node("MatMul", ["g", "w"], ["y"], name="head"),
    ]
    graph = helper.make_graph(nodes, "fused", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 2])], inits)  # fmt: skip
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    model = ir.from_proto(proto)
    evaluate.run(model, {"x": rng.standard_normal((1, 4, 8)).astype(np.float32)})  # onnxruntime runs it
    cost = {n.name: n for n in model_cost(model).nodes}
    # projection 4 steps · 8 inputs · 24 outputs; scores and values 4 · 4 keys · (8 + 8)
    assert (cost["attention"].macs, cost["attention"].params) == (4 * 8 * 24 + 4 * 4 * 16, 8 * 24 + 24)
    assert (cost["gelu"].macs, cost["gelu"].params) == (32, 8) and not cost["attention"].unknown


def test_int8_forms_of_onnxruntime_kernels_count_the_macs_of_their_float_layers(tmp_path):
    """onnxruntime's ``quantize_dynamic`` turns a fused ``Attention`` into ``QAttention`` and a
    MatMul into ``MatMulInteger`` (or ``DynamicQuantizeMatMul``): the MACs stay those of
    the float model (a report showed BERT's MACs ×0.80 after int8 alone)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(a.astype(np.float32), n) for n, a in [
        ("qkv_w", rng.standard_normal((8, 24))), ("qkv_b", rng.standard_normal(24)), ("w", rng.standard_normal((8, 2)))]]  # fmt: skip
    nodes = [
        helper.make_node("Attention", ["x", "qkv_w", "qkv_b"], ["a"], name="attention", domain="com.microsoft", num_heads=2),
        helper.make_node("MatMul", ["a", "w"], ["y"], name="head"),
    ]
    graph = helper.make_graph(nodes, "fused", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 2])], inits)  # fmt: skip
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    onnx.save(proto, tmp_path / "float.onnx")
    quantize_dynamic(tmp_path / "float.onnx", tmp_path / "int8.onnx", weight_type=QuantType.QInt8)
    quantized = ir.load(tmp_path / "int8.onnx")
    ops = {n.op_type for n in quantized.graph}
    assert "QAttention" in ops and ops & {"MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat"}
    evaluate.run(quantized, {"x": rng.standard_normal((1, 4, 8)).astype(np.float32)})
    by_op = {n.op_type: n.macs for n in model_cost(quantized).nodes}
    assert by_op["QAttention"] == 4 * 8 * 24 + 4 * 4 * 16  # as the float Attention above
    products = [m for op, m in by_op.items() if op in ("MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat")]
    assert products == [4 * 8 * 2]
    # and in all: the float model's, plus the element-wise rescaling of the int8 product
    assert 0 <= model_cost(quantized).macs - model_cost(ir.from_proto(proto)).macs <= 4 * 2 + 1
