"""The budget rule of :class:`onnxopt.evaluate.Evaluator`: drop plus one standard error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxopt import calibration, evaluate
from onnxopt.calibration import Dataset
from onnxopt.evaluate import Evaluator, Score, batched_feeds, run, session
from tests.builders import conv_bn_relu_gemm


def _shift_model(shift: np.ndarray, shape: list, time_major: bool = False) -> ir.Model:
    """``y = x·I + shift`` (a linear score layer): the original (shift 0) and candidates that
    move some decisions; ``time_major`` transposes ``[N, T, C]`` inputs to ``[T, N, C]`` first."""
    nodes = [helper.make_node("MatMul", ["xt" if time_major else "x", "eye"], ["xl"]),
             helper.make_node("Add", ["xl", "shift"], ["y"])]  # fmt: skip
    if time_major:
        nodes.insert(0, helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2]))
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [shape[1], shape[0], shape[2]] if time_major else shape)],
        [numpy_helper.from_array(shift.astype(np.float32), "shift"),
         numpy_helper.from_array(np.eye(shape[-1], dtype=np.float32), "eye")],
    )  # fmt: skip
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def _flipping_pair(n: int = 200, flips: int = 4):
    """Logits where class 0 wins by 0.1 on ``flips`` samples and by 1 elsewhere; a shift of
    0.5 towards class 1 flips exactly those. Half of them are labelled 0, half 1, so the
    candidate loses as many correct answers as it gains: equal accuracy, different answers."""
    x = np.zeros((n, 2), np.float32)
    x[:, 0] = 1.0
    x[:flips, 0] = 0.1
    labels = np.zeros(n, np.int64)
    labels[: flips // 2] = 1
    data = Dataset({"x": x}, labels)
    return _shift_model(np.zeros(2), ["N", 2]), _shift_model(np.array([0.0, 0.5]), ["N", 2]), data


def test_changed_answers_that_cancel_do_not_pass_a_tight_budget():
    original, candidate, data = _flipping_pair()
    evaluator = Evaluator(original, data)
    score = evaluator.score(candidate)
    assert score == evaluator.baseline  # accuracy alone sees no change
    assert score.se > 0.005  # 4 changed answers of 200: se = sqrt(4 / 199) / sqrt(200) ≈ 0.0100
    assert not evaluator.within(score, 0.01)
    assert evaluator.drop_text(score) == f"0.0000 ± {score.se:.4f}"
    assert evaluator.within(score, 0.03)
    assert Evaluator(original, data, confidence=0.0).within(Evaluator(original, data, confidence=0.0).score(candidate), 0.01)
    assert evaluator.score(original).se == 0.0 and evaluator.within(evaluator.score(original), 0.0)


def test_per_sample_split_of_a_sequence_output_on_axis_1():
    """A CTC-style ``[T, N, C]`` output: samples lie on axis 1, not 0."""
    t, n = 6, 40
    x = np.zeros((n, t, 3), np.float32)
    x[..., 0] = 1.0
    x[:2, :, 0] = 0.1  # two samples whose every step flips under the shift
    original = _shift_model(np.zeros(3), [n, t, 3], time_major=True)
    candidate = _shift_model(np.array([0.0, 0.5, 0.0]), [n, t, 3], time_major=True)
    data = Dataset({"x": x})
    evaluator = Evaluator(original, data)
    score = evaluator.score(candidate)
    assert np.isclose(float(score), 1 - 2 / n)
    assert np.isclose(score.se, np.std(np.r_[np.ones(2), np.zeros(n - 2)], ddof=1) / np.sqrt(n))


def test_a_detection_head_is_scored_as_a_dense_output_not_by_argmax():
    """A YOLO-style ``[N, 4 + classes, anchors]`` head (a Concat of boxes and scores): the
    argmax over anchors is no decision; agreement is 1 − relative L2 error there."""
    n, anchors = 8, 50
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (n, 6, anchors)).astype(np.float32)

    def head(noise: float) -> ir.Model:
        nodes = [helper.make_node("Slice", ["x", "s0", "s4", "ax"], ["boxes"]),
                 helper.make_node("Slice", ["x", "s4", "s6", "ax"], ["logits"]),
                 helper.make_node("Sigmoid", ["logits"], ["scores"]),
                 helper.make_node("Concat", ["boxes", "scores"], ["c"], axis=1),
                 helper.make_node("Add", ["c", "noise"], ["y"])]  # fmt: skip
        consts = {"s0": [0], "s4": [4], "s6": [6], "ax": [1]}
        inits = [numpy_helper.from_array(np.array(v, np.int64), k) for k, v in consts.items()]
        inits.append(numpy_helper.from_array((rng.standard_normal((1, 6, anchors)) * noise).astype(np.float32), "noise"))
        graph = helper.make_graph(
            nodes, "head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6, anchors])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6, anchors])], inits,
        )  # fmt: skip
        return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))

    original, candidate = head(0.0), head(5e-3)
    evaluator = Evaluator(original, Dataset({"x": x}))
    assert evaluator.metric_name == "agreement with original"
    ref, out = evaluator.reference[0], evaluator.outputs(candidate)[0]
    dense = 1 - np.linalg.norm(out.astype(np.float64) - ref) / np.linalg.norm(ref.astype(np.float64))
    assert np.isclose(float(evaluator.score(candidate)), dense) and dense > 0.98
    # per-step argmax over the anchors would have called this tiny change a disagreement
    assert np.mean(ref.argmax(-1) == out.argmax(-1)) < 0.9


def test_metric_that_needs_several_samples_falls_back_to_the_bare_drop():
    original, candidate, data = _flipping_pair()

    def spread(reference, outputs):  # undefined on one sample
        if len(outputs[0]) < 2:
            raise ValueError("needs several samples")
        return 1.0 - float(np.std(outputs[0][:, 0] - reference[0][:, 0]))

    evaluator = Evaluator(original, Dataset({"x": data.inputs["x"]}), metric=spread)
    score = evaluator.score(candidate)
    assert score.se == 0.0 and evaluator.confidence == 0.0
    assert isinstance(score, Score) and evaluator.within(score, 1.0)


METRIC_FILE = '''
from pathlib import Path

import numpy as np
import pytest

def unchanged(original, candidate):
    """1.0 per sample whose outputs did not move at all."""
    return float(np.mean(np.all(np.isclose(original[0], candidate[0]), axis=1)))
'''


def test_a_metric_named_file_colon_function_scores_candidates(tmp_path):
    (tmp_path / "my_metric.py").write_text(METRIC_FILE)
    original, candidate, data = _flipping_pair()
    spec = f"{tmp_path / 'my_metric.py'}:unchanged"
    evaluator = Evaluator(original, data, metric=spec)
    assert evaluator.metric_name == spec and evaluator.baseline == 1.0
    # the shift moves every sample's logits: the user's metric sees 0, accuracy-free
    assert evaluator.score(candidate) == 0.0
    assert evaluator.score(original) == 1.0


def test_bad_metric_names_are_one_line_errors(tmp_path):
    from click.testing import CliRunner

    from onnxopt.cli_prune import prune_command
    from onnxopt.errors import OnnxoptError
    from onnxopt.evaluate import load_metric

    (tmp_path / "m.py").write_text(METRIC_FILE)
    for spec, message in [
        ("no_such_module_xyz:f", "cannot import no_such_module_xyz"),
        (f"{tmp_path / 'm.py'}:missing", "has no function 'missing'"),
        (f"{tmp_path / 'nothere.py'}:f", "no such file"),
    ]:
        try:
            load_metric(spec)
        except OnnxoptError as exc:
            assert message in str(exc)
        else:
            raise AssertionError(f"{spec} was accepted")
    demo = Path(__file__).resolve().parents[1] / "onnxopt" / "demo"
    if not (demo / "digits_cnn.onnx").exists():
        return
    out = tmp_path / "p.onnx"
    args = [str(demo / "digits_cnn.onnx"), "--data", str(demo / "digits.npz"), "--max-accuracy-drop", "0.01",
            "--metric", "no_such_module_xyz:f", "-o", str(out)]  # fmt: skip
    res = CliRunner().invoke(prune_command, args)
    assert res.exit_code == 2 and "cannot import no_such_module_xyz" in res.output and "Traceback" not in res.output
    assert not out.exists()


def test_cli_budget_follows_the_named_metric(tmp_path):
    import json

    from click.testing import CliRunner

    from onnxopt.cli_quantize import quantize_command

    demo = Path(__file__).resolve().parents[1] / "onnxopt" / "demo"
    if not (demo / "digits_cnn.onnx").exists():
        return
    (tmp_path / "m.py").write_text(METRIC_FILE)
    spec = f"{tmp_path / 'm.py'}:unchanged"
    out, report = tmp_path / "q.onnx", tmp_path / "r.json"
    args = [str(demo / "digits_cnn.onnx"), "--data", str(demo / "digits.npz"), "--mode", "int8",
            "--max-accuracy-drop", "0.01", "--metric", spec, "-o", str(out), "--report", str(report)]  # fmt: skip
    res = CliRunner().invoke(quantize_command, args)
    assert res.exit_code == 0, res.output
    data = json.loads(report.read_text())["quantize"]
    # int8 moves every logit: under "unchanged" no int8 candidate fits a 1 % budget
    assert data["metric"] == spec and not data["applied"]
    assert "holds only with every layer float" in data["reason"]


def test_outputs_whose_data_dependent_size_changed_score_as_far_off():
    """A detector after NMS (or NonZero) returns as many rows as it finds: when a lossy pass
    changes that count the outputs cannot be compared entry by entry, and they are scored as
    disagreeing instead of stopping the run."""
    from onnxopt.evaluate import agreement, compare, rel_l2, task_score
    from onnxopt.quantization import _rel_error

    ref = [np.arange(12, dtype=np.int64).reshape(6, 2), np.ones((6, 4), np.float32)]
    cand = [np.arange(10, dtype=np.int64).reshape(5, 2), np.ones((5, 4), np.float32)]
    fidelity = compare(ref, cand, names=["idx", "boxes"])
    assert fidelity.max_rel == np.inf and fidelity.cosine == 0.0 and not fidelity.within()
    assert agreement(ref, cand) == 0.0 and rel_l2(ref[1:], cand[1:]) == 0.0
    assert task_score(ref, cand) == 0.0 and _rel_error(ref[1:], cand[1:]) == np.inf
    assert compare(ref, [r.copy() for r in ref]).within()  # same count: compared as usual


def test_a_sequence_input_is_fed_whole():
    """A sequence input (a list of tensors of different shapes) has no sample axis: it is
    fed as it is, never cut or converted to one array."""
    from onnxopt.evaluate import run

    seq_type = helper.make_tensor_sequence_value_info("seq", TensorProto.FLOAT, None)
    graph = helper.make_graph(
        [helper.make_node("SequenceAt", ["seq", "one"], ["y"])], "g", [seq_type],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array(1, np.int64), "one")],
    )  # fmt: skip
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    parts = [np.ones((2, 3), np.float32), np.arange(5, dtype=np.float32)]
    data = Dataset({"seq": parts})
    assert len(data) == 1 and data.take(slice(0, 1)).inputs["seq"] is parts
    np.testing.assert_array_equal(run(model, data)[0], parts[1])


def _channels_first_ctc(bias: np.ndarray, transpose: bool) -> ir.Model:
    """A QuartzNet-style CTC head, ``[N, C, T]``: a 1×1 Conv1d over ``[N, 4, T]`` then
    LogSoftmax over the classes — on axis 1 directly, or (``transpose``) on the last axis of
    ``[N, T, C]`` followed by a Transpose to ``[N, C, T]``."""
    w = np.eye(4, dtype=np.float32)[:, :, None]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["logits"])]
    if transpose:
        nodes += [helper.make_node("Transpose", ["logits"], ["ntc"], perm=[0, 2, 1]),
                  helper.make_node("LogSoftmax", ["ntc"], ["ls"], axis=-1),
                  helper.make_node("Transpose", ["ls"], ["y"], perm=[0, 2, 1])]  # fmt: skip
    else:
        nodes.append(helper.make_node("LogSoftmax", ["logits"], ["y"], axis=1))
    graph = helper.make_graph(
        nodes, "ctc", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 24])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 24])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(bias.astype(np.float32), "b")],
    )  # fmt: skip
    model = ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    import onnx_ir.passes.common as common

    common.ShapeInferencePass()(model)
    return model


def test_a_channels_first_ctc_output_is_scored_along_its_class_axis():
    """QuartzNet's ``[N, C, T]`` log-probabilities: a candidate that changes no class
    decision scored 0.68 by an argmax over time (the last axis); now 1.0, and one that moves
    the decisions of half the steps scores about 0.5."""
    from onnxopt.evaluate import score_axes

    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 4, 24)).astype(np.float32)
    data = Dataset({"x": x})
    for transpose in (False, True):
        original = _channels_first_ctc(np.zeros(4), transpose)
        assert score_axes(original) == [1]
        evaluator = Evaluator(original, data)
        # a class-independent shift changes every time step's value but no class decision
        nudged = evaluator.score(_channels_first_ctc(np.full(4, 0.3), transpose))
        assert nudged == 1.0
        # a large bias on class 0 takes the decision wherever class 0 was not far behind
        favoured = float(evaluator.score(_channels_first_ctc(np.array([1.0, 0, 0, 0]), transpose)))
        expected = np.mean(np.argmax(x, 1) == np.argmax(x + np.array([1.0, 0, 0, 0])[None, :, None], 1))
        assert favoured == pytest.approx(expected) and favoured < 0.9


def test_fidelity_top1_uses_the_class_axis_and_leaves_dense_outputs_out():
    """The fidelity table's top-1 agreement (``verify``, each command's report) argmaxed the
    last axis of any 3-D output: over time for QuartzNet's ``[N, C, T]`` (below 0.9 for a
    candidate that changed no decision), over anchors for a YOLO head. It now follows the
    Softmax's axis, and an output that is not known to hold scores gets no top-1."""
    from onnxopt import evaluate

    x = np.random.default_rng(0).standard_normal((32, 4, 24)).astype(np.float32)
    data = Dataset({"x": x})
    for transpose in (False, True):
        original = _channels_first_ctc(np.zeros(4), transpose)
        nudged = _channels_first_ctc(np.zeros(4), transpose)
        w = nudged.graph.initializers["w"]  # sharper logits: new values, the same class decisions
        w.const_value = ir.tensor(3 * w.const_value.numpy())
        ref, out = evaluate.run(original, data), evaluate.run(nudged, data)
        assert evaluate.compare(ref, out).top1_agreement < 0.9  # the last axis: time
        fidelity = evaluate.compare(ref, out, axes=evaluate.score_axes(original))
        assert fidelity.top1_agreement == 1.0
        assert Evaluator(original, data).fidelity(nudged).top1_agreement == 1.0
        # the same values with no Softmax behind them (a dense map): no top-1 at all
        assert evaluate.compare(ref, out, axes=[None]).top1_agreement is None
    logits = np.random.default_rng(1).standard_normal((8, 5)).astype(np.float32)
    assert evaluate.compare([logits], [logits], axes=[None]).top1_agreement == 1.0  # [N, C] stays scores


