"""Pipeline: verification after every stage, rollback of broken or failing stages."""

from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest

from onnxopt.calibration import load_npz, synthetic
from onnxopt.evaluate import Evaluator, run
from onnxopt.graph import const_array, set_const_input
from onnxopt.passes.base import LoggedPass
from onnxopt.passes.cleanup import CleanupPass
from onnxopt.pipeline import Context, Stage, StageOutcome, pass_stage, run_stages
from tests.builders import conv_bn_relu_gemm
from tests.conftest import ROOT


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


def test_a_lossless_stage_that_reshapes_an_output_says_so():
    """onnxscript's clean-up turned the OCR recognizer's [T, N, 8210] output into
    [N, T·8210]: the rollback said "max abs error inf"."""

    def flatten_output(model: ir.Model, ctx) -> StageOutcome:
        out = model.graph.outputs[0]
        flat = ir.node("Flatten", [out], attributes={"axis": 0})
        model.graph.append(flat)
        flat.outputs[0].name, flat.outputs[0].dtype = "flat", out.dtype
        flat.outputs[0].shape = ir.Shape([1, "n"])
        model.graph.outputs[0] = flat.outputs[0]
        return StageOutcome(model, True)

    model = _model()
    ctx = _ctx(model)
    _, records = run_stages(model, [Stage("reshaping", flatten_output)], ctx)
    shape = list(run(model, ctx.verify_data)[0].shape)
    assert not records[0].kept
    name = model.graph.outputs[0].name
    assert records[0].reason == f"not exact: output {name!r} changed shape {shape} → [1, {int(np.prod(shape))}]"


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


def test_lossy_stage_that_slows_the_model_is_rolled_back_under_speed_check():
    """A stage adding a large useless MatMul (output + 0·sum(A·B)) keeps the outputs but is slower."""

    def add_dead_weight(model: ir.Model, ctx: Context) -> StageOutcome:
        graph = model.graph
        out = graph.outputs[0]
        producer = out.producer()
        a = ir.Value(name="big_a", const_value=ir.tensor(np.ones((384, 384), np.float32)))
        graph.register_initializer(a)
        zero = ir.Value(name="zero", const_value=ir.tensor(np.zeros((), np.float32)))
        graph.register_initializer(zero)
        # The MatMul input depends on the model input, so onnxruntime cannot constant-fold it.
        x = graph.inputs[0]
        shape = ir.Value(name="flat_shape", const_value=ir.tensor(np.array([-1, 384], np.int64)))
        graph.register_initializer(shape)
        pad_to = ir.Value(name="pads", const_value=ir.tensor(np.array([0, 0, 0, 0, 0, 381, 0, 0], np.int64)))
        graph.register_initializer(pad_to)
        padded = ir.node("Pad", [x, pad_to], num_outputs=1)
        flat = ir.node("Reshape", [padded.outputs[0], shape], num_outputs=1)
        mm = ir.node("MatMul", [flat.outputs[0], a], num_outputs=1)
        mm2 = ir.node("MatMul", [mm.outputs[0], a], num_outputs=1)
        total = ir.node("ReduceSum", [mm2.outputs[0]], attributes={"keepdims": 0}, num_outputs=1)
        scaled = ir.node("Mul", [total.outputs[0], zero], num_outputs=1)
        new_out = ir.node("Add", [producer.outputs[0], scaled.outputs[0]], num_outputs=1)
        for n in (padded, flat, mm, mm2, total, scaled, new_out):
            graph.append(n)
        graph.outputs[0] = new_out.outputs[0]
        new_out.outputs[0].name, producer.outputs[0].name = out.name, out.name + "_inner"
        new_out.outputs[0].type, new_out.outputs[0].shape = out.type, out.shape
        return StageOutcome(model, True)

    model = _model()
    ctx = _ctx(model)
    ctx.speed_check = True
    ctx.threads = 1
    ctx.speed_seconds = 0.5
    result, records = run_stages(model, [Stage("slower", add_dead_weight, lossless=False)], ctx)
    assert not records[0].kept, records[0].reason
    assert "not faster" in records[0].reason
    assert records[0].details["speedup"] < 1.0
    assert len(result.graph) == len(_model().graph)


