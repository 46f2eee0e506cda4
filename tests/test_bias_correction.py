"""The bias correction of benchmarks/bench_variants.py: rounding a convolution's weights
shifts its mean output; taking ``(Ŵ − W)·E[x]`` off the bias restores the mean exactly on the
data it was measured on, with zero padding, strides, dilations and groups."""

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import helper, numpy_helper

from benchmarks.bench_variants import _weights_rounded, _window_means
from onnxopt import evaluate
from onnxopt.calibration import Dataset


def _conv(group: int, stride: int, dilation: int, pads: int) -> ir.Model:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 8 // group, 3, 3)).astype(np.float32) * 0.37
    b = rng.standard_normal(8).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], group=group, strides=[stride] * 2,
                            dilations=[dilation] * 2, pads=[pads] * 4)  # fmt: skip
    graph = helper.make_graph(
        [node], "conv", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 8, 11, 13])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )  # fmt: skip
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


@pytest.mark.parametrize(("group", "stride", "dilation", "pads"), [(1, 1, 1, 1), (2, 2, 1, 1), (8, 1, 2, 2), (1, 2, 1, 0)])
def test_corrected_bias_restores_the_mean_output(group, stride, dilation, pads):
    model = _conv(group, stride, dilation, pads)
    # inputs with a large mean per channel, so that rounding the weights shifts the output
    x = (np.random.default_rng(1).standard_normal((6, 8, 11, 13)) + np.arange(1, 9).reshape(1, 8, 1, 1)).astype(np.float32)
    data = Dataset({"x": x})
    means = _window_means(model, data, [n for n in model.graph if n.op_type == "Conv"])

    def mean_output(m: ir.Model) -> np.ndarray:
        return evaluate.run(m, data)[0].astype(np.float64).mean(axis=(0, 2, 3))

    original = mean_output(model)
    rounded, corrected = mean_output(_weights_rounded(model, None)), mean_output(_weights_rounded(model, means))
    assert np.abs(rounded - original).max() > 1e-4  # the rounding does shift it
    np.testing.assert_allclose(corrected, original, atol=2e-5)