def _embedding_model(head: str, w: np.ndarray, output: str = "y") -> ir.Model:
    """x [N, T, 8] → MatMul w [8, D] → sum over T → ``head`` → [N, D]: ``mean`` divides by
    the mask's count (sentence-transformers' mean pooling), ``l2`` by the vector's norm,
    ``layernorm`` normalises, ``softmax`` is Exp / ΣExp written out, ``temperature`` a Div by
    a constant, ``none`` the sum itself."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]),
             helper.make_node("ReduceSum", ["h", "axis1"], ["pooled"], keepdims=0)]  # fmt: skip
    inits = [numpy_helper.from_array(w.astype(np.float32), "w"), numpy_helper.from_array(np.array([1], np.int64), "axis1")]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6, 8])]
    if head == "mean":
        inputs.append(helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["N", 6]))
        nodes += [helper.make_node("ReduceSum", ["mask", "axis1"], ["count"], keepdims=1),
                  helper.make_node("Div", ["pooled", "count"], [output])]  # fmt: skip
    elif head == "l2":
        nodes += [helper.make_node("ReduceL2", ["pooled", "axis1"], ["norm"], keepdims=1),
                  helper.make_node("Div", ["pooled", "norm"], [output])]  # fmt: skip
    elif head == "layernorm":
        inits += [numpy_helper.from_array(np.ones(w.shape[1], np.float32), "gamma"),
                  numpy_helper.from_array(np.zeros(w.shape[1], np.float32), "beta")]  # fmt: skip
        nodes.append(helper.make_node("LayerNormalization", ["pooled", "gamma", "beta"], [output], axis=-1))
    elif head == "softmax":
        nodes += [helper.make_node("Exp", ["pooled"], ["e"]), helper.make_node("ReduceSum", ["e", "axis1"], ["z"], keepdims=1),
                  helper.make_node("Div", ["e", "z"], [output])]  # fmt: skip
    elif head == "temperature":
        inits.append(numpy_helper.from_array(np.array(2.0, np.float32), "t"))
        nodes.append(helper.make_node("Div", ["pooled", "t"], [output]))
    else:
        nodes.append(helper.make_node("Identity", ["pooled"], [output]))
    graph = helper.make_graph(nodes, "emb", inputs, [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["N", w.shape[1]])], inits)
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


@pytest.mark.parametrize(("head", "output", "features"), [
    ("mean", "y", True), ("l2", "y", True), ("layernorm", "y", True), ("none", "sentence_embedding", True),
    ("none", "pooler_output", True), ("none", "last_hidden_state", True),
    ("softmax", "y", False), ("temperature", "y", False), ("none", "y", False), ("none", "embedding_logits", False),
])  # fmt: skip
def test_embeddings_are_known_by_their_normalisation_or_their_name(head, output, features):
    from onnxopt.evaluate import FEATURES, score_axes

    model = _embedding_model(head, np.eye(8, 16), output)
    assert (score_axes(model) == [FEATURES]) == features


def test_an_embedding_is_scored_dense_not_by_the_argmax_of_its_dimensions():
    """Mean-pooled embeddings with one outlier dimension (as transformers have): a candidate
    that loses every other dimension keeps each argmax — top-1 1.0 — but not the embedding."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 16)) * 0.1
    w[:, 0] = 5.0  # the outlier dimension: the argmax of every sample
    x = np.abs(rng.standard_normal((32, 6, 8))).astype(np.float32)
    data = Dataset({"x": x, "mask": np.ones((32, 6), np.float32)})
    original = _embedding_model("mean", w)
    broken = w.copy()
    broken[:, 1:] = rng.standard_normal((8, 15)) * 0.1
    evaluator = Evaluator(original, data)
    candidate = _embedding_model("mean", broken)
    assert evaluator.fidelity(candidate).top1_agreement is None  # no argmax over dimensions
    ref, out = evaluator.reference[0], evaluator.outputs(candidate)[0]
    assert np.all(ref.argmax(1) == out.argmax(1))  # what top-1 agreement would have scored: 1.0
    score = float(evaluator.score(candidate))
    assert score < 0.99 and score == pytest.approx(1 - np.linalg.norm(ref - out) / np.linalg.norm(ref), rel=1e-5)