@pytest.mark.parametrize("own, kept", [(0.8, False), (1.3, True)])
def test_speed_check_uses_the_stage_own_cpu_measurement(monkeypatch, own, kept):
    """A stage that timed itself (quantize's guard) is not timed again; its number decides."""
    import onnxopt.pipeline as pipeline

    def never(*args, **kwargs):
        raise AssertionError("measured twice")

    monkeypatch.setattr(pipeline, "measure_speedup", never)

    def timed_itself(model: ir.Model, ctx: Context) -> StageOutcome:
        return StageOutcome(model, True, details={"cpu_speedup": {1: 9.0, 2: own}})

    model = _model()
    ctx = _ctx(model)
    ctx.speed_check, ctx.threads = True, 2
    _, records = run_stages(model, [Stage("timed", timed_itself, lossless=False)], ctx)
    assert records[0].kept == kept, records[0].reason
    assert records[0].details["speedup"] == own


def _append_identity(model: ir.Model, ctx: Context) -> StageOutcome:
    out = model.graph.outputs[0]
    producer = out.producer()
    node = ir.node("Identity", [producer.outputs[0]], num_outputs=1)
    model.graph.append(node)
    model.graph.outputs[0] = node.outputs[0]
    node.outputs[0].name, producer.outputs[0].name = out.name, out.name + f"_{len(model.graph)}"
    node.outputs[0].type, node.outputs[0].shape = out.type, out.shape
    return StageOutcome(model, True)


@pytest.mark.parametrize("measured, kept_after", [([1.3], [True, True]), ([0.9, 1.1], [True, False]), ([0.9, 0.95, 0.99], [False, False])])
def test_final_check_rolls_back_lossy_stages_last_first_until_faster(monkeypatch, measured, kept_after):
    """Stage checks passed, but the whole is timed against the original: never slower."""
    import onnxopt.pipeline as pipeline
    from onnxopt.pipeline import confirm_speedup

    readings = iter(measured)

    def timed(current, candidate, ctx, seconds=None, labels=("current", "candidate")):
        rows = [types.SimpleNamespace(model=label, ratio=None) for label in labels]
        rows[1].ratio = next(readings)
        return types.SimpleNamespace(rows=rows)

    monkeypatch.setattr(pipeline, "time_pair", timed)

    model = _model()
    ctx = _ctx(model)
    stages = [Stage("first", _append_identity, lossless=False), Stage("second", _append_identity, lossless=False)]
    result, records = run_stages(model, stages, ctx)
    assert len(result.graph) == len(model.graph) + 2
    final, speedup, timing = confirm_speedup(model, result, records, ctx)
    assert [r.kept for r in records] == kept_after
    assert speedup == measured[-1] == timing.rows[1].ratio
    assert [r.model for r in timing.rows] == ["original", "optimized"]
    assert len(final.graph) == len(model.graph) + sum(kept_after)
    for record in records:
        assert record.kept or "final check" in record.reason
    assert "before" not in records[0].to_dict()


@pytest.mark.parametrize("limited, measured, alone_wins", [(True, 1.2, True), (True, 0.9, False), (False, None, False)])
def test_budget_limited_last_stage_is_tried_alone_and_kept_when_faster(monkeypatch, limited, measured, alone_wins):
    """Greedy stages: the last one only got what the first left of the budget. Run alone with
    the whole budget it may be faster; the two results are timed against each other."""
    import onnxopt.pipeline as pipeline
    from onnxopt.pipeline import try_last_stage_alone

    timed = []
    monkeypatch.setattr(pipeline, "measure_speedup", lambda *a, **k: timed.append(1) or measured)
    runs = []

    def last(model: ir.Model, ctx: Context) -> StageOutcome:
        runs.append(len(model.graph))
        outcome = _append_identity(model, ctx)
        outcome.details["budget_limited"] = limited
        return outcome

    model = _model()
    ctx = _ctx(model)
    stages = [Stage("first", _append_identity, lossless=False), Stage("last", last, lossless=False)]
    greedy, records = run_stages(model, stages, ctx)
    final, records = try_last_stage_alone(greedy, records, stages, ctx)
    assert runs == ([len(model.graph) + 1, len(model.graph)] if limited else [len(model.graph) + 1])
    assert len(timed) == (1 if limited else 0)
    assert [r.kept for r in records] == ([False, True] if alone_wins else [True, True])
    assert len(final.graph) == len(model.graph) + (1 if alone_wins else 2)
    if alone_wins:
        assert "dropped: last alone" in records[0].reason and records[1].before is not None
        assert len(records[1].before.graph) == len(model.graph)  # what the final check would roll back to
    elif limited:
        assert "not kept" in records[1].details["alone"]


