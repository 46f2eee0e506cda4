"""Recurrent models: channel groups that end in an LSTM/GRU input (a CRNN's convolutional
features), and data whose sample axis is not the first one (an RNN state ``[layers, batch,
hidden]``, sequence-first outputs ``[T, batch, classes]``)."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from onnxopt import evaluate
from onnxopt.calibration import Dataset, load_npz, synthetic
from onnxopt.graph import sample_axes, set_const_input
from onnxopt.groups import CONSUMER, analyze_groups, const_array
from onnxopt.passes.prune import PruneChannelsPass
from onnxopt.pruning import prune_model

RNG = np.random.default_rng(0)
HIDDEN, LAYERS = 12, 2


def _crnn(cell: str = "LSTM", view: bool = False):
    """Conv-BN-ReLU ×2 over a [N, 1, 8, W] line image → [W, N, C·H] (``flatten``, or
    ``view(b, c * h, w)`` on the read sizes as CRNN code writes it) → bidirectional 2-layer
    RNN started from given states → per-step Linear: [W, N, 7] logits."""
    from torch import nn

    class CRNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                nn.Conv2d(8, 16, 3, stride=(2, 1), padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            )  # fmt: skip
            self.rnn = getattr(nn, cell)(16 * 4, HIDDEN, num_layers=LAYERS, bidirectional=True)
            self.head = nn.Linear(2 * HIDDEN, 7)

        def forward(self, x, h0, c0=None):
            f = self.features(x)  # [N, 16, 4, W]
            if view:
                b, c, h, w = f.shape
                seq = f.view(b, c * h, w).permute(2, 0, 1)  # [W, N, 64]
            else:
                seq = f.flatten(1, 2).permute(2, 0, 1)
            out, _ = self.rnn(seq, h0 if c0 is None else (h0, c0))
            return self.head(out)

    return CRNN().eval()


def _export(tmp_path, dynamo: bool, cell: str = "LSTM", view: bool = False):
    torch = pytest.importorskip("torch")
    from benchmarks import archs
    from benchmarks.export import export_onnx

    torch.manual_seed(0)
    net = _crnn(cell, view)
    archs.randomize_bn_stats(net)
    n, states = 2, (1 if cell == "GRU" else 2)
    args = (torch.randn(n, 1, 8, 20), *[torch.randn(2 * LAYERS, n, HIDDEN) for _ in range(states)])
    names = ["image", "h0", "c0"][: 1 + states]
    path = tmp_path / f"crnn_{cell}_{dynamo}_{view}.onnx"
    export_onnx(net, args, path, dynamo=dynamo, input_names=names, output_names=["logits"],
                batch_axes={"h0": 1, "c0": 1, "logits": 1})
    model = ir.load(str(path))
    from onnxopt.passes.cleanup import CleanupPass

    CleanupPass()(model)
    return model


def _feed(model: ir.Model, n: int) -> dict[str, np.ndarray]:
    feed = {"image": RNG.standard_normal((n, 1, 8, 20)).astype(np.float32)}
    for v in model.graph.inputs[1:]:
        feed[v.name] = (0.5 * RNG.standard_normal((2 * LAYERS, n, HIDDEN))).astype(np.float32)
    return feed


def _rnn_group(model: ir.Model):
    analysis = analyze_groups(model)
    groups = [g for g in analysis.prunable if any(m.role == CONSUMER and m.node.op_type in ("LSTM", "GRU") for m in g.members)]
    assert len(groups) == 1, [g.describe() for g in analysis.groups]
    return analysis, groups[0]


@pytest.mark.parametrize(
    "dynamo,cell,view",
    [(False, "LSTM", False), (False, "GRU", True), pytest.param(True, "LSTM", True, marks=pytest.mark.slow)],
)
def test_features_feeding_an_rnn_prune_exactly(tmp_path, dynamo, cell, view):
    model = _export(tmp_path, dynamo, cell, view)
    if view and not dynamo:  # the target is built from Shape reads, the channel count among them
        assert any(n.op_type == "Shape" for n in model.graph)
    analysis, group = _rnn_group(model)
    rnn = next(m for m in group.members if m.role == CONSUMER)
    assert rnn.axis == 2 and rnn.block == 4  # each channel owns its 4 rows of the feature column
    removals = {group.name: np.array([1, 5, 9, 14])}
    data = Dataset(_feed(model, 3))
    zeroed = model.clone()
    weight = const_array(zeroed.graph.node(rnn.node.name).inputs[1]).copy()
    weight[:, :, np.concatenate([np.arange(4) + 4 * c for c in removals[group.name]])] = 0
    set_const_input(zeroed.graph.node(rnn.node.name), 1, weight)
    pruned = model.clone()
    assert PruneChannelsPass(removals)(pruned).modified
    assert const_array(pruned.graph.node(rnn.node.name).inputs[1]).shape[2] == 16 * 4 - 16
    original, expected, got = (evaluate.run(m, data)[0] for m in (model, zeroed, pruned))
    assert np.abs(expected - original).max() > 1e-3
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_bias_compensation_moves_a_constant_channel_into_the_rnn_input_bias(tmp_path):
    model = _export(tmp_path, False)
    analysis, group = _rnn_group(model)
    producer = next(m.node for m in group.members if m.role == "producer")
    # Channel 3 becomes a constant (zero filter, positive bias → ReLU passes the bias): its
    # features are not zero, so only the compensated pruned model equals the original.
    w, b = const_array(producer.inputs[1]).copy(), const_array(producer.inputs[2]).copy()
    w[3], b[3] = 0, 2.0
    set_const_input(producer, 1, w)
    set_const_input(producer, 2, b)
    data = Dataset(_feed(model, 4))
    reference = evaluate.run(model, data)[0]
    means = {}
    for m in group.members:
        if m.role == CONSUMER:
            x = evaluate.run(_with_output(model, m.value), data)[-1]  # [W, N, 64]
            means[m.value] = x.reshape(-1, x.shape[-1]).mean(0)
    plain, compensated = model.clone(), model.clone()
    PruneChannelsPass({group.name: [3]})(plain)
    PruneChannelsPass({group.name: [3]}, channel_means=means)(compensated)
    assert np.abs(evaluate.run(plain, data)[0] - reference).max() > 1e-2
    np.testing.assert_allclose(evaluate.run(compensated, data)[0], reference, rtol=1e-4, atol=1e-4)


def _with_output(model: ir.Model, name: str) -> ir.Model:
    probe = model.clone()
    value = next(v for n in probe.graph for v in n.outputs if v.name == name)
    probe.graph.outputs.append(value)
    return probe


def test_state_inputs_keep_their_sample_axis(tmp_path):
    model = _export(tmp_path, False)
    assert sample_axes({v.name: [d if isinstance(d, int) else d.value for d in v.shape] for v in model.graph.inputs}) == {
        "image": 0, "h0": 1, "c0": 1,
    }  # fmt: skip
    feed = _feed(model, 70)
    path = tmp_path / "data.npz"
    np.savez(path, **feed)
    data = load_npz(path, model)
    assert len(data) == 70 and data.axes == {"image": 0, "h0": 1, "c0": 1}
    part = data.take(np.array([3, 10]))
    assert part.inputs["h0"].shape == (2 * LAYERS, 2, HIDDEN)
    np.testing.assert_array_equal(part.inputs["c0"][:, 1], feed["c0"][:, 10])
    # run in batches of 64 + 6: the [T, N, 7] output joins on its batch axis, as one run gives
    whole = evaluate.run(model, data, batch_size=128)[0]
    batched = evaluate.run(model, data, batch_size=64)[0]
    assert whole.shape == batched.shape == (20, 70, 7)
    np.testing.assert_allclose(batched, whole, rtol=1e-5, atol=1e-6)
    generated = synthetic(model, 5)
    assert generated.inputs["h0"].shape == (2 * LAYERS, 5, HIDDEN) and len(generated) == 5


def test_prune_with_state_data_removes_channels_before_the_rnn(tmp_path):
    model = _export(tmp_path, False)
    feed = _feed(model, 48)
    data = Dataset(feed)  # built in Python without axes: the model's sample axes apply
    result = prune_model(model, data, ratio=0.25, criterion="l1", round_to=1)
    assert result.macs_after < result.macs_before
    _, group = _rnn_group(result.model)
    assert group.units == 12  # 16 channels, a quarter removed
    out = evaluate.run(result.model, Dataset(_feed(model, 3)))[0]
    assert out.shape == (20, 3, 7) and np.isfinite(out).all()


def test_per_sample_scores_cut_the_declared_batch_axis(tmp_path):
    """[T, N, classes] logits with as many samples as steps (20): the budget's per-sample
    drops must cut samples (axis 1, the batch symbol), not time steps."""
    from onnxopt.evaluate import Evaluator, _sample_slices, output_sample_axes

    model = _export(tmp_path, False)
    assert output_sample_axes(model) == [1]
    data = Dataset(_feed(model, 20), axes={"image": 0, "h0": 1, "c0": 1})
    evaluator = Evaluator(model, data)
    cut = _sample_slices(evaluator.reference, 20, evaluator._axes)[0]
    assert cut(evaluator.reference[0], 3).shape == (20, 1, 7)
    np.testing.assert_array_equal(cut(evaluator.reference[0], 3)[:, 0], evaluator.reference[0][:, 3])


def test_a_dataset_can_name_the_sample_axis_the_rules_cannot_see():
    """A sequence-first input with unnamed dims ``[?, ?, 4]`` looks batch-first to the rules;
    a Dataset built in Python can say ``axes={"x": 1}``, and batched runs then cut samples."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["x", "zero"], ["y"], keepdims=0)], "seq_first",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, None, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor("zero", TensorProto.INT64, [1], [0])],
    )  # fmt: skip
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    x = RNG.standard_normal((70, 3, 4)).astype(np.float32)  # 70 steps, 3 samples
    whole = x.sum(0)
    np.testing.assert_allclose(evaluate.run(model, Dataset({"x": x}, axes={"x": 1}), batch_size=2)[0], whole, rtol=1e-5)
    assert evaluate.run(model, Dataset({"x": x}), batch_size=64)[0].shape != whole.shape  # the rules cut the steps


