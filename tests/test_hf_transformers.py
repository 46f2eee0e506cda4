"""HuggingFace ``transformers`` models (random weights from small configs, nothing
downloaded) exported by both torch exporters: the graphs people actually export, whose
attention differs from torch's own modules in the details the group analysis must follow.

- BERT's SDPA attention, as TorchScript exports it, zeroes fully masked rows with
  ``Where(IsNaN(p), 0, p)`` between the Softmax and the context MatMul;
- T5 masks its relative position bias (``Where(mask, bias, min)``) and MPNet expands it over
  the batch (``Expand``) before every layer adds it: one head group spanning both layers;
- LLaMA's grouped-query attention under dynamo: the repeated key/value heads are merged
  with the batch (``[N, H_kv, r, T, d]`` → ``[N·H_kv·r, T, d]``) and split back;
- BART flattens its attention mask twice, which onnxscript's rewrite rules turn into a
  constant no graph holds (the clean-up registers it).

Each check: removing heads (and FFN units) equals zeroing their rows of the consumers."""

from __future__ import annotations

import numpy as np
import pytest

from onnxopt.calibration import Dataset
from onnxopt.groups import analyze_groups
from onnxopt.model_io import load_model
from onnxopt.passes.cleanup import CleanupPass
from tests.test_groups import _assert_exact

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from benchmarks.hf_archs import example_inputs, export  # noqa: E402


def _export(name: str, mode: str, tmp_path):
    """(cleaned-up model, its inputs) of ``benchmarks.hf_archs.ARCHS[name]``: ``mode`` is
    ``static`` (TorchScript), ``dynamic`` (TorchScript, batch and sequence symbolic) or
    ``dynamo``."""
    path, inputs = export(name, mode, tmp_path / "model.onnx")
    model = load_model(path)
    CleanupPass()(model)
    model.clone()  # every constant a node reads is held by the graph
    return model, Dataset({v.name: x.numpy() for v, x in zip(model.graph.inputs, inputs.values())})


def _head_groups(analysis) -> list[tuple[int, int]]:
    """(units, sources) of the groups whose units are attention heads (Q, K and V sources)."""
    return sorted((g.units, len(g.sources)) for g in analysis.prunable if g.units < 8)


@pytest.mark.parametrize("mode", ["static", "dynamo"])
def test_bert_sdpa_heads_prune_through_the_nan_guard(mode, tmp_path):
    model, data = _export("bert", mode, tmp_path)
    analysis, _ = _assert_exact(model, data, fraction=0.5)
    assert _head_groups(analysis) == [(4, 3), (4, 3)]  # one group per layer: its q, k, v
    assert sorted(g.units for g in analysis.prunable if g.units >= 8) == [128, 128]  # the FFNs


@pytest.mark.parametrize(("name", "mode"), [("t5-encoder", "static"), ("t5-encoder", "dynamic"), ("mpnet", "dynamic")])
def test_a_position_bias_shared_by_the_layers_prunes_their_heads_together(name, mode, tmp_path):
    """T5's bias is masked by a Where (folded to a constant with a static sequence, computed
    from the buckets with a dynamic one), MPNet's expanded over the batch: each layer's head
    h reads column h of the one bias, so the layers lose the same heads."""
    model, data = _export(name, mode, tmp_path)
    analysis, _ = _assert_exact(model, data, fraction=0.5)
    assert _head_groups(analysis) == [(4, 6)]  # q, k, v of both layers


def test_llama_grouped_query_heads_merged_with_the_batch_under_dynamo(tmp_path):
    model, data = _export("llama (GQA)", "dynamo", tmp_path)
    analysis, _ = _assert_exact(model, data, fraction=0.5)
    assert _head_groups(analysis) == [(2, 3), (2, 3)]  # the key/value heads are the units


def test_bart_flattened_twice_mask_keeps_a_valid_graph(tmp_path):
    model, data = _export("bart", "static", tmp_path)
    analysis, _ = _assert_exact(model, data, fraction=0.5)
    # encoder self-attention, decoder self- and cross-attention
    assert _head_groups(analysis) == [(4, 3), (4, 3), (4, 3)]
    assert analyze_groups(model).prunable  # the analysis runs again on the cleaned model


def test_cleanup_registers_the_shape_of_a_second_flatten():
    """onnxscript's Flatten→Reshape rule names each new shape ``<x>/shape``; the second for
    the same ``x`` is never registered, and the model would not clone or serialise."""
    import onnx
    import onnx_ir as ir
    from onnx import TensorProto, helper

    from onnxopt import evaluate

    graph = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["a"], axis=1), helper.make_node("Flatten", ["x"], ["b"], axis=2),
         helper.make_node("ReduceSum", ["a"], ["ra"], keepdims=0), helper.make_node("ReduceSum", ["b"], ["rb"], keepdims=0)],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, []) for n in ("ra", "rb")],
    )  # fmt: skip
    model = ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))
    CleanupPass()(model)
    assert {n.op_type for n in model.graph} == {"Reshape", "ReduceSum"}  # the rule did fire
    onnx.checker.check_model(ir.to_proto(model.clone()), full_check=True)
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    assert [float(v) for v in evaluate.run(model, Dataset({"x": x}, axes={"x": None}))] == [276.0, 276.0]


@pytest.mark.parametrize("name", ["bert", "llama (GQA)", "wav2vec2"])
def test_optimize_with_data_on_a_dynamic_export(name, tmp_path):
    """The whole pipeline on an export with a symbolic batch (and sequence): every stage
    runs without failing, the budget holds on held-out samples, the input file is kept and
    the output runs at another batch size."""
    import onnx

    from onnxopt import evaluate
    from onnxopt.optimize import optimize

    path, _ = export(name, "dynamic", tmp_path / "model.onnx")
    before = path.read_bytes()
    torch.manual_seed(1)
    data = Dataset({k: x.numpy() for k, x in example_inputs(name, 40).items()})
    out = tmp_path / "out.onnx"
    result = optimize(path, out, data=data, max_drop=0.02, speed_check=False)
    assert path.read_bytes() == before
    failed = [f"{r.name}: {r.reason}" for r in result.stages if r.reason.startswith("stage failed")]
    assert not failed, failed
    assert result.baseline_score - result.final_score <= 0.02 + 1e-9
    onnx.checker.check_model(str(out))
    assert evaluate.run(load_model(out), data.take(slice(0, 3)))[0].shape[0] == 3
