"""Real-world model structures through every lossless pass and through ``optimize``.

Each model below is built with ``onnx.helper`` and named after what it contains. For each one,
``optimize`` (cleanup → fold_bn) and every pass in isolation run on the saved file; the
result must reproduce onnxruntime's outputs of the original on several inputs (not only the
pipeline's own verification inputs), every stage is either kept, unchanged, or rolled back
with a reason (a stage that *raised* is a pass bug even though the pipeline survives it),
and the input file (and its external data) is byte-identical afterwards.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from benchmarks.corpus import outputs_match
from onnxopt import evaluate
from onnxopt.errors import OnnxoptError
from onnxopt.model_io import load_model, save_model
from onnxopt.optimize import optimize
from onnxopt.passes.cleanup import CleanupPass
from onnxopt.passes.fold_bn import FoldBatchNormPass
from onnxopt.pipeline import pass_stage

F32 = TensorProto.FLOAT
NEWEST_OPSET = onnx.defs.onnx_opset_version()
CONFIGS = {
    "optimize": None,
    "cleanup": [pass_stage("cleanup", CleanupPass)],
    "fold_bn": [pass_stage("fold_bn", FoldBatchNormPass)],
}


# ----------------------------------------------------------------------------------- helpers


def _t(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array), name)


def _bn_params(prefix: str, channels: int, rng: np.random.Generator, dtype=np.float32) -> list[onnx.TensorProto]:
    return [
        _t(f"{prefix}.scale", rng.uniform(0.5, 2, channels).astype(dtype)),
        _t(f"{prefix}.bias", rng.standard_normal(channels).astype(dtype)),
        _t(f"{prefix}.mean", rng.standard_normal(channels).astype(dtype)),
        _t(f"{prefix}.var", rng.uniform(0.5, 2, channels).astype(dtype)),
    ]


def _bn(prefix: str, x: str, y: str) -> onnx.NodeProto:
    return helper.make_node(
        "BatchNormalization", [x, f"{prefix}.scale", f"{prefix}.bias", f"{prefix}.mean", f"{prefix}.var"], [y], name=prefix
    )


def _model(graph: onnx.GraphProto, opset: int = 17, ir_version: int = 8, **kwargs) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], **kwargs)
    model.ir_version = ir_version
    onnx.checker.check_model(model)
    return model


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _ort_run(model: onnx.ModelProto | Path, feeds: dict) -> list:
    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    sess = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def check_every_pass(
    model: onnx.ModelProto,
    tmp_path: Path,
    feeds: list[dict],
    *,
    shapes: dict | None = None,
    save_kwargs: dict | None = None,
) -> dict[str, list]:
    """Optimize with every configuration; assert exact outputs and an intact input file.

    Returns config → stage records, for tests that check what a pass did.
    """
    src = tmp_path / "model.onnx"
    onnx.save(model, str(src), **(save_kwargs or {}))
    files = {p: sha(p) for p in tmp_path.iterdir() if p.is_file()}
    references = [_ort_run(src, f) for f in feeds]
    records = {}
    for config, lossless in CONFIGS.items():
        out = tmp_path / f"out-{config}.onnx"
        result = optimize(src, out, lossless=lossless, shapes=shapes)
        for record in result.stages:
            assert not record.reason.startswith("stage failed"), (config, record.name, record.reason)
            assert record.kept or not record.modified or record.reason, (config, record.name)
        for f, ref in zip(feeds, references):
            why = outputs_match(ref, _ort_run(out, f))
            assert not why, (config, why)
        onnx.checker.check_model(str(out))
        records[config] = result.stages
    assert {p: sha(p) for p in files} == files, "the input files changed"
    return records


def _stage(records: dict, config: str, name: str):
    return next(r for r in records[config] if r.name == name)


def _random(shape, rng, dtype=np.float32) -> np.ndarray:
    return rng.standard_normal(shape).astype(dtype)


# ----------------------------------------------------------------------------------- models


def if_with_conv_bn_in_branches(seed: int = 0) -> onnx.ModelProto:
    """cond ? BN(Conv(x, W)) : Relu(Conv(x, W)); both branches read W from the outer scope."""
    rng = np.random.default_rng(seed)
    then_graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["tc"], pads=[1, 1, 1, 1]), _bn("bn", "tc", "t_out")],
        "then", [], [helper.make_tensor_value_info("t_out", F32, [1, 4, 8, 8])],
    )  # fmt: skip
    else_graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["ec"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["ec"], ["e_out"])],
        "else", [], [helper.make_tensor_value_info("e_out", F32, [1, 4, 8, 8])],
    )  # fmt: skip
    graph = helper.make_graph(
        [helper.make_node("If", ["cond"], ["y"], then_branch=then_graph, else_branch=else_graph)],
        "if_conv_bn",
        [helper.make_tensor_value_info("cond", TensorProto.BOOL, []), helper.make_tensor_value_info("x", F32, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", F32, [1, 4, 8, 8])],
        [_t("w", _random((4, 3, 3, 3), rng))] + _bn_params("bn", 4, rng),
    )
    return _model(graph)


def loop_with_matmul_bias(seed: int = 0) -> onnx.ModelProto:
    """v ← tanh(v·W + b) repeated ``trip`` times; scan output of every step."""
    rng = np.random.default_rng(seed)
    body = helper.make_graph(
        [
            helper.make_node("MatMul", ["v_in", "w"], ["mm"]),
            helper.make_node("Add", ["mm", "b"], ["lin"]),
            helper.make_node("Tanh", ["lin"], ["v_out"]),
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Identity", ["v_out"], ["scan_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_in", F32, [1, 4]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_out", F32, [1, 4]),
            helper.make_tensor_value_info("scan_out", F32, [1, 4]),
        ],
    )
    graph = helper.make_graph(
        [helper.make_node("Loop", ["trip", "keep_going", "v0"], ["v_final", "steps"], body=body)],
        "loop_matmul",
        [helper.make_tensor_value_info("trip", TensorProto.INT64, []), helper.make_tensor_value_info("v0", F32, [1, 4])],
        [helper.make_tensor_value_info("v_final", F32, [1, 4]), helper.make_tensor_value_info("steps", F32, ["T", 1, 4])],
        [_t("w", _random((4, 4), rng) * 0.5), _t("b", _random((4,), rng)), _t("keep_going", np.array(True))],
    )
    return _model(graph)


def scan_running_sum(seed: int = 0) -> onnx.ModelProto:
    """Scan over time: state ← state + x_t·scale, emits the state at every step (opset 11)."""
    rng = np.random.default_rng(seed)
    body = helper.make_graph(
        [
            helper.make_node("Mul", ["x_t", "scale"], ["scaled"]),
            helper.make_node("Add", ["s_in", "scaled"], ["s_out"]),
            helper.make_node("Identity", ["s_out"], ["y_t"]),
        ],
        "body",
        [helper.make_tensor_value_info("s_in", F32, [3]), helper.make_tensor_value_info("x_t", F32, [3])],
        [helper.make_tensor_value_info("s_out", F32, [3]), helper.make_tensor_value_info("y_t", F32, [3])],
    )
    graph = helper.make_graph(
        [helper.make_node("Scan", ["s0", "xs"], ["s_final", "ys"], body=body, num_scan_inputs=1)],
        "scan_sum",
        [helper.make_tensor_value_info("s0", F32, [3]), helper.make_tensor_value_info("xs", F32, [5, 3])],
        [helper.make_tensor_value_info("s_final", F32, [3]), helper.make_tensor_value_info("ys", F32, [5, 3])],
        [_t("scale", _random((3,), rng))],
    )
    return _model(graph, opset=11, ir_version=7)


def local_function_conv_bn(seed: int = 0) -> onnx.ModelProto:
    """A model-local function ``custom.ConvBn(x, w, s, b, m, v)`` called twice from the graph."""
    rng = np.random.default_rng(seed)
    function = helper.make_function(
        "custom",
        "ConvBn",
        ["x", "w", "s", "b", "m", "v"],
        ["y"],
        [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["y"])],
        opset_imports=[helper.make_opsetid("", 17)],
    )
    params = ["bn.scale", "bn.bias", "bn.mean", "bn.var"]
    graph = helper.make_graph(
        [
            helper.make_node("ConvBn", ["x", "w1", *params], ["h"], domain="custom"),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("ConvBn", ["r", "w2", *params], ["y"], domain="custom"),
        ],
        "local_function",
        [helper.make_tensor_value_info("x", F32, [1, 4, 6, 6])],
        [helper.make_tensor_value_info("y", F32, [1, 4, 2, 2])],
        [_t("w1", _random((4, 4, 3, 3), rng)), _t("w2", _random((4, 4, 3, 3), rng))] + _bn_params("bn", 4, rng),
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("custom", 1)],
        functions=[function],
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def two_inputs_four_outputs(seed: int = 0) -> onnx.ModelProto:
    """a, b → Gemm+BN head, a + b, the input a passed through, an intermediate also an output."""
    rng = np.random.default_rng(seed)
    nodes = [
        helper.make_node("Gemm", ["a", "w", "c"], ["g"], transB=1),
        _bn("bn", "g", "head"),
        helper.make_node("Add", ["a", "b"], ["sum"]),
        helper.make_node("Identity", ["a"], ["a_copy"]),
        helper.make_node("Relu", ["sum"], ["relu"]),
        helper.make_node("Mul", ["relu", "sum"], ["sq"]),
    ]
    graph = helper.make_graph(
        nodes,
        "multi_io",
        [helper.make_tensor_value_info("a", F32, ["N", 4]), helper.make_tensor_value_info("b", F32, ["N", 4])],
        [helper.make_tensor_value_info(n, F32, ["N", d]) for n, d in (("head", 6), ("sum", 4), ("a_copy", 4), ("sq", 4))],
        [_t("w", _random((6, 4), rng)), _t("c", _random((6,), rng))] + _bn_params("bn", 6, rng),
    )
    return _model(graph)


def symbolic_conv_bn_pool_gemm(seed: int = 0, dtype: int = F32) -> onnx.ModelProto:
    """x[N, 3, H, W] → Conv → BN → Relu → GlobalAveragePool → Flatten → Gemm (any H, W)."""
    rng = np.random.default_rng(seed)
    np_dtype = helper.tensor_dtype_to_np_dtype(dtype)
    nodes = [
        helper.make_node("Conv", ["x", "cw", "cb"], ["c"], pads=[1, 1, 1, 1]),
        _bn("bn", "c", "n"),
        helper.make_node("Relu", ["n"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "symbolic",
        [helper.make_tensor_value_info("x", dtype, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("y", dtype, ["N", 5])],
        [
            _t("cw", _random((8, 3, 3, 3), rng, np_dtype)),
            _t("cb", _random((8,), rng, np_dtype)),
            _t("fw", _random((5, 8), rng, np_dtype)),
            _t("fb", _random((5,), rng, np_dtype)),
        ]
        + _bn_params("bn", 8, rng, np_dtype),
    )
    return _model(graph)


def bf16_weights_cast_to_float(seed: int = 0) -> onnx.ModelProto:
    """bfloat16 weights stored in the file, Cast to float32 before Conv (BN params in bf16 too)."""
    rng = np.random.default_rng(seed)
    def bf16_tensor(name: str, array: np.ndarray) -> onnx.TensorProto:
        return helper.make_tensor(name, TensorProto.BFLOAT16, array.shape, array.astype(np.float32).ravel().tolist())

    names = ["cw", "bn.scale", "bn.bias", "bn.mean", "bn.var"]
    arrays = [_random((4, 3, 3, 3), rng), rng.uniform(0.5, 2, 4), rng.standard_normal(4), rng.standard_normal(4), rng.uniform(0.5, 2, 4)]
    nodes = [helper.make_node("Cast", [n + "_bf16"], [n], to=F32) for n in names]
    nodes += [helper.make_node("Conv", ["x", "cw"], ["c"]), _bn("bn", "c", "y")]
    graph = helper.make_graph(
        nodes,
        "bf16_weights",
        [helper.make_tensor_value_info("x", F32, [1, 3, 6, 6])],
        [helper.make_tensor_value_info("y", F32, [1, 4, 4, 4])],
        [bf16_tensor(n + "_bf16", a) for n, a in zip(names, arrays)],
    )
    return _model(graph)


def weights_in_constant_nodes(seed: int = 0) -> onnx.ModelProto:
    """Conv + BN whose weight, bias and every BN parameter come from ``Constant`` nodes."""
    rng = np.random.default_rng(seed)
    tensors = [_t("cw", _random((4, 3, 3, 3), rng)), _t("cb", _random((4,), rng))] + _bn_params("bn", 4, rng)
    nodes = [helper.make_node("Constant", [], [t.name], value=t) for t in tensors]
    nodes += [helper.make_node("Conv", ["x", "cw", "cb"], ["c"]), _bn("bn", "c", "b"), helper.make_node("Relu", ["b"], ["y"])]
    graph = helper.make_graph(
        nodes, "constant_nodes",
        [helper.make_tensor_value_info("x", F32, [1, 3, 6, 6])],
        [helper.make_tensor_value_info("y", F32, [1, 4, 4, 4])],
    )  # fmt: skip
    return _model(graph)


def conv_bn_gemm(
    opset: int, ir_version: int, initializers_as_inputs: bool = False, seed: int = 0, batch: int = 2
) -> onnx.ModelProto:
    """Conv(no pad) → BN → Relu → Flatten → Gemm; IR 3 lists initializers as graph inputs."""
    rng = np.random.default_rng(seed)
    inits = [
        _t("cw", _random((4, 3, 3, 3), rng)),
        _t("cb", _random((4,), rng)),
        _t("fw", _random((5, 64), rng) * 0.1),
        _t("fb", _random((5,), rng)),
    ] + _bn_params("bn", 4, rng)
    nodes = [
        helper.make_node("Conv", ["x", "cw", "cb"], ["c"]),
        _bn("bn", "c", "n"),
        helper.make_node("Relu", ["n"], ["r"]),
        helper.make_node("Flatten", ["r"], ["f"]),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], transB=1),
    ]
    inputs = [helper.make_tensor_value_info("x", F32, [batch, 3, 6, 6])]
    if initializers_as_inputs:
        inputs += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in inits]
    graph = helper.make_graph(nodes, f"opset{opset}", inputs, [helper.make_tensor_value_info("y", F32, [batch, 5])], inits)
    return _model(graph, opset=opset, ir_version=ir_version)


# ----------------------------------------------------------------------------------- tests


def test_if_subgraphs(tmp_path):
    rng = np.random.default_rng(1)
    x = _random((1, 3, 8, 8), rng)
    check_every_pass(if_with_conv_bn_in_branches(), tmp_path, [{"cond": np.array(c), "x": x} for c in (True, False)])


def test_loop_subgraph(tmp_path):
    rng = np.random.default_rng(1)
    feeds = [{"trip": np.array(t, np.int64), "v0": _random((1, 4), rng)} for t in (1, 3, 5)]
    check_every_pass(loop_with_matmul_bias(), tmp_path, feeds)


def test_scan_subgraph(tmp_path):
    rng = np.random.default_rng(1)
    feeds = [{"s0": _random((3,), rng), "xs": _random((5, 3), rng)} for _ in range(2)]
    check_every_pass(scan_running_sum(), tmp_path, feeds)


def test_local_functions(tmp_path):
    rng = np.random.default_rng(1)
    records = check_every_pass(local_function_conv_bn(), tmp_path, [{"x": _random((1, 4, 6, 6), rng)}])
    # cleanup inlines the functions; optimize then folds both BNs (now in the main graph)
    assert _stage(records, "optimize", "cleanup").kept


def test_several_inputs_and_outputs(tmp_path):
    rng = np.random.default_rng(1)
    feeds = [{"a": _random((n, 4), rng), "b": _random((n, 4), rng)} for n in (1, 3)]
    records = check_every_pass(two_inputs_four_outputs(), tmp_path, feeds)
    fold = _stage(records, "fold_bn", "fold_bn")
    assert fold.kept and fold.applied, fold


def test_symbolic_dims_run_at_any_size(tmp_path):
    rng = np.random.default_rng(1)
    feeds = [{"x": _random(s, rng)} for s in ((1, 3, 4, 4), (2, 3, 9, 7))]
    records = check_every_pass(symbolic_conv_bn_pool_gemm(), tmp_path, feeds, shapes={"x": [2, 3, 8, 8]})
    assert _stage(records, "fold_bn", "fold_bn").kept  # BN after a padded conv folds exactly
    out = onnx.load(str(tmp_path / "out-optimize.onnx"))
    assert "BatchNormalization" not in [n.op_type for n in out.graph.node]


def test_float16_model(tmp_path):
    rng = np.random.default_rng(1)
    feeds = [{"x": _random((2, 3, 5, 5), rng, np.float16)}]
    check_every_pass(symbolic_conv_bn_pool_gemm(dtype=TensorProto.FLOAT16), tmp_path, feeds)
    out = onnx.load(str(tmp_path / "out-optimize.onnx"))
    floats = [t for t in out.graph.initializer if t.data_type in (F32, TensorProto.FLOAT16, TensorProto.DOUBLE)]
    assert floats and all(t.data_type == TensorProto.FLOAT16 for t in floats), "weights must stay float16"


def test_bfloat16_weights(tmp_path):
    rng = np.random.default_rng(1)
    check_every_pass(bf16_weights_cast_to_float(), tmp_path, [{"x": _random((1, 3, 6, 6), rng)}])


def test_weights_in_constant_nodes(tmp_path):
    rng = np.random.default_rng(1)
    records = check_every_pass(weights_in_constant_nodes(), tmp_path, [{"x": _random((1, 3, 6, 6), rng)}])
    fold = _stage(records, "fold_bn", "fold_bn")
    assert fold.kept and fold.applied, fold  # Constant-node weights are folded, not skipped


def test_a_weight_shared_through_identities_stays_one_tensor():
    """TorchScript's ALBERT shares each weight across layers through Identity nodes: the
    clean-up used to fold every Identity into a copy (343 → 466 kB), and the parameter count
    counted the weight once per reader."""
    import onnx_ir as ir

    from onnxopt.cost import model_cost

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), "w")
    # 4,096 elements: onnxscript folds Identity(w) into a copy below 8,192, and merges
    # identical tensors only up to 1,024
    nodes = [helper.make_node("Identity", ["w"], [f"w{i}"], name=f"share{i}") for i in range(3)]
    x = "x"
    for i in range(3):
        nodes += [helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"], name=f"mm{i}"), helper.make_node("Relu", [f"m{i}"], [f"h{i}"])]
        x = f"h{i}"
    graph = helper.make_graph(nodes, "shared", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
                              [helper.make_tensor_value_info("h2", TensorProto.FLOAT, ["N", 64])], [w])  # fmt: skip
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert model_cost(model).params == 4096
    cleaned = model.clone()
    CleanupPass()(cleaned)
    assert [v.const_value.size for v in cleaned.graph.initializers.values()] == [4096]
    assert model_cost(cleaned).params == 4096
    data = {"x": rng.standard_normal((4, 64)).astype(np.float32)}
    np.testing.assert_array_equal(evaluate.run(model, data)[0], evaluate.run(cleaned, data)[0])


def test_external_data_input(tmp_path):
    rng = np.random.default_rng(1)
    model = conv_bn_gemm(opset=17, ir_version=8)
    save_kwargs = {"save_as_external_data": True, "location": "model.onnx.data", "size_threshold": 0}
    check_every_pass(model, tmp_path, [{"x": _random((2, 3, 6, 6), rng)}], save_kwargs=save_kwargs)
    assert (tmp_path / "model.onnx.data").is_file()


def test_save_with_external_data_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    src = tmp_path / "model.onnx"
    onnx.save(conv_bn_gemm(opset=17, ir_version=8), str(src))
    out = save_model(load_model(src), tmp_path / "ext.onnx", input_path=src, external_data=True)
    assert (tmp_path / "ext.onnx.data").is_file()
    feeds = {"x": _random((2, 3, 6, 6), rng)}
    assert not outputs_match(_ort_run(src, feeds), _ort_run(out, feeds))
    # optimizing the external-data model writes a model that runs without the input beside it
    (tmp_path / "sub").mkdir()
    result = optimize(out, tmp_path / "sub" / "o.onnx")
    (tmp_path / "ext.onnx.data").unlink()
    assert not outputs_match(_ort_run(src, feeds), _ort_run(result.output, feeds))


@pytest.mark.parametrize("opset", range(7, NEWEST_OPSET + 1))
def test_every_opset(tmp_path, opset):
    rng = np.random.default_rng(1)
    model = conv_bn_gemm(opset=opset, ir_version=8 if opset < 21 else 10)
    feeds = [{"x": _random((2, 3, 6, 6), rng)}]
    try:
        _ort_run(model, feeds[0])
    except Exception as exc:  # onnxruntime itself does not support this opset yet
        pytest.skip(f"onnxruntime cannot run opset {opset}: {str(exc).splitlines()[0][:100]}")
    records = check_every_pass(model, tmp_path, feeds)
    out = onnx.load(str(tmp_path / "out-optimize.onnx"))
    assert "BatchNormalization" not in [n.op_type for n in out.graph.node], records["optimize"]
    assert out.opset_import[0].version == opset


@pytest.mark.parametrize("ir_version, opset", [(3, 7), (3, 8), (4, 9), (5, 10), (6, 11), (7, 12)])
def test_old_ir_versions_with_initializers_as_inputs(tmp_path, ir_version, opset):
    """IR < 4 requires every initializer to be a graph input too (overridable at run time)."""
    rng = np.random.default_rng(1)
    model = conv_bn_gemm(opset=opset, ir_version=ir_version, initializers_as_inputs=True)
    records = check_every_pass(model, tmp_path, [{"x": _random((2, 3, 6, 6), rng)}])
    assert not _stage(records, "cleanup", "cleanup").reason  # not rolled back (checker-valid)
    # weights that are graph inputs may be overridden at run time: BN must stay
    assert _stage(records, "fold_bn", "fold_bn").skipped
    out = onnx.load(str(tmp_path / "out-optimize.onnx"))
    assert out.ir_version == ir_version
    onnx.checker.check_model(out)


@pytest.mark.slow
def test_model_over_2gb_with_external_data(tmp_path):
    """Two 1.1 GB embedding tables (2.3 GB in all): loaded lazily, optimized, saved with external data."""
    rows, dim = 280_000, 1024
    tables = []
    for i in range(2):
        table = np.lib.format.open_memmap(tmp_path / f"e{i}.npy", mode="w+", dtype=np.float32, shape=(rows, dim))
        for start in range(0, rows, 20_000):
            table[start : start + 20_000] = np.float32(i + 1) * np.arange(start, min(rows, start + 20_000), dtype=np.float32)[:, None] / rows
        tables.append(table)
    nodes = [
        helper.make_node("Gather", ["e0", "ids"], ["g0"]),
        helper.make_node("Gather", ["e1", "ids"], ["g1"]),
        helper.make_node("Add", ["g0", "g1"], ["s"]),
        helper.make_node("Identity", ["s"], ["s2"]),
        helper.make_node("ReduceSum", ["s2", "axes"], ["y"], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes, "big",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 4])],
        [helper.make_tensor_value_info("y", F32, [1, 4])],
        [_t("axes", np.array([2], np.int64))],
    )  # fmt: skip
    src = tmp_path / "big.onnx"
    _save_with_big_tables(graph, tables, src)
    before = {p: sha(p) for p in (src, tmp_path / "big.onnx.data")}
    feeds = {"ids": np.array([[0, 1, 140_000, rows - 1]], np.int64)}
    expected = _ort_run(src, feeds)
    result = optimize(src, tmp_path / "out.onnx", shapes={"ids": [1, 4]})
    assert (tmp_path / "out.onnx.data").is_file()
    assert not outputs_match(expected, _ort_run(tmp_path / "out.onnx", feeds))
    assert {p: sha(p) for p in before} == before
    assert result.after.nodes < result.before.nodes, result.stages  # Identity removed


def _save_with_big_tables(graph: onnx.GraphProto, tables: list[np.ndarray], path: Path) -> None:
    """Write ``graph`` + tables as external data without holding a 2 GB protobuf in memory."""
    data_name = path.name + ".data"
    offset = 0
    with open(path.parent / data_name, "wb") as f:
        for i, table in enumerate(tables):
            tensor = onnx.TensorProto(name=f"e{i}", data_type=F32, dims=list(table.shape))
            tensor.data_location = onnx.TensorProto.EXTERNAL
            nbytes = table.nbytes
            for key, value in (("location", data_name), ("offset", str(offset)), ("length", str(nbytes))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
            for start in range(0, len(table), 20_000):
                f.write(np.ascontiguousarray(table[start : start + 20_000]).tobytes())
            offset += nbytes
            graph.initializer.append(tensor)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


@pytest.mark.parametrize("build", [if_with_conv_bn_in_branches, local_function_conv_bn])
def test_fold_bn_reports_bns_it_cannot_reach(tmp_path, build):
    src = tmp_path / "model.onnx"
    onnx.save(build(), str(src))
    result = optimize(src, tmp_path / "o.onnx", lossless=CONFIGS["fold_bn"])
    assert any("not visited" in reason for _, reason in result.stages[0].skipped), "a BN that stays must be listed with a reason"


STRUCTURES = {
    "if": (if_with_conv_bn_in_branches, None),
    "loop": (loop_with_matmul_bias, None),
    "scan": (scan_running_sum, None),
    "local_function": (local_function_conv_bn, None),
    "multi_io": (two_inputs_four_outputs, {"a": [16, 4], "b": [16, 4]}),
    "symbolic": (symbolic_conv_bn_pool_gemm, {"x": [16, 3, 8, 8]}),
    "float16": (lambda: symbolic_conv_bn_pool_gemm(dtype=TensorProto.FLOAT16), {"x": [16, 3, 8, 8]}),
    "bf16_weights": (bf16_weights_cast_to_float, None),
    "constant_nodes": (weights_in_constant_nodes, None),
    "ir3": (lambda: conv_bn_gemm(opset=8, ir_version=3, initializers_as_inputs=True, batch=1), None),
    "fixed_batch_2": (lambda: conv_bn_gemm(opset=17, ir_version=8), None),
}
KNOWN_BUGS: dict[str, str] = {}  # structure name → reason, for a bug reported but not fixed yet


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[n])) if n in KNOWN_BUGS else n for n in STRUCTURES],
)
def test_lossy_stages_with_data_never_raise(tmp_path, name):
    """With calibration data every lossy stage runs too: each one is kept, unchanged or
    rolled back with a reason; none raises, and the written model is valid and runs."""
    build, shapes = STRUCTURES[name]
    src = tmp_path / "model.onnx"
    onnx.save(build(), str(src))
    before = sha(src)
    data = _samples(load_model(src), 16, shapes)
    if name == "scan":  # its inputs have no sample axis: stacked samples cannot fit it
        with pytest.raises(OnnxoptError, match="xs|s0"):
            optimize(src, tmp_path / "o.onnx", data=data, shapes=shapes)
        return
    result = optimize(src, tmp_path / "o.onnx", data=data, shapes=shapes)
    assert not result.lossless_only
    failed = [(r.name, r.reason) for r in result.stages if r.reason.startswith("stage failed")]
    assert not failed, failed
    onnx.checker.check_model(str(tmp_path / "o.onnx"))
    evaluate.run(tmp_path / "o.onnx", data)
    assert sha(src) == before


def _samples(model, n: int, shapes: dict | None):
    """``n`` random samples stacked on axis 0 (a fixed batch of 1 or 2 is repeated)."""
    from onnxopt.calibration import Dataset, synthetic

    one = synthetic(model, n, seed=0, shapes=shapes)
    inputs = {}
    for k, v in one.inputs.items():
        if np.ndim(v) == 0 or len(v) == n:
            inputs[k] = v
        else:
            reps = -(-n // len(v))
            noise = np.random.default_rng(1).standard_normal((reps * len(v), *v.shape[1:])).astype(v.dtype)
            inputs[k] = noise[:n] if v.dtype.kind == "f" else np.concatenate([v] * reps)[:n]
    return Dataset(inputs)


def test_cleanup_does_not_flood_the_log_on_old_ir(caplog):
    """IR 3 lists every initializer as an input; onnx_ir notes each one it cannot deduplicate."""
    import logging

    import onnx_ir as ir

    model = ir.serde.deserialize_model(conv_bn_gemm(opset=8, ir_version=3, initializers_as_inputs=True, batch=1))
    with caplog.at_level(logging.INFO):
        CleanupPass()(model)
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING], caplog.records
