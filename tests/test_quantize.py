"""int8 (onnxruntime static/dynamic), the accuracy-aware fallback, ternary and binary weights."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from onnxopt import calibration, evaluate
from onnxopt.calibration import Dataset, load_npz
from onnxopt.errors import OnnxoptError
from onnxopt.model_io import load_model, save_model
from onnxopt.passes.lowbit import (
    LowBitWeightPass,
    binary_codes,
    decode_packed,
    pack_codes,
    ternary_codes,
)
from onnxopt.passes.quantize import keep_float, preprocess, quantize_static_int8, quantized_nodes
from onnxopt.pipeline import Context, run_stages
from onnxopt.quantization import quantize_model, quantize_stage
from tests import builders

DEMO = Path(__file__).resolve().parents[1] / "onnxopt" / "demo"


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def digits():
    """The trained demo digits CNN, its calibration half and an evaluator on the other half."""
    if not (DEMO / "digits_cnn.onnx").exists():
        pytest.skip("demo model not built")
    model = load_model(DEMO / "digits_cnn.onnx")
    data = load_npz(DEMO / "digits.npz", model)
    calib, held_out = data.split(0.5, seed=0)
    return model, calib, held_out, evaluate.Evaluator(model, held_out)


def conv_matmul_model(opset: int = 17, channels: int = 32) -> onnx.ModelProto:
    """input[N,8,8,8] → Conv(8→C,3×3) → Relu → Conv(C→C,3×3) → Relu → Flatten → MatMul(C·64→16) → Gemm(16→10)."""
    rng = np.random.default_rng(0)
    f32 = np.float32
    c = channels
    inits = [
        numpy_helper.from_array((rng.standard_normal((c, 8, 3, 3)) * 0.2).astype(f32), "w1"),
        numpy_helper.from_array((rng.standard_normal((c, c, 3, 3)) * 0.1).astype(f32), "w2"),
        numpy_helper.from_array((rng.standard_normal((c * 64, 16)) * 0.05).astype(f32), "w3"),
        numpy_helper.from_array((rng.standard_normal((16, 10)) * 0.3).astype(f32), "w4"),
        numpy_helper.from_array(np.zeros(10, f32), "b4"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "w1"], ["a"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["ar"], name="relu1"),
        helper.make_node("Conv", ["ar", "w2"], ["b"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["b"], ["br"], name="relu2"),
        helper.make_node("Flatten", ["br"], ["f"], name="flatten"),
        helper.make_node("MatMul", ["f", "w3"], ["m"], name="fc1"),
        helper.make_node("Gemm", ["m", "w4", "b4"], ["logits"], name="fc2"),
    ]
    graph = helper.make_graph(
        nodes, "conv_matmul",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 8, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10 if opset < 25 else 11
    onnx.checker.check_model(model)
    return model


def _inputs(n: int = 4) -> dict[str, np.ndarray]:
    return {"input": np.random.default_rng(1).standard_normal((n, 8, 8, 8)).astype(np.float32)}


def _decoded_weights(model: ir.Model, names: list[str]) -> dict[str, np.ndarray]:
    """Run onnxruntime with each named node's weight input exposed as a graph output."""
    exposed = model.clone()
    nodes = {n.name: n for n in exposed.graph}
    for name in names:
        exposed.graph.outputs.append(nodes[name].inputs[1])
    outs = evaluate.run(exposed, _inputs(1))
    return dict(zip(names, outs[1:]))


# --------------------------------------------------------------------------- formulas
def test_ternary_alpha_delta_match_twn_formula_on_hand_made_tensor():
    weight = np.array([[0.1, -0.5, 0.9, -0.05], [2.0, 0.0, -1.0, 0.2]], np.float32)
    codes, alpha, delta = ternary_codes(weight, axis=0)
    # channel 0: mean|W| = 1.55/4 = 0.3875, Δ = 0.27125; above it: 0.5, 0.9 → α = 0.7
    # channel 1: mean|W| = 3.2/4 = 0.8, Δ = 0.56; above it: 2.0, 1.0 → α = 1.5
    np.testing.assert_allclose(delta, [0.7 * 0.3875, 0.7 * 0.8])
    np.testing.assert_allclose(alpha, [0.7, 1.5])
    np.testing.assert_array_equal(codes, [[0, -1, 1, 0], [1, 0, -1, 0]])


def test_ternary_and_binary_along_the_second_axis():
    weight = np.array([[0.1, 2.0], [-0.5, 0.0], [0.9, -1.0], [-0.05, 0.2]], np.float32)  # [K, N] of a MatMul
    codes, alpha, _ = ternary_codes(weight, axis=1)
    np.testing.assert_allclose(alpha, [0.7, 1.5])
    np.testing.assert_array_equal(codes[:, 0], [0, -1, 1, 0])
    bcodes, balpha = binary_codes(weight, axis=1)
    np.testing.assert_allclose(balpha, [0.3875, 0.8])  # α = mean|W| per channel
    np.testing.assert_array_equal(bcodes[:, 0], [1, -1, 1, -1])


@pytest.mark.parametrize("bits,values", [(2, [-1, 0, 1]), (1, [-1, 1])])
def test_pack_and_decode_roundtrip(bits, values):
    codes = np.random.default_rng(0).choice(values, size=1003).astype(np.int8)
    packed = pack_codes(codes, bits)
    assert packed.dtype == np.uint8 and packed.size == -(-1003 // (5 if bits == 2 else 8))
    np.testing.assert_array_equal(decode_packed(packed, bits, codes.size), codes)


# --------------------------------------------------------------------------- the pass
@pytest.mark.parametrize("bits,storage,opset", [(2, "packed", 17), (1, "packed", 17), (2, "packed", 9), (2, "dq", 25), (1, "dq", 21)])
def test_lowbit_pass_decodes_to_per_channel_levels_in_onnxruntime(bits, storage, opset):
    model = ir.from_proto(conv_matmul_model(opset))
    originals = {n.name: n.inputs[1].const_value.numpy() for n in model.graph if n.op_type in ("Conv", "MatMul", "Gemm")}
    p = LowBitWeightPass(bits, storage, skip_first_last=False)
    assert p(model).modified
    onnx.checker.check_model(ir.to_proto(model), full_check=True)  # value_info agrees with the initializers
    assert model.opset_imports[""] == opset  # the pass never changes the opset
    quantized = [name for name, _ in p.applied]
    expected = ["conv1", "conv2", "fc1", "fc2"] if storage == "packed" else ["conv1", "conv2", "fc2"]
    assert quantized == expected
    decoded = _decoded_weights(model, quantized)
    for name in quantized:
        node = next(n for n in model.graph if n.name == name)
        w = decoded[name]
        transposed = storage == "dq" and node.op_type == "Gemm" and originals[name].shape != w.shape
        if transposed:
            w = w.T
        axis = 0 if node.op_type == "Conv" else 1
        rows = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)
        for row in rows:
            assert len(np.unique(row)) <= (3 if bits == 2 else 2)
        codes, alpha = (ternary_codes if bits == 2 else binary_codes)(originals[name], axis)[:2]
        shape = [1] * w.ndim
        shape[axis] = -1
        np.testing.assert_allclose(w, codes * alpha.astype(np.float32).reshape(shape), rtol=1e-6, atol=1e-7)
    outputs = evaluate.run(model, _inputs())
    assert np.isfinite(outputs[0]).all()


