"""Channel dependency groups and the pruning pass: exact bookkeeping.

The key proof (``test_pruning_equals_zeroing``): make the to-be-removed channels contribute
exactly nothing (zero every consumer's weight columns for them), then prune those channels;
the zeroed and the pruned model must give the same outputs. A wrong index anywhere (filter,
BN entry, Concat offset, Flatten block, shared initializer) breaks the equality.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from benchmarks.exactness import zero_then_prune
from onnxopt import evaluate
from onnxopt.calibration import Dataset
from onnxopt.groups import PARAM, SHAPE, analyze_groups, const_array
from onnxopt.passes.prune import PruneChannelsPass

RNG = np.random.default_rng(0)


def _init(name: str, shape, scale: float = 0.3) -> onnx.TensorProto:
    return helper.make_tensor(name, TensorProto.FLOAT, shape, (RNG.standard_normal(shape) * scale).astype(np.float32).ravel())


def _model(nodes, inits, in_shape=(1, 3, 8, 8), out="y", out_shape=None) -> ir.Model:
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, out_shape)], inits,
    )  # fmt: skip
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    if out_shape is None:  # fill the output's shape from inference
        inferred = onnx.shape_inference.infer_shapes(proto)
        known = {v.name: v for v in inferred.graph.value_info}
        if out in known:
            proto.graph.output[0].CopyFrom(known[out])
        else:
            proto = inferred
    onnx.checker.check_model(proto)
    return ir.serde.deserialize_model(proto)


def _conv(name, x, y, cin, cout, k=3, group=1, bias=True):
    inits = [_init(f"{name}_w", [cout, cin // group, k, k])]
    inputs = [x, f"{name}_w"]
    if bias:
        inits.append(_init(f"{name}_b", [cout]))
        inputs.append(f"{name}_b")
    return helper.make_node("Conv", inputs, [y], name=name, pads=[k // 2] * 4, group=group), inits


def _chain(*parts):
    nodes, inits = [], []
    for p in parts:
        if isinstance(p, tuple):
            nodes.append(p[0])
            inits += p[1]
        else:
            nodes.append(p)
    return nodes, inits


def _data(model: ir.Model, n: int = 4) -> Dataset:
    value = model.graph.inputs[0]
    shape = [n, *[d if isinstance(d, int) else 1 for d in value.shape][1:]]
    return Dataset({value.name: RNG.standard_normal(shape).astype(np.float32)})


def _assert_exact(model, data=None, fraction=0.4, shapes=None):
    data = data or _data(model)
    original = evaluate.run(model, data)[0]
    zeroed, pruned, analysis, removals, pruned_model = zero_then_prune(model, data, fraction, shapes=shapes)
    assert removals, "nothing was prunable"
    assert np.abs(zeroed - original).max() > 1e-3  # the zeroing did change something
    np.testing.assert_allclose(pruned, zeroed, rtol=1e-4, atol=1e-5 * max(1.0, np.abs(zeroed).max()))
    return analysis, pruned_model


# --------------------------------------------------------------------------- hand-built graphs
def test_conv_bn_relu_chain_and_worked_example():
    c1, i1 = _conv("c1", "x", "a", 3, 8)
    bn_inits = [_init("g", [8]), _init("beta", [8]), _init("mu", [8]),
                helper.make_tensor("var", TensorProto.FLOAT, [8], np.abs(RNG.standard_normal(8)).astype(np.float32) + 0.5)]
    bn = helper.make_node("BatchNormalization", ["a", "g", "beta", "mu", "var"], ["b"], name="bn")
    relu = helper.make_node("Relu", ["b"], ["r"], name="relu")
    c2, i2 = _conv("c2", "r", "y", 8, 4)
    model = _model([c1, bn, relu, c2], i1 + bn_inits + i2)
    analysis, pruned = _assert_exact(model)
    group = analysis.by_name()["a"]
    assert group.units == 8 and group.prunable
    roles = sorted((m.role, m.node.name, m.input_index) for m in group.members)
    assert ("consumer", "c2", 1) in roles and ("producer", "c1", 1) in roles
    assert sum(1 for r in roles if r[0] == "param" and r[1] == "bn") == 4
    assert set(group.index) == {"a", "b", "r"}
    assert not analysis.by_name()["y"].prunable  # graph output
    bn_node = next(n for n in pruned.graph if n.op_type == "BatchNormalization")
    assert const_array(bn_node.inputs[1]).shape == (8 - 3,)


def test_residual_add_unites_all_producers():
    c1, i1 = _conv("c1", "x", "a", 3, 8)
    r1 = helper.make_node("Relu", ["a"], ["ra"])
    c2, i2 = _conv("c2", "ra", "b", 8, 8)
    c3, i3 = _conv("c3", "ra", "c", 8, 8, k=1)
    add = helper.make_node("Add", ["b", "c"], ["s"])
    add2 = helper.make_node("Add", ["s", "ra"], ["t"])  # identity shortcut joins c1's group too
    c4, i4 = _conv("c4", "t", "y", 8, 2)
    model = _model([c1, r1, c2, c3, add, add2, c4], i1 + i2 + i3 + i4)
    analysis, _ = _assert_exact(model)
    spine = [g for g in analysis.prunable if len(g.sources) == 3]
    assert len(spine) == 1 and {m.node.name for m in spine[0].sources} == {"c1", "c2", "c3"}


def test_concat_maps_channel_ranges_and_flatten_gemm_blocks():
    c1, i1 = _conv("c1", "x", "a", 3, 4)
    c2, i2 = _conv("c2", "x", "b", 3, 6)
    cat = helper.make_node("Concat", ["a", "b"], ["cat"], axis=1)
    pool = helper.make_node("MaxPool", ["cat"], ["p"], kernel_shape=[2, 2], strides=[2, 2])
    flat = helper.make_node("Flatten", ["p"], ["f"], axis=1)
    fc = helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["y"], transB=1)
    model = _model([c1, c2, cat, pool, flat, fc], i1 + i2 + [_init("fc_w", [5, 10 * 16]), _init("fc_b", [5])])
    analysis, pruned = _assert_exact(model, fraction=0.5)
    groups = analysis.by_name()
    assert groups["a"].units == 4 and groups["b"].units == 6
    assert list(groups["a"].index["cat"]) == [0, 1, 2, 3] + [-1] * 6
    gemm_member = next(m for m in groups["b"].members if m.node.op_type == "Gemm")
    assert gemm_member.block == 16 and gemm_member.axis == 1
    gemm = next(n for n in pruned.graph if n.op_type == "Gemm")
    assert const_array(gemm.inputs[1]).shape == (5, (2 + 3) * 16)


def test_depthwise_couples_input_and_output_channels():
    c1, i1 = _conv("c1", "x", "a", 3, 8)
    dw, idw = _conv("dw", "a", "d", 8, 8, group=8)
    pw, ipw = _conv("pw", "d", "y", 8, 4, k=1)
    model = _model([c1, dw, pw], i1 + idw + ipw)
    analysis, pruned = _assert_exact(model)
    group = analysis.by_name()["a"]
    assert {m.role for m in group.members} >= {"producer", "depthwise", "consumer"}
    dw_node = next(n for n in pruned.graph if n.name == "dw")
    assert dw_node.attributes["group"].value == const_array(dw_node.inputs[1]).shape[0] == 8 - 3


@pytest.mark.parametrize("cin, cout, group", [(8, 12, 4), (8, 16, 8), (12, 6, 3)])
def test_a_grouped_convolution_prunes_whole_groups(cin, cout, group):
    """ResNeXt/RegNet's grouped 3×3 (and a depthwise channel multiplier, group = C_in):
    output group k reads input group k alone, so its C_in/g input channels (the producer's
    filters) and C_out/g output channels (the consumer's columns) are one unit. Removing
    groups equals zeroing their output columns in the consumer, and ``group`` falls."""
    c1, i1 = _conv("c1", "x", "a", 3, cin)
    r1 = helper.make_node("Relu", ["a"], ["ra"])
    gc, igc = _conv("gc", "ra", "g", cin, cout, group=group)
    relu = helper.make_node("Relu", ["g"], ["r"])
    pw, ipw = _conv("pw", "r", "y", cout, 4, k=1)
    model = _model([c1, r1, gc, relu, pw], i1 + igc + ipw)
    analysis, pruned = _assert_exact(model, fraction=0.5)
    unit = analysis.by_name()["a"]
    assert unit.prunable and unit.units == group and unit.unit_width == cin // group
    assert {"g", "r"} <= set(unit.index) and {m.role for m in unit.members} == {"producer", "grouped", "consumer"}
    node = next(n for n in pruned.graph if n.name == "gc")
    kept = group - group // 2
    assert node.attributes["group"].value == kept
    assert const_array(node.inputs[1]).shape[:2] == (kept * (cout // group), cin // group)
    assert const_array(next(n for n in pruned.graph if n.name == "c1").inputs[1]).shape[0] == kept * (cin // group)


def test_a_grouped_convolution_on_the_graph_input_stays_whole():
    """Its input channels cannot be removed (the graph input's), so neither can its groups:
    the group of its output says why instead of vanishing from the analysis."""
    gc, igc = _conv("gc", "x", "g", 4, 8, group=2)
    pw, ipw = _conv("pw", "g", "y", 8, 2, k=1)
    model = _model([gc, pw], igc + ipw, in_shape=(1, 4, 8, 8))
    groups = analyze_groups(model).by_name()
    assert not groups["g"].prunable and groups["g"].units == 8
    assert any("grouped convolution (group=2)" in r for r in groups["g"].reasons)


@pytest.mark.parametrize("sizes", ["constant", "shape_of_input", "wrong_channels"])
def test_resize_output_sizes_follow_the_channels(sizes):
    """A Resize given output ``sizes`` spells the channel count. Folded to a constant (a
    static-batch export), the pass rewrites its channel entry; read from ``Shape`` of the
    resized tensor (TorchScript's upsample: ``Concat(Shape(x)[0:2], hw)``) it follows by
    itself; a constant that changes the count is not a resize onnxopt can prune through."""
    c1, i1 = _conv("c1", "x", "a", 3, 8)
    nodes, inits = [c1], list(i1)
    if sizes == "shape_of_input":
        inits += [helper.make_tensor(n, TensorProto.INT64, [len(v)], v) for n, v in
                  (("s0", [0]), ("s2", [2]), ("hw", [16, 16]))]  # fmt: skip
        nodes += [helper.make_node("Shape", ["a"], ["sh"]), helper.make_node("Slice", ["sh", "s0", "s2"], ["nc"]),
                  helper.make_node("Concat", ["nc", "hw"], ["sz"], axis=0)]  # fmt: skip
    else:
        inits.append(helper.make_tensor("sz", TensorProto.INT64, [4], [1, 8 if sizes == "constant" else 4, 16, 16]))
    nodes.append(helper.make_node("Resize", ["a", "", "", "sz"], ["r"], mode="nearest"))
    c2, i2 = _conv("c2", "r", "y", 8 if sizes != "wrong_channels" else 4, 4)
    model = _model([*nodes, c2], inits + i2)
    if sizes == "wrong_channels":
        group = analyze_groups(model).by_name()["a"]
        assert not group.prunable and any("output sizes change the channel count" in r for r in group.reasons)
        return
    analysis, pruned = _assert_exact(model)
    assert analysis.by_name()["a"].prunable
    resize = next(n for n in pruned.graph if n.op_type == "Resize")
    if sizes == "constant":
        assert const_array(resize.inputs[3]).tolist() == [1, 8 - 3, 16, 16]


@pytest.mark.parametrize("scales", [[1, 1, 2, 2], [1, 2, 1, 1]])
def test_opset9_upsample_passes_channels_unless_it_scales_them(scales):
    """Upsample (opset 7–9, older exporters' FPNs and YOLOs): spatial scales pass the
    channels on; a scale on the channel axis would interpolate between channels."""
    c1, i1 = _conv("c1", "x", "a", 3, 8)
    up = helper.make_node("Upsample", ["a", "sc"], ["u"], mode="nearest")
    c2, i2 = _conv("c2", "u", "y", 8 * scales[1], 4)
    sc = helper.make_tensor("sc", TensorProto.FLOAT, [4], scales)
    graph = helper.make_graph([c1, up, c2], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], i1 + [sc] + i2)  # fmt: skip
    model = ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)]))
    if scales[1] != 1:
        group = analyze_groups(model).by_name()["a"]
        assert not group.prunable and any("resizes the channel axis" in r for r in group.reasons)
        return
    _assert_exact(model)


def test_conv_transpose_prunes_its_input_and_output_channels():
    """Weight [C_in, C_out, k, k]: consumer slices axis 0, producer axis 1 and the bias."""
    c1, i1 = _conv("c1", "x", "a", 3, 6)
    relu1 = helper.make_node("Relu", ["a"], ["ra"])
    up = helper.make_node("ConvTranspose", ["ra", "up_w", "up_b"], ["u"], name="up", strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1])
    relu2 = helper.make_node("Relu", ["u"], ["ru"])
    c2, i2 = _conv("c2", "ru", "y", 5, 2, k=1)
    model = _model([c1, relu1, up, relu2, c2], i1 + [_init("up_w", [6, 5, 3, 3]), _init("up_b", [5])] + i2)
    analysis, pruned = _assert_exact(model)
    roles = {(m.node.name, m.role, m.axis) for g in analysis.prunable for m in g.members}
    assert {("up", "consumer", 0), ("up", "producer", 1)} <= roles
    node = next(n for n in pruned.graph if n.name == "up")
    w, b = const_array(node.inputs[1]), const_array(node.inputs[2])
    assert w.shape[0] < 6 and w.shape[1] < 5 and b.shape == (w.shape[1],)
    assert pruned.graph.outputs[0].shape[2:] == (16, 16)
    # bias compensation cannot be a per-channel constant through a strided ConvTranspose: skipped
    means = {"ra": np.ones(6)}
    p = PruneChannelsPass({analysis.by_name()["a"].name: [0]}, channel_means=means)
    p(model.clone())
    assert any("ConvTranspose" in why for _, why in p.skipped)


def test_per_channel_constants_and_prelu_are_sliced():
    c1, i1 = _conv("c1", "x", "a", 3, 8, bias=False)
    add = helper.make_node("Add", ["a", "bias"], ["ab"])
    prelu = helper.make_node("PRelu", ["ab", "slope"], ["p"])
    mul = helper.make_node("Mul", ["p", "scale"], ["m"])
    c2, i2 = _conv("c2", "m", "y", 8, 2)
    inits = i1 + i2 + [_init("bias", [8, 1, 1]), _init("slope", [8, 1, 1]), _init("scale", [1, 8, 1, 1])]
    model = _model([c1, add, prelu, mul, c2], inits)
    analysis, _ = _assert_exact(model)
    params = [m for m in analysis.by_name()["a"].members if m.role == "param"]
    assert len(params) == 3


def test_shared_initializer_is_copied_before_slicing():
    """Two convs share one bias tensor (as onnxsim's de-duplication makes); only one is pruned."""
    c1, i1 = _conv("c1", "x", "a", 3, 8, bias=False)
    c1.input.append("shared_b")
    c2, i2 = _conv("c2", "a", "b", 8, 8, bias=False)
    c2.input.append("shared_b")
    relu = helper.make_node("Relu", ["b"], ["y"])
    model = _model([c1, c2, relu], i1 + i2 + [_init("shared_b", [8])])
    data = _data(model)
    zeroed, pruned, analysis, removals, pruned_model = zero_then_prune(model, data)
    assert list(removals) == ["a"]
    np.testing.assert_allclose(pruned, zeroed, rtol=1e-5, atol=1e-5)
    c2_node = next(n for n in pruned_model.graph if n.name == "c2")
    assert const_array(c2_node.inputs[2]).shape == (8,)


def test_split_hands_each_output_its_channel_range():
    # YOLOv8's C2f pattern: c1 → Split[3, 5] → (part 0 → Concat) and (part 1 + c3 → c4),
    # Concat → c5; and an equal Split without sizes (c6 → Split → two halves → Add).
    c1, i1 = _conv("c1", "x", "a", 3, 8)
    sizes = helper.make_tensor("sizes", TensorProto.INT64, [2], [3, 5])
    split = helper.make_node("Split", ["a", "sizes"], ["s0", "s1"], name="split", axis=1)
    c3, i3 = _conv("c3", "x", "b", 3, 5)
    add = helper.make_node("Add", ["s1", "b"], ["sb"], name="add")
    c4, i4 = _conv("c4", "sb", "d", 5, 5)
    cat = helper.make_node("Concat", ["s0", "d"], ["cat"], name="cat", axis=1)
    c5, i5 = _conv("c5", "cat", "e", 8, 6)
    halves = helper.make_node("Split", ["e"], ["h0", "h1"], name="halves", axis=1)
    add2 = helper.make_node("Add", ["h0", "h1"], ["hh"], name="add2")
    c6, i6 = _conv("c6", "hh", "y", 3, 2)
    model = _model([c1, split, c3, add, c4, cat, c5, halves, add2, c6], i1 + i3 + i4 + i5 + i6 + [sizes])
    analysis, pruned = _assert_exact(model, fraction=0.4)
    groups = analysis.by_name()
    assert len(groups) == len(analysis.groups)  # names stay unique
    assert groups["a[0:3]"].prunable and groups["a[0:3]"].units == 3  # c1's first part alone
    second = groups["a[3:8]"]
    assert second.prunable and second.units == 5 and "b" in second.index  # united with c3 by the Add
    assert list(groups["a[0:3]"].index["a"]) == [0, 1, 2] + [-1] * 5
    nodes = {n.name: n for n in pruned.graph}
    kept = const_array(nodes["split"].inputs[1]).tolist()
    assert sum(kept) == const_array(nodes["c1"].inputs[1]).shape[0] and kept[0] < 3 and kept[1] < 5
    # the equal Split got explicit sizes: its two halves are one group (the Add unites them)
    assert sum(const_array(nodes["halves"].inputs[1]).tolist()) == const_array(nodes["c5"].inputs[1]).shape[0]


def test_a_one_channel_gate_broadcast_over_the_channels_leaves_them_prunable():
    """MobileViTv2's separable attention: one 1×1 conv makes a query channel and C key
    channels (Split [1, C]); the query's softmax over the positions, [N, 1, H·W], scales every
    key channel. The lone query channel is a unit apart (blocked, kept); the keys prune."""
    qk, iq = _conv("qk", "x", "a", 3, 9, k=1)
    sizes = helper.make_tensor("sizes", TensorProto.INT64, [2], [1, 8])
    split = helper.make_node("Split", ["a", "sizes"], ["q", "k"], name="split", axis=1)
    shape = helper.make_tensor("flat", TensorProto.INT64, [3], [1, 1, 64])
    flat = helper.make_node("Reshape", ["q", "flat"], ["qf"], name="flatq")
    soft = helper.make_node("Softmax", ["qf"], ["sf"], name="soft", axis=-1)
    back = helper.make_tensor("back", TensorProto.INT64, [4], [1, 1, 8, 8])
    unflat = helper.make_node("Reshape", ["sf", "back"], ["scores"], name="unflatq")
    gate = helper.make_node("Mul", ["k", "scores"], ["g"], name="gate")
    out, io = _conv("out", "g", "y", 8, 4, k=1)
    model = _model([qk, split, flat, soft, unflat, gate, out], iq + io + [sizes, shape, back])
    analysis, _ = _assert_exact(model, fraction=0.5)
    groups = analysis.by_name()
    assert groups["a[1:9]"].prunable and groups["a[1:9]"].units == 8  # the keys
    assert not groups["a[0:1]"].prunable and "broadcast" in groups["a[0:1]"].reasons[0]


def test_pooling_over_the_channel_axis_blocks_the_channels():
    """A MaxPool1d over a ``[N, T, C]`` sequence's features (window 2, stride 1, size kept)
    mixes neighbouring channels: removing one changes its neighbour's maximum, so the group is
    unprunable with the reason. Pooled on the spatial axes of ``[N, C, H, W]`` the channels
    prune, unless the pool's indices (which count the channels before each entry) are read."""
    fc = helper.make_node("MatMul", ["x", "w1"], ["a"], name="fc")
    pool = helper.make_node("MaxPool", ["a"], ["p"], name="pool", kernel_shape=[2], strides=[1], pads=[0, 1])
    out = helper.make_node("MatMul", ["p", "w2"], ["y"], name="out")
    model = _model([fc, pool, out], [_init("w1", [8, 16]), _init("w2", [16, 4])], in_shape=(1, 6, 8))
    group = analyze_groups(model).by_name()["a"]
    assert not group.prunable and "pools over the channel axis" in group.reasons[0], group.reasons
    for indices in (False, True):
        c1, i1 = _conv("c1", "x", "a", 3, 8)
        outputs = ["p", "idx"] if indices else ["p"]
        pool = helper.make_node("MaxPool", ["a"], outputs, name="pool", kernel_shape=[2, 2], strides=[2, 2])
        c2, i2 = _conv("c2", "p", "y", 8, 4)
        extra = [helper.make_node("Cast", ["idx"], ["idx_f"], to=TensorProto.FLOAT), helper.make_node("ReduceMean", ["idx_f"], ["m"]),
                 helper.make_node("Add", ["y", "m"], ["z"])]  # fmt: skip
        model = _model([c1, pool, c2, *(extra if indices else [])], i1 + i2, out="z" if indices else "y")
        group = analyze_groups(model).by_name()["a"]
        assert group.prunable != indices, group.reasons
        if indices:
            assert "indices count the channels" in group.reasons[0], group.reasons
        else:
            _assert_exact(model)


@pytest.mark.parametrize("repeats", [[1, 1, 2, 1], [2, 1, 1, 3], [1, 2, 1, 1]])
def test_tile_passes_channels_unless_it_repeats_them(repeats):
    """``x.repeat(…)`` exports as Tile: repeated along the batch or spatial axes the
    channels pass on and prune exactly; repeated along the channel axis, channel c is also
    channel c + C, so the group is unprunable with the reason."""
    c1, i1 = _conv("c1", "x", "a", 3, 8)
    reps = helper.make_tensor("reps", TensorProto.INT64, [4], repeats)
    tile = helper.make_node("Tile", ["a", "reps"], ["t"], name="tile")
    c2, i2 = _conv("c2", "t", "y", 8 * repeats[1], 4)
    model = _model([c1, tile, c2], i1 + i2 + [reps])
    group = analyze_groups(model).by_name()["a"]
    if repeats[1] == 1:
        assert group.prunable, group.reasons
        _assert_exact(model)
    else:
        assert not group.prunable and "repeats the channel axis" in group.reasons[0], group.reasons


def test_channel_shuffle_prunes_whole_groups_and_a_mixing_reshape_is_unprunable():
    """A shuffle ([N, G, k, H, W] → Transpose → [N, C, H, W]) interleaves whole groups:
    removing group g removes its k filters and the k interleaved input channels they became.
    A Reshape that spreads channels over a size they do not divide mixes them."""
    c1, i1 = _conv("c1", "x", "a", 3, 8)
    shape1 = helper.make_tensor("s1", TensorProto.INT64, [5], [1, 2, 4, 8, 8])
    shape2 = helper.make_tensor("s2", TensorProto.INT64, [4], [1, 8, 8, 8])
    r1 = helper.make_node("Reshape", ["a", "s1"], ["r1"])
    tr = helper.make_node("Transpose", ["r1"], ["t"], perm=[0, 2, 1, 3, 4])
    r2 = helper.make_node("Reshape", ["t", "s2"], ["r2"])
    c2, i2 = _conv("c2", "r2", "y", 8, 2)
    model = _model([c1, r1, tr, r2, c2], i1 + i2 + [shape1, shape2])
    analysis, pruned = _assert_exact(model)
    group = analysis.by_name()["a"]
    assert group.prunable and (group.units, group.unit_width) == (2, 4)
    assert const_array(next(n for n in pruned.graph if n.name == "c2").inputs[1]).shape[1] == 4
    c5, i5 = _conv("c5", "x", "m", 3, 6)
    mix = helper.make_tensor("s3", TensorProto.INT64, [4], [1, 4, 6, 8 * 8 * 6 // 24])
    r3 = helper.make_node("Reshape", ["m", "s3"], ["r3"])
    c6, i6 = _conv("c6", "r3", "y", 4, 2)
    mixing = analyze_groups(_model([c5, r3, c6], i5 + i6 + [mix]))
    assert not mixing.by_name()["m"].prunable and any("mixes channels" in r for r in mixing.by_name()["m"].reasons)
    # a Conv whose weight is a graph input: its input channels cannot be pruned
    c3, i3 = _conv("c3", "x", "a", 3, 8)
    c4 = helper.make_node("Conv", ["a", "w_in"], ["y"], name="c4", pads=[1] * 4)
    graph = helper.make_graph(
        [c3, c4], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8]),
         helper.make_tensor_value_info("w_in", TensorProto.FLOAT, [2, 8, 3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 8, 8])], i3,
    )  # fmt: skip
    model2 = ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    group = analyze_groups(model2).by_name()["a"]
    assert not group.prunable and any("not constant" in r for r in group.reasons)
    p = PruneChannelsPass({"a": [0]})
    assert not p(model2.clone()).modified and p.skipped


def _sized_reshape(entry_nodes, entry: str, extra_inits=()):
    """c1 (8 ch) → Reshape to a target built from Shape(a) reads → Gemm: ``entry_nodes``
    compute ``entry``, the target's feature entry, from ``sa`` = Shape(a)."""
    c1, i1 = _conv("c1", "x", "a", 3, 8)
    pick = [helper.make_tensor(f"i{k}", TensorProto.INT64, [1], [k]) for k in range(4)]
    nodes = [c1, helper.make_node("Shape", ["a"], ["sa"]), helper.make_node("Gather", ["sa", "i0"], ["n"], axis=0),
             *entry_nodes, helper.make_node("Concat", ["n", entry], ["target"], axis=0),
             helper.make_node("Reshape", ["a", "target"], ["flat"]),
             helper.make_node("Gemm", ["flat", "fc_w"], ["y"], transB=1)]  # fmt: skip
    return _model(nodes, i1 + pick + [_init("fc_w", [4, 8 * 8 * 8]), *extra_inits])


def test_reshape_target_computed_from_the_sizes_it_merges_follows_the_pruning():
    # x.view(n, c * h * w): the feature entry is Shape(a)[1] · Shape(a)[2] · Shape(a)[3]
    gathers = [helper.make_node("Gather", ["sa", f"i{k}"], [f"d{k}"], axis=0) for k in (1, 2, 3)]
    muls = [helper.make_node("Mul", ["d1", "d2"], ["d12"]), helper.make_node("Mul", ["d12", "d3"], ["chw"])]
    model = _sized_reshape(gathers + muls, "chw")
    analysis, _ = _assert_exact(model)
    assert analysis.by_name()["a"].prunable


def test_reading_the_channel_count_otherwise_blocks_the_group():
    # the feature entry reads H and W but spells the channel count as a constant (8 · H · W):
    # H and W are static in this model, so the entry is a constant in effect, and the pass
    # writes the pruned count there (the computed piece becomes a constant)
    gathers = [helper.make_node("Gather", ["sa", f"i{k}"], [f"d{k}"], axis=0) for k in (2, 3)]
    spelled = _sized_reshape([*gathers, helper.make_node("Mul", ["d2", "d3"], ["hw"]),
                              helper.make_node("Mul", ["hw", "eight"], ["chw"])], "chw",
                             [helper.make_tensor("eight", TensorProto.INT64, [1], [8])])  # fmt: skip
    analysis, pruned = _assert_exact(spelled)
    assert analysis.by_name()["a"].prunable
    concat = next(n for n in pruned.graph if n.op_type == "Concat")
    assert const_array(concat.inputs[1]).tolist() == [(8 - 3) * 64]
    # C · H read, W (static, 8) spelled: the entry follows the channels
    gathers = [helper.make_node("Gather", ["sa", f"i{k}"], [f"d{k}"], axis=0) for k in (1, 2)]
    model = _sized_reshape([*gathers, helper.make_node("Mul", ["d1", "d2"], ["ch"]),
                            helper.make_node("Mul", ["ch", "eight"], ["chw"])], "chw",
                           [helper.make_tensor("eight", TensorProto.INT64, [1], [8])])  # fmt: skip
    analysis, _ = _assert_exact(model)
    assert analysis.by_name()["a"].prunable
    # the channel count scales the activations: pruning would change what it computes
    c1, i1 = _conv("c1", "x", "a", 3, 8)
    nodes = [c1, helper.make_node("Shape", ["a"], ["sa"]),
             helper.make_node("Gather", ["sa", "one"], ["c"], axis=0),
             helper.make_node("Cast", ["c"], ["cf"], to=TensorProto.FLOAT),
             helper.make_node("Div", ["a", "cf"], ["y"])]  # fmt: skip
    model = _model(nodes, i1 + [helper.make_tensor("one", TensorProto.INT64, [], [1])])
    group = analyze_groups(model).by_name()["a"]
    assert not group.prunable and any("channel count is read" in r for r in group.reasons)


# --------------------------------------------------------------------------- exported torch models
def _export(name: str, size: int, dynamo: bool, tmp_path):
    torch = pytest.importorskip("torch")
    from benchmarks import archs
    from benchmarks.export import export_onnx

    torch.manual_seed(0)
    net = getattr(archs, name)(num_classes=10).eval()
    if name.startswith("vgg"):  # a small head keeps the test fast; same Flatten → Gemm pattern
        net.avgpool = torch.nn.AdaptiveAvgPool2d((2, 2))
        net.classifier = torch.nn.Sequential(
            torch.nn.Linear(512 * 4, 64), torch.nn.ReLU(True), torch.nn.Dropout(), torch.nn.Linear(64, 10)
        ).eval()
    archs.randomize_bn_stats(net)
    path = tmp_path / f"{name}.onnx"
    export_onnx(net, (torch.randn(1, 3, size, size),), path, dynamo=dynamo)
    model = ir.load(str(path))
    if dynamo:
        from onnxopt.passes.cleanup import CleanupPass

        CleanupPass()(model)
    data = Dataset({model.graph.inputs[0].name: RNG.standard_normal((2, 3, size, size)).astype(np.float32)})
    return model, data


_FAST = [("resnet18", 32), ("mobilenet_v2", 32), ("squeezenet1_0", 64), ("vgg11", 64)]
_SLOW = [("resnet50", 32), ("densenet121", 32)]


@pytest.mark.parametrize(
    "name,size,dynamo",
    [(n, s, False) for n, s in _FAST]
    + [pytest.param(n, s, False, marks=pytest.mark.slow) for n, s in _SLOW]
    + [pytest.param(n, s, True, marks=pytest.mark.slow) for n, s in _FAST + _SLOW],
)
def test_pruning_equals_zeroing_on_exported_architectures(name, size, dynamo, tmp_path):
    model, data = _export(name, size, dynamo, tmp_path)
    analysis, pruned = _assert_exact(model, data, fraction=0.3)
    assert len(analysis.prunable) >= 4
    # every unprunable group says why, and only the classifier output is unprunable here
    assert all(g.reasons for g in analysis.unprunable)
    assert len(analysis.unprunable) == 1 and "graph output" in analysis.unprunable[0].reasons[0]


def _c2f_net():
    """A small YOLOv8-style network: Conv-BN-SiLU stem, two C2f blocks (cv1 → chunk into two
    halves → bottlenecks with residual Adds on the last half → Concat of all → cv2), head."""
    import torch
    from torch import nn

    def conv(c1, c2, k=1, s=1):
        return nn.Sequential(nn.Conv2d(c1, c2, k, s, k // 2, bias=False), nn.BatchNorm2d(c2), nn.SiLU())

    class Bottleneck(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.cv1, self.cv2 = conv(c, c, 3), conv(c, c, 3)

        def forward(self, x):
            return x + self.cv2(self.cv1(x))

    class C2f(nn.Module):
        def __init__(self, c1, c2, n=2):
            super().__init__()
            self.c = c2 // 2
            self.cv1, self.cv2 = conv(c1, 2 * self.c), conv((2 + n) * self.c, c2)
            self.m = nn.ModuleList(Bottleneck(self.c) for _ in range(n))

        def forward(self, x):
            y = list(self.cv1(x).chunk(2, 1))
            y.extend(m(y[-1]) for m in self.m)
            return self.cv2(torch.cat(y, 1))

    return nn.Sequential(conv(3, 16, 3, 2), C2f(16, 32), conv(32, 64, 3, 2), C2f(64, 64, 1),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))  # fmt: skip


def _export_c2f(tmp_path, dynamo: bool) -> ir.Model:
    """:func:`_c2f_net` with random BN statistics, exported at 1×3×32×32."""
    torch = pytest.importorskip("torch")
    from benchmarks import archs
    from benchmarks.export import export_onnx

    torch.manual_seed(0)
    net = _c2f_net().eval()
    archs.randomize_bn_stats(net)
    path = tmp_path / "c2f.onnx"
    export_onnx(net, (torch.randn(1, 3, 32, 32),), path, dynamo=dynamo)
    return ir.load(str(path))


@pytest.mark.parametrize("dynamo", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_yolov8_c2f_blocks_prune_exactly_through_their_split(dynamo, tmp_path):
    model = _export_c2f(tmp_path, dynamo)
    from onnxopt.passes.cleanup import CleanupPass

    CleanupPass()(model)  # TorchScript writes chunk as Slices with computed bounds: fold them
    assert any(n.op_type in ("Split", "Slice") for n in model.graph)
    data = Dataset({model.graph.inputs[0].name: RNG.standard_normal((2, 3, 32, 32)).astype(np.float32)})
    analysis, pruned = _assert_exact(model, data, fraction=0.3)
    # every group but the classifier's output is prunable, the Split halves included
    assert len(analysis.unprunable) == 1 and "graph output" in analysis.unprunable[0].reasons[0]
    assert sum("[" in g.name for g in analysis.prunable) >= 4  # two halves per C2f


def test_prune_folds_chunk_bounds_computed_from_shape(tmp_path):
    """TorchScript writes ``chunk`` as Slices whose bounds come from ``Shape``: ``prune``
    on the exported file (no clean-up before) folds them and prunes the C2f halves."""
    from onnxopt.pruning import Pruner, prune_model

    model = _export_c2f(tmp_path, dynamo=False)
    assert any(n.op_type == "Shape" for n in model.graph)
    raw = analyze_groups(model)
    assert any("the channel count is read" in r for g in raw.unprunable for r in g.reasons)
    pruner = Pruner(model, criterion="l1")
    assert len(pruner.analysis.unprunable) == 1 and "graph output" in pruner.analysis.unprunable[0].reasons[0]
    data = Dataset({model.graph.inputs[0].name: RNG.standard_normal((4, 3, 32, 32)).astype(np.float32)})
    result = prune_model(model, data, criterion="l1", ratio=0.3, allocation="uniform")
    halves = {g.name for g in pruner.analysis.prunable if "[" in g.name}
    assert len(halves) >= 4 and halves & {layer["group"] for layer in result.layers if layer["after"] < layer["before"]}


def test_cleanup_folds_static_sizes_read_off_a_shape_and_keeps_the_dynamic_ones():
    """``Slice(Shape(y))`` and a scalar ``Gather(Shape(y))`` of static sizes fold to
    constants, as TorchScript reads ``nn.MultiheadAttention``'s embedding size with a dynamic
    batch (``in_proj_weight[0:E]``, ``E // num_heads``): the sliced weight becomes an
    initializer. The batch entry stays read at run time."""
    from onnxopt.passes.cleanup import CleanupPass

    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["y"]),
        helper.make_node("Shape", ["y"], ["s"]),
        helper.make_node("Slice", ["s", "two", "three"], ["e"]),  # [8]
        helper.make_node("Slice", ["packed", "zero1", "e", "zero1"], ["w2"]),  # packed[0:8]
        helper.make_node("MatMul", ["y", "w2"], ["z"]),
        helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),  # the batch: dynamic
        helper.make_node("Gather", ["s", "two0"], ["c"], axis=0),  # scalar index: 8
        helper.make_node("Div", ["c", "four0"], ["d"]),
        helper.make_node("Unsqueeze", ["n", "zero1"], ["n1"]),
        helper.make_node("Unsqueeze", ["d", "zero1"], ["d1"]),
        helper.make_node("Concat", ["n1", "d1", "minus1"], ["target"], axis=0),
        helper.make_node("Reshape", ["z", "target"], ["out"]),
    ]
    ints = {"zero": ([], [0]), "two0": ([], [2]), "four0": ([], [4]), "zero1": ([1], [0]), "two": ([1], [2]),
            "three": ([1], [3]), "minus1": ([1], [-1])}  # fmt: skip
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 6, 5])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        [helper.make_tensor("w", TensorProto.FLOAT, [5, 8], RNG.standard_normal(40).astype(np.float32)),
         helper.make_tensor("packed", TensorProto.FLOAT, [24, 3], RNG.standard_normal(72).astype(np.float32)),
         *(helper.make_tensor(k, TensorProto.INT64, dims, v) for k, (dims, v) in ints.items())],
    )  # fmt: skip
    model = ir.from_proto(onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])))
    before = model.clone()
    CleanupPass()(model)
    matmuls = [n for n in model.graph if n.op_type == "MatMul"]
    assert all(const_array(n.inputs[1]) is not None for n in matmuls), [n.op_type for n in model.graph]
    assert const_array(matmuls[1].inputs[1]).shape == (8, 3)
    reshape = next(n for n in model.graph if n.op_type == "Reshape")
    assert const_array(reshape.inputs[1]) is None  # the batch is still read
    assert "Div" not in [n.op_type for n in model.graph]  # 8 // 4 folded
    for batch in (1, 3):
        data = {"x": RNG.standard_normal((batch, 6, 5)).astype(np.float32)}
        np.testing.assert_array_equal(evaluate.run(model, data)[0], evaluate.run(before, data)[0])


