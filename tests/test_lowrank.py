"""Low-rank (SVD) split of Gemm / MatMul / 1×1 Conv: exactness, the Eckart–Young identity,
every Gemm attribute combination, torch exports, the saving rule, data-aware SVD, API, CLI."""

from __future__ import annotations

import itertools
import json

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from onnxopt import evaluate
from onnxopt.calibration import Dataset
from onnxopt.cli_lowrank import lowrank_command
from onnxopt.lowrank import lowrank_model, lowrank_stage
from onnxopt.passes.lowrank import LowRankPass, factorize
from onnxopt.pipeline import Context, run_stages

F32 = np.float32


def _model(nodes, inputs, outputs, inits, opset: int = 17) -> ir.Model:
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
        [numpy_helper.from_array(np.asarray(a), n) for n, a in inits.items()],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(proto)
    return ir.from_proto(proto)


def matmul_model(k: int = 64, n: int = 48, activation_shape=("N", 64), seed: int = 0) -> ir.Model:
    """x[…, k] → MatMul(W k×n) → y."""
    w = np.random.default_rng(seed).standard_normal((k, n)).astype(F32)
    out_shape = (*activation_shape[:-1], n)
    return _model([helper.make_node("MatMul", ["x", "W"], ["y"], name="fc")], [("x", list(activation_shape))], [("y", list(out_shape))], {"W": w})


def mlp_model(dims=(32, 96, 80, 10), seed: int = 0) -> ir.Model:
    """x → Gemm(transB) → Relu → Gemm → Relu → Gemm → logits (torch-Linear layout)."""
    rng = np.random.default_rng(seed)
    nodes, inits, prev = [], {}, "x"
    for i, (a, b) in enumerate(itertools.pairwise(dims)):
        inits[f"w{i}"] = (rng.standard_normal((b, a)) / np.sqrt(a)).astype(F32)
        inits[f"b{i}"] = rng.standard_normal(b).astype(F32) * 0.1
        out = f"h{i}" if i < len(dims) - 2 else "logits"
        nodes.append(helper.make_node("Gemm", [prev, f"w{i}", f"b{i}"], [out + ("_pre" if out != "logits" else "")], name=f"fc{i}", transB=1))
        if out != "logits":
            nodes.append(helper.make_node("Relu", [out + "_pre"], [out]))
        prev = out
    return _model(nodes, [("x", ["N", dims[0]])], [("logits", ["N", dims[-1]])], inits)


def _run(model: ir.Model, **feed: np.ndarray) -> list[np.ndarray]:
    return evaluate.run(model, feed)


def _apply(model: ir.Model, **kwargs) -> tuple[ir.Model, LowRankPass]:
    copy = model.clone()
    p = LowRankPass(**kwargs)
    p(copy)
    onnx.checker.check_model(ir.to_proto(copy))
    return copy, p


def _weights(model: ir.Model, name: str) -> tuple[np.ndarray, np.ndarray]:
    inits = model.graph.initializers
    return inits[f"{name}_lowrank_a"].const_value.numpy(), inits[f"{name}_lowrank_b"].const_value.numpy()


# --------------------------------------------------------------------------- exactness and identity


def test_full_rank_reproduces_outputs():
    model = mlp_model()
    x = np.random.default_rng(1).standard_normal((5, 32)).astype(F32)
    split, p = _apply(model, energy=1.0, min_saving=None)
    assert [op for op in (n.op_type for n in split.graph)].count("Gemm") == 6
    np.testing.assert_allclose(_run(split, x=x)[0], _run(model, x=x)[0], rtol=1e-4, atol=1e-4)
    assert all(d.split and d.rank == d.full_rank for d in p.decisions)


def test_truncated_weight_error_equals_discarded_singular_values():
    model = matmul_model(64, 48)
    w = model.graph.initializers["W"].const_value.numpy().astype(np.float64)
    sigma = np.linalg.svd(w, compute_uv=False)
    for k in (8, 16, 24):
        split, p = _apply(model, rank=k)
        a, b = _weights(split, "fc")
        assert a.shape == (64, k) and b.shape == (k, 48)
        error = np.linalg.norm(w - a.astype(np.float64) @ b)
        np.testing.assert_allclose(error, np.sqrt(np.sum(sigma[k:] ** 2)), rtol=1e-5)
        np.testing.assert_allclose(p.decisions[0].energy, np.sum(sigma[:k] ** 2) / np.sum(sigma**2), rtol=1e-6)


