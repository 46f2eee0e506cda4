"""Behavioural tests of FoldBatchNormPass: onnxruntime outputs before and after must agree.

Hand-built ``onnx.helper`` models cover every rule without torch; torch-exported models
(both exporters) cover what real exports look like. BN statistics are always random, so a
wrong fold changes the outputs.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxopt.passes.fold_bn import FoldBatchNormPass

OPSET = 17
RNG_SEED = 0

# ---------------------------------------------------------------------------- helpers


def run(proto: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run on onnxruntime CPU with its own graph optimizations off (no Conv+BN fusion)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(
        proto.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return session.run(None, feeds)


def fold(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, FoldBatchNormPass, bool]:
    """Apply the pass to a copy of ``proto``; check the result is a valid model."""
    model = ir.from_proto(proto)
    pass_ = FoldBatchNormPass()
    result = pass_(model)
    out = ir.to_proto(result.model)
    onnx.checker.check_model(out, full_check=True)
    return out, pass_, result.modified


def op_count(proto: onnx.ModelProto, op_type: str) -> int:
    return sum(node.op_type == op_type for node in proto.graph.node)


def random_feeds(proto: onnx.ModelProto, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    init_names = {i.name for i in proto.graph.initializer}
    feeds = {}
    for inp in proto.graph.input:
        if inp.name in init_names:
            continue
        t = inp.type.tensor_type
        shape = [d.dim_value if d.dim_value > 0 else 1 for d in t.shape.dim]
        dtype = helper.tensor_dtype_to_np_dtype(t.elem_type)
        feeds[inp.name] = rng.standard_normal(shape).astype(dtype)
    return feeds


def assert_same_outputs(
    a: onnx.ModelProto, b: onnx.ModelProto, rtol: float = 1e-4, atol: float = 1e-5
) -> None:
    """Outputs agree within ``rtol`` and ``atol`` (relative to the largest output value)."""
    feeds = random_feeds(a)
    assert [o.name for o in a.graph.output] == [o.name for o in b.graph.output]
    for ref, got in zip(run(a, feeds), run(b, feeds)):
        assert ref.shape == got.shape
        ref64, got64 = ref.astype(np.float64), got.astype(np.float64)
        scale = max(1.0, float(np.abs(ref64).max()))
        np.testing.assert_allclose(got64, ref64, rtol=rtol, atol=atol * scale)


def assert_folds_all(proto: onnx.ModelProto, rtol: float = 1e-4) -> FoldBatchNormPass:
    """The pass must remove every BN, report it, and keep the outputs."""
    n_bn = op_count(proto, "BatchNormalization")
    assert n_bn > 0, "fixture has no BatchNormalization"
    folded, pass_, modified = fold(proto)
    assert modified
    assert op_count(folded, "BatchNormalization") == 0, pass_.skipped
    assert len(pass_.applied) == n_bn
    assert not pass_.skipped
    assert_same_outputs(proto, folded, rtol)
    return pass_


def assert_keeps(proto: onnx.ModelProto, reason: str) -> FoldBatchNormPass:
    """The pass must leave the model's BNs alone and log ``reason`` for them."""
    folded, pass_, modified = fold(proto)
    assert not modified
    assert op_count(folded, "BatchNormalization") == op_count(proto, "BatchNormalization")
    assert pass_.skipped and all(reason in why for _, why in pass_.skipped), pass_.skipped
    assert_same_outputs(proto, folded)
    return pass_


# ---------------------------------------------------------------------------- builders


def _rand(rng: np.random.Generator, shape, dtype=np.float32) -> np.ndarray:
    return rng.standard_normal(shape).astype(dtype)