def _group_norm_net():
    """Conv → GroupNorm(8 groups of 4) → ReLU → Conv → GroupNorm(4 of 4) → SiLU, a residual
    block whose Add joins two GroupNorm'd branches, and a head (a diffusion U-Net's or a
    detector head's pattern)."""
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.g1 = nn.Conv2d(3, 32, 3, padding=1), nn.GroupNorm(8, 32)
            self.c2, self.g2 = nn.Conv2d(32, 16, 3, padding=1), nn.GroupNorm(4, 16)
            self.c3, self.g3 = nn.Conv2d(16, 16, 3, padding=1), nn.GroupNorm(4, 16)
            self.fc = nn.Linear(16, 10)

        def forward(self, x):
            x = torch.relu(self.g1(self.c1(x)))
            x = nn.functional.silu(self.g2(self.c2(x)))
            x = x + nn.functional.silu(self.g3(self.c3(x)))
            return self.fc(x.mean((2, 3)))

    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = Net().eval()
    for norm in (net.g1, net.g2, net.g3):  # trained-looking affine parameters
        nn.init.normal_(norm.weight, 1, 0.3)
        nn.init.normal_(norm.bias, 0, 0.3)
    return net


@pytest.mark.parametrize("dynamo,opset", [(False, None), (True, None), (True, 21)])
def test_group_norm_prunes_whole_groups_exactly(dynamo, opset, tmp_path):
    """GroupNorm exports as Reshape [N, G, -1] → InstanceNormalization (per group) → Reshape
    back to Shape(x) → per-channel Mul / Add (opset 21+ with dynamo: one GroupNormalization
    node). Its groups are the units: removing one removes its k channels everywhere, and the
    G of the first Reshape and the per-group scale (or ``num_groups``) drop."""
    torch = pytest.importorskip("torch")
    from benchmarks.export import export_onnx
    from onnxopt.pruning import prune_model

    path = tmp_path / "gn.onnx"
    export_onnx(_group_norm_net(), (torch.randn(1, 3, 16, 16),), path, dynamo=dynamo, opset=opset)
    model = ir.load(str(path))
    assert any(n.op_type == "GroupNormalization" for n in model.graph) == (opset == 21)
    if dynamo:
        from onnxopt.passes.cleanup import CleanupPass

        CleanupPass()(model)
    data = Dataset({model.graph.inputs[0].name: RNG.standard_normal((2, 3, 16, 16)).astype(np.float32)})
    analysis, pruned = _assert_exact(model, data, fraction=0.3)
    assert len(analysis.unprunable) == 1 and "graph output" in analysis.unprunable[0].reasons[0]
    widths = sorted((g.units, g.unit_width) for g in analysis.prunable)
    assert widths == [(4, 4), (8, 4)]  # the residual Add joins g2's and g3's groups into one
    # every GroupNorm still has as many groups in its Reshape target as its scale has entries
    for node in pruned.graph:
        if node.op_type == "GroupNormalization":
            assert const_array(node.inputs[1]).shape[0] == 4 * node.attributes["num_groups"].value
        if node.op_type == "InstanceNormalization":
            groups = const_array(node.inputs[1]).shape[0]
            target = const_array(node.inputs[0].producer().inputs[1])
            assert target[1] == groups
    # the prune API rounds kept *channels* to multiples of round_to: 8 channels = 2 groups of 4
    result = prune_model(model, data, ratio=0.5, criterion="l1", round_to=8)
    assert [(layer["before"], layer["after"]) for layer in result.layers] == [(32, 16), (16, 8)]
    assert all(layer["channels_per_unit"] == 4 for layer in result.layers)