def test_randomized_svd_matches_top_singular_values():
    rng = np.random.default_rng(0)
    sigma = 0.97 ** np.arange(1040)
    w = np.zeros((1100, 1040), dtype=F32)
    w[np.arange(1040), np.arange(1040)] = sigma
    w = w[rng.permutation(1100)][:, rng.permutation(1040)]  # permutations keep the spectrum
    fact = factorize(w, max_rank=64)
    assert not fact.exact and fact.singular.shape == (64,)
    np.testing.assert_allclose(fact.singular[:48], sigma[:48], rtol=1e-3)
    np.testing.assert_allclose(fact.singular, sigma[:64], rtol=1e-2)
    np.testing.assert_allclose(fact.total_energy, np.sum(sigma**2), rtol=1e-4)


def test_energy_picks_smallest_rank_rounded_up():
    model = matmul_model(64, 48)
    sigma = np.linalg.svd(model.graph.initializers["W"].const_value.numpy().astype(np.float64), compute_uv=False)
    share = np.cumsum(sigma**2) / np.sum(sigma**2)
    smallest = int(np.argmax(share >= 0.6)) + 1
    _, p = _apply(model, energy=0.6, round_to=1)
    assert p.decisions[0].rank == smallest
    _, p = _apply(model, energy=0.6, round_to=8)
    assert p.decisions[0].rank == -(-smallest // 8) * 8


# --------------------------------------------------------------------------- op coverage


GEMM_CASES = list(itertools.product([0, 1], [0, 1], [1.0, 0.5], [1.0, 0.3], ["none", "vector", "matrix"]))


@pytest.mark.parametrize(("trans_a", "trans_b", "alpha", "beta", "bias"), GEMM_CASES)
def test_gemm_every_attribute_combination(trans_a, trans_b, alpha, beta, bias):
    rng = np.random.default_rng(0)
    m, k, n = 3, 40, 24
    a_shape = [k, m] if trans_a else [m, k]
    w = rng.standard_normal((n, k) if trans_b else (k, n)).astype(F32)
    inits = {"W": w}
    inputs = ["a", "W"]
    if bias != "none":
        inits["C"] = rng.standard_normal((n,) if bias == "vector" else (m, n)).astype(F32)
        inputs.append("C")
    node = helper.make_node("Gemm", inputs, ["y"], name="gemm", transA=trans_a, transB=trans_b, alpha=alpha, beta=beta)
    model = _model([node], [("a", a_shape)], [("y", [m, n])], inits)
    a = rng.standard_normal(a_shape).astype(F32)
    reference = _run(model, a=a)[0]
    split, _ = _apply(model, rank=n, min_saving=None)
    assert [n.op_type for n in split.graph] == ["Gemm", "Gemm"]
    np.testing.assert_allclose(_run(split, a=a)[0], reference, rtol=1e-4, atol=1e-4)
    # truncated: the two layers compute x·A·B (+ beta·C) with A·B = alpha·op(B)_k
    split, _ = _apply(model, rank=8)
    fa, fb = _weights(split, "gemm")
    x = a.T if trans_a else a
    expected = x @ fa @ fb + (beta * inits["C"] if bias != "none" else 0)
    np.testing.assert_allclose(_run(split, a=a)[0], expected, rtol=1e-4, atol=1e-4)
    effective = alpha * (w.T if trans_b else w)
    sigma = np.linalg.svd(effective.astype(np.float64), compute_uv=False)
    np.testing.assert_allclose(np.linalg.norm(effective - fa @ fb), np.sqrt(np.sum(sigma[8:] ** 2)), rtol=1e-4)


@pytest.mark.parametrize("activation_shape", [("N", 64), ("N", 7, 64)])
def test_matmul_2d_and_3d_activations(activation_shape):
    model = matmul_model(64, 48, activation_shape)
    x = np.random.default_rng(2).standard_normal((2, *activation_shape[1:])).astype(F32)
    full, _ = _apply(model, rank=48, min_saving=None)
    np.testing.assert_allclose(_run(full, x=x)[0], _run(model, x=x)[0], rtol=1e-4, atol=1e-4)
    split, _ = _apply(model, rank=16)
    a, b = _weights(split, "fc")
    out = _run(split, x=x)[0]
    assert out.shape == (2, *activation_shape[1:-1], 48)
    np.testing.assert_allclose(out, x @ a @ b, rtol=1e-4, atol=1e-4)


def test_conv1x1_split_with_stride_and_padding():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((48, 40, 1, 1)).astype(F32)
    bias = rng.standard_normal(48).astype(F32)
    node = helper.make_node("Conv", ["x", "W", "B"], ["y"], name="pw", kernel_shape=[1, 1], strides=[2, 2], pads=[1, 1, 1, 1])
    model = _model([node], [("x", [1, 40, 6, 6])], [("y", [1, 48, 4, 4])], {"W": w, "B": bias})
    x = rng.standard_normal((1, 40, 6, 6)).astype(F32)
    untouched, p = _apply(model, rank=8)
    assert [n.op_type for n in untouched.graph] == ["Conv"] and not p.decisions
    full, _ = _apply(model, rank=40, conv1x1=True, min_saving=None)
    assert [n.op_type for n in full.graph] == ["Conv", "Conv"]
    np.testing.assert_allclose(_run(full, x=x)[0], _run(model, x=x)[0], rtol=1e-4, atol=1e-4)
    split, p = _apply(model, rank=8, conv1x1=True)
    assert p.decisions[0].split and _run(split, x=x)[0].shape == (1, 48, 4, 4)


def test_layers_that_would_not_save_macs_stay_untouched():
    model = matmul_model(16, 16, ("N", 16))
    split, p = _apply(model, rank=8)  # 8·(16+16) = 256 = 16·16: no saving
    assert [n.op_type for n in split.graph] == ["MatMul"]
    assert "W" in split.graph.initializers
    assert p.skipped and "saves too little" in p.skipped[0][1]
    wide, p = _apply(mlp_model(), energy=0.999)  # near-full ranks: nothing pays off
    assert [n.op_type for n in wide.graph].count("Gemm") == 3
    assert len(p.skipped) == 3


def test_shared_weight_and_non_constant_matmul():
    rng = np.random.default_rng(4)
    w = rng.standard_normal((64, 64)).astype(F32)
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["h"], name="first"),
        helper.make_node("MatMul", ["h", "W"], ["y0"], name="second"),
        helper.make_node("MatMul", ["y0", "x_t"], ["y"], name="scores"),
        helper.make_node("Transpose", ["x"], ["x_t"], perm=[1, 0]),
    ]
    nodes = [nodes[3], *nodes[:3]]
    model = _model(nodes, [("x", [4, 64])], [("y", [4, 4])], {"W": w})
    x = rng.standard_normal((4, 64)).astype(F32)
    split, p = _apply(model, rank=16)
    assert sorted(d.name for d in p.decisions if d.split) == ["first", "second"]
    assert "W" not in split.graph.initializers
    fa, fb = _weights(split, "first")
    np.testing.assert_allclose(_run(split, x=x)[0], x @ (fa @ fb) @ (fa @ fb) @ x.T, rtol=1e-3, atol=1e-3)