# --------------------------------------------------------------------------- hidden units
def _speech_rnn(cell: str, bidirectional: bool):
    """Conv1d front end over [N, 8, T] features → [T, N, 16] → 2-layer RNN started from
    zero states (none given) → per-step Linear: [T, N, 7]."""
    import torch
    from torch import nn

    class SpeechRNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.front = nn.Conv1d(8, 16, 3, padding=1)
            self.rnn = getattr(nn, cell)(16, HIDDEN, num_layers=2, bidirectional=bidirectional)
            self.head = nn.Linear(HIDDEN * (2 if bidirectional else 1), 7)

        def forward(self, x):
            out, _ = self.rnn(torch.relu(self.front(x)).permute(2, 0, 1))
            return self.head(out)

    return SpeechRNN().eval()


def _export_speech(tmp_path, cell: str, bidirectional: bool, dynamo: bool) -> ir.Model:
    torch = pytest.importorskip("torch")
    from benchmarks.export import export_onnx
    from onnxopt.model_io import load_model

    torch.manual_seed(0)
    path = tmp_path / f"speech_{cell}_{bidirectional}_{dynamo}.onnx"
    export_onnx(_speech_rnn(cell, bidirectional), (torch.randn(2, 8, 10),), path, dynamo=dynamo,
                input_names=["x"], output_names=["y"], batch_axes={"y": 1})  # fmt: skip
    return load_model(path)


