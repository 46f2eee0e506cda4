"""Generated inputs for models without data: fixed non-sample axes, and a clear error when
the default sizes do not fit (audio models such as silero-vad: an STFT with a reflect Pad,
an LSTM state shaped [layers, batch, hidden])."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxopt import evaluate
from onnxopt.bench import benchmark
from onnxopt.calibration import synthetic
from onnxopt.errors import OnnxoptError
from onnxopt.optimize import optimize


def stateful_audio_model(pad: int = 4) -> ir.Model:
    """audio [1, T] → reflect Pad by ``pad`` → ReduceMean → + state [2, 1, 4] summed → y [1, 4]
    (a reflect Pad needs T > pad)."""
    nodes = [
        helper.make_node("Pad", ["audio", "pads"], ["padded"], mode="reflect"),
        helper.make_node("ReduceMean", ["padded"], ["level"], axes=[1], keepdims=1),
        helper.make_node("ReduceSum", ["state", "axis0"], ["s"], keepdims=0),
        helper.make_node("Add", ["s", "level"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "audio",
        [helper.make_tensor_value_info("audio", TensorProto.FLOAT, [1, "T"]),
         helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, 1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(np.array([0, pad, 0, pad], np.int64), "pads"),
         numpy_helper.from_array(np.array([0], np.int64), "axis0")],
    )  # fmt: skip
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_generated_inputs_keep_a_fixed_first_axis_and_share_it():
    model = stateful_audio_model()
    data = synthetic(model, 8, shapes={"audio": [1, 64], "state": [2, 1, 4]})
    assert data.inputs["audio"].shape == (1, 64) and data.inputs["state"].shape == (2, 1, 4)
    one = data.take(slice(0, 1))
    assert one.inputs["state"].shape == (2, 1, 4)  # not the sample axis: shared, not cut


def test_optimize_without_data_names_the_sizes_that_do_not_fit():
    model = stateful_audio_model(pad=20000)  # no size tried fits a reflect Pad of 20000
    with pytest.raises(OnnxoptError) as err:
        optimize(model)
    message = str(err.value)
    assert "audio=1x1" in message and "--shape" in message and "\n" not in message
    assert "dynamic dimensions 1, 16, 64, 256, 1024, 16000 were tried" in message
    result = optimize(model, shapes={"audio": [1, 20001]})
    assert result.fidelity.within()


@pytest.mark.parametrize(("pad", "size"), [(4, 16), (200, 256), (400, 1024)])
def test_dynamic_sizes_that_1_does_not_fit_are_found_without_data(pad, size):
    # openWakeWord's melspectrogram (an STFT's reflect Pad on [batch, samples]) refuses T = 1
    model = stateful_audio_model(pad=pad)
    data, outputs, described = evaluate.runnable_synthetic(model, 8)
    assert data.inputs["audio"].shape == (1, size) and data.inputs["state"].shape == (2, 1, 4)
    assert described.endswith(f"dynamic dimensions {size})") and outputs[0].shape == (1, 4)
    result = optimize(model)
    assert result.fidelity.within()
    assert benchmark([("audio", model)], iterations=3, warmup=1).rows


def batch_one_state_model() -> ir.Model:
    """x [batch, 4] (dynamic) and h0 [1, 4] concatenated on axis 1: the batch must be 1, as
    AECMOS's GRU, whose input says ``batch_size``, takes ``h0 [4, 1, 64]``."""
    graph = helper.make_graph(
        [helper.make_node("Concat", ["x", "h0"], ["y"], axis=1)], "state",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4]),
         helper.make_tensor_value_info("h0", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])],
    )  # fmt: skip
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_inputs_whose_batch_a_fixed_state_ties_to_1_are_generated_one_per_run():
    model = batch_one_state_model()
    data, outputs, described = evaluate.runnable_synthetic(model, 8)
    assert described.endswith("one per run)") and data.stacked == {"x", "h0"}
    assert data.inputs["x"].shape == (8, 1, 4) and outputs[0].shape == (8, 1, 8)
    assert len({data.inputs["x"][i].tobytes() for i in range(8)}) == 8  # 8 different samples
    result = optimize(model)
    assert result.fidelity.within()
    assert benchmark([("state", model)], iterations=3, warmup=1).rows


