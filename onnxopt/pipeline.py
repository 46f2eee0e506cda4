"""Ordered stages with verification and rollback after each one.

How a pipeline runs (:func:`run_stages`):
1. The model before a stage is kept as a snapshot (``Model.clone()`` shares tensors, and
   passes never mutate tensors in place, so this costs no weight copies).
2. The stage runs on a clone. An exception inside it is caught: the stage is rolled back
   and the reason is recorded; the run goes on.
3. The result is checked: it must pass the ONNX checker and run in onnxruntime.
4. It is verified against the snapshot on the verification inputs. A **lossless** stage
   whose outputs differ beyond ``rtol``/``atol`` is rolled back ("not exact"). A **lossy**
   stage is checked against the original model's task score on held-out data and rolled
   back when the accumulated drop exceeds the budget.
5. With ``ctx.speed_check`` set, a lossy stage (and a lossless one marked
   ``needs_speedup``) must also make the model faster on the target: candidate and
   current model are timed interleaved in one process (:mod:`onnxopt.bench`) and the stage is rolled back unless the p50 ratio reaches
   ``ctx.min_speedup``. A smaller but slower model is not what ``optimize`` promises.
   A stage that timed its own result against its input on the CPU provider at the
   context's thread count (quantize's speed guard) reports it as
   ``details["cpu_speedup"] = {threads: speed-up}``; that measurement is used instead of
   timing the same pair twice.
6. Every stage leaves a :class:`StageRecord` (what changed, fidelity, cost, time, skips).
7. Stage-by-stage checks compare each stage with the model before it, a few seconds each, so
   on a busy machine their product can claim more than the whole delivers (ddddocr's
   recognizer: 1.49× and 1.54× per stage, 1.15× end to end). :func:`confirm_speedup` times the
   final model against the original and rolls back kept lossy stages, last first, until the
   result is at least ``ctx.min_speedup`` times as fast: ``optimize`` never hands back a
   model that measured slower than its input. That last measurement is the one the report
   shows for the target's provider.
8. Stages run greedily, each on what the ones before left of the budget. When the last
   lossy stage says the budget limited it (``details["budget_limited"]``: quantize needed
   its fallback search, kept or not) and earlier lossy stages were kept,
   :func:`try_last_stage_alone` runs it once more on the model before those, with the whole
   budget, and keeps that result instead when it measures faster, timed against the greedy
   one in one interleaved run. ddddocr's recognizer: low-rank then int8 left most
   convolutions float (final checks 1.45–1.58×); int8 alone, static convolutions + dynamic
   LSTM, 1.62×. The second run ranks the layers it shares with the first by the
   sensitivities measured then (:func:`onnxopt.quantization.quantize_stage`).
9. Each lossy stage searches under a cumulative share of the budget, so that the first
   cannot spend what the later ones need. When the later stages then used nothing (declined,
   not faster, rolled back by the final check) and the last kept stage, or else the first
   rolled back after it, says its share limited it, :func:`reclaim_budget` runs it once
   more on the model it started from with the whole budget, and keeps that result
   when it measures faster than the result, timed against it, and at least
   ``ctx.min_speedup`` times the original's speed, timed against that (the report's
   measurement). The hard-digits CNN: int8 and low-rank are not faster on a 0.1 ms model,
   and pruning under half of a 1 % budget removed too little to measure faster. The
   second search re-uses the first one's importances (``Context.cache``: by the model's
   content, so only when it starts from the same model) and the scores of the settings
   the first one tried: it retraces them until one that failed the share fits the whole
   budget (on hard digits the reclaim's prune search took 1.4 s instead of 2.9 s).
"""

from __future__ import annotations

__all__ = [
    "Context",
    "Stage",
    "StageOutcome",
    "StageRecord",
    "pass_stage",
    "confirm_speedup",
    "measure_speedup",
    "reclaim_budget",
    "run_stages",
    "time_pair",
    "try_last_stage_alone",
]

import dataclasses
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import onnx
import onnx_ir as ir

from onnxopt import evaluate
from onnxopt.calibration import Dataset
from onnxopt.cost import model_cost
from onnxopt.errors import OnnxoptError
from onnxopt.graph import _proto_without_weights
from onnxopt.model_io import _PROTOBUF_LIMIT, _embedded_proto, model_bytes