def test_shufflenet_runs_and_reports_unprunable_groups(tmp_path):
    model, data = _export("shufflenet_v2_x1_0", 32, False, tmp_path)
    analysis, _ = _assert_exact(model, data, fraction=0.3)
    reasons = [r for g in analysis.unprunable for r in g.reasons]
    assert len(analysis.unprunable) >= 10
    # the shuffle itself interleaves whole groups (prunable), the chunk after it slices
    # the channels at sizes computed from Shape
    assert any("slices the channel axis" in r for r in reasons)
    assert len(analysis.prunable) >= 10  # the branch-internal 1x1 convs stay prunable


def test_a_bias_computed_from_constants_is_folded_before_pruning():
    """PaddlePaddle writes a Conv bias as ``Add(conv, Reshape(b, [1, C, 1, 1]))``: the prune
    API folds such constant subgraphs first, so the group stays prunable. Unfolded, ``b`` is
    a per-channel constant too, sliced with the Reshape target's channel entry; the same
    target computed at run time leaves the group unprunable."""
    from onnxopt.pruning import prune_model

    c1, i1 = _conv("c1", "x", "a", 3, 8, bias=False)
    c2, i2 = _conv("c2", "r", "y", 8, 2)
    nodes = [c1, helper.make_node("Reshape", ["b", "b_shape"], ["b4"]), helper.make_node("Add", ["a", "b4"], ["ab"]),
             helper.make_node("Relu", ["ab"], ["r"]), c2]  # fmt: skip
    inits = i1 + i2 + [_init("b", [8]), helper.make_tensor("b_shape", TensorProto.INT64, [4], [1, 8, 1, 1])]
    model = _model(nodes, inits)
    raw = analyze_groups(model).by_name()["a"]
    assert raw.prunable and {m.role for m in raw.members} >= {PARAM, SHAPE}, raw.describe()
    _assert_exact(model)
    result = prune_model(model, ratio=0.5, criterion="l1", reconstruct=False, bias_compensation=False, round_to=1)
    pruned = {n.name: n for n in result.model.graph}
    assert const_array(pruned["c1"].inputs[1]).shape[0] == 4 and const_array(pruned["c2"].inputs[1]).shape[1] == 4
    assert evaluate.run(result.model, _data(model))[0].shape == (4, 2, 8, 8)
    computed = [helper.make_node("Shape", ["b"], ["b_len"]), helper.make_node("Concat", ["one", "b_len", "one", "one"], ["b_shape"], axis=0)]
    nodes[1:1] = computed
    inits[-1] = helper.make_tensor("one", TensorProto.INT64, [1], [1])
    assert not analyze_groups(_model(nodes, inits)).by_name()["a"].prunable