def _sigmoid_model(w: np.ndarray, spatial: int = 0) -> ir.Model:
    """x [N, 8] → Gemm w [8, C] → Sigmoid → y [N, C] probabilities; with ``spatial`` a
    [N, C, s, s] map of them (a segmentation mask) instead."""
    c = w.shape[1]
    nodes = [helper.make_node("Gemm", ["x", "w"], ["z"])]
    inits = [numpy_helper.from_array(w.astype(np.float32), "w")]
    shape, last = ["N", c], "z"
    if spatial:
        nodes += [helper.make_node("Reshape", ["z", "shape"], ["z4"]),
                  helper.make_node("Tile", ["z4", "reps"], ["zt"])]  # fmt: skip
        inits += [numpy_helper.from_array(np.array([0, c, 1, 1], np.int64), "shape"),
                  numpy_helper.from_array(np.array([1, 1, spatial, spatial], np.int64), "reps")]  # fmt: skip
        shape, last = ["N", c, spatial, spatial], "zt"
    nodes.append(helper.make_node("Sigmoid", [last], ["y"]))
    graph = helper.make_graph(nodes, "sig", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)], inits)  # fmt: skip
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_sigmoid_probabilities_are_scored_by_their_decisions_at_one_half():
    """A multi-label head: shifting probabilities that stay on their side of 0.5 changes no
    decision (score 1.0, where a dense error would count it); flipping one label of every
    sample is 1/C of the decisions — which top-1 over the labels would not see at all."""
    from onnxopt.evaluate import DECISIONS, rel_l2, score_axes

    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 4)) * 2
    x = rng.standard_normal((64, 8)).astype(np.float32)
    original = _sigmoid_model(w)
    assert score_axes(original) == [DECISIONS]
    assert score_axes(_sigmoid_model(w, spatial=40)) == [DECISIONS]
    evaluator = Evaluator(original, Dataset({"x": x}))
    assert evaluator.fidelity(_sigmoid_model(w)).top1_agreement is None  # no argmax over labels
    # scaled logits keep every sign: every decision, not the probabilities
    assert float(evaluator.score(_sigmoid_model(w * 0.5))) == 1.0
    assert float(rel_l2(evaluator.reference, evaluator.outputs(_sigmoid_model(w * 0.5)))) < 0.95
    flipped = w.copy()
    flipped[:, 0] *= -1  # every sample's decision for label 0 flips (its logit is never 0)
    assert float(evaluator.score(_sigmoid_model(flipped))) == pytest.approx(0.75)
    # a Sigmoid map (a mask, a score map) is no list of decisions: dense
    maps = Evaluator(_sigmoid_model(w, spatial=40), Dataset({"x": x}))
    assert float(maps.score(_sigmoid_model(w * 0.5, spatial=40))) < 0.95