@dataclasses.dataclass
class Context:
    """What stages may use besides the model."""

    verify_data: Dataset
    calib: Dataset | None = None
    evaluator: evaluate.Evaluator | None = None  # held-out data, scored against the original
    max_drop: float | None = None
    shapes: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    seed: int = 0
    progress: Callable[[str], None] = lambda message: None
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    speed_check: bool = False
    min_speedup: float = 1.0
    providers: tuple[str, ...] = ("cpu",)
    threads: int | None = 2
    speed_seconds: float = 2.0
    cache: dict[str, Any] = dataclasses.field(default_factory=dict)  # what stages compute once per run (prune's importances)


def time_pair(current: ir.Model, candidate: ir.Model, ctx: Context, seconds: float | None = None,
              labels: tuple[str, str] = ("current", "candidate")) -> Any:  # fmt: skip
    """The :class:`onnxopt.bench.BenchResult` of ``current`` and ``candidate`` timed
    interleaved on the context's provider for ``seconds`` (default ``ctx.speed_seconds``),
    on the first sample of the check inputs (real ones when data is given)."""
    from onnxopt.bench import benchmark

    return benchmark(
        [(labels[0], current), (labels[1], candidate)],
        providers=ctx.providers[:1],
        threads=ctx.threads,
        shapes=ctx.shapes,
        seconds=ctx.speed_seconds if seconds is None else seconds,
        warmup=3,
        data=ctx.verify_data,
    )


def measure_speedup(current: ir.Model, candidate: ir.Model, ctx: Context, seconds: float | None = None) -> float:
    """p50(current) / p50(candidate) of :func:`time_pair`."""
    return time_pair(current, candidate, ctx, seconds).rows[1].ratio or 0.0


@dataclasses.dataclass
class StageOutcome:
    model: ir.Model
    modified: bool
    applied: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    details: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Stage:
    """A named step: ``run(model, ctx)`` returns a :class:`StageOutcome`.

    ``lossless`` stages must reproduce their input's outputs; the others are judged by the
    task score against the budget. A stage with ``fallback_for`` runs only when the stage of
    that name was rolled back (a more conservative variant of it). A lossless stage with
    ``needs_speedup`` (a rewrite that adds work to run faster, e.g. channel padding) is,
    like a lossy one, kept only when it measures faster; with the speed check off, never.
    """

    name: str
    run: Callable[[ir.Model, Context], StageOutcome]
    lossless: bool = True
    fallback_for: str | None = None
    needs_speedup: bool = False


def pass_stage(
    name: str, make_pass: Callable[[], ir.passes.PassBase], *, lossless: bool = True, fallback_for: str | None = None,
    needs_speedup: bool = False,
) -> Stage:
    """A stage that applies one ``onnx_ir`` pass (a fresh instance per run)."""

    def _run(model: ir.Model, ctx: Context) -> StageOutcome:
        p = make_pass()
        result = p(model)
        return StageOutcome(
            result.model,
            result.modified,
            list(getattr(p, "applied", [])),
            list(getattr(p, "skipped", [])),
        )

    return Stage(name, _run, lossless, fallback_for, needs_speedup)


@dataclasses.dataclass
class StageRecord:
    name: str
    lossless: bool
    modified: bool
    kept: bool
    seconds: float
    reason: str = ""  # why it was rolled back, if it was
    macs: int | None = None
    params: int | None = None
    fidelity: dict | None = None
    score: float | None = None
    applied: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    details: dict[str, Any] = dataclasses.field(default_factory=dict)
    before: ir.Model | None = dataclasses.field(default=None, repr=False)  # the model it started from, when kept

    def to_dict(self) -> dict:
        # Not dataclasses.asdict: it would deep-copy the snapshot in ``before``.
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "before"}
        d["applied"] = [list(a) for a in self.applied]
        d["skipped"] = [list(s) for s in self.skipped]
        return d


def check_model(model: ir.Model) -> None:
    """Raise OnnxoptError when the ONNX checker rejects ``model``."""
    try:
        if model_bytes(model) > _PROTOBUF_LIMIT:  # > 2 GB cannot be one protobuf: check the structure
            onnx.checker.check_model(_proto_without_weights(model))
        else:
            onnx.checker.check_model(_embedded_proto(model))
    except (onnx.checker.ValidationError, ValueError) as exc:
        raise OnnxoptError(f"result fails the ONNX checker: {str(exc).splitlines()[0]}") from exc


