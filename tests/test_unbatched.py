"""Models that take one sample without a sample axis (torchvision's detectors read one image
``[3, H, W]`` and add the batch axis themselves): data holds their samples stacked on a new
first axis, and every run feeds them one at a time."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxopt import evaluate
from onnxopt.calibration import Dataset, check_dataset, load_npz
from onnxopt.errors import OnnxoptError
from onnxopt.optimize import optimize
from onnxopt.pruning import prune_model

RNG = np.random.default_rng(0)


def _unbatched_cnn() -> onnx.ModelProto:
    """``x [3, 8, 8]`` → Unsqueeze → Conv → BatchNorm → Relu → Conv → Relu → GlobalAveragePool
    → Flatten → Gemm → Reshape: ``y [4]``, one sample per run."""

    def init(name, shape, scale=0.4):
        return numpy_helper.from_array((RNG.standard_normal(shape) * scale).astype(np.float32), name)

    n = helper.make_node
    inits = [init("w1", [16, 3, 3, 3]), init("b1", [16]), numpy_helper.from_array(RNG.uniform(0.5, 1.5, 16).astype(np.float32), "g"),
             init("beta", [16]), init("mu", [16]), numpy_helper.from_array(RNG.uniform(0.5, 1.5, 16).astype(np.float32), "var"),
             init("w2", [16, 16, 3, 3]), init("b2", [16]), init("wf", [16, 4]), init("bf", [4]),
             numpy_helper.from_array(np.array([0], np.int64), "axis0"), numpy_helper.from_array(np.array([4], np.int64), "four")]  # fmt: skip
    nodes = [n("Unsqueeze", ["x", "axis0"], ["xb"]), n("Conv", ["xb", "w1", "b1"], ["c1"], pads=[1] * 4),
             n("BatchNormalization", ["c1", "g", "beta", "mu", "var"], ["n1"]), n("Relu", ["n1"], ["r1"]),
             n("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1] * 4), n("Relu", ["c2"], ["r2"]), n("GlobalAveragePool", ["r2"], ["p"]),
             n("Flatten", ["p"], ["f"]), n("Gemm", ["f", "wf", "bf"], ["logits"]), n("Reshape", ["logits", "four"], ["y"])]  # fmt: skip
    graph = helper.make_graph(nodes, "unbatched", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], inits)  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def _samples(n: int = 40) -> np.ndarray:
    return RNG.standard_normal((n, 3, 8, 8)).astype(np.float32)


def test_stacked_samples_are_fed_one_at_a_time_and_stacked_again(tmp_path):
    proto = _unbatched_cnn()
    model = ir.from_proto(proto)
    x = _samples(5)
    np.savez(tmp_path / "data.npz", x=x)
    data = load_npz(tmp_path / "data.npz", model)
    assert data.stacked == {"x"} and len(data) == 5
    assert len(list(data.parts(64))) == 5 and data.take(slice(1, 2)).feed["x"].shape == (3, 8, 8)
    (y,) = evaluate.run(model, data)
    sess = evaluate.session(model)
    expected = np.stack([sess.run(None, {"x": sample})[0] for sample in x])
    np.testing.assert_allclose(y, expected, rtol=1e-6)
    assert check_dataset(Dataset({"x": x}), model).stacked == {"x"}  # a Dataset built in Python, checked


def test_stacked_samples_of_the_wrong_size_are_a_one_line_error(tmp_path):
    model = ir.from_proto(_unbatched_cnn())
    np.savez(tmp_path / "bad.npz", x=RNG.standard_normal((5, 3, 9, 9)).astype(np.float32))
    with pytest.raises(OnnxoptError, match=r"input 'x': data has shape \[5, 3, 9, 9\] but the model expects rank 3"):
        load_npz(tmp_path / "bad.npz", model)


def test_pruning_with_calibration_data_on_a_model_without_a_sample_axis():
    model = ir.from_proto(_unbatched_cnn())
    calib = check_dataset(Dataset({"x": _samples(32)}), model)
    result = prune_model(model, calib, criterion="permutation", ratio=0.5, round_to=1)
    assert any(layer["after"] < layer["before"] for layer in result.layers)
    assert result.reconstructed  # the re-fit ran on the stacked samples
    (y,) = evaluate.run(result.model, calib)
    assert y.shape == (32, 4) and np.isfinite(y).all()


def test_optimize_with_data_on_a_model_without_a_sample_axis(tmp_path):
    source = tmp_path / "unbatched.onnx"
    onnx.save(_unbatched_cnn(), source)
    np.savez(tmp_path / "data.npz", x=_samples(64))
    result = optimize(source, tmp_path / "out.onnx", data=tmp_path / "data.npz")
    assert result.output is not None and result.output.is_file() and result.verified_on.endswith("held-out samples")
    records = {r.name: r for r in result.stages}
    assert not any(node.op_type == "BatchNormalization" for node in result.model.graph)  # folded
    assert all("traceback" not in r.details for r in records.values()), {r.name: r.reason for r in records.values()}
    assert records["prune"].details["steps"]  # the budget search scored candidates on the stacked samples
    assert result.speedup is None or result.speedup > 0  # the speed checks timed one sample


def test_a_split_keeps_whole_fixed_batches_and_one_unstacked_sample_says_how_to_stack():
    data = Dataset({"x": _samples(7)})
    calib, held_out = data.split(0.5, seed=0, multiple=2)
    assert (len(calib), len(held_out)) == (2, 4)  # whole batches of 2; the seventh sample is left out
    assert not set(calib.inputs["x"][:, 0, 0, 0]) & set(held_out.inputs["x"][:, 0, 0, 0])
    assert [len(part) for part in data.split(0.5, seed=0)] == [3, 4]  # no fixed batch: every sample is used
    model = _unbatched_cnn()  # one sample given as it is fed: its 3 channels read as a fixed batch of 3
    with pytest.raises(OnnxoptError, match="need at least 6 samples .* stacked on a new first axis"):
        optimize(ir.from_proto(model), data=Dataset({"x": _samples(1)[0]}))


def test_inputs_beside_a_stacked_one_are_fed_whole_with_every_sample(tmp_path):
    n = helper.make_node
    graph = helper.make_graph(
        [n("ReduceMean", ["x", "axes"], ["m"], keepdims=0), n("Mul", ["m", "scale"], ["y"])], "scaled_means",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 8, 8]), helper.make_tensor_value_info("scale", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])], [numpy_helper.from_array(np.array([1, 2], np.int64), "axes")],
    )  # fmt: skip
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))
    x, scale = _samples(5), np.array([1.0, -2.0, 3.0], np.float32)
    np.savez(tmp_path / "data.npz", x=x, scale=scale)
    data = load_npz(tmp_path / "data.npz", model)  # 3 scale entries are not 3 samples
    assert len(data) == 5 and data.stacked == {"x"} and data.take(slice(2, 4)).inputs["scale"].shape == (3,)
    (y,) = evaluate.run(model, data)
    np.testing.assert_allclose(y, x.mean(axis=(2, 3)) * scale, rtol=1e-5)


def _fixed_first_axis_model(reduce: bool) -> ir.Model:
    """``x [3, 4]`` → Relu, then (``reduce``) summed over its first axis: ``y [4]``."""
    nodes = [helper.make_node("Relu", ["x"], ["r" if reduce else "y"])]
    if reduce:
        nodes.append(helper.make_node("ReduceSum", ["r", "axes"], ["y"], keepdims=0))
    inits = [numpy_helper.from_array(np.array([0], np.int64), "axes")] if reduce else []
    graph = helper.make_graph(nodes, "fixed", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4] if reduce else [3, 4])], inits)  # fmt: skip
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))


def test_bench_counts_one_sample_when_no_output_carries_the_fixed_first_axis():
    from onnxopt.bench import benchmark

    unbatched = benchmark([("cnn", ir.from_proto(_unbatched_cnn()))], iterations=2, warmup=1).rows[0]
    assert unbatched.batch == 1  # [3, 8, 8] is one image of 3 channels, not 3 samples
    reduced = benchmark([("sum", _fixed_first_axis_model(reduce=True))], iterations=2, warmup=1).rows[0]
    assert reduced.batch == 1
    batched = benchmark([("relu", _fixed_first_axis_model(reduce=False))], iterations=2, warmup=1).rows[0]
    assert batched.batch == 3 and batched.throughput == pytest.approx(3 / (batched.p50_ms / 1e3))