@pytest.mark.parametrize("bits,min_ratio", [(2, 16), (1, 24)])
def test_lowbit_packed_file_shrinks(tmp_path, bits, min_ratio):
    proto = conv_matmul_model(channels=64)
    model = ir.from_proto(proto)
    p = LowBitWeightPass(bits, "packed", skip_first_last=False)
    p(model)
    float_bytes = sum(s["float_bytes"] for s in p.stats)
    stored = sum(s["stored_bytes"] for s in p.stats if s["float_bytes"] > 10_000)
    assert sum(s["float_bytes"] for s in p.stats if s["float_bytes"] > 10_000) / stored >= min_ratio
    before = builders.save(proto, tmp_path / "f.onnx").stat().st_size
    after = save_model(model, tmp_path / "q.onnx").stat().st_size
    assert before > float_bytes and before / after >= min_ratio * 0.8


def test_lowbit_skips_first_last_excluded_and_nonconstant():
    model = ir.from_proto(conv_matmul_model())
    p = LowBitWeightPass(2, exclude=["conv2"])
    p(model)
    assert [name for name, _ in p.applied] == ["fc1"]
    reasons = dict(p.skipped)
    assert reasons["conv1"] == "first layer kept float"
    assert reasons["fc2"] == "last layer kept float"
    assert reasons["conv2"] == "excluded by the user"
    dq = LowBitWeightPass(2, "dq", skip_first_last=False)
    dq(ir.from_proto(conv_matmul_model(17)))
    assert not dq.applied and "opset 17 < 21" in dict(dq.skipped)["conv1"]


# --------------------------------------------------------------------------- int8
def test_int8_digits_cnn_within_one_percent(digits):
    model, calib, held_out, evaluator = digits
    result = quantize_model(model, calib, evaluator, mode="int8", check_speed=False)
    assert result.applied and result.layers_quantized
    ops = {n.op_type for n in result.model.graph}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert result.settings["activation_type"] == "u8" and result.settings["weight_type"] == "s8"
    assert evaluator.baseline - result.score <= 0.01
    assert result.size_after < result.size_before / 3
    assert result.latency_ratio is not None
    from onnxopt.cost import model_cost  # int8 runs the same layers: no more MACs, as many weights

    before, after = model_cost(model), model_cost(result.model)
    assert after.macs <= before.macs and after.params >= 0.99 * before.params  # (its BN is folded)
    report = result.to_dict()
    json.dumps(report)
    assert report["fidelity"]["accuracy_candidate"] == pytest.approx(result.score)


def test_keep_float_of_every_layer_restores_the_float_model(digits):
    model, calib, _, _ = digits
    pre, _ = preprocess(model)
    qdq = quantize_static_int8(pre, calib.take(slice(0, 32)))
    layers = quantized_nodes(qdq)
    restored, missing = keep_float(qdq, pre, layers)
    assert not missing
    assert not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in restored.graph)
    probe = calib.take(slice(0, 16))
    np.testing.assert_allclose(evaluate.run(restored, probe)[0], evaluate.run(model, probe)[0], rtol=1e-4, atol=1e-4)


def test_int8_fallback_keeps_sensitive_layers_float_within_budget(digits):
    model, calib, held_out, _ = digits
    strict = evaluate.Evaluator(model, held_out, metric="rel-l2")  # a budget plain int8 misses
    plain = quantize_model(model, calib, strict, mode="int8", check_speed=False)
    budget = strict.drop(plain.score) / 2
    result = quantize_model(model, calib, strict, mode="int8", max_drop=budget, check_speed=False)
    assert result.applied
    assert strict.within(result.score, budget)
    assert strict.within(strict.score(result.model), budget)  # the returned model itself
    sensitive = {n: r for n, r in result.layers_float.items() if r.startswith("sensitive")}
    assert sensitive and result.search and result.sensitivity
    assert set(sensitive) <= set(result.sensitivity) and not set(sensitive) & set(result.layers_quantized)
    assert not any(name.endswith("Relu") for name in result.sensitivity)  # pass-through ops are not ranked
    nodes = {n.name: n for n in result.model.graph}
    for name in sensitive:  # really float: no DequantizeLinear feeds it
        assert all(v is None or v.producer() is None or v.producer().op_type != "DequantizeLinear" for v in nodes[name].inputs)


def _static_builder(model, calib):
    from onnxopt.quantization import QuantizeResult, _int8_static

    result = QuantizeResult(model, "int8", False, [], {}, 0, 0)
    build, _ = _int8_static(model, calib, result, method="minmax", per_channel=True, activation_type="u8", weight_type="s8",
                            exclude=[], skip_first_last=False, reduce_range=None)  # fmt: skip
    return build


def _layer_output(model: ir.Model, name: str, probe: Dataset, reference: ir.Model | None = None) -> np.ndarray:
    """On ``probe``, the value of ``model`` named as node ``name``'s first output in
    ``reference`` (default ``model``), exposed as a graph output."""
    value_name = next(n for n in (reference or model).graph if n.name == name).outputs[0].name
    model = model.clone()
    value = next(o for n in model.graph for o in n.outputs if o.name == value_name)
    if not value.is_graph_output():
        model.graph.outputs.append(value)
    return evaluate.run(model, probe)[[v.name for v in model.graph.outputs].index(value_name)]


def test_local_errors_are_each_layer_quantized_alone_all_in_one_run(digits):
    from onnxopt.quantization import _local_errors

    model, calib, _, _ = digits
    build = _static_builder(model, calib.take(slice(0, 32)))
    probe = calib.take(slice(0, 8))
    local = _local_errors(build.reference(), build(frozenset()), build.ranked, probe)
    assert set(local) == set(build.ranked)
    (last,) = [n.name for n in build.reference().graph if n.outputs[0].is_graph_output()]
    for layer in build.ranked:  # the layer's own output, quantized alone, against the float one
        if layer == last:  # the graph output, rounded by its Q/DQ as in the model
            expected, alone = evaluate.run(build.reference(), probe)[0], evaluate.run(build.only(layer), probe)[0]
        else:
            expected, alone = _layer_output(build.reference(), layer, probe), _layer_output(build.only(layer), layer, probe)
        error = np.linalg.norm(alone.astype(np.float64) - expected) / np.linalg.norm(expected)
        assert error > 0 and local[layer] == pytest.approx(error, rel=1e-3, abs=1e-7)


def test_int8_fallback_above_the_measured_limit_measures_the_largest_local_errors(digits, monkeypatch):
    import onnxopt.quantization as quantization

    monkeypatch.setattr(quantization, "_measured_count", lambda ranked: min(ranked, 2))
    model, calib, held_out, _ = digits
    strict = evaluate.Evaluator(model, held_out, metric="rel-l2")
    plain = quantize_model(model, calib, strict, mode="int8", check_speed=False)
    budget = strict.drop(plain.score) / 2
    result = quantize_model(model, calib, strict, mode="int8", max_drop=budget, check_speed=False)
    assert result.applied and strict.within(strict.score(result.model), budget)
    assert len(result.local_error) > 2 and len(result.sensitivity) == 2
    by_local = sorted(result.local_error, key=lambda n: -result.local_error[n])
    assert set(result.sensitivity) == set(by_local[:2])  # the two largest local errors, measured end to end
    ranks = {n: int(r.split("rank ")[1].split("/")[0]) for n, r in result.layers_float.items() if r.startswith("sensitive")}
    rest = [n for n in by_local if n not in result.sensitivity]
    assert max(ranks.values()) > 2  # the search kept an unmeasured layer float too
    for name, rank in ranks.items():  # measured ones rank first; the rest by local error
        assert (rank <= 2) == (name in result.sensitivity)
        if rank > 2:
            assert "local output error" in result.layers_float[name] and rest.index(name) == rank - 3