def _hidden_groups(analysis):
    return [g for g in analysis.groups if any(s.node.op_type in ("LSTM", "GRU", "RNN") for s in g.sources)]


def _zero_units(model: ir.Model, node_name: str, units) -> None:
    """Zero unit ``units``' rows of W, R and B in every gate and direction: with a zero
    initial state its output stays exactly 0 (gates at σ(0), candidate tanh(0) = 0)."""
    node = model.graph.node(node_name)
    for index in (1, 2, 3):
        array = const_array(node.inputs[index]).copy()
        blocks = array.shape[1] // HIDDEN
        view = array.reshape(array.shape[0], blocks, HIDDEN, *array.shape[2:])
        view[:, :, units] = 0
        set_const_input(node, index, view.reshape(array.shape))


@pytest.mark.parametrize(
    "cell,bidirectional,dynamo",
    [("LSTM", True, False), ("GRU", True, False), ("RNN", False, False), ("LSTM", False, False),
     ("LSTM", True, True), ("GRU", True, True), ("GRU", False, True)],
)  # fmt: skip
def test_hidden_units_prune_exactly(tmp_path, cell, bidirectional, dynamo):
    """Removing hidden units (both directions, every gate, the recurrence columns, the zero
    initial states' size, a Reshape target spelling 2·H) equals zeroing them first. dynamo
    reshapes a one-direction GRU's [T, N, 1, H] output to [T, N, H] with the target Shape[0],
    Shape[1], Shape[2]·Shape[3]: the static sizes fold into a constant ``H`` entry first."""
    import onnx

    from onnxopt.cost import model_cost
    from onnxopt.pruning import Pruner

    model = Pruner(_export_speech(tmp_path, cell, bidirectional, dynamo), criterion="l1").model  # dynamo: weights folded
    groups = _hidden_groups(analyze_groups(model))
    assert len(groups) == 2 and all(g.prunable and g.units == HIDDEN for g in groups), [g.describe() for g in groups]
    units = np.array([1, 5, 6])
    zeroed, pruned = model.clone(), model.clone()
    for g in groups:
        _zero_units(zeroed, g.sources[0].node.name, units)
    assert PruneChannelsPass({g.name: units for g in groups})(pruned).modified
    onnx.checker.check_model(ir.to_proto(pruned), full_check=True)
    rnns = [n for n in pruned.graph if n.op_type == cell]
    assert [n.attributes["hidden_size"].value for n in rnns] == [HIDDEN - 3] * 2
    # the zero initial states (their shapes spelled the old size) went, with the nodes building them
    assert all(v is None for n in rnns for v in n.inputs[5:7])
    assert not [n for n in pruned.graph if all(not o.uses() and not o.is_graph_output() for o in n.outputs)]
    assert model_cost(pruned).macs < model_cost(model).macs
    data = Dataset({"x": RNG.standard_normal((3, 8, 10)).astype(np.float32)})
    original, expected, got = (evaluate.run(m, data)[0] for m in (model, zeroed, pruned))
    assert np.abs(expected - original).max() > 1e-3
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_hidden_units_with_given_initial_states_are_unprunable(tmp_path):
    """The CRNN reads h0 / c0 from graph inputs: their size is the caller's, so the hidden
    units stay and say why; the convolutional features before the RNN still prune."""
    model = _export(tmp_path, False)
    analysis = analyze_groups(model)
    hidden = _hidden_groups(analysis)
    assert hidden and not any(g.prunable for g in hidden)
    assert any("initial state" in r for g in hidden for r in g.reasons)
    _rnn_group(model)  # the features group is still prunable


