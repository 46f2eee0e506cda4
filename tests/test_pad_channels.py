"""Channel padding: the inverse of pruning, exact, and kept by optimize only when faster."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from onnxopt import evaluate, optimize
from onnxopt.cost import model_cost
from onnxopt.groups import analyze_groups, const_array
from onnxopt.passes.pad_channels import PadChannelsPass
from onnxopt.pipeline import check_model
from onnxopt.pruning import prune_model
from tests.test_groups import _conv, _data, _export, _init, _model


def _padded(model, multiple):
    padded = model.clone()
    p = PadChannelsPass(multiple)
    result = p(padded)
    check_model(result.model)
    return result, p


def test_padding_is_exact_through_bn_div_depthwise_concat_and_flatten_gemm():
    """6 + 5 channels padded to 8 + 8: BN variance and the Div divisor are padded with 1 (a
    0 there makes the new channels NaN, and NaN times a zero weight is still NaN)."""
    c1, i1 = _conv("c1", "x", "a", 3, 6)
    bn = helper.make_node("BatchNormalization", ["a", "s", "b", "m", "v"], ["bn"], epsilon=0.0)
    div = helper.make_node("Div", ["bn", "d"], ["q"])
    dw, idw = _conv("dw", "q", "w", 6, 6, group=6)
    c2, i2 = _conv("c2", "x", "e", 3, 5)
    cat = helper.make_node("Concat", ["w", "e"], ["cat"], axis=1)
    pool = helper.make_node("MaxPool", ["cat"], ["p"], kernel_shape=[2, 2], strides=[2, 2])
    flat = helper.make_node("Flatten", ["p"], ["f"], axis=1)
    fc = helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["y"], transB=1)
    v = _init("v", [6])
    v.float_data[:] = np.abs(np.array(v.float_data)) + 0.5
    consts = [_init("s", [6]), _init("b", [6]), _init("m", [6]), v, _init("d", [1, 6, 1, 1], 1.0)]
    model = _model([c1, bn, div, dw, c2, cat, pool, flat, fc], i1 + consts + idw + i2 + [_init("fc_w", [5, 11 * 16]), _init("fc_b", [5])])
    data = _data(model)
    result, p = _padded(model, 4)
    assert result.modified and len(p.applied) == 2
    np.testing.assert_allclose(evaluate.run(result.model, data)[0], evaluate.run(model, data)[0], rtol=1e-5, atol=1e-6)
    nodes = {n.name: n for n in result.model.graph}
    assert nodes["dw"].attributes["group"].value == const_array(nodes["dw"].inputs[1]).shape[0] == 8
    gemm = next(n for n in result.model.graph if n.op_type == "Gemm")
    assert const_array(gemm.inputs[1]).shape == (5, 16 * 16)
    assert sorted(g.units for g in analyze_groups(result.model).prunable) == [8, 8]


def test_groups_already_aligned_or_smaller_than_the_multiple_are_left_alone(monkeypatch):
    """Without the group analysis even (seconds on a BERT-base encoder)."""
    import onnxopt.passes.pad_channels as pad_channels

    c1, i1 = _conv("c1", "x", "a", 3, 8)
    relu = helper.make_node("Relu", ["a"], ["r"])
    c2, i2 = _conv("c2", "r", "b", 8, 5)
    relu2 = helper.make_node("Relu", ["b"], ["r2"])
    c3, i3 = _conv("c3", "r2", "y", 5, 10)  # 10 channels, but a graph output
    model = _model([c1, relu, c2, relu2, c3], i1 + i2 + i3)
    monkeypatch.setattr(pad_channels, "analyze_groups", lambda *a, **k: pytest.fail("analysed an aligned model"))
    result, _ = _padded(model, 8)
    assert not result.modified


@pytest.mark.parametrize("name,size", [("resnet18", 32), ("mobilenet_v2", 32), ("squeezenet1_0", 64),
                                       pytest.param("densenet121", 32, marks=pytest.mark.slow)])  # fmt: skip
def test_exported_models_pruned_to_exact_counts_are_padded_exactly(name, size, tmp_path):
    model, data = _export(name, size, False, tmp_path)
    exact = prune_model(model, criterion="l1", ratio=0.3, round_to=1).model
    result, p = _padded(exact, 8)
    assert result.modified and all("graph output" in why for _, why in p.skipped)  # only the classifier
    np.testing.assert_allclose(evaluate.run(result.model, data)[0], evaluate.run(exact, data)[0], rtol=1e-4, atol=1e-5)
    assert all(g.units % 8 == 0 for g in analyze_groups(result.model).prunable)
    assert model_cost(exact).macs < model_cost(result.model).macs <= model_cost(model).macs


@pytest.mark.parametrize("carrier", ["Expand", "Reshape"])
def test_a_divisor_carried_to_its_div_is_padded_with_one(carrier):
    """``x / scale.expand_as(x)``, ``x / Reshape(scale, [1, C, 1, 1])``: the new channels'
    divisor is 1, not 0 (0 / 0 is NaN)."""
    from onnx import TensorProto

    c1, i1 = _conv("c1", "x", "a", 3, 6)
    if carrier == "Expand":
        carry = [helper.make_node("Shape", ["a"], ["sa"]), helper.make_node("Expand", ["scale", "sa"], ["se"])]
        scale, extra = _init("scale", [6, 1, 1]), []
    else:
        carry = [helper.make_node("Reshape", ["scale", "s_shape"], ["se"])]
        scale, extra = _init("scale", [6]), [helper.make_tensor("s_shape", TensorProto.INT64, [4], [1, 6, 1, 1])]
    div = helper.make_node("Div", ["a", "se"], ["q"])
    c2, i2 = _conv("c2", "q", "y", 6, 4)
    scale.float_data[:] = np.abs(np.array(scale.float_data)) + 0.5
    model = _model([c1, *carry, div, c2], i1 + [scale, *extra] + i2)
    data = _data(model)
    result, p = _padded(model, 4)
    assert result.modified and len(p.applied) == 1
    carried = next(n for n in result.model.graph if n.op_type == carrier)
    np.testing.assert_array_equal(const_array(carried.inputs[0]).reshape(-1)[6:], 1.0)
    np.testing.assert_allclose(evaluate.run(result.model, data)[0], evaluate.run(model, data)[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("speedup,kept", [(1.4, True), (0.97, False)])
def test_optimize_keeps_the_padding_only_when_it_measures_faster(speedup, kept, tmp_path, monkeypatch):
    import onnxopt.pipeline as pipeline

    model, _ = _export("resnet18", 32, False, tmp_path)
    exact = prune_model(model, criterion="l1", ratio=0.3, round_to=1).model
    monkeypatch.setattr(pipeline, "measure_speedup", lambda current, candidate, ctx, seconds=None: speedup)
    result = optimize.optimize(exact)
    record = next(r for r in result.stages if r.name == "pad_channels")
    assert record.modified and record.kept == kept and record.details["speedup"] == speedup
    assert kept or "not faster" in record.reason
    groups = analyze_groups(result.model).prunable
    assert all(g.units % 8 == 0 for g in groups) == kept
    off = optimize.optimize(exact, speed_check=False)
    record = next(r for r in off.stages if r.name == "pad_channels")
    assert not record.kept and "speed check is off" in record.reason