@pytest.mark.parametrize("all_int8_ratio", [1.3, 0.8])
def test_fallback_is_searched_only_when_int8_of_every_layer_is_faster(all_int8_ratio, digits, monkeypatch):
    """The fallback keeps layers float for accuracy: when int8 of every layer is already
    slower than float it is not run (no sensitivity measured), and the reason says so."""
    import onnxopt.quantization as quantization

    model, calib, held_out, _ = digits
    strict = evaluate.Evaluator(model, held_out, metric="rel-l2")
    plain = quantize_model(model, calib, strict, mode="int8", check_speed=False)
    timed, measured = [], []
    monkeypatch.setattr(quantization, "latency_ratio", lambda *a, **k: timed.append(1) or (all_int8_ratio, 1.0, all_int8_ratio))
    real = quantization._rel_error
    monkeypatch.setattr(quantization, "_rel_error", lambda *a: measured.append(1) or real(*a))
    result = quantize_model(model, calib, strict, mode="int8", max_drop=strict.drop(plain.score) / 2)
    if all_int8_ratio > quantization.MAX_ALL_INT8_RATIO:
        assert not result.applied and not measured and not result.sensitivity and len(timed) == 2  # 1 and 2 threads
        assert "slower than float" in result.reason and "not run" in result.reason
        assert result.latency_ratio == all_int8_ratio and result.score == result.baseline
    else:
        assert result.applied and measured and len(timed) == 4  # timed before the search and after it
        assert strict.within(result.score, strict.drop(plain.score) / 2)


def test_known_sensitivities_are_not_measured_again(digits, monkeypatch):
    import onnxopt.quantization as quantization

    model, calib, _, _ = digits
    build = _static_builder(model, calib.take(slice(0, 32)))
    probe = calib.take(slice(0, 4))
    first, _ = quantization._sensitivities(build, model, probe)
    known = dict(list(first.items())[:-1])  # all but one layer measured before
    only = []
    real_only = build.only
    monkeypatch.setattr(build, "only", lambda layer: only.append(layer) or real_only(layer))
    again, _ = quantization._sensitivities(build, model, probe, known)
    assert only == [list(first)[-1]]  # only the unknown layer ran
    assert again == pytest.approx(first)
    only.clear()
    monkeypatch.setattr(quantization, "_measured_count", lambda ranked: min(ranked, 2))
    local = {layer: 1.0 for layer in build.ranked[2:]}  # ranked before by local error alone
    measured, kept_local = quantization._sensitivities(build, model, probe, {}, local)
    assert sorted(only) == sorted(build.ranked[:2]) and kept_local == local  # ≤ 48 unknown: all of them measured


def test_quantize_stage_run_again_reuses_its_sensitivities(digits, monkeypatch):
    """try_last_stage_alone runs the stage a second time in one pipeline: the layers it
    ranked the first time are not measured again, and the result is the same."""
    import onnxopt.quantization as quantization

    model, calib, held_out, _ = digits
    strict = evaluate.Evaluator(model, held_out, metric="rel-l2")
    plain = quantize_model(model, calib, strict, mode="int8", check_speed=False)
    ctx = Context(verify_data=held_out.take(slice(0, 16)), calib=calib, evaluator=strict, max_drop=strict.drop(plain.score) / 2)
    monkeypatch.setattr(quantization, "_measured_count", lambda ranked: min(ranked, 2))  # local errors pick 2 layers
    calls = []
    real = quantization._rel_error
    monkeypatch.setattr(quantization, "_rel_error", lambda *a: calls.append(1) or real(*a))
    stage = quantize_stage(mode="int8", check_speed=False)
    first = stage.run(model, ctx)
    measured = len(calls)
    second = stage.run(model, ctx)
    assert measured > 0 and len(calls) == measured  # nothing measured the second time
    assert first.details["layers_float"] == second.details["layers_float"]
    assert any("taken from an earlier measurement" in note for note in second.details["notes"])
    ranked_by = {run: next(note for note in result.details["notes"] if "end-to-end error" in note)
                 for run, result in (("first", first), ("second", second))}  # fmt: skip
    assert "(2 measured now)" in ranked_by["first"] and "(0 measured now)" in ranked_by["second"]
    assert quantize_stage(mode="int8", check_speed=False).run(model, ctx) and len(calls) == 2 * measured  # a new stage measures


def test_without_local_errors_every_ranked_layer_is_measured(digits, monkeypatch):
    import onnxopt.quantization as quantization

    model, calib, _, _ = digits
    build = _static_builder(model, calib.take(slice(0, 32)))
    probe = calib.take(slice(0, 4))
    monkeypatch.setattr(quantization, "_measured_count", lambda ranked: min(ranked, 2))
    real_session = quantization.evaluate.session

    def refuse_combined(m, *args, **kwargs):  # onnxruntime cannot load the combined graph
        if any(n.name.endswith("__quantized") for n in m.graph):
            raise OnnxoptError("onnxruntime cannot load the model: test")
        return real_session(m, *args, **kwargs)

    monkeypatch.setattr(quantization.evaluate, "session", refuse_combined)
    measured, local = quantization._sensitivities(build, model, probe)
    assert not local and set(measured) == set(build.ranked)


def test_int8_zero_budget_returns_the_float_model_with_the_reason(digits):
    model, calib, held_out, _ = digits
    exact = evaluate.Evaluator(model, held_out, metric="rel-l2")
    result = quantize_model(model, calib, exact, mode="int8", max_drop=0.0, check_speed=False)
    assert not result.applied and result.model is model
    assert "holds only with every layer float" in result.reason
    # The gentlest fallback (one layer quantized) already misses an exact budget: one step.
    (only,) = result.search
    assert not only["accepted"] and only["float_layers"] == len(result.sensitivity) - 1


def test_int8_per_channel_on_an_old_opset_raises_it_to_13():
    model = ir.from_proto(conv_matmul_model(opset=11))
    data = Dataset(_inputs(16))
    result = quantize_model(model, data, mode="int8", check_speed=False)
    assert result.applied and result.model.opset_imports[""] >= 13
    assert any("opset raised 11 → 13" in note for note in result.notes)
    ref, out = evaluate.run(model, data)[0], evaluate.run(result.model, data)[0]
    assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 0.05


def test_int8_gemm_with_a_two_dimensional_bias():
    # tf2onnx writes Gemm biases as [1, N]; onnxruntime's int32-bias scale check fails on
    # them with "truth value of an array is ambiguous" (seen on Google's magika model).
    proto = conv_matmul_model()
    (bias,) = [t for t in proto.graph.initializer if t.name == "b4"]
    bias.CopyFrom(numpy_helper.from_array(np.full((1, 10), 0.5, np.float32), "b4"))
    model, data = ir.from_proto(proto), Dataset(_inputs(16))
    result = quantize_model(model, data, mode="int8", check_speed=False)
    assert result.applied and "fc2" in result.layers_quantized
    ref, out = evaluate.run(model, data)[0], evaluate.run(result.model, data)[0]
    assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 0.05


def test_a_layer_that_turns_outputs_nan_ranks_as_most_sensitive():
    # Quantizing a decomposed LayerNorm's `variance + eps` alone can round it to 0 and turn
    # the output NaN (Google's magika model); NaN must not sort among the harmless layers.
    from onnxopt.quantization import _rel_error

    ref = [np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)]
    nan = [np.array([[1.0, np.nan], [3.0, 4.0]], np.float32)]
    close = [ref[0] * 1.01]
    assert _rel_error(ref, nan) == np.inf
    assert 0 < _rel_error(ref, close) < 0.02
    ranked = sorted(["close", "nan"], key=lambda n: -{"close": _rel_error(ref, close), "nan": _rel_error(ref, nan)}[n])
    assert ranked[0] == "nan"
    # NaN where the reference itself is NaN is not an error
    assert _rel_error(nan, [nan[0].copy()]) == 0.0