def _init(name: str, array: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(array, name)


def bn_inits(prefix: str, channels: int, rng, dtype=np.float32) -> list[TensorProto]:
    """Random, non-trivial γ, β, μ, var for one BatchNormalization."""
    return [
        _init(f"{prefix}.gamma", (rng.random(channels) + 0.5).astype(dtype)),
        _init(f"{prefix}.beta", (rng.standard_normal(channels) * 0.5).astype(dtype)),
        _init(f"{prefix}.mean", (rng.standard_normal(channels) * 0.5).astype(dtype)),
        _init(f"{prefix}.var", (rng.random(channels) + 0.5).astype(dtype)),
    ]


def bn_node(prefix: str, x: str, y: str, epsilon: float = 1e-3) -> onnx.NodeProto:
    inputs = [x] + [f"{prefix}.{p}" for p in ("gamma", "beta", "mean", "var")]
    return helper.make_node("BatchNormalization", inputs, [y], name=prefix, epsilon=epsilon)


def make_model(nodes, inputs, outputs, inits, opset: int = OPSET) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)  # fills output shapes
    del model.graph.value_info[:]  # the pass must not depend on them
    onnx.checker.check_model(model)
    return model


def tensor(name: str, shape, elem=TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def conv_bn_model(
    group: int = 1,
    bias: bool = True,
    cin: int = 4,
    cout: int = 6,
    pads: int = 1,
    dtype=np.float32,
) -> onnx.ModelProto:
    """x → Conv(3×3, group) → BN → y."""
    rng = np.random.default_rng(RNG_SEED)
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    inits = [_init("W", _rand(rng, (cout, cin // group, 3, 3), dtype))]
    inputs = ["x", "W"]
    if bias:
        inits.append(_init("b", _rand(rng, (cout,), dtype)))
        inputs.append("b")
    inits += bn_inits("bn", cout, rng, dtype)
    nodes = [
        helper.make_node("Conv", inputs, ["c"], name="conv", group=group, pads=[pads] * 4),
        bn_node("bn", "c", "y"),
    ]
    return make_model(
        nodes, [tensor("x", [1, cin, 16, 16], elem)], [tensor("y", None, elem)], inits
    )


def conv_transpose_bn_model(group: int = 1, bias: bool = False) -> onnx.ModelProto:
    """x → ConvTranspose(2×2 stride 2, group) → BN → y."""
    rng = np.random.default_rng(RNG_SEED)
    cin, cout = 4, 6
    inits = [_init("W", _rand(rng, (cin, cout // group, 2, 2)))]
    inputs = ["x", "W"]
    if bias:
        inits.append(_init("b", _rand(rng, (cout,))))
        inputs.append("b")
    inits += bn_inits("bn", cout, rng)
    nodes = [
        helper.make_node(
            "ConvTranspose", inputs, ["c"], name="deconv", group=group, strides=[2, 2]
        ),
        bn_node("bn", "c", "y"),
    ]
    return make_model(nodes, [tensor("x", [1, cin, 8, 8])], [tensor("y", None)], inits)


def gemm_bn_model(
    trans_b: int = 0,
    alpha: float = 1.0,
    beta: float = 1.0,
    c_shape: tuple | None = (5,),
    dtype=np.float32,
) -> onnx.ModelProto:
    """x[3, 4] → Gemm(alpha, beta, transB, optional C) → BN → y."""
    rng = np.random.default_rng(RNG_SEED)
    k, n = 4, 5
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    inits = [_init("W", _rand(rng, (n, k) if trans_b else (k, n), dtype))]
    inputs = ["x", "W"]
    if c_shape is not None:
        inits.append(_init("C", _rand(rng, c_shape, dtype)))
        inputs.append("C")
    inits += bn_inits("bn", n, rng, dtype)
    nodes = [
        helper.make_node(
            "Gemm", inputs, ["g"], name="gemm", transB=trans_b, alpha=alpha, beta=beta
        ),
        bn_node("bn", "g", "y"),
    ]
    return make_model(nodes, [tensor("x", [3, k], elem)], [tensor("y", None, elem)], inits)


def matmul_bn_model(
    rank: int = 2, with_add: bool = False, bias_first: bool = False
) -> onnx.ModelProto:
    """x → MatMul(W) [→ Add(b)] → BN → y; ``rank`` is the rank of x."""
    rng = np.random.default_rng(RNG_SEED)
    k, n = 4, 5
    x_shape = [3, k] if rank == 2 else [2, n, k]
    inits = [_init("W", _rand(rng, (k, n)))]
    nodes = [helper.make_node("MatMul", ["x", "W"], ["m"], name="matmul")]
    bn_in = "m"
    if with_add:
        inits.append(_init("b", _rand(rng, (n,))))
        add_inputs = ["b", "m"] if bias_first else ["m", "b"]
        nodes.append(helper.make_node("Add", add_inputs, ["a"], name="add"))
        bn_in = "a"
    inits += bn_inits("bn", n, rng)
    nodes.append(bn_node("bn", bn_in, "y"))
    return make_model(nodes, [tensor("x", x_shape)], [tensor("y", None)], inits)


def bn_conv_model(pads: int = 0, group: int = 1, auto_pad: str | None = None, k: int = 3):
    """x → BN → Conv(k×k, group) → y (BN before the conv)."""
    rng = np.random.default_rng(RNG_SEED)
    cin, cout = 4, 8
    inits = [_init("W", _rand(rng, (cout, cin // group, k, k))), _init("b", _rand(rng, (cout,)))]
    inits += bn_inits("bn", cin, rng)
    conv_attrs = {"group": group}
    if auto_pad:
        conv_attrs["auto_pad"] = auto_pad
    else:
        conv_attrs["pads"] = [pads] * 4
    nodes = [
        bn_node("bn", "x", "n"),
        helper.make_node("Conv", ["n", "W", "b"], ["y"], name="conv", **conv_attrs),
    ]
    return make_model(nodes, [tensor("x", [1, cin, 9, 9])], [tensor("y", None)], inits)


def dynamo_zero_bias_model() -> onnx.ModelProto:
    """Conv whose bias is the dynamo exporter's ``Expand(CastLike(0, x), Shape(W)[0:1])``."""
    rng = np.random.default_rng(RNG_SEED)
    cin, cout = 3, 8
    inits = [_init("conv.weight", _rand(rng, (cout, cin, 3, 3)))] + bn_inits("bn", cout, rng)
    nodes = [
        helper.make_node("Shape", ["conv.weight"], ["v0"], start=0, end=1),
        helper.make_node(
            "Constant", [], ["v1"], value=numpy_helper.from_array(np.array([1], np.int64))
        ),
        helper.make_node("Expand", ["v0", "v1"], ["v2"]),
        helper.make_node("Constant", [], ["v3"], value=numpy_helper.from_array(np.array(0.0))),
        helper.make_node("CastLike", ["v3", "x"], ["v4"]),
        helper.make_node("Expand", ["v4", "v2"], ["v5"]),
        helper.make_node("Conv", ["x", "conv.weight", "v5"], ["c"], name="conv", pads=[1] * 4),
        bn_node("bn", "c", "y"),
    ]
    return make_model(nodes, [tensor("x", [1, cin, 16, 16])], [tensor("y", None)], inits)


# ---------------------------------------------------------------------------- rules: BN after


@pytest.mark.parametrize("group", [1, 2])
@pytest.mark.parametrize("bias", [True, False])
def test_conv_bn_folds(group, bias):
    folded_pass = assert_folds_all(conv_bn_model(group=group, bias=bias))
    assert folded_pass.applied == [("bn", "folded into conv")]


def test_depthwise_conv_bn_folds():
    assert_folds_all(conv_bn_model(group=6, cin=6, cout=6))


def test_folded_conv_keeps_bn_output_name_and_drops_bn_constants():
    proto = conv_bn_model(bias=False)
    folded, _, _ = fold(proto)
    assert [n.op_type for n in folded.graph.node] == ["Conv"]
    assert list(folded.graph.node[0].output) == ["y"]
    assert {i.name for i in folded.graph.initializer} == {"W", "conv_bias"}


@pytest.mark.parametrize("group", [1, 2])
@pytest.mark.parametrize("bias", [True, False])
def test_conv_transpose_bn_folds(group, bias):
    assert_folds_all(conv_transpose_bn_model(group=group, bias=bias))


@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize(
    "alpha, beta, c_shape",
    [(1.0, 1.0, (5,)), (0.5, 2.0, (5,)), (1.5, 0.7, (1, 5)), (1.0, 3.0, (3, 5)), (2.0, 1.0, None)],
)
def test_gemm_bn_folds(trans_b, alpha, beta, c_shape):
    assert_folds_all(gemm_bn_model(trans_b, alpha, beta, c_shape))


def test_matmul_bn_becomes_gemm():
    proto = matmul_bn_model()
    assert_folds_all(proto)
    folded, _, _ = fold(proto)
    assert [n.op_type for n in folded.graph.node] == ["Gemm"]


def test_matmul_bn_rank_from_shape_inference():
    """The MatMul input is an intermediate without value_info: its rank is inferred."""
    proto = matmul_bn_model()
    proto.graph.node.insert(0, helper.make_node("Relu", ["x"], ["xr"]))
    proto.graph.node[1].input[0] = "xr"
    assert not proto.graph.value_info
    assert_folds_all(proto)


@pytest.mark.parametrize("bias_first", [False, True])
def test_matmul_add_bn_folds(bias_first):
    proto = matmul_bn_model(with_add=True, bias_first=bias_first)
    assert_folds_all(proto)
    folded, _, _ = fold(proto)
    assert [n.op_type for n in folded.graph.node] == ["MatMul", "Add"]


def test_dynamo_zero_bias_pattern_folds_and_is_removed():
    proto = dynamo_zero_bias_model()
    assert_folds_all(proto)
    folded, _, _ = fold(proto)
    assert [n.op_type for n in folded.graph.node] == ["Conv"]
    # the weight was updated in place (not copied) once Shape(W) was gone
    assert {i.name for i in folded.graph.initializer} == {"conv.weight", "conv.bias"}


def test_constant_of_shape_zero_bias_folds():
    rng = np.random.default_rng(RNG_SEED)
    inits = [_init("W", _rand(rng, (6, 4, 1, 1))), _init("shape", np.array([6], np.int64))]
    inits += bn_inits("bn", 6, rng)
    nodes = [
        helper.make_node("ConstantOfShape", ["shape"], ["zero"]),
        helper.make_node("Conv", ["x", "W", "zero"], ["c"], name="conv"),
        bn_node("bn", "c", "y"),
    ]
    assert_folds_all(make_model(nodes, [tensor("x", [1, 4, 5, 5])], [tensor("y", None)], inits))


def test_float16_conv_bn_folds():
    proto = conv_bn_model(dtype=np.float16)
    folded, pass_, _ = fold(proto)
    assert op_count(folded, "BatchNormalization") == 0, pass_.skipped
    assert folded.graph.initializer[0].data_type == TensorProto.FLOAT16
    assert_same_outputs(proto, folded, rtol=1e-2, atol=1e-3)  # float16 output rounding


def test_bfloat16_gemm_bn_folds_in_high_precision():
    """onnxruntime has no bfloat16 Gemm on CPU: check the folded tensors with numpy."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    proto = gemm_bn_model(alpha=1.0, beta=0.5, dtype=ml_dtypes.bfloat16)
    folded, pass_, _ = fold(proto)
    assert [n.op_type for n in folded.graph.node] == ["Gemm"], pass_.skipped
    ref = {i.name: numpy_helper.to_array(i).astype(np.float64) for i in proto.graph.initializer}
    new = {i.name: numpy_helper.to_array(i) for i in folded.graph.initializer}
    assert all(a.dtype == ml_dtypes.bfloat16 for a in new.values())
    s = ref["bn.gamma"] / np.sqrt(ref["bn.var"] + 1e-3)
    x = np.random.default_rng(2).standard_normal((3, 4))
    expected = (x @ ref["W"] + 0.5 * ref["C"] - ref["bn.mean"]) * s + ref["bn.beta"]
    w_name, c_name = folded.graph.node[0].input[1:]
    got = x @ new[w_name].astype(np.float64) + new[c_name].astype(np.float64)
    np.testing.assert_allclose(got, expected, rtol=2e-2, atol=2e-2 * np.abs(expected).max())


def test_constant_node_and_identity_parameters_fold():
    """BN parameters from Constant nodes and Identity (TorchScript's dedup of equal tensors)."""
    proto = conv_bn_model()
    params = [i for i in proto.graph.initializer if i.name.startswith("bn.")]
    for p in params:
        proto.graph.initializer.remove(p)
    const_nodes = [helper.make_node("Constant", [], [p.name + "_c"], value=p) for p in params]
    ident = [helper.make_node("Identity", [p.name + "_c"], [p.name]) for p in params]
    for node in reversed(const_nodes + ident):
        proto.graph.node.insert(0, node)
    onnx.checker.check_model(proto)
    folded, _, _ = fold(proto)
    assert [n.op_type for n in folded.graph.node] == ["Conv"]
    assert_folds_all(proto)


def test_shared_weight_two_convs_two_bns():
    """One initializer read by two Conv→BN chains: each conv gets its own folded copy."""
    rng = np.random.default_rng(RNG_SEED)
    inits = [_init("W", _rand(rng, (6, 4, 3, 3))), _init("b", _rand(rng, (6,)))]
    inits += bn_inits("bn1", 6, rng) + bn_inits("bn2", 6, rng)
    nodes = [
        helper.make_node("Conv", ["x", "W", "b"], ["c1"], name="conv1", pads=[1] * 4),
        bn_node("bn1", "c1", "y1"),
        helper.make_node("Conv", ["x", "W", "b"], ["c2"], name="conv2"),
        bn_node("bn2", "c2", "y2"),
    ]
    proto = make_model(
        nodes, [tensor("x", [1, 4, 8, 8])], [tensor("y1", None), tensor("y2", None)], inits
    )
    assert_folds_all(proto)
    folded, _, _ = fold(proto)
    conv_inputs = [tuple(n.input[1:]) for n in folded.graph.node]
    assert len(set(conv_inputs)) == 2  # no tensor shared any more
    assert (
        "W" not in {i.name for i in folded.graph.initializer} or len(folded.graph.initializer) == 4
    )


def test_bn_as_graph_output_keeps_its_name():
    proto = gemm_bn_model()
    folded, _, _ = fold(proto)
    assert [o.name for o in folded.graph.output] == ["y"]
    assert list(folded.graph.node[-1].output) == ["y"]


def test_chain_of_two_bns_after_one_conv():
    rng = np.random.default_rng(RNG_SEED)
    inits = [_init("W", _rand(rng, (6, 4, 3, 3)))] + bn_inits("bn1", 6, rng)
    inits += bn_inits("bn2", 6, rng)
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["c"], name="conv"),
        bn_node("bn1", "c", "n"),
        bn_node("bn2", "n", "y"),
    ]
    assert_folds_all(make_model(nodes, [tensor("x", [1, 4, 8, 8])], [tensor("y", None)], inits))


# ---------------------------------------------------------------------------- rules: BN before


@pytest.mark.parametrize("group", [1, 2, 4])
def test_bn_before_unpadded_conv_folds(group):
    proto = bn_conv_model(pads=0, group=group)
    pass_ = assert_folds_all(proto)
    assert "following conv" in pass_.applied[0][1]


@pytest.mark.parametrize("auto_pad, k", [("VALID", 3), ("SAME_UPPER", 1)])
def test_bn_before_conv_without_effective_padding_folds(auto_pad, k):
    assert_folds_all(bn_conv_model(auto_pad=auto_pad, k=k))


@pytest.mark.parametrize("kwargs", [{"pads": 1}, {"auto_pad": "SAME_UPPER"}])
def test_bn_before_padded_conv_is_left_with_reason(kwargs):
    assert_keeps(bn_conv_model(**kwargs), "would be inexact")


# ---------------------------------------------------------------------------- must not act


def test_conv_output_with_another_consumer_is_left():
    rng = np.random.default_rng(RNG_SEED)
    inits = [_init("W", _rand(rng, (6, 4, 3, 3)))] + bn_inits("bn", 6, rng)
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["c"], name="Conv_3"),
        bn_node("bn", "c", "n"),
        helper.make_node("Add", ["n", "c"], ["y"]),
    ]
    proto = make_model(nodes, [tensor("x", [1, 4, 8, 8])], [tensor("y", None)], inits)
    pass_ = assert_keeps(proto, "Conv_3 output has another consumer")
    assert pass_.skipped[0][0] == "bn"


def test_conv_output_that_is_a_graph_output_is_left():
    proto = conv_bn_model()
    proto.graph.output.append(tensor("c", [1, 6, 16, 16]))
    assert_keeps(proto, "graph output")


def test_non_constant_weight_is_left():
    proto = conv_bn_model(bias=False)
    w = next(i for i in proto.graph.initializer if i.name == "W")
    proto.graph.initializer.remove(w)
    proto.graph.input.append(tensor("W", list(w.dims)))
    assert_keeps(proto, "weight is not a constant")


def test_non_constant_bn_parameter_is_left():
    proto = conv_bn_model()
    mean = next(i for i in proto.graph.initializer if i.name == "bn.mean")
    proto.graph.initializer.remove(mean)
    proto.graph.input.append(tensor("bn.mean", list(mean.dims)))
    assert_keeps(proto, "mean is not a constant")


def test_non_zero_computed_bias_is_left():
    proto = conv_bn_model(bias=True)
    for node in proto.graph.node:
        if node.op_type == "Conv":
            node.input[2] = "b2"
    proto.graph.node.insert(0, helper.make_node("Relu", ["b"], ["b2"]))
    assert_keeps(proto, "bias is not a constant")


def test_used_training_outputs_are_left():
    proto = conv_bn_model()
    bn = next(n for n in proto.graph.node if n.op_type == "BatchNormalization")
    bn.output.extend(["running_mean", "running_var"])
    bn.attribute.append(helper.make_attribute("training_mode", 1))
    proto.graph.output.append(tensor("running_mean", [6]))
    folded, pass_, modified = fold(proto)
    assert not modified and op_count(folded, "BatchNormalization") == 1
    assert "training" in pass_.skipped[0][1]


def test_opset9_bn_with_unused_statistics_outputs_is_left():
    """In opsets 7-13 extra outputs mean training mode (batch statistics), used or not."""
    proto = conv_bn_model()
    proto.opset_import[0].version = 9
    bn = next(n for n in proto.graph.node if n.op_type == "BatchNormalization")
    bn.output.extend(["mean", "var", "saved_mean", "saved_var"])
    assert_keeps(proto, "training mode")


def test_matmul_with_rank3_input_is_left():
    """BN normalises axis 1, a MatMul's features are the last axis: not foldable."""
    assert_keeps(matmul_bn_model(rank=3), "input rank is 3")


def test_bn_after_relu_is_left():
    rng = np.random.default_rng(RNG_SEED)
    nodes = [helper.make_node("Relu", ["x"], ["r"]), bn_node("bn", "r", "y")]
    proto = make_model(
        nodes, [tensor("x", [1, 4, 5, 5])], [tensor("y", None)], bn_inits("bn", 4, rng)
    )
    assert_keeps(proto, "input comes from Relu")


def test_integer_weights_are_left():
    rng = np.random.default_rng(RNG_SEED)
    inits = [_init("W", np.ones((4, 5), np.int32))] + bn_inits("bn", 5, rng)
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["m"]),
        helper.make_node("Cast", ["m"], ["f"], to=TensorProto.FLOAT),
        bn_node("bn", "f", "y"),
    ]
    proto = make_model(nodes, [tensor("x", [3, 4], TensorProto.INT32)], [tensor("y", None)], inits)
    _, pass_, modified = fold(proto)
    assert not modified and pass_.skipped


def test_bn_with_unused_output_is_left():
    proto = conv_bn_model()
    proto.graph.node.append(helper.make_node("Relu", ["c"], ["r"]))
    proto.graph.output[0].CopyFrom(tensor("r", [1, 6, 16, 16]))
    _, pass_, modified = fold(proto)
    assert not modified and "unused" in pass_.skipped[0][1]


def test_bn_inside_a_subgraph_is_not_touched():
    """Only the main graph is folded; a BN in an If branch must not crash the pass."""
    inner = conv_bn_model().graph
    del inner.input[:]  # the branch reads x from the outer scope
    nodes = [helper.make_node("If", ["cond"], ["y"], then_branch=inner, else_branch=inner)]
    proto = make_model(
        nodes,
        [tensor("cond", [], TensorProto.BOOL), tensor("x", [1, 4, 16, 16])],
        [tensor("y", [1, 6, 16, 16])],
        [],
    )
    folded, pass_, modified = fold(proto)
    assert not modified and not pass_.applied
    assert folded.graph.node[0].op_type == "If"


def test_pass_without_bn_reports_unmodified():
    rng = np.random.default_rng(RNG_SEED)
    proto = make_model(
        [helper.make_node("Conv", ["x", "W"], ["y"])],
        [tensor("x", [1, 4, 5, 5])],
        [tensor("y", None)],
        [_init("W", _rand(rng, (2, 4, 1, 1)))],
    )
    _, pass_, modified = fold(proto)
    assert not modified and not pass_.applied and not pass_.skipped


def test_pass_does_something():
    """Guards against a no-op pass: a foldable model must lose its BN with equal outputs."""
    proto = conv_bn_model()
    folded, _, modified = fold(proto)
    assert modified
    assert op_count(proto, "BatchNormalization") == 1
    assert op_count(folded, "BatchNormalization") == 0
    assert_same_outputs(proto, folded)


# ---------------------------------------------------------------------------- torch exports
# Each dynamo export costs seconds, so the small cases share one model per exporter: one
# whose BNs must all fold, one whose BNs must all stay.

EXPORTERS = [pytest.param(True, id="dynamo"), pytest.param(False, id="torchscript")]


def export(model, examples: tuple, tmp_path, dynamo: bool) -> onnx.ModelProto:
    from benchmarks.archs import randomize_bn_stats
    from benchmarks.export import export_onnx

    randomize_bn_stats(model, seed=3)
    path = export_onnx(model.eval(), examples, tmp_path / "m.onnx", dynamo=dynamo)
    return onnx.load(str(path))


def foldable_torch_model():
    """Branches: ConvTranspose+BN decoder (groups, with/without bias); grouped conv+BN,
    depthwise conv+BN, bias-free 1×1 conv+BN, biased strided conv+BN; Linear(bias=False)+
    BatchNorm1d; Linear+BatchNorm1d; BN→Conv without padding (grouped)."""
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class Foldable(nn.Module):
        def __init__(self):
            super().__init__()
            self.up1 = nn.ConvTranspose2d(8, 6, 2, stride=2, bias=False)
            self.up1_bn = nn.BatchNorm2d(6)
            self.up2 = nn.ConvTranspose2d(6, 4, 3, stride=2, padding=1, output_padding=1, groups=2)
            self.up2_bn = nn.BatchNorm2d(4)
            self.grouped = nn.Conv2d(4, 8, 3, padding=1, groups=2, bias=False)
            self.grouped_bn = nn.BatchNorm2d(8)
            self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
            self.depthwise_bn = nn.BatchNorm2d(8)
            self.pointwise = nn.Conv2d(8, 6, 1, bias=False)
            self.pointwise_bn = nn.BatchNorm2d(6)
            self.biased = nn.Conv2d(6, 6, 3, stride=2)
            self.biased_bn = nn.BatchNorm2d(6)
            self.fc_nobias = nn.Linear(12, 7, bias=False)
            self.fc_nobias_bn = nn.BatchNorm1d(7)
            self.fc = nn.Linear(7, 5)
            self.fc_bn = nn.BatchNorm1d(5)
            self.pre_bn = nn.BatchNorm2d(4)
            self.pre_conv = nn.Conv2d(4, 6, 3, groups=2)

        def forward(self, img, vec):
            up = self.up2_bn(self.up2(torch.relu(self.up1_bn(self.up1(img)))))
            x = torch.relu(self.grouped_bn(self.grouped(up)))
            x = torch.relu(self.depthwise_bn(self.depthwise(x)))
            x = torch.relu(self.pointwise_bn(self.pointwise(x)))
            x = self.biased_bn(self.biased(x))
            v = self.fc_bn(self.fc(torch.relu(self.fc_nobias_bn(self.fc_nobias(vec)))))
            return x, v, self.pre_conv(self.pre_bn(up))

    torch.manual_seed(0)
    return Foldable(), (torch.randn(1, 8, 5, 5), torch.randn(3, 12))


def unfoldable_torch_model():
    """BN→Conv with padding (inexact), and a Conv whose output feeds BN and an Add."""
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class Unfoldable(nn.Module):
        def __init__(self):
            super().__init__()
            self.pre_bn = nn.BatchNorm2d(4)
            self.padded = nn.Conv2d(4, 6, 3, padding=1, groups=2)
            self.conv = nn.Conv2d(4, 6, 3)
            self.bn = nn.BatchNorm2d(6)

        def forward(self, x):
            y = self.conv(x)
            return self.padded(self.pre_bn(x)), self.bn(y) + y

    torch.manual_seed(0)
    return Unfoldable(), (torch.randn(1, 4, 10, 10),)


@pytest.mark.torch
@pytest.mark.parametrize("dynamo", EXPORTERS)
@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2"])
def test_torchvision_style_models_fold_completely(arch, dynamo, tmp_path):
    torch = pytest.importorskip("torch")
    from benchmarks import archs

    torch.manual_seed(0)
    model = getattr(archs, arch)(num_classes=10)
    proto = export(model, (torch.randn(1, 3, 32, 32),), tmp_path, dynamo)
    assert_folds_all(proto)


@pytest.mark.torch
@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_torch_small_cases_fold_completely(dynamo, tmp_path):
    model, examples = foldable_torch_model()
    proto = export(model, examples, tmp_path, dynamo)
    assert op_count(proto, "BatchNormalization") == 9
    pass_ = assert_folds_all(proto)
    assert sum("following" in message for _, message in pass_.applied) == 1  # BN → Conv


@pytest.mark.torch
@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_torch_unfoldable_cases_are_left_with_reasons(dynamo, tmp_path):
    model, examples = unfoldable_torch_model()
    proto = export(model, examples, tmp_path, dynamo)
    folded, pass_, modified = fold(proto)
    assert not modified
    assert op_count(folded, "BatchNormalization") == 2
    reasons = [why for _, why in pass_.skipped]
    assert len(reasons) == 2
    assert sum("output has another consumer" in why for why in reasons) == 1, reasons
    assert sum("would be inexact" in why for why in reasons) == 1, reasons
    assert_same_outputs(proto, folded)