def _torchscript_export(net, example, path, *, fold: bool = True):
    torch = pytest.importorskip("torch")
    with torch.no_grad():
        torch.onnx.export(net.eval(), (example,), str(path), dynamo=False, opset_version=17, do_constant_folding=fold,
                          input_names=["x"], dynamic_axes={"x": {0: "N"}})  # fmt: skip
    return ir.load(str(path))


def test_reflection_pads_built_at_run_time_do_not_block_the_groups(tmp_path):
    """TorchScript builds ReflectionPad2d's ``pads`` from a ConstantOfShape (→ Concat →
    Reshape → Slice → Transpose → Reshape), which onnxscript never folds: every Pad then
    'pads the channel axis or pads not constant' and a style-transfer network had no
    prunable group. The clean-up folds small ConstantOfShape nodes."""
    torch = pytest.importorskip("torch")
    from onnxopt.passes.cleanup import CleanupPass
    from onnxopt.pruning import prune_model

    nn = torch.nn
    torch.manual_seed(0)
    net = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(3, 16, 3), nn.InstanceNorm2d(16, affine=True), nn.ReLU(),
                        nn.ReflectionPad2d(1), nn.Conv2d(16, 16, 3), nn.ReLU(), nn.ReflectionPad2d(1), nn.Conv2d(16, 3, 3))  # fmt: skip
    model = _torchscript_export(net, torch.randn(1, 3, 16, 16), tmp_path / "style.onnx")
    assert any(n.op_type == "ConstantOfShape" for n in model.graph)
    assert not analyze_groups(model).prunable
    cleaned = model.clone()
    CleanupPass()(cleaned)
    assert not any(n.op_type == "ConstantOfShape" for n in cleaned.graph)
    data = Dataset({"x": RNG.standard_normal((2, 3, 16, 16)).astype(np.float32)})
    _assert_exact(cleaned, data)
    result = prune_model(model, ratio=0.5, criterion="l1", round_to=1)  # folds by itself
    assert sum(layer["after"] < layer["before"] for layer in result.layers) == 2