def test_a_layer_whose_int8_onnxruntime_rejects_is_kept_float_and_the_rest_quantized(digits, monkeypatch):
    """onnxruntime lacks kernels for some layers' int8 types (it refuses the session): with a
    budget that layer ranks as the most sensitive and stays float, the others are quantized;
    without a budget the refusal is the error."""
    model, calib, held_out, evaluator = digits
    layers = quantize_model(model, calib, evaluator, mode="int8", check_speed=False).layers_quantized
    ops = {n.name: n.op_type for n in model.graph}
    refused = [name for name in layers if ops.get(name) in ("Conv", "Gemm", "MatMul")][1]
    real = evaluate.session

    def session(m, *args, **kwargs):
        if isinstance(m, ir.Model):
            node = next((n for n in m.graph if n.name == refused), None)
            if node is not None and any(v is not None and v.producer() is not None
                                        and v.producer().op_type == "DequantizeLinear" for v in node.inputs):
                raise OnnxoptError(f"onnxruntime cannot load the model: no int8 kernel for {refused}")
        return real(m, *args, **kwargs)

    monkeypatch.setattr(evaluate, "session", session)
    result = quantize_model(model, calib, evaluator, mode="int8", max_drop=0.05, check_speed=False)
    assert result.applied
    assert result.layers_float[refused].startswith("onnxruntime rejects it")
    assert math.isinf(result.sensitivity[refused])
    assert set(result.layers_quantized) == set(layers) - {refused}
    assert any(note.startswith("onnxruntime rejected the int8 model of every layer") for note in result.notes)
    assert evaluator.within(evaluator.score(result.model), 0.05)
    with pytest.raises(OnnxoptError, match="no int8 kernel"):
        quantize_model(model, calib, evaluator, mode="int8", check_speed=False)


def test_preprocess_leaves_no_files_in_the_working_directory(tmp_path, monkeypatch):
    # onnxruntime's symbolic shape inference, when it cannot finish (seen on PaddleOCR's
    # detector), saves sym_shape_infer_temp.onnx plus an external-data file into the
    # working directory before it raises; preprocess then retries without it.
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    def incomplete(in_mp, *args, **kwargs):
        onnx.save_model(in_mp, "sym_shape_infer_temp.onnx", save_as_external_data=True)
        raise Exception("Incomplete symbolic shape inference")

    monkeypatch.setattr(SymbolicShapeInference, "infer_shapes", staticmethod(incomplete))
    monkeypatch.chdir(tmp_path)
    model = ir.from_proto(conv_matmul_model())
    pre, note = preprocess(model)
    assert note == "quant_pre_process without symbolic shape inference"
    assert list(tmp_path.iterdir()) == []


def test_int8_is_refused_when_not_faster(digits, monkeypatch):
    import onnxopt.quantization as q

    model, calib, _, evaluator = digits
    monkeypatch.setattr(q, "latency_ratio", lambda *a, **k: (1.4, 1.0, 1.4))
    result = quantize_model(model, calib, evaluator, mode="int8")
    assert not result.applied and result.model is model
    assert "not faster" in result.reason


def test_int8_dynamic_quantizes_matmuls():
    model = ir.from_proto(conv_matmul_model())
    result = quantize_model(model, mode="int8-dynamic", check_speed=False)
    assert result.applied and result.layers_quantized == ["fc1", "fc2"]
    assert any(n.op_type in ("MatMulInteger", "DynamicQuantizeLinear") for n in result.model.graph)
    ref, out = evaluate.run(model, _inputs())[0], evaluate.run(result.model, _inputs())[0]
    assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 0.05


def test_bad_mode_and_unknown_exclude_are_one_line_errors(digits):

    model, calib, _, _ = digits
    with pytest.raises(OnnxoptError, match="unknown mode"):
        quantize_model(model, calib, mode="int3")
    with pytest.raises(OnnxoptError, match="no node of that name"):
        quantize_model(model, calib, exclude=["nope"])
    with pytest.raises(OnnxoptError, match="needs calibration data"):
        quantize_model(model, None, mode="int8")


# --------------------------------------------------------------------------- ternary on a trained model
def test_ternary_digits_reports_size_and_runs(digits):
    model, calib, _, evaluator = digits
    result = quantize_model(model, calib, evaluator, mode="ternary", max_drop=0.03)
    assert result.applied
    assert evaluator.within(result.score, 0.03)
    assert result.size_before / result.size_after > 2
    big = [s for s in result.layer_stats if s["float_bytes"] > 20_000]
    assert big and all(s["float_bytes"] / s["stored_bytes"] >= 16 for s in big)
    assert result.layers_float["/stem/stem.0/Conv"] == "first layer kept float"


# --------------------------------------------------------------------------- outputs of other passes
def test_int8_after_fold_bn(digits):
    from onnxopt.passes.fold_bn import FoldBatchNormPass

    model, calib, _, evaluator = digits
    folded = model.clone()
    FoldBatchNormPass()(folded)
    assert not any(n.op_type == "BatchNormalization" for n in folded.graph)
    result = quantize_model(folded, calib, evaluator, mode="int8", check_speed=False)
    assert result.applied and evaluator.baseline - result.score <= 0.01