@pytest.mark.parametrize("criterion", ["l1", "l2", "permutation", "apoz", "obs"])
def test_every_criterion_ranks_a_dead_hidden_unit_last(tmp_path, criterion):
    from onnxopt.importance import group_importance

    model = _export_speech(tmp_path, "LSTM", True, False)
    group = _hidden_groups(analyze_groups(model))[0]
    _zero_units(model, group.sources[0].node.name, [4])
    analysis = analyze_groups(model)
    calib = Dataset({"x": RNG.standard_normal((24, 8, 10)).astype(np.float32)})
    scores = group_importance(model, analysis, criterion, calib, seed=0)[group.name]
    assert int(np.argmin(scores)) == 4, scores


def test_pruning_an_rnn_speech_model_end_to_end(tmp_path):
    """prune_model with data on a bidirectional GRU model: hidden units go with the rest,
    recovery keeps the output closer to the original than no recovery."""
    model = _export_speech(tmp_path, "GRU", True, False)
    data = Dataset({"x": RNG.standard_normal((64, 8, 10)).astype(np.float32)})
    calib, held = data.split(0.5, seed=0)
    evaluator = evaluate.Evaluator(model, held, metric="cosine")
    result = prune_model(model, calib, evaluator, criterion="obs", ratio=0.25, round_to=1)
    hidden = [layer for layer in result.layers if layer["sources"] and "GRU" in layer["sources"][0]]
    assert len(hidden) == 2 and all(layer["after"] == HIDDEN - 3 for layer in hidden), result.layers
    assert result.scores["pruned"] > result.scores["pruned_without_recovery"]