def batch_one_state_audio_model() -> ir.Model:
    """audio [batch, T] → reflect Pad by 4 (T > 4) → ReduceMean → concatenated with h0 [1, 4]:
    neither the default size nor a batch of several runs."""
    nodes = [
        helper.make_node("Pad", ["audio", "pads"], ["padded"], mode="reflect"),
        helper.make_node("ReduceMean", ["padded"], ["level"], axes=[1], keepdims=1),
        helper.make_node("Concat", ["level", "h0"], ["y"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "state",
        [helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["batch", "T"]),
         helper.make_tensor_value_info("h0", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 5])],
        [numpy_helper.from_array(np.array([0, 4, 0, 4], np.int64), "pads")],
    )  # fmt: skip
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_inputs_that_need_a_larger_dynamic_size_and_one_per_run_keep_the_first_size_that_runs():
    data, outputs, described = evaluate.runnable_synthetic(batch_one_state_audio_model(), 8)
    assert described.endswith("dynamic dimensions 16; one per run)")
    assert data.inputs["audio"].shape == (8, 1, 16) and outputs[0].shape == (8, 1, 5)


def test_bench_runs_a_model_whose_first_axis_is_not_the_batch():
    result = benchmark([("audio", stateful_audio_model())], shapes={"audio": [1, 64]}, iterations=3, warmup=1)
    assert result.rows and all(r.p50_ms > 0 for r in result.rows)
    with pytest.raises(OnnxoptError, match="--shape"):
        benchmark([("audio", stateful_audio_model(pad=20000))], iterations=3, warmup=1)


def sample_rate_model() -> ir.Model:
    """audio [N, T] and a scalar sample rate: If sr == 16000 → Relu, else a Reshape to
    [-1, 7] (T = 64 does not divide: onnxruntime fails), as silero-vad branches on sr."""
    then = helper.make_graph([helper.make_node("Relu", ["audio"], ["y_then"])], "then", [],
                             [helper.make_tensor_value_info("y_then", TensorProto.FLOAT, ["batch", 64])])  # fmt: skip
    other = helper.make_graph(
        [helper.make_node("Reshape", ["audio", "seven"], ["y_else"])], "else", [],
        [helper.make_tensor_value_info("y_else", TensorProto.FLOAT, ["batch", 64])],
        [numpy_helper.from_array(np.array([-1, 7], np.int64), "seven")],
    )  # fmt: skip
    nodes = [
        helper.make_node("Equal", ["sr", "rate"], ["is16k"]),
        helper.make_node("If", ["is16k"], ["y"], then_branch=then, else_branch=other),
    ]
    graph = helper.make_graph(
        nodes, "vad",
        [helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["batch", 64]),
         helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 64])],
        [numpy_helper.from_array(np.array(16000, np.int64), "rate")],
    )  # fmt: skip
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_speed_checks_time_the_data_not_random_values():
    from onnxopt.calibration import Dataset
    from onnxopt.pipeline import Context, measure_speedup

    model = sample_rate_model()
    with pytest.raises(OnnxoptError, match="random inputs"):  # a random sr takes the failing branch
        benchmark([("vad", model)], iterations=3, warmup=1)
    data = Dataset({"audio": np.ones((16, 64), np.float32), "sr": np.array(16000)}, axes={"audio": 0, "sr": None})
    ctx = Context(verify_data=data, speed_seconds=0.2)
    assert measure_speedup(model, model.clone(), ctx) > 0
    result = optimize(model, data=Dataset(dict(data.inputs)), bench=True, bench_threads=1)
    assert [r.batch for r in result.bench.rows] == [1, 1] and result.fidelity.within()


def test_bench_runs_warmup_plus_iterations_times(monkeypatch):
    # the run that checks the random inputs is the first warm-up run, not one more
    import onnxopt.bench as bench

    runs = []

    class Counting:
        def __init__(self, sess):
            self._sess = sess

        def run(self, *args, **kwargs):
            runs.append(1)
            return self._sess.run(*args, **kwargs)

        def __getattr__(self, name):
            return getattr(self._sess, name)

    real_session = bench.session
    monkeypatch.setattr(bench, "session", lambda *a, **k: Counting(real_session(*a, **k)))
    monkeypatch.setattr(bench, "_start_runtime", lambda *a, **k: None)
    benchmark([("audio", stateful_audio_model())], shapes={"audio": [1, 64]}, iterations=3, warmup=2)
    assert len(runs) == 2 + 3


def test_bench_times_real_samples_from_data(tmp_path):
    from click.testing import CliRunner

    from onnxopt.cli import main

    path, data = tmp_path / "vad.onnx", tmp_path / "d.npz"
    ir.save(sample_rate_model(), str(path))
    np.savez(data, audio=np.ones((4, 64), np.float32), sr=np.array(16000))
    runner = CliRunner()
    random = runner.invoke(main, ["bench", str(path), "--iterations", "3"])
    assert random.exit_code == 2 and "--data" in random.output
    real = runner.invoke(main, ["bench", str(path), "--data", str(data), "--batch", "1,4", "--iterations", "3", "--json", "-"])
    assert real.exit_code == 0, real.output
    assert '"batch": 4' in real.output
    short = runner.invoke(main, ["bench", str(path), "--data", str(data), "--batch", "8", "--iterations", "3"])
    assert short.exit_code == 2 and "fewer than the batch of 8" in short.output and "Traceback" not in short.output