def _append_identities(k: int):
    def run(model: ir.Model, ctx: Context) -> StageOutcome:
        for _ in range(k):
            outcome = _append_identity(model, ctx)
        outcome.details["budget_limited"] = True
        return outcome

    return run


@pytest.mark.parametrize(
    "limited, later_kept, rolled_back, over_result, over_original, reclaimed",
    [(True, False, False, 1.2, 1.3, True), (True, False, True, 1.2, 1.3, True), (True, False, False, 0.9, None, False),
     (True, False, False, 1.2, 0.95, False), (False, False, False, None, None, False), (True, True, False, None, None, False)],
)  # fmt: skip
def test_budget_left_unused_by_later_stages_goes_to_the_last_one_it_limited(
    monkeypatch, limited, later_kept, rolled_back, over_result, over_original, reclaimed
):
    """Prune searched under half the budget, and the later stage was not kept (not faster):
    the other half is unused. Prune runs again with all of it and replaces the result when
    faster than it and than the original, also when prune itself was rolled back as too
    little to be faster; otherwise (or when a later stage used its share, or prune's share
    did not limit it) the confirmed result stands."""
    import onnxopt.pipeline as pipeline
    from onnxopt.pipeline import reclaim_budget

    monkeypatch.setattr(pipeline, "measure_speedup", lambda *a, **k: over_result)

    def timed(current, candidate, ctx, seconds=None, labels=("current", "candidate")):
        return types.SimpleNamespace(rows=[types.SimpleNamespace(model=labels[0], ratio=None),
                                           types.SimpleNamespace(model=labels[1], ratio=over_original)])  # fmt: skip

    monkeypatch.setattr(pipeline, "time_pair", timed)

    def first(model: ir.Model, ctx: Context) -> StageOutcome:
        outcome = _append_identity(model, ctx)
        outcome.details["budget_limited"] = limited
        return outcome

    def later(model: ir.Model, ctx: Context) -> StageOutcome:
        return _append_identity(model, ctx) if later_kept else StageOutcome(model, False)

    model = _model()
    ctx = _ctx(model)
    stages = [Stage("prune", first, lossless=False), Stage("quantize", later, lossless=False)]
    result, records = run_stages(model, stages, ctx)
    if rolled_back:  # as the final check does
        result, records[0].kept, records[0].reason = records[0].before, False, "final check: …; rolled back"
    whole = {"prune": Stage("prune", _append_identities(3), lossless=False)}
    final, records, speedup, timing = reclaim_budget(model, result, records, whole, ctx, 1.1, "confirmed")
    assert [r.kept for r in records] == [reclaimed or not rolled_back, later_kept]
    if reclaimed:
        assert len(final.graph) == len(model.graph) + 3 and speedup == over_original
        assert "whole budget" in records[0].details["reclaim"] and timing.rows[1].model == "optimized"
        assert len(records[0].before.graph) == len(model.graph)
    else:
        assert final is result and (speedup, timing) == (1.1, "confirmed")
        assert ("not kept" in records[0].details.get("reclaim", "")) == (limited and not later_kept)