def test_the_command_line_names_a_sample_axis_with_sample_axis(tmp_path):
    """What ``Dataset(axes=...)`` says in Python, ``--sample-axis x=1`` says on the command
    line; a wrong name or axis is a one-line error."""
    from click.testing import CliRunner
    from onnx import TensorProto, helper

    from onnxopt.calibration import parse_sample_axes
    from onnxopt.cli import main
    from onnxopt.errors import OnnxoptError
    from onnxopt.model_io import save_model

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("ReduceSum", ["h", "zero"], ["y"], keepdims=0)],
        "seq_first", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, None, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor("zero", TensorProto.INT64, [1], [0]),
         helper.make_tensor("w", TensorProto.FLOAT, [4, 4], RNG.standard_normal(16).astype(np.float32).tolist())],
    )  # fmt: skip
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    save_model(model, tmp_path / "m.onnx")
    np.savez(tmp_path / "d.npz", x=RNG.standard_normal((30, 8, 4)).astype(np.float32))  # 30 steps, 8 samples
    assert len(load_npz(tmp_path / "d.npz", model)) == 30
    assert len(load_npz(tmp_path / "d.npz", model, sample_axes=parse_sample_axes("x=1"))) == 8
    for bad, message in (("y=1", "no input of that name"), ("x=3", "rank 3"), ("x", "NAME=AXIS")):
        with pytest.raises(OnnxoptError, match=message):
            load_npz(tmp_path / "d.npz", model, sample_axes=parse_sample_axes(bad))
    runner = CliRunner()
    ok = runner.invoke(main, ["optimize", str(tmp_path / "m.onnx"), "--data", str(tmp_path / "d.npz"), "--sample-axis", "x=1",
                              "--no-bench", "--report", str(tmp_path / "r.json"), "-o", str(tmp_path / "o.onnx")])  # fmt: skip
    assert ok.exit_code == 0, ok.output
    assert "4 held-out samples" in ok.output  # 8 samples split in two, not 30 steps
    bad = runner.invoke(main, ["prune", str(tmp_path / "m.onnx"), "--data", str(tmp_path / "d.npz"), "--sample-axis", "x=7",
                               "--ratio", "0.5"])  # fmt: skip
    assert bad.exit_code != 0 and "rank 3" in bad.output and "Traceback" not in bad.output
    same = runner.invoke(main, ["verify", str(tmp_path / "m.onnx"), str(tmp_path / "o.onnx"), "--data", str(tmp_path / "d.npz"),
                                "--sample-axis", "x=1"])  # fmt: skip
    assert same.exit_code == 0 and "8 samples" in same.output, same.output
    timed = runner.invoke(main, ["bench", str(tmp_path / "m.onnx"), "--data", str(tmp_path / "d.npz"), "--sample-axis", "x=1",
                                 "--batch", "2", "--iterations", "3", "--warmup", "1", "--json", str(tmp_path / "b.json")])  # fmt: skip
    assert timed.exit_code == 0, timed.output
    import json

    assert [row["batch"] for row in json.loads((tmp_path / "b.json").read_text())["rows"]] == [2]  # not the 30 steps