@pytest.mark.parametrize("mode", ["int8", "int8-dynamic"])
def test_int8_fused_kernels_compute_what_the_qdq_graph_says(mode):
    """onnxruntime's fused u8 × s8 kernels saturate on x86 CPUs without VNNI (int16 pair sums)
    unless weights use 7 bits: the optimised session must match the unoptimised QDQ math."""
    import onnxruntime as ort

    model = ir.from_proto(conv_matmul_model())
    data = Dataset(_inputs(16))
    result = quantize_model(model, data, mode=mode, check_speed=False)
    assert result.applied
    proto = ir.serde.serialize_model(result.model).SerializeToString()
    outputs = {}
    for level in (ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
        options = ort.SessionOptions()
        options.graph_optimization_level = level
        outputs[level] = ort.InferenceSession(proto, options, providers=["CPUExecutionProvider"]).run(None, data.inputs)[0]
    reference = evaluate.run(model, data)[0]
    unfused, fused = outputs.values()
    assert np.linalg.norm(fused - unfused) / np.linalg.norm(reference) < 0.01
    assert np.linalg.norm(fused - reference) / np.linalg.norm(reference) < 0.05


def test_int8_after_lowrank(digits):
    lowrank = pytest.importorskip("onnxopt.lowrank")
    model, calib, _, evaluator = digits
    split = lowrank.lowrank_model(model, None, rank=16).model
    assert len(list(split.graph)) > len(list(model.graph))
    result = quantize_model(split, calib, evaluator, mode="int8", check_speed=False)
    assert result.applied and evaluator.baseline - result.score <= 0.03


def test_int8_after_prune_model(digits):
    pruning = pytest.importorskip("onnxopt.pruning")
    model, calib, _, evaluator = digits
    pruned = pruning.prune_model(model, calib.take(slice(0, 64)), criterion="l1", ratio=0.3).model
    params = lambda m: sum(v.const_value.size for v in m.graph.initializers.values())  # noqa: E731
    assert params(pruned) < 0.7 * params(model)
    pruned_score = evaluator.score(pruned)
    result = quantize_model(pruned, calib, evaluator, mode="int8", check_speed=False)
    assert result.applied and pruned_score - result.score <= 0.01


def _hand_pruned(keep: list[int]) -> ir.Model:
    """builders.conv_bn_relu_gemm with conv output channels sliced to ``keep`` (a pruned model)."""
    proto = builders.conv_bn_relu_gemm()
    arrays = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    for name in ("conv.w", "conv.b", "bn.scale", "bn.bias", "bn.mean", "bn.var"):
        arrays[name] = arrays[name][keep]
    arrays["fc.w"] = arrays["fc.w"].reshape(5, 4, 64)[:, keep].reshape(5, -1)
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(numpy_helper.from_array(np.ascontiguousarray(a), n) for n, a in arrays.items())
    onnx.checker.check_model(proto)
    return ir.from_proto(proto)


@pytest.mark.parametrize("mode", ["int8", "ternary"])
def test_quantize_a_pruned_model(mode):
    pruned = _hand_pruned([0, 2, 3])
    data = Dataset({"input": np.random.default_rng(0).standard_normal((32, 3, 8, 8)).astype(np.float32)})
    result = quantize_model(pruned, data, mode=mode, check_speed=False, skip_first_last=False)
    assert result.applied and result.layers_quantized
    ref, out = evaluate.run(pruned, data)[0], evaluate.run(result.model, data)[0]
    assert np.corrcoef(ref.ravel(), out.ravel())[0, 1] > (0.99 if mode == "int8" else 0.7)


# --------------------------------------------------------------------------- pipeline and CLI
def test_quantize_stage_in_pipeline(digits, monkeypatch):
    import onnxopt.quantization as q

    model, calib, held_out, evaluator = digits
    ctx = Context(verify_data=held_out.take(slice(0, 32)), calib=calib, evaluator=evaluator, max_drop=0.01)
    final, records = run_stages(model, [quantize_stage(mode="int8")], ctx)
    assert records[0].name == "quantize-int8" and not records[0].lossless
    if records[0].kept:  # kept only when faster and within the budget
        assert any(n.op_type == "QuantizeLinear" for n in final.graph)
        assert records[0].details["latency_ratio"] < 1
    else:
        assert final is model
    monkeypatch.setattr(q, "latency_ratio", lambda *a, **k: (1.2, 1.0, 1.2))
    final, records = run_stages(model, [quantize_stage(mode="int8")], ctx)
    assert final is model and not records[0].kept
    assert "not faster" in records[0].details["reason"]


def test_cli_quantize_writes_model_and_report(tmp_path):
    from onnxopt.cli_quantize import quantize_command

    if not (DEMO / "digits_cnn.onnx").exists():
        pytest.skip("demo model not built")
    out, report = tmp_path / "t.onnx", tmp_path / "r.json"
    args = [str(DEMO / "digits_cnn.onnx"), "--data", str(DEMO / "digits.npz"), "--mode", "ternary", "-o", str(out), "--report", str(report)]
    res = CliRunner().invoke(quantize_command, args)
    assert res.exit_code == 0, res.output
    data = json.loads(report.read_text())
    assert data["quantize"]["applied"] and data["after"]["size_bytes"] < data["before"]["size_bytes"] / 2
    assert out.exists() and "first layer kept float" in res.output
    res = CliRunner().invoke(quantize_command, [str(DEMO / "digits_cnn.onnx"), "-o", str(tmp_path / "x.onnx")])
    assert res.exit_code == 2 and "needs calibration data" in res.output
    assert not (tmp_path / "x.onnx").exists()


def test_auto_mode_picks_dynamic_int8_for_matmul_heavy_models():
    """Convolution-heavy → static QDQ; MatMul-heavy (transformers) → dynamic int8."""
    import onnx_ir as ir
    from onnx import TensorProto, helper, numpy_helper

    from onnxopt.quantization import _auto_int8_modes
    from tests.builders import conv_bn_relu_gemm

    assert _auto_int8_modes(ir.from_proto(conv_bn_relu_gemm()))[0] == "int8"
    w = numpy_helper.from_array(np.ones((64, 64), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 64])], [w],
    )
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert _auto_int8_modes(model) == ["int8-dynamic"]