@pytest.mark.parametrize("dynamo", [False, True])
def test_weights_computed_by_weight_norm_are_folded_before_pruning(dynamo, tmp_path):
    """weight_norm computes each weight as ``g · v / ‖v‖`` at run time; onnxscript's folding
    stops at 8,192 elements, and standalone ``prune`` then found a 64-channel group neither
    prunable nor unprunable and most others blocked (a HiFiGAN: 9 % of the MACs removed
    instead of 24 %). Pruning folds them as the clean-up does, whatever their size."""
    torch = pytest.importorskip("torch")
    from benchmarks.export import export_onnx
    from onnxopt.pruning import prune_model

    nn, wn = torch.nn, torch.nn.utils.parametrizations.weight_norm
    torch.manual_seed(0)
    net = nn.Sequential(wn(nn.Conv1d(8, 64, 7, padding=3)), nn.LeakyReLU(0.1),
                        wn(nn.ConvTranspose1d(64, 48, 4, stride=2, padding=1)), nn.LeakyReLU(0.1),
                        wn(nn.Conv1d(48, 48, 3, padding=1)), nn.LeakyReLU(0.1), wn(nn.Conv1d(48, 1, 7, padding=3)))  # fmt: skip
    example = torch.randn(1, 8, 20)
    path = tmp_path / "voc.onnx"
    if dynamo:
        export_onnx(net, (example,), path, dynamo=True, input_names=["x"])
        model = ir.load(str(path))
    else:
        model = _torchscript_export(net, example, path, fold=False)
    assert any(n.op_type in ("ReduceL2", "Norm") or n.op_type == "Div" for n in model.graph)  # computed weights
    result = prune_model(model, ratio=0.5, criterion="l1", round_to=1)
    assert [layer["after"] for layer in result.layers] == [32, 24, 24]
    assert not result.unprunable[1:] and len(result.unprunable) == 1  # the single-channel output