def run_stages(
    model: ir.Model,
    stages: Sequence[Stage],
    ctx: Context,
    *,
    rtol: float = 1e-4,
    atol: float = 1e-5,
) -> tuple[ir.Model, list[StageRecord]]:
    """Apply ``stages`` in order with verification and rollback (see module docstring)."""
    current = model
    current_outputs = evaluate.run(current, ctx.verify_data)
    records: list[StageRecord] = []
    for stage in stages:
        if stage.fallback_for is not None and not any(r.name == stage.fallback_for and r.reason for r in records):
            continue
        ctx.progress(stage.name)
        start = time.perf_counter()
        record = StageRecord(stage.name, stage.lossless, False, False, 0.0)
        try:
            outcome = stage.run(current.clone(), ctx)
            record.modified = outcome.modified
            record.applied, record.skipped, record.details = outcome.applied, outcome.skipped, outcome.details
            if outcome.modified:
                candidate = outcome.model
                check_model(candidate)
                outputs = evaluate.run(candidate, ctx.verify_data)
                fid = evaluate.compare(current_outputs, outputs, names=[o.name for o in current.graph.outputs], axes=evaluate.score_axes(current))
                record.fidelity = fid.to_dict()
                reshaped = next((o for o in fid.outputs if o.shapes), None)
                if stage.lossless and reshaped is not None:
                    before, after = reshaped.shapes
                    record.reason = f"not exact: output {reshaped.name!r} changed shape {before} → {after}"
                elif stage.lossless and not fid.within(rtol, atol):
                    record.reason = (
                        f"not exact: max abs error {fid.max_abs:.3g}, relative {fid.max_rel:.3g} "
                        f"(tolerance {rtol:g})"
                    )
                else:
                    if not stage.lossless and ctx.evaluator is not None:
                        record.score = ctx.evaluator.score(candidate)
                        budget = ctx.max_drop if ctx.max_drop is not None else 0.0
                        if not ctx.evaluator.within(record.score, budget):
                            record.reason = (
                                f"{ctx.evaluator.metric_name} drop {ctx.evaluator.drop_text(record.score)} "
                                f"exceeds the budget {budget:g}"
                            )
                    if not record.reason and stage.needs_speedup and not ctx.speed_check:
                        record.reason = "kept only when measured faster, and the speed check is off"
                    if not record.reason and (not stage.lossless or stage.needs_speedup) and ctx.speed_check:
                        own = (outcome.details.get("cpu_speedup") or {}).get(ctx.threads)
                        reuse = own is not None and ctx.providers[0] == "cpu"
                        speedup = own if reuse else measure_speedup(current, candidate, ctx)
                        record.details["speedup"] = speedup
                        if speedup < ctx.min_speedup:
                            record.reason = (
                                f"not faster on {ctx.providers[0]}: speed-up {speedup:.2f}× "
                                f"(needs ≥ {ctx.min_speedup:g}×)"
                            )
                    if not record.reason:
                        record.kept, record.before = True, current
                        current, current_outputs = candidate, outputs
        except OnnxoptError as exc:
            record.reason = str(exc)
        except Exception as exc:  # a pass bug must not kill the run: roll back and say so
            record.reason = f"stage failed: {type(exc).__name__}: {exc}".splitlines()[0]
            record.details["traceback"] = traceback.format_exc()
        record.seconds = time.perf_counter() - start
        try:
            cost = model_cost(current, ctx.shapes)
            record.macs, record.params = cost.macs, cost.params
        except Exception:
            pass
        records.append(record)
    return current, records


def confirm_speedup(original: ir.Model, current: ir.Model, records: Sequence[StageRecord], ctx: Context) -> tuple[ir.Model, float, Any]:
    """Time ``current`` against ``original`` (``2 · ctx.speed_seconds``, interleaved); while it
    is below ``ctx.min_speedup`` and a lossy stage is kept, roll back the last kept lossy stage
    (its record gets the reason) and time again. Returns the model, its last speed-up (p50
    ratio) and the :class:`onnxopt.bench.BenchResult` that measured it, rows labelled
    ``original`` and ``optimized``: the report shows that one measurement, not a second run
    that noise could make disagree with the one that decided."""
    kept = [r for r in records if r.kept and not r.lossless and r.before is not None]
    while True:
        timing = time_pair(original, current, ctx, seconds=2 * ctx.speed_seconds, labels=("original", "optimized"))
        speedup = timing.rows[1].ratio or 0.0
        if speedup >= ctx.min_speedup or not kept:
            return current, speedup, timing
        record = kept.pop()
        current, record.kept = record.before, False
        record.reason = (
            f"final check: the result measured {speedup:.2f}× the original's speed on "
            f"{ctx.providers[0]} (needs ≥ {ctx.min_speedup:g}×); rolled back"
        )
        ctx.progress(f"final check: rolled back {record.name}")


