"""Small ONNX models built with onnx.helper (no torch), named after what they contain."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _init(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array), name)


def conv_bn_relu_gemm(seed: int = 0, opset: int = 17, batch: str | int = "N") -> onnx.ModelProto:
    """input[N,3,8,8] → Conv(3→4, 3×3, pad 1) → BatchNormalization → Relu → Flatten → Gemm(256→5)."""
    rng = np.random.default_rng(seed)
    f32 = np.float32
    inits = [
        _init("conv.w", rng.standard_normal((4, 3, 3, 3)).astype(f32)),
        _init("conv.b", rng.standard_normal(4).astype(f32)),
        _init("bn.scale", rng.uniform(0.5, 2, 4).astype(f32)),
        _init("bn.bias", rng.standard_normal(4).astype(f32)),
        _init("bn.mean", rng.standard_normal(4).astype(f32)),
        _init("bn.var", rng.uniform(0.5, 2, 4).astype(f32)),
        _init("fc.w", (rng.standard_normal((5, 256)) * 0.1).astype(f32)),
        _init("fc.b", rng.standard_normal(5).astype(f32)),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "conv.w", "conv.b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "bn.scale", "bn.bias", "bn.mean", "bn.var"], ["b"], name="bn"),
        helper.make_node("Relu", ["b"], ["r"], name="relu"),
        helper.make_node("Flatten", ["r"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc.w", "fc.b"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "conv_bn_relu_gemm",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 5])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path