def _conv_lstm_model(seq: int = 6, hidden: int = 16) -> ir.Model:
    """A CRNN in miniature: Conv1d front end over ``[N, 16, T]``, LSTM over time, MatMul
    classifier; output ``[T, N, 5]``."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array((rng.standard_normal((32, 16, 3)) * 0.2).astype(np.float32), "conv_w"),
        numpy_helper.from_array((rng.standard_normal((1, 4 * hidden, 32)) * 0.2).astype(np.float32), "lstm_w"),
        numpy_helper.from_array((rng.standard_normal((1, 4 * hidden, hidden)) * 0.2).astype(np.float32), "lstm_r"),
        numpy_helper.from_array((rng.standard_normal((hidden, 5)) * 0.5).astype(np.float32), "fc_w"),
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "conv_w"], ["c"], name="conv", pads=[1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Transpose", ["r"], ["t"], name="to_time", perm=[2, 0, 1]),
        helper.make_node("LSTM", ["t", "lstm_w", "lstm_r"], ["y"], name="lstm", hidden_size=hidden),
        helper.make_node("Squeeze", ["y", "axis1"], ["h"], name="squeeze"),
        helper.make_node("MatMul", ["h", "fc_w"], ["logits"], name="fc"),
    ]
    graph = helper.make_graph(
        nodes, "crnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16, seq])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [seq, "N", 5])], inits,
    )  # fmt: skip
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_recurrent_layers_count_their_macs():
    from onnxopt.cost import model_cost

    cost = model_cost(_conv_lstm_model(), {"x": [1, 16, 6]})
    by_name = {n.name: n.macs for n in cost.nodes}
    assert by_name["lstm"] == 6 * (4 * 16 * 32 + 4 * 16 * 16)  # seq · (prod W + prod R)
    assert by_name["conv"] == 6 * 32 * 16 * 3
    assert cost.params >= 32 * 16 * 3 + 4 * 16 * 48 + 16 * 5


def test_int8_dynamic_quantizes_lstm_layers():
    model = _conv_lstm_model()
    data = Dataset({"x": np.random.default_rng(1).standard_normal((32, 16, 6)).astype(np.float32)})
    result = quantize_model(model, mode="int8-dynamic", check_speed=False)
    ops = {n.op_type for n in result.model.graph}
    assert result.applied and "DynamicQuantizeLSTM" in ops and "LSTM" not in ops and "Conv" in ops
    ref, out = evaluate.run(model, data)[0], evaluate.run(result.model, data)[0]
    assert np.corrcoef(ref.ravel(), out.ravel())[0, 1] > 0.99
    # the int8 weights are still parameters (the report said ×0.07 on the OCR recognizer)
    from onnxopt.cost import model_cost

    before, after = model_cost(model, {"x": [1, 16, 6]}), model_cost(result.model, {"x": [1, 16, 6]})
    assert before.params <= after.params < 1.15 * before.params  # + per-channel scales, zero points


def _kinds(model: ir.Model) -> frozenset[str]:
    ops = {n.op_type for n in model.graph}
    return frozenset(k for k, op in (("static", "QuantizeLinear"), ("dynamic", "DynamicQuantizeLSTM")) if op in ops)


@pytest.mark.parametrize("fastest", [frozenset({"dynamic"}), frozenset({"static"}), frozenset({"static", "dynamic"})])
def test_auto_mode_tries_static_dynamic_and_mixed_int8_and_keeps_the_faster(monkeypatch, fastest):
    """A model with convolutions *and* an LSTM gets three int8 attempts (static, dynamic, and
    each kind in its own mode); the one measured fastest wins."""
    import onnxopt.quantization as q

    model = _conv_lstm_model()
    assert q._auto_int8_modes(model, {"x": [1, 16, 6]}) == ["int8-dynamic", "int8", "int8-mixed"]
    monkeypatch.setattr(q, "latency_ratio", lambda f, c, feed, threads=1: (0.5 if _kinds(c) == fastest else 0.8, 1.0, 1.0))
    measured_together = []

    def head_to_head(f, cands, feed, threads=1):
        measured_together.append(len(cands))
        return [0.5 if _kinds(c) == fastest else 0.8 for c in cands], 1.0, [1.0] * len(cands)

    monkeypatch.setattr(q, "latency_ratios", head_to_head)
    data = Dataset({"x": np.random.default_rng(1).standard_normal((64, 16, 6)).astype(np.float32)})
    calib, held_out = data.split(0.5, 0)
    ctx = Context(verify_data=held_out.take(slice(0, 8)), calib=calib, evaluator=evaluate.Evaluator(model, held_out, metric="cosine"),
                  max_drop=0.5, shapes={"x": [1, 16, 6]})  # fmt: skip
    final, records = run_stages(model, [quantize_stage()], ctx)
    attempts = records[0].details["attempts"]
    assert [a["mode"] for a in attempts] == ["int8-dynamic", "int8", "int8-mixed"] and all(a["applied"] for a in attempts)
    assert records[0].kept and _kinds(final) == fastest
    assert measured_together == [3, 3]  # the three results timed in one run, with 1 and 2 threads
    assert [a["head_to_head_ratio"] for a in attempts if _kinds_of_mode(a["mode"]) == fastest] == [0.5]


def _kinds_of_mode(mode: str) -> frozenset[str]:
    return {"int8": frozenset({"static"}), "int8-dynamic": frozenset({"dynamic"}), "int8-mixed": frozenset({"static", "dynamic"})}[mode]


def test_int8_mixed_runs_convolutions_static_and_the_lstm_dynamic():
    model = _conv_lstm_model()
    data = Dataset({"x": np.random.default_rng(1).standard_normal((32, 16, 6)).astype(np.float32)})
    result = quantize_model(model, data, mode="int8-mixed", check_speed=False)
    assert result.applied and _kinds(result.model) == {"static", "dynamic"}
    conv = next(n for n in result.model.graph if n.op_type == "Conv")
    assert conv.inputs[0].producer().op_type == "DequantizeLinear"  # int8 activations into the conv
    assert {"conv", "lstm", "fc"} <= set(result.layers_quantized)
    ref, out = evaluate.run(model, data)[0], evaluate.run(result.model, data)[0]
    assert np.corrcoef(ref.ravel(), out.ravel())[0, 1] > 0.99
    # the fallback turns either kind back to float
    lstm_float = quantize_model(model, data, mode="int8-mixed", check_speed=False, exclude=["lstm"]).model
    assert _kinds(lstm_float) == {"static"} and any(n.op_type == "LSTM" for n in lstm_float.graph)
    conv_float = quantize_model(model, data, mode="int8-mixed", check_speed=False, exclude=["conv"]).model
    conv = next(n for n in conv_float.graph if n.op_type == "Conv")
    assert "dynamic" in _kinds(conv_float) and conv.inputs[1].producer() is None  # float weight


def _matmul_chain(layers: int, width: int = 256) -> ir.Model:
    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"
    for i in range(layers):
        inits.append(numpy_helper.from_array((rng.standard_normal((width, width)) / 16).astype(np.float32), f"w{i}"))
        nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"h{i}"], name=f"mm{i}"))
        x = f"h{i}"
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64, width])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, [64, width])], inits)  # fmt: skip
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_latency_ratios_times_several_candidates_against_one_baseline():
    from onnxopt.bench import latency_ratios

    feed = {"x": np.ones((64, 256), np.float32)}
    ratios, base_ms, cand_ms = latency_ratios(_matmul_chain(4), [_matmul_chain(1), _matmul_chain(16)], feed, min_seconds=0.2)
    assert len(ratios) == len(cand_ms) == 2 and base_ms > 0
    assert ratios[0] < 1 < ratios[1]  # a quarter of the work is faster, four times the work slower
    assert ratios == pytest.approx([c / base_ms for c in cand_ms])


def test_auto_mode_falls_back_to_each_attempts_own_timing_when_they_cannot_be_timed_together(monkeypatch):
    import onnxopt.quantization as q

    def cannot(*args, **kwargs):
        raise OnnxoptError("no session")

    monkeypatch.setattr(q, "latency_ratio", lambda f, c, feed, threads=1: (0.5 if _kinds(c) == {"static"} else 0.8, 1.0, 1.0))
    monkeypatch.setattr(q, "latency_ratios", cannot)
    model = _conv_lstm_model()
    data = Dataset({"x": np.random.default_rng(1).standard_normal((64, 16, 6)).astype(np.float32)})
    calib, held_out = data.split(0.5, 0)
    ctx = Context(verify_data=held_out.take(slice(0, 8)), calib=calib, evaluator=evaluate.Evaluator(model, held_out, metric="cosine"),
                  max_drop=0.5, shapes={"x": [1, 16, 6]})  # fmt: skip
    final, records = run_stages(model, [quantize_stage()], ctx)
    assert records[0].kept and _kinds(final) == {"static"}


def _post_ln_encoder_layer():
    """A post-LayerNorm encoder layer (wav2vec2's, BERT's): the LayerNorm output feeds the
    Q, K, V projections and the residual Add, then a feed-forward block."""
    torch = pytest.importorskip("torch")
    from torch import nn

    class PostLN(nn.Module):
        def __init__(self, d: int = 16) -> None:
            super().__init__()
            self.ln0, self.ln1 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
            self.ff1, self.ff2, self.head = nn.Linear(d, 32), nn.Linear(32, d), nn.Linear(d, 3)

        def forward(self, x):
            h = self.ln0(x)
            a = torch.softmax(self.q(h) @ self.k(h).transpose(1, 2) / 4.0, -1) @ self.v(h)
            y = self.ln1(h + self.o(a))
            return self.head(y + self.ff2(torch.relu(self.ff1(y))))

    torch.manual_seed(0)
    return PostLN().eval(), (torch.randn(1, 6, 16),)


@pytest.mark.parametrize("saved_by_onnxruntime", [False, True])
def test_every_layer_kept_float_alone_loads_in_onnxruntime(saved_by_onnxruntime, tmp_path):
    """Pre-processing fuses the feed-forward MatMul + Add pairs into Gemms with Reshape
    shapes that onnxruntime names ``gemm_input_shape``; keeping an attention projection's
    bias Add float lets onnxruntime fuse that pair at session start under the same name,
    and it refused the model. The names are made unique (also when the input model was
    saved by onnxruntime with them), so every candidate of the fallback loads."""
    from benchmarks.export import export_onnx

    net, args = _post_ln_encoder_layer()
    path = export_onnx(net, args, tmp_path / "post_ln.onnx", dynamo=False)
    model = load_model(path)
    if saved_by_onnxruntime:  # the input already holds onnxruntime's names
        model, _ = preprocess(model)
        for value in list(model.graph.initializers.values()):
            value.name = value.name.removeprefix("pre/")
        assert "gemm_input_shape" in model.graph.initializers
    data = Dataset({model.graph.inputs[0].name: np.random.default_rng(0).standard_normal((8, 6, 16)).astype(np.float32)})
    build = _static_builder(model, data)
    assert not [n for n in build.reference().graph.initializers if n.startswith("gemm_")]
    adds = [layer for layer in build.ranked if layer.endswith("/Add") and layer[1] in "qkvo"]
    assert len(adds) == 4
    for layer in adds:
        out = evaluate.run(build(frozenset({layer})), data.take(slice(0, 2)))[0]
        assert np.isfinite(out).all()


def test_static_int8_keeps_masked_attention_logits_float(tmp_path):
    """An additive attention mask (−1e4 on padding) beside scores of a few units: one 8-bit
    scale over that range flattened every score (agreement 0.16 on a 2-layer GPT)."""
    torch = pytest.importorskip("torch")
    from benchmarks.export import export_onnx

    class Attention(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(50, 32)
            self.qkv = torch.nn.Linear(32, 96)
            self.head = torch.nn.Linear(32, 50)

        def forward(self, ids, mask):
            x = self.embed(ids)
            q, k, v = self.qkv(x).chunk(3, dim=-1)
            scores = q @ k.transpose(1, 2) / 32**0.5 + (1.0 - mask[:, None, :]) * -1e4
            return self.head(scores.softmax(-1) @ v)

    torch.manual_seed(0)
    ids = torch.randint(0, 50, (64, 12))
    mask = torch.ones(64, 12)
    mask[::2, 8:] = 0
    export_onnx(Attention().eval(), (ids[:2], mask[:2]), tmp_path / "att.onnx", dynamo=False,
                input_names=["ids", "mask"], dynamic_batch=True)  # fmt: skip
    model = load_model(tmp_path / "att.onnx")
    data = Dataset({"ids": ids.numpy(), "mask": mask.numpy()})
    result = quantize_model(model, data, evaluate.Evaluator(model, data), mode="int8", check_speed=False)
    assert result.applied and any("Softmax" in why for why in result.layers_float.values())
    assert result.score >= 0.9  # top-1 agreement per position; 0.78 with the mask quantized
    # the embedding's Gather rounds its table: ranked like a weighted layer, so the fallback can
    # keep it float (it was a never-ranked pass-through, which capped a GPT's score at 0.94)
    strict = quantize_model(model, data, evaluate.Evaluator(model, data), mode="int8", check_speed=False, max_drop=0.001)
    embedding = next(n.name for n in model.graph if n.op_type == "Gather" and n.inputs[0].const_value is not None)
    assert embedding in strict.sensitivity


def test_ternary_quantizes_weights_computed_from_constants(tmp_path):
    """weight_norm's ``g · v / ‖v‖`` (TorchScript without constant folding): int8 folded such
    weights first, ternary listed every layer as 'weight is not a constant initializer'."""
    torch = pytest.importorskip("torch")
    nn, wn = torch.nn, torch.nn.utils.parametrizations.weight_norm
    torch.manual_seed(0)
    net = nn.Sequential(wn(nn.Conv1d(8, 32, 5, padding=2)), nn.ReLU(), wn(nn.Conv1d(32, 32, 5, padding=2)), nn.ReLU(),
                        wn(nn.Conv1d(32, 4, 5, padding=2))).eval()  # fmt: skip
    path = tmp_path / "wn.onnx"
    with torch.no_grad():
        torch.onnx.export(net, (torch.randn(1, 8, 16),), str(path), dynamo=False, opset_version=17, do_constant_folding=False)
    result = quantize_model(load_model(path), mode="ternary", skip_first_last=False)
    assert result.applied and len(result.layers_quantized) == 3, result.layers_float
    assert any("folded first" in note for note in result.notes)


def _group_norm_pair() -> ir.Model:
    """Two convolutions, each followed by GroupNorm as the dynamo exporter writes it: Reshape
    to ``[N, G, -1]``, InstanceNormalization whose ``ones`` scale and ``zeros`` bias are one
    initializer pair read by both, Reshape back, per-channel Mul / Add. The values are
    named as dynamo numbers them: the second norm's input is ``zeros1``, the name
    onnxruntime's quantizer gives the bias's copy for its second reader."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(a, n) for n, a in [
        ("w1", rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3), ("w2", rng.standard_normal((8, 8, 3, 3)).astype(np.float32) * 0.2),
        ("ones", np.ones(2, np.float32)), ("zeros", np.zeros(2, np.float32)),
        ("grouped", np.array([0, 2, -1], np.int64)), ("back", np.array([0, 8, 8, 8], np.int64)),
        ("gamma", rng.uniform(0.5, 1.5, (8, 1, 1)).astype(np.float32)), ("beta", rng.standard_normal((8, 1, 1)).astype(np.float32)),
    ]]  # fmt: skip
    nodes = []
    x = "x"
    for i, w in enumerate(("w1", "w2")):
        nodes += [helper.make_node("Conv", [x, w], [f"c{i}"], pads=[1, 1, 1, 1], name=f"conv{i}"),
                  helper.make_node("Reshape", [f"c{i}", "grouped"], [f"zeros{i}"], name=f"to_groups{i}"),
                  helper.make_node("InstanceNormalization", [f"zeros{i}", "ones", "zeros"], [f"n{i}"], name=f"norm{i}"),
                  helper.make_node("Reshape", [f"n{i}", "back"], [f"b{i}"], name=f"from_groups{i}"),
                  helper.make_node("Mul", [f"b{i}", "gamma"], [f"s{i}"], name=f"scale{i}"),
                  helper.make_node("Add", [f"s{i}", "beta"], [f"y{i}" if i else "h"], name=f"shift{i}")]  # fmt: skip
        x = "h"
    graph = helper.make_graph(nodes, "gn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y1", TensorProto.FLOAT, ["N", 8, 8, 8])], inits)  # fmt: skip
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_static_int8_with_a_norm_scale_shared_by_several_nodes():
    """onnxruntime's QDQ quantizer copies a shared initializer per reader, naming the copy
    ``<name><k>``; where that name is taken (dynamo's ``val_34`` bias beside the value
    ``val_341`` in a UNet) it stopped with "Quantization parameter shared mode is not
    supported for weight yet". Each node now gets its own copy of small shared initializers."""
    model = _group_norm_pair()
    calib = Dataset({"x": np.random.default_rng(1).random((16, 3, 8, 8), np.float32)})
    quantized = quantize_static_int8(preprocess(model)[0], calib)
    assert sum(n.op_type == "QuantizeLinear" for n in quantized.graph) >= 2
    ref, out = evaluate.run(model, calib)[0], evaluate.run(quantized, calib)[0]
    assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 0.1