@pytest.mark.parametrize(("else_op", "kind"), [("Sigmoid", "decisions"), ("Relu", None)])
def test_an_if_output_is_what_its_branches_agree_on(else_op, kind):
    """openWakeWord's heads (tf2onnx) end in an If on the batch size whose branches both
    return a Sigmoid's output: probabilities. Branches that disagree say nothing."""
    from onnxopt.evaluate import score_axes

    def branch(name, op):
        node = helper.make_node(op, ["z"], [f"{name}_out"])
        return helper.make_graph([node], name, [], [helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, ["N", 1])])

    nodes = [helper.make_node("Gemm", ["x", "w"], ["z"]),
             helper.make_node("If", ["cond"], ["y"], then_branch=branch("then", "Sigmoid"), else_branch=branch("else", else_op))]  # fmt: skip
    graph = helper.make_graph(nodes, "if", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8]),
                                            helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])],
                              [numpy_helper.from_array(np.ones((8, 1), np.float32), "w")])  # fmt: skip
    model = ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert score_axes(model) == [kind]


def test_labels_score_a_sigmoid_binary_classifier_by_its_decisions():
    """One probability per sample (a wake word, voice activity) and 0/1 labels: accuracy of
    the decisions at 0.5 — before, labels were refused for want of an [N, classes] output."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 1))
    x = rng.standard_normal((40, 8)).astype(np.float32)
    truth = ((x @ w)[:, 0] > 0).astype(np.int64)
    labels = truth.copy()
    labels[:4] = 1 - labels[:4]  # 4 of 40 mislabelled: the original scores 0.9
    evaluator = Evaluator(_sigmoid_model(w), Dataset({"x": x}, labels=labels))
    assert evaluator.baseline == pytest.approx(0.9)
    assert float(evaluator.score(_sigmoid_model(-w))) == pytest.approx(0.1)  # every decision flipped
    from onnxopt.evaluate import accuracy

    with pytest.raises(Exception, match="one sigmoid probability per sample"):
        accuracy([x[:, :1]], labels)  # no model to say that [N, 1] holds probabilities


def test_samples_per_run_are_capped_so_the_largest_value_fits_the_activation_budget(monkeypatch):
    monkeypatch.setattr(calibration, "ACTIVATION_BUDGET", 3 * 4 * 256)  # 3 samples of the conv's [4, 8, 8] floats
    model = ir.from_proto(conv_bn_relu_gemm())
    x = np.random.default_rng(0).standard_normal((10, 3, 8, 8)).astype(np.float32)
    data = calibration.check_dataset(Dataset({"input": x}), model)
    assert data.max_batch == 3 and data.split(0.5)[0].max_batch == 3
    sess = session(model)
    feeds, _ = batched_feeds(sess, data)
    assert [len(f["input"]) for f in feeds] == [3, 3, 3, 1]
    assert [len(p) for p in data.parts(16)] == [3, 3, 3, 1]
    np.testing.assert_allclose(run(sess, data)[0], sess.run(None, {"input": x})[0], rtol=1e-5, atol=1e-6)
    fixed = ir.from_proto(conv_bn_relu_gemm(batch=5))  # a fixed batch is what the model takes: never cut
    assert calibration.check_dataset(Dataset({"input": x}), fixed).max_batch is None
    monkeypatch.setattr(calibration, "ACTIVATION_BUDGET", 2**30)
    assert calibration.check_dataset(Dataset({"input": x}), model).max_batch >= 64  # small values: not capped


def test_sequences_decoded_to_different_lengths_agree_over_the_steps_both_have():
    # a decoder loop runs to the batch's longest sequence: SLANet-plus decoded 61 steps
    # instead of 60 after pruning, and every sample scored 0 though 6 of 8 kept their tokens
    rng = np.random.default_rng(0)
    reference = rng.standard_normal((2, 5, 4)).astype(np.float32)
    longer = np.concatenate([reference, rng.standard_normal((2, 1, 4)).astype(np.float32)], axis=1)
    assert evaluate.agreement([reference], [longer]) == 1.0
    changed = longer.copy()
    changed[1, 2] = -changed[1, 2]  # one step of ten decides otherwise
    assert evaluate.agreement([reference], [changed]) == pytest.approx(0.9)
    assert evaluate.agreement([reference], [longer[:, :, :3]]) == 0.0  # other classes: not comparable
