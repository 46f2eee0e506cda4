"""Pipeline: verification after every stage, rollback of broken or failing stages."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from onnxopt.calibration import synthetic
from onnxopt.evaluate import Evaluator, run
from onnxopt.graph import const_array, set_const_input
from onnxopt.passes.base import LoggedPass
from onnxopt.passes.cleanup import CleanupPass
from onnxopt.pipeline import Context, Stage, StageOutcome, pass_stage, run_stages
from tests.builders import conv_bn_relu_gemm


class ScaleFirstConvPass(LoggedPass):
    """Deliberately wrong "lossless" pass: doubles the first Conv's weight."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        for node in model.graph:
            if node.op_type == "Conv":
                set_const_input(node, 1, const_array(node.inputs[1]) * 2)
                self.did(node, "doubled")
                return ir.passes.PassResult(model, True)
        return ir.passes.PassResult(model, False)


class ExplodingPass(LoggedPass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        raise IndexError("boom")


def _model() -> ir.Model:
    return ir.from_proto(conv_bn_relu_gemm())


def _ctx(model):
    return Context(verify_data=synthetic(model, 4, seed=1))


def test_wrong_lossless_pass_is_rolled_back():
    model = _model()
    ctx = _ctx(model)
    expected = run(model, ctx.verify_data)
    result, records = run_stages(model, [pass_stage("wrong", ScaleFirstConvPass)], ctx)
    assert records[0].modified and not records[0].kept
    assert "not exact" in records[0].reason
    np.testing.assert_array_equal(run(result, ctx.verify_data)[0], expected[0])


def test_exception_in_stage_is_rolled_back_and_run_continues():
    model = _model()
    ctx = _ctx(model)
    result, records = run_stages(
        model, [pass_stage("explode", ExplodingPass), pass_stage("cleanup", CleanupPass)], ctx
    )
    assert not records[0].kept and "IndexError: boom" in records[0].reason
    assert records[1].reason == ""
    np.testing.assert_allclose(run(result, ctx.verify_data)[0], run(_model(), ctx.verify_data)[0], rtol=1e-5, atol=1e-5)


def test_same_wrong_pass_kept_when_declared_lossy_and_inside_budget():
    model = _model()
    ctx = _ctx(model)
    data = synthetic(model, 32, seed=2)
    ctx.evaluator = Evaluator(model, data, metric="cosine")
    ctx.max_drop = 1.0  # anything goes
    stage = pass_stage("lossy", ScaleFirstConvPass, lossless=False)
    _, records = run_stages(model, [stage], ctx)
    assert records[0].kept
    ctx.max_drop = 0.0  # nothing may change
    _, records = run_stages(model, [stage], ctx)
    assert not records[0].kept and "exceeds the budget" in records[0].reason


def test_stage_returning_invalid_model_is_rolled_back():
    def breaks_graph(model: ir.Model, ctx: Context) -> StageOutcome:
        node = next(iter(model.graph))
        model.graph.remove(node, safe=False)
        return StageOutcome(model, True)

    model = _model()
    ctx = _ctx(model)
    result, records = run_stages(model, [Stage("broken", breaks_graph)], ctx)
    assert not records[0].kept and records[0].reason
    assert len(result.graph) == len(_model().graph)