def token_type_model() -> ir.Model:
    """BERT's embeddings in small: ids → Gather(words[10, 4]); token types → Cast →
    Gather(types[2, 4]); summed."""
    nodes = [
        helper.make_node("Gather", ["words", "input_ids"], ["w"]),
        helper.make_node("Cast", ["token_type_ids"], ["t64"], to=TensorProto.INT64),
        helper.make_node("Gather", ["types", "t64"], ["t"]),
        helper.make_node("Add", ["w", "t"], ["y"]),
    ]
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        nodes, "embeddings",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
         helper.make_tensor_value_info("token_type_ids", TensorProto.INT32, ["batch", "seq"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", 4])],
        [numpy_helper.from_array(rng.standard_normal((10, 4)).astype(np.float32), "words"),
         numpy_helper.from_array(rng.standard_normal((2, 4)).astype(np.float32), "types")],
    )  # fmt: skip
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_generated_indices_stay_inside_the_tables_they_index():
    model = token_type_model()
    data = synthetic(model, 64, shapes={"input_ids": [1, 16], "token_type_ids": [1, 16]})
    assert set(np.unique(data.inputs["token_type_ids"])) == {0, 1}
    assert set(np.unique(data.inputs["input_ids"])) == {0, 1, 2, 3}
    result = optimize(model, bench=False)  # no data: checked on generated inputs
    assert result.model is not None


def test_generated_ids_fit_onnxruntimes_fused_embedding_tables():
    """onnxruntime's transformer optimizer fuses BERT's embeddings into one
    com.microsoft EmbedLayerNormalization: its segment ids index a 2-row table, so random
    ids in [0, 4) ran out of range and lossless optimize without data refused the model."""
    rng = np.random.default_rng(0)
    tables = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
              for name, shape in (("word", (50, 8)), ("pos", (16, 8)), ("seg", (2, 8)), ("gamma", (8,)), ("beta", (8,)))]  # fmt: skip
    node = helper.make_node("EmbedLayerNormalization", ["input_ids", "token_type_ids", "word", "pos", "seg", "gamma", "beta"],
                            ["y", "mask_index"], domain="com.microsoft", epsilon=1e-12)  # fmt: skip
    graph = helper.make_graph(
        [node], "embed", [helper.make_tensor_value_info(n, TensorProto.INT32, ["N", "T"]) for n in ("input_ids", "token_type_ids")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "T", 8])], tables,
    )  # fmt: skip
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]))
    data = synthetic(model, 64, shapes={"input_ids": [1, 16], "token_type_ids": [1, 16]})
    assert set(np.unique(data.inputs["token_type_ids"])) == {0, 1}
    assert optimize(model, bench=False).model is not None


def padded_lengths_model() -> ir.Model:
    """x [B, 6, 4] and its valid lengths [B] (torchaudio Conformer style): the padding mask
    is ``arange(max(lengths)) < lengths``, so it only fits ``x`` when max(lengths) is 6."""
    nodes = [
        helper.make_node("ReduceMax", ["lengths"], ["longest"], keepdims=0),
        helper.make_node("Range", ["zero", "longest", "one"], ["steps"]),
        helper.make_node("Unsqueeze", ["steps", "axis0"], ["row"]),
        helper.make_node("Unsqueeze", ["lengths", "axis1"], ["column"]),
        helper.make_node("Less", ["row", "column"], ["valid"]),
        helper.make_node("Cast", ["valid"], ["weights"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["weights", "axis2"], ["mask"]),
        helper.make_node("Mul", ["x", "mask"], ["masked"]),
        helper.make_node("Transpose", ["masked"], ["t"], perm=[0, 2, 1]),
        helper.make_node("Transpose", ["t"], ["y"], perm=[0, 2, 1]),
    ]
    graph = helper.make_graph(
        nodes, "padded",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 6, 4]),
         helper.make_tensor_value_info("lengths", TensorProto.INT64, ["B"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 6, 4])],
        [numpy_helper.from_array(np.array(v, np.int64), n)
         for n, v in [("zero", 0), ("one", 1), ("axis0", [0]), ("axis1", [1]), ("axis2", [2])]],
    )  # fmt: skip
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_lengths_inputs_get_a_size_the_padded_input_has():
    model = padded_lengths_model()
    with pytest.raises(OnnxoptError):  # the small random lengths do not fit x
        evaluate.run(model, synthetic(model, 8))
    result = optimize(model)
    assert result.verified_on.endswith("random samples (seed 0; lengths = 6)")
    assert result.fidelity.within() and any(r.kept and r.name == "cleanup" for r in result.stages)
    rows = benchmark([("padded", model)], iterations=3, warmup=1).rows
    assert rows and rows[0].p50_ms > 0