def _shape_read_nets():
    """Three blocks whose Reshape targets read the channel count off the Shape of another
    tensor holding the same channels, as HuggingFace models exported by TorchScript do."""
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class MixFFN(nn.Module):  # SegFormer: C read before the Transpose
        def __init__(self):
            super().__init__()
            self.fc1, self.dw, self.fc2 = nn.Linear(8, 32), nn.Conv2d(32, 32, 3, padding=1, groups=32), nn.Linear(32, 8)

        def forward(self, x):
            h = self.fc1(x.flatten(2).transpose(1, 2))
            b, _, c = h.shape
            h = self.dw(h.transpose(1, 2).reshape(b, c, 4, 4))
            return self.fc2(nn.functional.gelu(h.flatten(2).transpose(1, 2)))

    class ChannelGroupNorm(nn.Module):  # wav2vec2's first layer: GroupNorm with a group per channel
        def __init__(self):
            super().__init__()
            self.conv, self.norm, self.out = nn.Conv1d(2, 16, 3), nn.GroupNorm(16, 16, affine=True), nn.Conv1d(16, 4, 1)

        def forward(self, x):
            return self.out(nn.functional.gelu(self.norm(self.conv(x.flatten(2)))))

    class Conv1D(nn.Module):  # GPT-2's Conv1D: x.view(-1, x.size(-1)) and x.size()[:-1] + (nf,)
        def __init__(self):
            super().__init__()
            self.w1, self.w2 = nn.Parameter(torch.randn(8, 24) * 0.3), nn.Parameter(torch.randn(24, 8) * 0.3)

        def linear(self, x, w):
            size = x.size()[:-1] + (w.size(1),)
            return torch.mm(x.view(-1, x.size(-1)), w).view(size)

        def forward(self, x):
            h = x.flatten(2).transpose(1, 2).contiguous()
            return self.linear(torch.relu(self.linear(h, self.w1)), self.w2)

    return {"mix_ffn": MixFFN, "group_norm_per_channel": ChannelGroupNorm, "gpt2_conv1d": Conv1D}