def test_optimize_hands_the_budget_int8_left_unused_back_to_prune(monkeypatch):
    """End to end through ``optimize``: prune under its half of the budget does too little to
    be faster (rolled back), int8 declines; prune built with the whole budget does more, is
    faster and is what ``optimize`` returns, with the final timing against the original."""
    import onnxopt.optimize as optimize_module
    import onnxopt.pipeline as pipeline

    budgets = []

    def prune(max_drop: float) -> Stage:
        def run_(model: ir.Model, ctx: Context) -> StageOutcome:
            budgets.append(max_drop)
            outcome = _append_identities(1 if max_drop < 0.01 else 3)(model, ctx)
            outcome.details["budget_limited"] = max_drop < 0.01
            return outcome

        return Stage("prune", run_, lossless=False)

    declines = lambda max_drop: Stage("quantize", lambda m, ctx: StageOutcome(m, False), lossless=False)  # noqa: E731
    monkeypatch.setattr(optimize_module, "LOSSY_STAGES", {"prune": (prune, 0.5), "quantize": (declines, 1.0)})
    identities = lambda m: sum(n.op_type == "Identity" for n in m.graph)  # noqa: E731
    speed = lambda a, b: 0.8 + 0.1 * (identities(b) - identities(a))  # noqa: E731  one more: 0.9×, three: 1.1×
    monkeypatch.setattr(pipeline, "measure_speedup", lambda a, b, ctx, seconds=None: speed(a, b))

    def timed(a, b, ctx, seconds=None, labels=("current", "candidate")):
        return types.SimpleNamespace(rows=[types.SimpleNamespace(model=labels[0], ratio=None),
                                           types.SimpleNamespace(model=labels[1], ratio=speed(a, b))])  # fmt: skip

    monkeypatch.setattr(pipeline, "time_pair", timed)
    model = _model()
    result = optimize_module.optimize(model, data=synthetic(model, 8, seed=0), max_drop=0.01)
    assert budgets == [0.005, 0.01]
    record = next(r for r in result.stages if r.name == "prune")
    assert record.kept and "whole budget" in record.details["reclaim"]
    assert identities(result.model) == 3 and result.speedup == pytest.approx(1.1)


def test_float16_model_verified_with_float16_tolerance():
    """A one-ulp float16 difference (relative ~1e-3) is exact for a float16 output."""
    from onnxopt.evaluate import compare

    a = np.array([[1.0, 2.0, 1000.0]], np.float16)
    b = a.copy()
    b[0, 2] = np.nextafter(a[0, 2], np.float16(2000))  # 1000 → 1000.5
    assert compare([a], [b]).within(1e-4, 1e-5)
    assert not compare([a.astype(np.float32)], [b.astype(np.float32)]).within(1e-4, 1e-5)


def test_cleanup_drops_attributes_newer_than_the_opset_when_they_hold_the_default():
    """onnxscript's rules write Reshape(allowzero=0) into opset-12 models; the checker rejects it."""
    import onnx
    from onnx import TensorProto, helper

    def model(allowzero: int) -> ir.Model:
        graph = helper.make_graph(
            [helper.make_node("Reshape", ["x", "shape"], ["y"], allowzero=allowzero)], "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 2])],
            [helper.make_tensor("shape", TensorProto.INT64, [2], [3, 2])],
        )  # fmt: skip
        return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)]))

    fixed = model(0)
    CleanupPass(onnxscript_rules=False)(fixed)
    onnx.checker.check_model(ir.to_proto(fixed), full_check=True)
    assert all("allowzero" not in n.attributes for n in fixed.graph)
    no_zero = model(1)  # allowzero=1 means nothing when the constant shape has no 0
    CleanupPass(onnxscript_rules=False)(no_zero)
    onnx.checker.check_model(ir.to_proto(no_zero), full_check=True)


@pytest.mark.parametrize("batch", ["N", 2])
def test_optimize_measures_dynamic_axes_at_the_data_size(batch):
    """An OCR-style input [N, 1, 8, W]: costs and speed checks use the data's width, not 1."""
    from onnx import TensorProto, helper

    from onnxopt.calibration import Dataset
    from onnxopt.optimize import shapes_from_data

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 1, 8, "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 1, 8, "W"])],
    )  # fmt: skip
    model = ir.from_proto(helper.make_model(graph))
    data = Dataset({"x": np.zeros((4, 1, 8, 96), np.float32)})
    assert shapes_from_data(model, data, {}) == {"x": [1 if batch == "N" else 2, 1, 8, 96]}
    assert shapes_from_data(model, data, {"x": [1, 1, 8, 32]}) == {"x": [1, 1, 8, 32]}  # --shape wins