def test_hidden_units_of_an_lstm_with_peepholes_and_constant_states_prune_exactly():
    """Peephole weights P and constant initial states (onnxruntime runs no layout=1): the
    unit's entries go from P and from both states too."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(5)
    hidden, features, steps = 6, 5, 7

    def rand(*shape, scale=0.5):
        return (scale * rng.standard_normal(shape)).astype(np.float32)

    inits = [
        numpy_helper.from_array(rand(2, 4 * hidden, features), "W"), numpy_helper.from_array(rand(2, 4 * hidden, hidden), "R"),
        numpy_helper.from_array(rand(2, 8 * hidden), "B"), numpy_helper.from_array(rand(2, 3 * hidden), "P"),
        numpy_helper.from_array(rand(2, 1, hidden), "h0"), numpy_helper.from_array(rand(2, 1, hidden), "c0"),
        numpy_helper.from_array(np.array([steps, 1, 2 * hidden], np.int64), "merged"),
        numpy_helper.from_array(rand(2 * hidden, 3), "head"),
    ]  # fmt: skip
    nodes = [
        helper.make_node("LSTM", ["x", "W", "R", "B", "", "h0", "c0", "P"], ["y"], hidden_size=hidden,
                         direction="bidirectional"),
        helper.make_node("Transpose", ["y"], ["y_t"], perm=[0, 2, 1, 3]),  # [T, 1, 2, H]
        helper.make_node("Reshape", ["y_t", "merged"], ["features"]),  # [T, 1, 2H]: 2H spelled out
        helper.make_node("MatMul", ["features", "head"], ["out"]),
    ]  # fmt: skip
    graph = helper.make_graph(
        nodes, "lstm_peepholes", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [steps, 1, features])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [steps, 1, 3])], inits,
    )  # fmt: skip
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(proto, full_check=True)
    model = ir.from_proto(proto)
    (group,) = _hidden_groups(analyze_groups(model))
    assert group.prunable, group.describe()
    units = np.array([0, 4])
    zeroed = model.clone()
    node = zeroed.graph.node(0)
    for index, blocks in ((1, 4), (2, 4), (3, 8), (7, 3)):
        array = const_array(node.inputs[index]).copy()
        array.reshape(2, blocks, hidden, -1)[:, :, units] = 0
        set_const_input(node, index, array)
    for index in (5, 6):
        array = const_array(node.inputs[index]).copy()
        array[..., units] = 0
        set_const_input(node, index, array)
    pruned = model.clone()
    PruneChannelsPass({group.name: units})(pruned)
    onnx.checker.check_model(ir.to_proto(pruned), full_check=True)
    assert const_array(pruned.graph.node(0).inputs[7]).shape == (2, 3 * (hidden - 2))
    assert const_array(pruned.graph.node(0).inputs[5]).shape == (2, 1, hidden - 2)
    assert const_array(pruned.graph.node(2).inputs[1]).tolist() == [steps, 1, 2 * (hidden - 2)]
    data = Dataset({"x": rand(steps, 1, features, scale=1.0)}, axes={"x": 1})
    original, expected, got = (evaluate.run(m, data)[0] for m in (model, zeroed, pruned))
    assert np.abs(expected - original).max() > 1e-3
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("reads", ["last layer state", "last step"])
def test_a_classifier_reading_one_state_or_step_through_gather_prunes_the_hidden_units(tmp_path, reads):
    """``h_n[-1]`` (Gather on axis 0 of ``[layers, N, H]``) and ``out[:, -1]`` (Gather on the
    time axis of a batch-first output) keep the hidden units on their axis; both were "reads
    the channels in a way onnxopt does not model", and a stacked GRU classifier had no
    prunable group at all."""
    torch = pytest.importorskip("torch")
    from torch import nn

    from benchmarks.export import export_onnx
    from onnxopt.model_io import load_model
    from onnxopt.pruning import Pruner

    class Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.GRU(8, HIDDEN, num_layers=2, batch_first=True)
            self.head = nn.Linear(HIDDEN, 5)

        def forward(self, x):
            out, h = self.rnn(x)
            return self.head(h[-1] if reads == "last layer state" else out[:, -1])

    torch.manual_seed(0)
    path = export_onnx(Classifier().eval(), (torch.randn(2, 6, 8),), tmp_path / "cls.onnx", dynamo=False,
                       input_names=["x"], output_names=["y"], dynamic_batch=True)  # fmt: skip
    model = Pruner(load_model(path), criterion="l1").model
    assert any(n.op_type == "Gather" for n in model.graph)
    last = [g for g in _hidden_groups(analyze_groups(model)) if g.prunable]
    assert last and all(g.units == HIDDEN for g in last)
    assert any(m.node.op_type == "Gemm" for g in last for m in g.members)  # the units the classifier reads
    units = np.array([0, 3, 7])
    zeroed, pruned = model.clone(), model.clone()
    for g in last:  # h_n concatenates both layers' states: one group, two GRUs
        for source in g.sources:
            _zero_units(zeroed, source.node.name, units)
    assert PruneChannelsPass({g.name: units for g in last})(pruned).modified
    data = Dataset({"x": RNG.standard_normal((3, 6, 8)).astype(np.float32)})
    original, expected, got = (evaluate.run(m, data)[0] for m in (model, zeroed, pruned))
    assert np.abs(expected - original).max() > 1e-3
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_a_state_with_a_fixed_batch_of_one_off_the_first_axis_points_at_sample_axis(tmp_path):
    """A fixed-batch keyword spotter's ``h0 [1, 1, 64]`` fed ``[1, 48, 64]`` (48 samples, as
    an RNN state holds them): the refusal now says which flag fixes it, and that flag does."""
    from onnx import TensorProto, helper

    from onnxopt.calibration import parse_sample_axes
    from onnxopt.errors import OnnxoptError
    from onnxopt.model_io import save_model

    graph = helper.make_graph(
        [helper.make_node("Relu", ["h0"], ["y"])], "state",
        [helper.make_tensor_value_info("h0", TensorProto.FLOAT, [1, 1, 4])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 4])],
    )  # fmt: skip
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    save_model(model, tmp_path / "m.onnx")
    np.savez(tmp_path / "d.npz", h0=RNG.standard_normal((1, 6, 4)).astype(np.float32))
    with pytest.raises(OnnxoptError, match=r"dimension 1 is 6, expected 1; if axis 1 holds the samples, say so: --sample-axis h0=1"):
        load_npz(tmp_path / "d.npz", model)
    assert len(load_npz(tmp_path / "d.npz", model, sample_axes=parse_sample_axes("h0=1"))) == 6