def try_last_stage_alone(
    current: ir.Model, records: list[StageRecord], stages: Sequence[Stage], ctx: Context,
    whole_budget: Mapping[str, Stage] | None = None,
) -> tuple[ir.Model, list[StageRecord]]:  # fmt: skip
    """The greedy result, or the last lossy stage (kept or not) run alone with the whole
    budget when that measures faster (module docstring, step 8). The alternative is run and
    checked by :func:`run_stages` like any stage; when it wins, the earlier kept lossy
    stages are marked not kept with the reason and its record replaces the last one.
    ``whole_budget`` holds the stages built with a share of the budget, built with all of it."""
    last = next((r for r in reversed(records) if not r.lossless), None)
    earlier = [r for r in records if r.kept and not r.lossless and r.before is not None and r is not last]
    if last is None or not earlier or not last.details.get("budget_limited"):
        return current, records
    stage = (whole_budget or {}).get(last.name) or next((s for s in stages if s.name == last.name), None)
    if stage is None:
        return current, records
    ctx.progress(f"{stage.name} alone, with the whole budget")
    alone, (record,) = run_stages(earlier[0].before, [stage], ctx)
    if not record.kept:
        return current, records
    names = ", ".join(r.name for r in earlier)
    try:
        speedup = measure_speedup(current, alone, ctx, seconds=2 * ctx.speed_seconds)
    except OnnxoptError as exc:  # the greedy result stands
        last.details["alone"] = f"{stage.name} without {names}: not timed ({exc})"
        return current, records
    if speedup <= 1.0:
        last.details["alone"] = f"{stage.name} without {names}: {speedup:.2f}× the speed of the result; not kept"
        return current, records
    for r in earlier:
        r.kept = False
        r.reason = f"dropped: {stage.name} alone, with the whole budget, measured {speedup:.2f}× faster than after {names}"
    record.details["alone"] = f"run alone, without {names}: measured {speedup:.2f}× faster than after {names}"
    return alone, [record if r is last else r for r in records]


def reclaim_budget(
    original: ir.Model, current: ir.Model, records: list[StageRecord], whole_budget: Mapping[str, Stage], ctx: Context,
    speedup: float | None, timing: Any,
) -> tuple[ir.Model, list[StageRecord], float | None, Any]:  # fmt: skip
    """The confirmed result, or a lossy stage that its share of the budget limited run again
    with the whole budget (``whole_budget``: that stage built with all of it), when no lossy
    stage after it was kept (module docstring, step 9): the last kept stage, or the first
    rolled back after it (e.g. as not faster). Returns the model, the records, and the
    speed-up over the original with the timing that measured it."""
    lossy = [r for r in records if not r.lossless]
    kept = [i for i, r in enumerate(lossy) if r.kept]
    # from the last kept stage on, the first that its share limited: the kept one (from the
    # model before it), or one rolled back with nothing after it kept (from the current model)
    last = next((r for r in lossy[kept[-1] if kept else 0 :] if r.name in whole_budget and r.details.get("budget_limited")), None)
    stage = whole_budget.get(last.name) if last is not None else None
    start = last.before if last is not None and last.kept else current
    if stage is None or start is None:
        return current, records, speedup, timing
    ctx.progress(f"{stage.name} again, with the budget the later stages left unused")
    candidate, (record,) = run_stages(start, [stage], ctx)
    if not record.kept:
        last.details["reclaim"] = f"again with the whole budget: {record.reason or 'no change'}; not kept"
        return current, records, speedup, timing
    try:
        over_current = measure_speedup(current, candidate, ctx, seconds=2 * ctx.speed_seconds)
        if over_current <= 1.0:
            last.details["reclaim"] = f"again with the whole budget: {over_current:.2f}× the speed of the result; not kept"
            return current, records, speedup, timing
        new_timing = time_pair(original, candidate, ctx, seconds=2 * ctx.speed_seconds, labels=("original", "optimized"))
    except OnnxoptError as exc:  # the confirmed result stands
        last.details["reclaim"] = f"again with the whole budget: not timed ({exc})"
        return current, records, speedup, timing
    new_speedup = new_timing.rows[1].ratio or 0.0
    if new_speedup < ctx.min_speedup:
        last.details["reclaim"] = (
            f"again with the whole budget: {over_current:.2f}× the result, but {new_speedup:.2f}× the original; not kept"
        )
        return current, records, speedup, timing
    record.details["reclaim"] = (
        f"run again with the whole budget, which the later stages left unused: {over_current:.2f}× faster than "
        f"under its share"
    )
    return candidate, [record if r is last else r for r in records], new_speedup, new_timing