@pytest.mark.parametrize("name", ["mix_ffn", "group_norm_per_channel", "gpt2_conv1d"])
def test_a_reshape_target_read_off_another_tensor_with_the_same_channels_follows_the_pruning(name, tmp_path):
    """The channel entry computed from ``Shape`` of a tensor that carries the same channels
    (before a Transpose; GroupNorm's input; one Shape node the clean-up merged for both
    reshapes of GPT-2's Conv1D) follows the pruning by itself: those groups were "the
    channel count is read" / "computed from other sizes" (SegFormer's TorchScript export:
    no MixFFN group, 10.9 % of its MACs removed against 17.7 % for dynamo's)."""
    torch = pytest.importorskip("torch")
    from onnxopt.passes.cleanup import CleanupPass

    torch.manual_seed(0)
    net = _shape_read_nets()[name]().eval()
    path = tmp_path / f"{name}.onnx"
    with torch.no_grad():
        torch.onnx.export(net, (torch.randn(2, 8, 4, 4) if name != "group_norm_per_channel" else torch.randn(2, 2, 4, 5),),
                          str(path), dynamo=False, opset_version=17, input_names=["x"],
                          dynamic_axes={"x": {0: "N"}})  # fmt: skip
    model = ir.load(str(path))
    CleanupPass()(model)
    assert any(n.op_type == "Shape" for n in model.graph)
    shape = (3, 8, 4, 4) if name != "group_norm_per_channel" else (3, 2, 4, 5)
    analysis, _ = _assert_exact(model, Dataset({"x": RNG.standard_normal(shape).astype(np.float32)}), fraction=0.3)
    hidden = 32 if name == "mix_ffn" else 16 if name == "group_norm_per_channel" else 24
    assert any(g.units == hidden for g in analysis.prunable), [g.describe() for g in analysis.groups]


def test_opset18_group_normalization_with_per_group_scale_is_unprunable_with_its_reason():
    c1, i1 = _conv("c1", "x", "a", 3, 8)
    gn = helper.make_node("GroupNormalization", ["a", "gs", "gb"], ["g"], num_groups=2)
    c2, i2 = _conv("c2", "g", "y", 8, 2)
    graph = helper.make_graph(
        [c1, gn, c2], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], i1 + i2 + [_init("gs", [2]), _init("gb", [2])],
    )  # fmt: skip
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    group = analyze_groups(ir.from_proto(onnx.shape_inference.infer_shapes(proto))).by_name()["a"]
    assert not group.prunable and any("per-group scale and bias" in r for r in group.reasons)


def test_onnxruntime_fused_bias_activations_prune_like_add_then_activation():
    """onnxruntime.transformers fuses an FFN's bias Add and Gelu into com.microsoft ops
    (BiasGelu, FastGelu, QuickGelu): their biases are sliced with the channels."""
    ms = "com.microsoft"
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h1"], name="fc1"),
        helper.make_node("BiasGelu", ["h1", "b1"], ["g1"], name="bias_gelu", domain=ms),
        helper.make_node("MatMul", ["g1", "w2"], ["h2"], name="fc2"),
        helper.make_node("MatMul", ["x", "w_skip"], ["skip"], name="fc_skip"),
        helper.make_node("Add", ["h2", "skip"], ["s"], name="residual"),
        helper.make_node("FastGelu", ["s", "b3"], ["f"], name="fast_gelu", domain=ms),
        helper.make_node("QuickGelu", ["f"], ["q"], name="quick_gelu", domain=ms, alpha=1.702),
        helper.make_node("MatMul", ["q", "w3"], ["y"], name="fc3"),
    ]
    inits = [_init("w1", [8, 16]), _init("b1", [16]), _init("w2", [16, 8]), _init("w_skip", [8, 8]),
             _init("b3", [8]), _init("w3", [8, 4])]  # fmt: skip
    graph = helper.make_graph(nodes, "ffn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4])], inits)  # fmt: skip
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(ms, 1)])
    model = ir.serde.deserialize_model(proto)
    data = Dataset({"x": RNG.standard_normal([1, 4, 8]).astype(np.float32)})
    analysis, _ = _assert_exact(model, data)
    groups = analysis.by_name()
    assert groups["h1"].prunable and groups["h2"].prunable and [g.name for g in analysis.unprunable] == ["y"]
    sliced = {(m.node.name, m.input_index) for g in analysis.groups for m in g.members if m.role == "param"}
    assert {("bias_gelu", 1), ("fast_gelu", 1)} <= sliced


def _fused_attention_model(dead_head: int | None = None, value_size: int = 8, **attention_attrs) -> ir.Model:
    """x [1, 5, 8] → com.microsoft Attention (4 heads of 2 channels, packed Q/K/V) → output
    projection MatMul + bias → y; ``dead_head``'s Q/K/V columns are zero."""
    qkv = RNG.standard_normal((8, 24)).astype(np.float32)
    bias = RNG.standard_normal(24).astype(np.float32) * 0.1
    if dead_head is not None:
        for third in range(3):
            cols = slice(third * 8 + 2 * dead_head, third * 8 + 2 * dead_head + 2)
            qkv[:, cols], bias[cols] = 0, 0
    inits = [helper.make_tensor("qkv", TensorProto.FLOAT, [8, 24], qkv.ravel()),
             helper.make_tensor("qkv_b", TensorProto.FLOAT, [24], bias), _init("proj", [value_size, 8]), _init("proj_b", [8])]  # fmt: skip
    nodes = [
        helper.make_node("Attention", ["x", "qkv", "qkv_b"], ["context"], name="attention", domain="com.microsoft",
                         num_heads=4, **attention_attrs),  # fmt: skip
        helper.make_node("MatMul", ["context", "proj"], ["projected"], name="proj"),
        helper.make_node("Add", ["projected", "proj_b"], ["y"], name="proj_bias"),
    ]
    graph = helper.make_graph(nodes, "attention", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 5, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5, 8])], inits)  # fmt: skip
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    return ir.serde.deserialize_model(proto)


def test_a_fused_attention_prunes_whole_heads_from_its_packed_weights():
    model = _fused_attention_model()
    data = Dataset({"x": RNG.standard_normal([1, 5, 8]).astype(np.float32)})
    analysis, pruned = _assert_exact(model, data, fraction=0.5)
    (group,) = [g for g in analysis.prunable if g.name == "context"]
    assert (group.units, group.unit_width) == (4, 2)
    attention = next(n for n in pruned.graph if n.op_type == "Attention")
    assert attention.attributes["num_heads"].value == 2
    assert const_array(attention.inputs[1]).shape == (8, 12) and const_array(attention.inputs[2]).shape == (12,)


@pytest.mark.parametrize("criterion", ["l1", "l2", "permutation"])
def test_a_dead_fused_attention_head_ranks_last(criterion):
    from onnxopt.importance import group_importance

    model = _fused_attention_model(dead_head=2)
    data = Dataset({"x": RNG.standard_normal([8, 5, 8]).astype(np.float32)})
    scores = group_importance(model, analyze_groups(model), criterion, data)["context"]
    assert int(np.argmin(scores)) == 2 and scores[2] < 1e-6 < scores.min(initial=np.inf, where=np.arange(4) != 2)