def test_stage_table_says_why_a_stage_changed_nothing_and_counts_repeated_notes():
    from rich.console import Console

    from onnxopt.pipeline import StageRecord
    from onnxopt.report import stage_table

    quantized = StageRecord("quantize", False, True, True, 1.0, applied=[(f"fc{i}", "int8-dynamic") for i in range(3)])
    declined = StageRecord("prune", False, False, False, 1.0, skipped=[("g", "graph output")],
                           details={"reason": "no pruning within the budget (3 search steps)"})  # fmt: skip
    console = Console(record=True, width=200)
    console.print(stage_table([quantized, declined]))
    text = console.export_text()
    assert "int8-dynamic ×3" in text and "int8-dynamic, int8-dynamic" not in text
    assert "no pruning within the budget (3 search steps); 1 skipped" in text


@pytest.mark.parametrize("providers", [("cpu",), ("cpu", "cpu")])
def test_optimize_reports_the_final_check_instead_of_timing_again(monkeypatch, providers):
    """The latency the report shows for the target is the measurement that decided; only
    the target's other providers are benchmarked on their own."""
    import onnxopt.optimize as optimize_module
    import onnxopt.pipeline as pipeline
    from onnxopt.calibration import load_npz
    from onnxopt.cli import latency_rows
    from onnxopt.optimize import optimize

    monkeypatch.setattr(pipeline, "measure_speedup", lambda *a, **k: 2.0)  # the stage check keeps the prune
    finals, benched = [], []
    real_pair, real_bench = pipeline.time_pair, optimize_module.benchmark
    monkeypatch.setattr(pipeline, "time_pair", lambda *a, **k: finals.append(real_pair(*a, **{**k, "seconds": 0.05})) or finals[-1])
    monkeypatch.setattr(optimize_module, "benchmark", lambda *a, **k: benched.append(k["providers"]) or real_bench(*a, **{**k, "seconds": 0.05}))
    monkeypatch.setitem(optimize_module.TARGETS, "cpu", providers)
    demo = Path(optimize_module.__file__).parent / "demo"
    data = load_npz(demo / "digits.npz", ir.load(str(demo / "digits_cnn.onnx"))).take(slice(0, 64))
    result = optimize(demo / "digits_cnn.onnx", data=data, stages=["prune"], stage_options={"prune": {"ratio": 0.5}}, bench=True)
    assert result.speedup is not None and len(finals) == 1
    assert result.bench.rows[:2] == finals[0].rows and result.speedup == finals[0].rows[1].ratio
    assert benched == ([] if len(providers) == 1 else [["cpu"]]) and len(result.bench.rows) == 2 * len(providers)
    rows = latency_rows(result)
    assert len(rows) == len(providers) and rows[0][3] == f"{result.speedup:.2f}× (final speed check)"
    assert all(row[3].endswith("(bench)") for row in rows[1:])


@pytest.mark.parametrize(("held_out", "warned"), [(4, True), (128, False)])
def test_optimize_warns_when_one_held_out_sample_outweighs_the_budget(held_out, warned):
    """With 4 held-out samples one changed sample is a 25 % drop: a 1 % budget then only
    means "nothing changed", and the result says so; with 128 it is measured."""
    from onnxopt.calibration import Dataset
    from onnxopt.optimize import optimize

    model = ir.from_proto(conv_bn_relu_gemm())
    rng = np.random.default_rng(0)
    calib = Dataset({"input": rng.standard_normal((8, 3, 8, 8)).astype(np.float32)})
    evaluation = Dataset({"input": rng.standard_normal((held_out, 3, 8, 8)).astype(np.float32)})
    result = optimize(model, data=calib, eval_data=evaluation, stages=["lowrank"], bench=False, speed_check=False)
    assert bool(result.warnings) == warned
    if warned:
        assert "4 held-out samples" in result.warnings[0] and "needs 100" in result.warnings[0]
        assert result.to_dict()["warnings"] == result.warnings


