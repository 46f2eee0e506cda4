"""The ONNX backend operator corpus through onnxopt: zero crashes, zero changed outputs.

The fast part runs a seeded sample of operator modules (plus two real architectures); the
whole corpus (~1,900 models) runs under ``-m slow`` (``make stress``). The table of counts is
committed as ``benchmarks/results/corpus.md`` by ``python -m benchmarks.corpus``.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from benchmarks import corpus
from onnxopt.passes.cleanup import CleanupPass
from onnxopt.pipeline import Stage, StageOutcome, pass_stage
from tests.builders import conv_bn_relu_gemm


def _assert_clean(verdicts: list[corpus.Verdict]) -> None:
    bad = [v for v in verdicts if v.verdict in ("crash", "wrong")]
    assert not bad, "\n".join(f"{v.case} [{v.config}] {v.verdict}: {v.reason[:400]}" for v in bad)


def test_sample_of_operator_corpus(tmp_path):
    cases = corpus.node_cases(corpus.sample_modules(18, seed=0))
    verdicts = [v for case in cases for v in corpus.check_case(case, tmp_path)]
    _assert_clean(verdicts)
    by_verdict = {k: sum(v.verdict == k for v in verdicts) for k in corpus.VERDICTS}
    assert len(cases) > 100
    assert by_verdict["transformed"] > 0 and by_verdict["unchanged"] > 0, by_verdict
    # the core modules are in every sample: BN folding and subgraph ops really ran
    names = {c.name for c in cases}
    assert {"test_batchnorm_example", "test_if", "test_loop11", "test_scan9_sum"} <= names


def test_real_architectures_shipped_with_onnx(tmp_path):
    cases = [c for c in corpus.light_cases() if c.name.startswith("light_squeezenet")]
    assert [c.name for c in cases] == ["light_squeezenet", "light_squeezenet_ir4"]
    verdicts = [v for case in cases for v in corpus.check_case(case, tmp_path, ["optimize"])]
    _assert_clean(verdicts)
    # IR 3 weights are overridable graph inputs: nothing may fold them; IR 4 form is optimized
    assert [v.verdict for v in verdicts] == ["unchanged", "transformed"], verdicts


# ------------------------------------------------------------- the harness itself


def _corrupting_stage() -> Stage:
    """A 'lossless' stage that is not: it negates every float initializer."""

    def run(model: ir.Model, ctx) -> StageOutcome:
        for value in model.graph.initializers.values():
            array = value.const_value.numpy()
            if array.dtype.kind == "f":
                value.const_value = ir.Tensor(-array, name=value.name)
        return StageOutcome(model, True)

    return Stage("corrupt", run, lossless=True)


def _raising_stage() -> Stage:
    def run(model, ctx):
        raise IndexError("pass bug")

    return Stage("raises", run, lossless=True)


def _conv_bn_case() -> corpus.Case:
    model = conv_bn_relu_gemm()
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    return corpus.Case("conv_bn_relu_gemm", "test", model, {"input": x})


@pytest.mark.parametrize("make_stage, reason", [(_corrupting_stage, "not exact"), (_raising_stage, "stage failed")])
def test_a_bad_stage_is_rolled_back_not_reported_wrong(tmp_path, monkeypatch, make_stage, reason):
    monkeypatch.setitem(corpus.CONFIGS, "bad", lambda: [make_stage(), pass_stage("cleanup", CleanupPass)])
    [verdict] = corpus.check_case(_conv_bn_case(), tmp_path, ["bad"])
    assert verdict.verdict == "rolled back", verdict
    assert reason.split()[0] in verdict.reason


def test_outputs_match_is_exact_for_integers_and_nan_aware():
    f = np.array([1.0, np.nan, np.inf], np.float32)
    assert corpus.outputs_match([f], [f.copy()]) == ""
    assert "NaN" in corpus.outputs_match([f], [np.array([1.0, 0.0, np.inf], np.float32)])
    assert corpus.outputs_match([np.array([1.0], np.float32)], [np.array([1.00001], np.float32)]) == ""
    assert "max abs error" in corpus.outputs_match([np.array([1.0], np.float32)], [np.array([1.01], np.float32)])
    big = np.array([10**9, 3], np.int64)
    assert "exact" in corpus.outputs_match([big], [big + np.array([0, 1])])
    assert "dtype" in corpus.outputs_match([big], [big.astype(np.int32)])
    assert corpus.outputs_match([[big, f]], [[big.copy(), f.copy()]]) == ""
    assert corpus.outputs_match([np.array(["a"])], [np.array(["b"])]) != ""


def test_feeds_convert_tensor_protos_and_scalars():
    model = onnx.helper.make_model(
        onnx.helper.make_graph(
            [onnx.helper.make_node("Add", ["a", "b"], ["c"])],
            "g",
            [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, []) for n in "ab"],
            [onnx.helper.make_tensor_value_info("c", onnx.TensorProto.FLOAT, [])],
        )
    )
    feeds = corpus._feeds(model, [onnx.numpy_helper.from_array(np.array(1.5, np.float32)), np.float32(2)])
    assert all(isinstance(v, np.ndarray) for v in feeds.values())
    assert corpus._run(model, feeds)[0] == np.float32(3.5)


@pytest.mark.slow
def test_whole_operator_corpus(tmp_path):
    cases = corpus.node_cases() + corpus.light_cases()
    verdicts = corpus.run_corpus(cases)
    _assert_clean(verdicts)