def test_unnamed_node_with_constant_node_weight_is_data_aware():
    rng = np.random.default_rng(6)
    w = rng.standard_normal((64, 64)).astype(F32)
    nodes = [
        helper.make_node("Constant", [], ["W"], value=numpy_helper.from_array(w)),
        helper.make_node("MatMul", ["x", "W"], ["y"]),  # no node name
    ]
    model = _model(nodes, [("x", ["N", 64])], [("y", ["N", 64])], {})
    result = lowrank_model(model, Dataset({"x": _correlated(64, 64, 0)}), rank=16)
    assert [d.name for d in result.split_layers] == ["y"] and result.split_layers[0].data_aware
    assert [n.op_type for n in result.model.graph] == ["MatMul", "MatMul"]  # dead Constant removed


# --------------------------------------------------------------------------- torch exports


@pytest.mark.parametrize("dynamo", [False, True])
def test_torch_linear_exports(tmp_path, dynamo):
    torch = pytest.importorskip("torch")
    from benchmarks.export import export_onnx

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(32, 96), torch.nn.ReLU(), torch.nn.Linear(96, 80), torch.nn.ReLU(), torch.nn.Linear(80, 10))
    for shape in [(2, 32), (2, 5, 32)]:
        x = torch.randn(*shape)
        path = export_onnx(net, (x,), tmp_path / f"mlp{len(shape)}_{dynamo}.onnx", dynamo=dynamo)
        model = ir.load(str(path))
        reference = _run(model, **{model.graph.inputs[0].name: x.numpy()})[0]
        full, p = _apply(model, energy=1.0, min_saving=None)
        assert sum(d.split for d in p.decisions) == 3, p.skipped
        np.testing.assert_allclose(_run(full, **{model.graph.inputs[0].name: x.numpy()})[0], reference, rtol=1e-4, atol=1e-4)
        split, p = _apply(model, rank=16)
        assert sum(d.split for d in p.decisions) == 2  # 32×96 and 96×80; 80×10 cannot pay
        out = _run(split, **{model.graph.inputs[0].name: x.numpy()})[0]
        assert out.shape == reference.shape