def test_pruning_again_on_the_same_model_reuses_its_importances(monkeypatch):
    """The budget reclaim prunes the model it pruned before, with a larger budget: the
    groups and importances are computed once per model (by its content, a clone matches),
    and the second search gives what a search from scratch gives."""
    import onnxopt.pruning as pruning
    from onnxopt.model_io import load_model

    calls = []
    importance = pruning.group_importance
    monkeypatch.setattr(pruning, "group_importance", lambda *a, **k: calls.append(1) or importance(*a, **k))
    model = load_model(ROOT / "benchmarks" / "models" / "hard_digits_cnn.onnx")
    data = load_npz(ROOT / "benchmarks" / "models" / "hard_digits.npz", model)
    calib, held_out = data.take(np.arange(0, 64)), data.take(np.arange(64, 264))
    ctx = Context(verify_data=held_out.take(slice(0, 8)), calib=calib, evaluator=Evaluator(model, held_out), max_drop=0.02)
    half, whole = pruning.prune_stage(max_drop=0.01, criterion="l1"), pruning.prune_stage(max_drop=0.02, criterion="l1")
    half.run(model.clone(), ctx)
    again = whole.run(model.clone(), ctx)
    assert len(calls) == 1  # the second search on the clone re-used the importances
    fresh = whole.run(model.clone(), Context(verify_data=ctx.verify_data, calib=calib, evaluator=ctx.evaluator, max_drop=0.02))
    assert len(calls) == 2 and again.details["knob"] == fresh.details["knob"] and again.details["macs_after"] == fresh.details["macs_after"]
    pruned = again.model.clone()
    other = whole.run(pruned, ctx)  # another model: its own importances
    assert len(calls) == 3 and other is not None


def test_a_second_search_with_a_larger_budget_does_not_build_again_what_the_first_scored(monkeypatch):
    """The reclaim's search retraces the first one until a setting that failed the half
    budget fits the whole; those steps are taken from the first search's scores, and the
    result is the one a search from scratch finds."""
    import onnxopt.pruning as pruning
    from onnxopt.model_io import load_model

    built = []
    build = pruning.Pruner.build

    def counted(self, knob, **options):
        if options.get("recover", True):  # not the score without recovery the result reports
            built.append(knob)
        return build(self, knob, **options)

    monkeypatch.setattr(pruning.Pruner, "build", counted)
    model = load_model(ROOT / "benchmarks" / "models" / "hard_digits_cnn.onnx")
    data = load_npz(ROOT / "benchmarks" / "models" / "hard_digits.npz", model)
    calib, held_out = data.take(np.arange(0, 64)), data.take(np.arange(64, 264))
    ctx = Context(verify_data=held_out.take(slice(0, 8)), calib=calib, evaluator=Evaluator(model, held_out), max_drop=0.02)
    half, whole = pruning.prune_stage(max_drop=0.01, criterion="l1"), pruning.prune_stage(max_drop=0.02, criterion="l1")
    first = half.run(model.clone(), ctx)
    assert first.details["budget_limited"]
    searched = {s["knob"] for s in first.details["steps"]}
    built.clear()
    again = whole.run(model.clone(), ctx)
    repeated = [s["knob"] for s in again.details["steps"] if s["knob"] in searched]
    assert repeated  # at least the gentlest setting and the midpoint
    new = [s["knob"] for s in again.details["steps"] if s["knob"] not in searched]
    assert sorted(built) == sorted(new + [again.details["knob"]] * (again.details["knob"] in searched))
    fresh = whole.run(model.clone(), Context(verify_data=ctx.verify_data, calib=calib, evaluator=ctx.evaluator, max_drop=0.02))
    assert again.details["knob"] == fresh.details["knob"] and again.details["steps"] == fresh.details["steps"]
    x = held_out.take(slice(0, 16))
    np.testing.assert_allclose(run(again.model, x)[0], run(fresh.model, x)[0], rtol=1e-5, atol=1e-6)