def test_an_already_quantized_model_is_refused_with_the_reason(tmp_path):
    """Re-quantizing onnxruntime's own QDQ output stopped with "SerdeError: Error calling
    _deserialize_graph" (its second pass redeclares a DequantizeLinear output)."""
    from onnxopt.cli_quantize import quantize_command

    model = ir.from_proto(conv_matmul_model())
    calib = Dataset({"input": np.random.default_rng(0).standard_normal((8, 8, 8, 8)).astype(np.float32)})
    int8 = quantize_static_int8(preprocess(model)[0], calib)
    for mode in ("int8", "int8-dynamic", "ternary"):
        result = quantize_model(int8, calib, mode=mode)
        assert not result.applied and "already quantized" in result.reason and result.model is int8
    path = save_model(int8, tmp_path / "int8.onnx")
    np.savez(tmp_path / "d.npz", input=calib.inputs["input"])
    out = CliRunner().invoke(quantize_command, [str(path), "--data", str(tmp_path / "d.npz"), "-o", str(tmp_path / "q.onnx")])
    assert out.exit_code == 2 and "already quantized" in out.output and not (tmp_path / "q.onnx").exists()


def _relative_position_model() -> ir.Model:
    """``x [N, T, 16]`` plus a bias looked up by T5-style position buckets computed from the
    sequence length alone (``Range → Cast → Div → Log → Mul → Cast → Min → Where → Gather``;
    position 0 gives ``log 0 = −inf``, which the Where discards), then a MatMul."""
    rng = np.random.default_rng(0)
    i64 = lambda name, v: numpy_helper.from_array(np.array(v, np.int64), name)  # noqa: E731
    f32 = lambda name, v: numpy_helper.from_array(np.array(v, np.float32), name)  # noqa: E731
    inits = [i64("zero", 0), i64("one", 1), i64("four", 4), i64("seven", 7), f32("fourf", 4.0), f32("two", 2.0),
             f32("table", rng.standard_normal((8, 16))), f32("w", rng.standard_normal((16, 16)) * 0.3)]  # fmt: skip
    n = helper.make_node
    nodes = [n("Shape", ["x"], ["shape"], name="shape"), n("Gather", ["shape", "one"], ["t"], name="length", axis=0),
             n("Range", ["zero", "t", "one"], ["pos"], name="range"), n("Less", ["pos", "four"], ["small"], name="less"),
             n("Cast", ["pos"], ["posf"], name="to_float", to=TensorProto.FLOAT), n("Div", ["posf", "fourf"], ["ratio"], name="div"),
             n("Log", ["ratio"], ["log"], name="log"), n("Mul", ["log", "two"], ["scaled"], name="mul"),
             n("Cast", ["scaled"], ["steps"], name="to_int", to=TensorProto.INT64), n("Add", ["steps", "four"], ["large"], name="add"),
             n("Min", ["large", "seven"], ["capped"], name="cap"), n("Where", ["small", "pos", "capped"], ["bucket"], name="where"),
             n("Gather", ["table", "bucket"], ["bias"], name="lookup", axis=0), n("Add", ["x", "bias"], ["xb"], name="plus_bias"),
             n("MatMul", ["xb", "w"], ["y"], name="proj")]  # fmt: skip
    graph = helper.make_graph(nodes, "buckets", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 12, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 12, 16])], inits)  # fmt: skip
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_static_int8_leaves_position_arithmetic_float():
    """T5's relative-position buckets: static int8 calibrated their float arithmetic too
    (log 0 = −inf: no finite scale), and onnxruntime then failed on "indices element out of
    data bounds". Nodes computed from shapes alone stay float, and say why."""
    model = _relative_position_model()
    calib = Dataset({"x": np.random.default_rng(1).standard_normal((16, 12, 16)).astype(np.float32)})
    result = quantize_model(model, calib, mode="int8", check_speed=False)
    assert result.applied and "proj" in result.layers_quantized
    assert {"mul", "lookup"} <= {n for n, why in result.layers_float.items() if "from shapes only" in why}
    ref, out = evaluate.run(model, calib)[0], evaluate.run(result.model, calib)[0]
    assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 0.05