def test_a_fused_attention_with_unequal_qkv_sizes_keeps_its_heads_and_says_why():
    model = _fused_attention_model(value_size=16, qkv_hidden_sizes=[4, 4, 16])
    evaluate.run(model, {"x": np.ones([1, 5, 8], np.float32)})  # a valid model
    (group,) = [g for g in analyze_groups(model).groups if g.name == "context"]
    assert not group.prunable and any("qkv_hidden_sizes" in r for r in group.reasons)


def test_roi_align_passes_the_feature_channels_to_the_box_head():
    # a two-stage detector's heads read the backbone's maps through RoiAlign, channel by channel
    from tests.test_prune import _selected_rows_model

    model = _selected_rows_model()
    analysis, pruned = _assert_exact(model, _data(model, 1))
    b = analysis.by_name()["b"]
    assert {m.node.name for m in b.members} == {"conv_b", "gemm_h"}  # through RoiAlign and Flatten (2×2 columns each)
    (head,) = [n for n in pruned.graph if n.name == "gemm_h"]
    assert head.inputs[1].const_value.numpy().shape[0] == 2 * 2 * (8 - 3)  # 3 of conv b's 8 channels removed


def _multi_level_roi_model(data: str = "sized", scatter_axis: int = 0) -> ir.Model:
    """torchvision's ``MultiScaleRoIAlign`` as its TorchScript export writes it: regions
    pooled from two levels (Conv p → Relu, and its MaxPool) are scattered (axis 0) into
    zeros shaped at run time like the first level's crops (``ConstantOfShape`` of sizes
    read by ``Shape``), each level's row indices expanded to its crops' shape (the
    exporter's ``expand``: −1 entries turned into 1 by Equal / Where); a box head (Flatten
    → Gemm) reads the merged crops. ``data="constant"``: the zeros are a constant of a
    fixed channel count instead."""
    n = helper.make_node

    def i64(name, values, shape=None):
        return helper.make_tensor(name, TensorProto.INT64, [len(values)] if shape is None else shape, values)

    def f32(name, values, shape):
        return helper.make_tensor(name, TensorProto.FLOAT, shape, np.asarray(values, np.float32).ravel())

    inits = [*_conv("p", "x", "p", 3, 8)[1], _init("wh", [8 * 2 * 2, 4]), _init("bh", [4]),
             f32("rois_a", [[0, 0, 6, 6], [4, 2, 12, 10]], [2, 4]), f32("rois_b", [[1, 1, 5, 7], [0, 2, 8, 8], [3, 0, 7, 4]], [3, 4]),
             i64("batch_a", [0, 0]), i64("batch_b", [0, 0, 0]), i64("at_a", [0, 3]), i64("at_b", [1, 2, 4]),
             i64("all_rois", [0] * 5), i64("column", [-1, 1, 1, 1]), i64("flat", [-1]), i64("zero", [0]),
             *[i64(f"pick{k}", [k], []) for k in range(4)], i64("minus_one", [-1], [])]  # fmt: skip
    nodes = [_conv("p", "x", "p", 3, 8)[0], n("Relu", ["p"], ["rp"], name="relu_p"),
             n("MaxPool", ["rp"], ["rq"], name="pool_q", kernel_shape=[2, 2], strides=[2, 2]),
             n("RoiAlign", ["rp", "rois_a", "batch_a"], ["crops_a"], name="roi_a", output_height=2, output_width=2),
             n("RoiAlign", ["rq", "rois_b", "batch_b"], ["crops_b"], name="roi_b", output_height=2, output_width=2,
               spatial_scale=0.5),
             n("Shape", ["all_rois"], ["rois_shape"], name="rois_shape"),
             n("Gather", ["rois_shape", "pick0"], ["regions"], name="regions", axis=0)]  # fmt: skip
    for level in ("a", "b"):
        nodes.append(n("Shape", [f"crops_{level}"], [f"shape_{level}"], name=f"shape_{level}"))
        for k in range(1, 4):
            nodes += [n("Gather", [f"shape_{level}", f"pick{k}"], [f"d{k}_{level}"], name=f"d{k}_{level}", axis=0),
                      n("Unsqueeze", [f"d{k}_{level}", "zero"], [f"u{k}_{level}"], name=f"u{k}_{level}")]  # fmt: skip
    nodes += [n("Unsqueeze", ["regions", "zero"], ["u0"], name="u0"),
              n("Concat", ["u0", "u1_a", "u2_a", "u3_a"], ["merged_shape"], name="merged_shape", axis=0)]  # fmt: skip
    if data == "constant":
        inits.append(f32("zeros", np.zeros([5, 8, 2, 2]), [5, 8, 2, 2]))
    else:
        nodes.append(n("ConstantOfShape", ["merged_shape"], ["zeros"], name="zeros",
                       value=helper.make_tensor("value", TensorProto.FLOAT, [1], [0.0])))  # fmt: skip
    merged = "zeros"
    for level in ("a", "b"):
        nodes += [
            n("Reshape", [f"at_{level}", "column"], [f"rows_{level}"], name=f"rows_{level}"),
            n("Shape", [f"rows_{level}"], [f"rows_shape_{level}"], name=f"rows_shape_{level}"),
            n("Gather", [f"rows_shape_{level}", "pick0"], [f"r0_{level}"], name=f"r0_{level}", axis=0),
            n("Unsqueeze", [f"r0_{level}", "zero"], [f"ur0_{level}"], name=f"ur0_{level}"),
            n("Concat", [f"ur0_{level}", f"u1_{level}", f"u2_{level}", f"u3_{level}"], [f"sizes_{level}"], name=f"sizes_{level}", axis=0),
            n("Reshape", [f"sizes_{level}", "flat"], [f"target_{level}"], name=f"target_{level}"),
            n("Shape", [f"target_{level}"], [f"target_len_{level}"], name=f"target_len_{level}"),
            n("ConstantOfShape", [f"target_len_{level}"], [f"ones_{level}"], name=f"ones_{level}",
              value=helper.make_tensor("value", TensorProto.INT64, [1], [1])),
            n("Mul", [f"ones_{level}", "minus_one"], [f"minus_{level}"], name=f"minus_{level}"),
            n("Equal", [f"target_{level}", f"minus_{level}"], [f"is_minus_{level}"], name=f"is_minus_{level}"),
            n("Where", [f"is_minus_{level}", f"ones_{level}", f"target_{level}"], [f"expand_to_{level}"], name=f"expand_to_{level}"),
            n("Expand", [f"rows_{level}", f"expand_to_{level}"], [f"index_{level}"], name=f"index_{level}"),
            n("ScatterElements", [merged, f"index_{level}", f"crops_{level}"], [f"merged_{level}"], name=f"scatter_{level}",
              axis=scatter_axis),
        ]  # fmt: skip
        merged = f"merged_{level}"
    nodes += [n("Flatten", [merged], ["flat_crops"], name="flatten"), n("Gemm", ["flat_crops", "wh", "bh"], ["y"], name="box_head")]
    return _model(nodes, inits, in_shape=(1, 3, 16, 16), out_shape=[5, 4])


def test_multi_level_roi_align_merged_by_scatter_prunes_the_feature_channels():
    model = _multi_level_roi_model()
    analysis, pruned = _assert_exact(model, _data(model, 1))
    p = analysis.by_name()["p"]
    assert p.prunable and {m.node.name for m in p.members} >= {"p", "box_head"}
    (head,) = [n for n in pruned.graph if n.name == "box_head"]
    assert const_array(head.inputs[1]).shape[0] == 2 * 2 * (8 - 3)  # 3 of 8 channels, 2×2 columns each


@pytest.mark.parametrize("variant", [{"data": "constant"}, {"scatter_axis": 1}])
def test_a_scatter_into_a_fixed_count_or_along_the_channels_blocks(variant):
    model = _multi_level_roi_model(**variant)
    evaluate.run(model, _data(model, 1))  # a valid model
    p = analyze_groups(model).by_name()["p"]
    assert not p.prunable and any("scatter_" in r and "moves elements along the channel axis" in r for r in p.reasons), p.reasons