def _encoder_layer(kind: str):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    if kind == "bert":  # HuggingFace-style op pattern, TorchScript exporter
        from benchmarks.archs import bert_encoder_layer

        return bert_encoder_layer(hidden=64, heads=4, ff=256).eval(), False
    layer = torch.nn.TransformerEncoderLayer(d_model=64, nhead=4, dim_feedforward=256, batch_first=True, dropout=0.0)
    return layer.eval(), True  # the TorchScript exporter fails on it with torch 2.13


@pytest.mark.parametrize("kind", ["bert", pytest.param("torch", marks=pytest.mark.slow)])
def test_torch_transformer_encoder_layer(tmp_path, kind):
    torch = pytest.importorskip("torch")
    from benchmarks.export import export_onnx

    layer, dynamo = _encoder_layer(kind)
    x = torch.randn(2, 10, 64)
    path = export_onnx(layer, (x,), tmp_path / "encoder.onnx", dynamo=dynamo)
    model = ir.load(str(path))
    name = model.graph.inputs[0].name
    reference = _run(model, **{name: x.numpy()})[0]
    full, p = _apply(model, energy=1.0, min_saving=None)
    # Q/K/V (one fused in-projection or three), out-projection and the two FFN layers
    assert sum(d.split for d in p.decisions) >= 4, p.skipped
    np.testing.assert_allclose(_run(full, **{name: x.numpy()})[0], reference, rtol=1e-4, atol=1e-4)
    split, p = _apply(model, rank=16)
    ffn = [d for d in p.decisions if d.split and {d.in_features, d.out_features} == {64, 256}]
    assert len(ffn) == 2
    assert _run(split, **{name: x.numpy()})[0].shape == reference.shape


# --------------------------------------------------------------------------- data-aware SVD and API


def _correlated(n: int, dim: int, seed: int) -> np.ndarray:
    """Activations living mostly in a 12-dim subspace, with very unequal feature scales."""
    fixed = np.random.default_rng(1234)  # the same subspace for every sample set
    basis = fixed.standard_normal((12, dim)) * fixed.uniform(0.1, 3, dim)
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, 12)) @ basis + 0.05 * rng.standard_normal((n, dim))).astype(F32)


def test_data_aware_beats_plain_svd_at_equal_rank():
    model = mlp_model((64, 128, 96, 10), seed=5)
    calib = Dataset({"x": _correlated(256, 64, 0)})
    held_out = _correlated(128, 64, 1)
    reference = _run(model, x=held_out)[0]
    errors = {}
    for aware in (False, True):
        result = lowrank_model(model, calib, rank=16, data_aware=aware)
        assert result.data_aware is aware
        assert {d.name: d.rank for d in result.split_layers} == {"fc0": 16, "fc1": 16}
        errors[aware] = np.linalg.norm(_run(result.model, x=held_out)[0] - reference) / np.linalg.norm(reference)
    assert errors[True] < 0.5 * errors[False], errors


def test_api_rank_ratio_and_report():
    model = mlp_model()
    original_nodes = [n.op_type for n in model.graph]
    result = lowrank_model(model, rank=16, shapes={"x": [4, 32]})
    assert [n.op_type for n in model.graph] == original_nodes  # input untouched
    report = result.to_dict()
    json.dumps(report)
    fc0 = next(layer for layer in report["layers"] if layer["name"] == "fc0")
    assert fc0["shape"] == [32, 96] and fc0["rank"] == 16
    assert fc0["macs_before"] == 4 * 32 * 96 and fc0["macs_after"] == 4 * 16 * (32 + 96)
    last = next(layer for layer in report["layers"] if layer["name"] == "fc2")
    assert not last["split"] and "saves too little" in last["skipped"]
    ratio = lowrank_model(model, ratio=0.5)
    for d in ratio.split_layers:
        assert d.macs_after <= 0.5 * d.macs_before
        assert d.rank % 8 == 0 or d.rank < 8  # below round_to the ratio wins over rounding


def test_api_budget_search_keeps_accuracy():
    model = mlp_model((64, 128, 96, 10), seed=5)
    data = Dataset({"x": _correlated(200, 64, 2)})
    calib, held = data.split(0.5, seed=0)
    evaluator = evaluate.Evaluator(model, held)
    result = lowrank_model(model, calib, evaluator, max_drop=0.02)
    assert result.mode == "max_drop" and len(result.steps) >= 3
    assert result.split_layers, result.to_dict()
    assert evaluator.within(evaluator.score(result.model), 0.02)
    knobs = [step["knob"] for step in result.to_dict()["search"]]
    assert all(0.5 <= k <= 0.9999 for k in knobs) and result.knob in knobs