def test_a_grouped_conv_transpose_stays_float_and_the_rest_is_quantized():
    """onnxruntime's static quantizer fails on a grouped ConvTranspose ("operands could not
    be broadcast together": C_out / group weight scales for C_out biases); it stays float
    with the reason and the Conv before it is quantized."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name) for name, shape in
             (("w1", (16, 3, 3, 3)), ("b1", (16,)), ("w2", (16, 4, 3, 3)), ("b2", (8,)))]  # fmt: skip
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["a"], name="conv", pads=[1] * 4),
             helper.make_node("Relu", ["a"], ["r"], name="relu"),
             helper.make_node("ConvTranspose", ["r", "w2", "b2"], ["y"], name="up", group=2, strides=[2, 2],
                              pads=[1] * 4, output_padding=[1, 1])]  # fmt: skip
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 32, 32])], inits)  # fmt: skip
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    calib = Dataset({"x": rng.standard_normal((16, 3, 16, 16)).astype(np.float32)})
    result = quantize_model(model, calib, mode="int8", check_speed=False)
    assert result.applied, result.reason
    assert "grouped ConvTranspose" in result.layers_float["up"]
    assert "conv" in result.layers_quantized


def _gemm_matmul_model() -> ir.Model:
    """x [4, 16] → Gemm (bias) → Relu → MatMul → Gemm (transB, bias) → y [4, 8]."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32), name) for name, shape in [
        ("w1", (16, 32)), ("b1", (32,)), ("w2", (32, 16)), ("w3", (8, 16)), ("b3", (8,))]]  # fmt: skip
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h1"], name="fc1"),
        helper.make_node("Relu", ["h1"], ["r1"], name="relu"),
        helper.make_node("MatMul", ["r1", "w2"], ["h2"], name="fc2"),
        helper.make_node("Gemm", ["h2", "w3", "b3"], ["y"], name="fc3", transB=1),
    ]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])], inits)  # fmt: skip
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_dynamic_int8_keeps_an_excluded_gemm_float():
    # onnxruntime renames a Gemm to <name>_MatMul before it reads nodes_to_exclude
    from onnxopt.passes.quantize import quantize_dynamic_int8

    q = quantize_dynamic_int8(_gemm_matmul_model(), exclude=["fc1"])
    assert [n.name for n in q.graph if n.op_type == "MatMul"] == ["fc1_MatMul"]  # float, as a MatMul + Add
    assert sum(n.op_type == "MatMulInteger" for n in q.graph) == 2


def test_one_layer_spliced_from_the_dynamic_int8_model_equals_quantizing_it_alone():
    from onnxopt.passes.quantize import quantize_dynamic_int8, splice_quantized

    model = _gemm_matmul_model()
    full = quantize_dynamic_int8(model)
    x = {"x": np.random.default_rng(1).standard_normal((4, 16)).astype(np.float32)}
    reference = evaluate.run(model, x)[0]
    for layer in ("fc1", "fc2", "fc3"):
        spliced = splice_quantized(model, full, layer)
        alone = quantize_dynamic_int8(model, exclude=[n for n in ("fc1", "fc2", "fc3") if n != layer])
        assert sum(n.op_type == "MatMulInteger" for n in spliced.graph) == 1
        out = evaluate.run(spliced, x)[0]
        np.testing.assert_array_equal(out, evaluate.run(alone, x)[0])
        assert np.abs(out - reference).max() > 0  # it is quantized
    assert splice_quantized(model, model, "fc2") is None  # not quantized there


def test_local_errors_of_dynamic_int8_layers_equal_splicing_each_alone():
    from onnxopt.passes.quantize import quantize_dynamic_int8, splice_quantized
    from onnxopt.quantization import _local_errors

    model = _gemm_matmul_model()
    full = quantize_dynamic_int8(model)
    x = Dataset({"x": np.random.default_rng(1).standard_normal((4, 16)).astype(np.float32)})
    local = _local_errors(model, full, ["fc1", "fc2", "fc3"], x)
    assert set(local) == {"fc1", "fc2", "fc3"}
    for layer in ("fc1", "fc2", "fc3"):
        expected, alone = _layer_output(model, layer, x), _layer_output(splice_quantized(model, full, layer), layer, x, model)
        assert local[layer] == pytest.approx(np.linalg.norm(alone - expected) / np.linalg.norm(expected), rel=1e-4)


def test_calibration_runs_few_enough_samples_that_all_their_values_fit_the_budget(monkeypatch):
    import onnxopt.passes.quantize as quantize_pass

    model = ir.from_proto(builders.conv_bn_relu_gemm())
    x = np.random.default_rng(0).standard_normal((12, 3, 8, 8)).astype(np.float32)
    data = Dataset({"input": x})
    per_sample = 4 * (192 + 4 * 256 + 5)  # input, Conv, BN, Relu, Flatten outputs and logits, as float32
    full = quantize_static_int8(model, data)
    monkeypatch.setattr(calibration, "ACTIVATION_BUDGET", 3 * per_sample)
    assert calibration.batch_keeping_all_values(model, data, 16) == 3
    runs = []
    monkeypatch.setattr(quantize_pass.DatasetReader, "get_next",
                        lambda self: runs.append(feed := next(self._iter, None)) or feed)  # fmt: skip
    small = quantize_static_int8(model, data)
    assert [len(f["input"]) for f in runs if f is not None] == [3, 3, 3, 3]
    scales = lambda m: {k: v.const_value.numpy().tolist() for k, v in m.graph.initializers.items() if "scale" in k}  # noqa: E731
    assert scales(full) and scales(small) == scales(full)  # min and max merge exactly across runs