def test_budget_search_without_a_layer_to_split_evaluates_nothing():
    """silero-vad's LSTM model has no layer to split: the search used to score eight
    candidates that were all the model itself."""
    model = mlp_model((2, 2, 2), seed=1)  # too small for any split to save MACs
    data = Dataset({"x": _correlated(40, 2, 1)})
    calib, held = data.split(0.5, seed=0)
    evaluator = evaluate.Evaluator(model, held)
    scored = []
    original_score = evaluator.score
    evaluator.score = lambda candidate: scored.append(candidate) or original_score(candidate)
    result = lowrank_model(model, calib, evaluator, max_drop=0.01)
    assert not scored and not result.steps and not result.split_layers
    assert "nothing to search" in " ".join(result.notes)
    assert result.score == evaluator.baseline
    ctx = Context(verify_data=held, calib=calib, evaluator=evaluator, max_drop=0.01)
    _, records = run_stages(model, [lowrank_stage()], ctx)
    assert not records[0].modified and "nothing to search" in records[0].details["reason"]


def test_bad_options_raise_one_line_errors():
    from onnxopt.errors import OnnxoptError

    model = mlp_model()
    with pytest.raises(OnnxoptError, match="exactly one"):
        lowrank_model(model)
    with pytest.raises(OnnxoptError, match="exactly one"):
        lowrank_model(model, rank=8, energy=0.9)
    with pytest.raises(OnnxoptError, match="energy"):
        lowrank_model(model, energy=1.5)
    with pytest.raises(OnnxoptError, match="needs data"):
        lowrank_model(model, max_drop=0.01)


def test_pipeline_stage_under_budget():
    model = mlp_model((64, 128, 96, 10), seed=5)
    data = Dataset({"x": _correlated(200, 64, 3)})
    calib, held = data.split(0.5, seed=0)
    ctx = Context(verify_data=held, calib=calib, evaluator=evaluate.Evaluator(model, held), max_drop=0.02)
    stage = lowrank_stage()
    assert not stage.lossless
    result, records = run_stages(model, [stage], ctx)
    assert records[0].kept, records[0].reason
    assert records[0].details["layers_split"] >= 1
    no_budget = Context(verify_data=held)
    _, records = run_stages(model, [stage], no_budget)
    assert not records[0].modified and records[0].skipped


def test_optimize_runs_the_lowrank_stage(tmp_path):
    from onnxopt.optimize import optimize

    model_path, data_path = tmp_path / "mlp.onnx", tmp_path / "data.npz"
    onnx.save(ir.to_proto(mlp_model((64, 128, 96, 10), seed=5)), model_path)
    np.savez(data_path, x=_correlated(200, 64, 7))
    result = optimize(model_path, tmp_path / "out.onnx", data=data_path, max_drop=0.02, stages=["lowrank"], speed_check=False)
    record = next(r for r in result.stages if r.name == "lowrank")
    assert record.kept, record.reason
    assert record.details["layers_split"] >= 1 and result.after.macs < result.before.macs


# --------------------------------------------------------------------------- CLI


def test_cli_writes_model_and_report(tmp_path):
    model_path = tmp_path / "mlp.onnx"
    onnx.save(ir.to_proto(mlp_model((64, 128, 96, 10), seed=5)), model_path)
    data_path = tmp_path / "data.npz"
    np.savez(data_path, x=_correlated(64, 64, 4))
    out, report = tmp_path / "out.onnx", tmp_path / "report.json"
    runner = CliRunner()
    res = runner.invoke(lowrank_command, [str(model_path), "--data", str(data_path), "--rank", "16", "-o", str(out), "--report", str(report)])
    assert res.exit_code == 0, res.output
    assert "fc0" in res.output and out.exists()
    doc = json.loads(report.read_text())
    assert doc["lowrank"]["layers_split"] == 2 and doc["lowrank"]["data_aware"]
    res = runner.invoke(lowrank_command, [str(model_path), "--rank", "8", "--energy", "0.9", "-o", str(tmp_path / "x.onnx")])
    assert res.exit_code == 2 and "exactly one" in res.output


def test_data_aware_on_fixed_batch_model():
    model = matmul_model(64, 64, (2, 64))  # batch fixed to 2; 5 samples leave a partial batch
    result = lowrank_model(model, Dataset({"x": _correlated(5, 64, 0)}), rank=16)
    assert result.data_aware and result.split_layers[0].data_aware
