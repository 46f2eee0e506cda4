"""``optimize``: the default recipe, as one function pipelines can call.

Recipe: cleanup (onnxscript optimizer + onnx_ir common passes) → fold_bn → pad_channels
(zero channels up to onnxruntime's NCHWc block, 8 or 16; kept only when it measures
faster), all lossless and verified on the verification inputs; with calibration data the lossy stages follow —
prune → lowrank → quantize (:data:`LOSSY_STAGES`) — judged on held-out data against the
original under one accuracy budget. Without data only lossless passes run, and the result
says so.

How the budget B is shared: every candidate of every stage is scored against the
*original* model, so a stage sees the loss of the stages before it. Each stage may use the
budget up to a cumulative cap — prune ``0.5·B``, lowrank ``0.75·B``, quantize ``B`` —
so that pruning (the largest MAC saving) cannot leave nothing to the later stages, and the
total never exceeds B. When the budget still limited the last stage (quantize kept layers
float), that stage is also run alone with all of B and kept instead if it measures faster
(:func:`onnxopt.pipeline.try_last_stage_alone`). When the later stages left their part of
the budget unused (declined, not faster, rolled back) and it limited the last kept stage,
that stage runs once more with all of B and is kept instead if it measures faster
(:func:`onnxopt.pipeline.reclaim_budget`). "Within" means the drop plus one standard error of the paired
per-sample drop (:class:`onnxopt.evaluate.Evaluator`): a search that keeps the most
compressed passing candidate would otherwise meet the budget on the held-out set by
selection and miss it on new inputs. With ``speed_check`` a lossy stage is also kept only when it makes
the model faster on the target, timed interleaved, and the final model is timed once more
against the original: kept lossy stages are rolled back, last first, until it is faster
(see :mod:`onnxopt.pipeline`; ``OptimizeResult.speedup`` holds that measurement, and
``OptimizeResult.bench`` shows it for the target's provider instead of timing again).

Data handling: ``data`` is split into calibration and evaluation halves (seeded) unless
``eval_data`` is given; evaluation samples are never used for calibration. Lossless
stages are verified on real samples when there are any, else on seeded random inputs.
"""

from __future__ import annotations

__all__ = ["OptimizeResult", "optimize", "lossless_stages", "verify_models"]

import dataclasses
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import onnx_ir as ir

from onnxopt import evaluate
from onnxopt.bench import BenchResult, benchmark, resolve_providers
from onnxopt.calibration import (
    Dataset,
    check_dataset,
    feed_batch,
    has_dynamic_dims,
    input_specs,
    load_npz,
    shapes_text,
    synthetic,
)
from onnxopt.errors import OnnxoptError
from onnxopt.lowrank import lowrank_stage
from onnxopt.model_io import check_output_path, load_model, save_model
from onnxopt.passes.cleanup import CleanupPass
from onnxopt.passes.fold_bn import FoldBatchNormPass
from onnxopt.passes.pad_channels import PadChannelsPass
from onnxopt.pipeline import (
    Context,
    Stage,
    StageRecord,
    confirm_speedup,
    pass_stage,
    reclaim_budget,
    run_stages,
    try_last_stage_alone,
)
from onnxopt.pruning import prune_stage
from onnxopt.quantization import quantize_stage
from onnxopt.recipe import load_recipe
from onnxopt.report import ModelSummary, summarize

VERIFY_SAMPLES = 16


def lossless_stages() -> list[Stage]:
    return [
        pass_stage("cleanup", CleanupPass),
        # onnxscript's rewrite rules have changed a real model's output shape (ddddocr's
        # recognizer): without them, folding and dead-code removal still apply.
        pass_stage("cleanup-basic", lambda: CleanupPass(onnxscript_rules=False), fallback_for="cleanup"),
        pass_stage("fold_bn", FoldBatchNormPass),
        # zero channels up to onnxruntime's NCHWc block: its blocked convolutions for a model
        # pruned elsewhere with exact counts, kept when measured faster
        pass_stage("pad_channels", PadChannelsPass, needs_speedup=True),
    ]


# name -> (factory(**options) -> Stage, cumulative share of the budget it may use)
LOSSY_STAGES: dict[str, tuple[Callable[..., Stage], float]] = {
    "prune": (prune_stage, 0.5),
    "lowrank": (lowrank_stage, 0.75),
    "quantize": (quantize_stage, 1.0),
}
TARGETS = {"cpu": ("cpu",), "cuda": ("cuda", "cpu")}
# Stage settings that fix how much a stage removes; with one of them no budget search runs.
_FIXED_AMOUNT_KEYS = ("ratio", "cr", "rank", "energy", "max_drop")


def shapes_from_data(model: ir.Model, data: Dataset, shapes: Mapping[str, Sequence[int]]) -> dict[str, list[int]]:
    """``shapes`` completed with the data's sample shape (batch 1, or the model's fixed batch)
    for every input with a dynamic axis besides its sample axis: costs and speed checks then
    measure the model at the size it is used at, not with that axis at 1 (an OCR model's width)."""
    out = {k: list(v) for k, v in shapes.items()}
    for spec in input_specs(model):
        array = data.inputs.get(spec.name)
        if array is not None and spec.name in data.stacked:  # one sample, as the model takes it
            array = array[0]
            spec = dataclasses.replace(spec, axis=None)
        if spec.name in out or array is None or spec.shape is None or array.ndim != len(spec.shape):
            continue
        if all(isinstance(d, int) for a, d in enumerate(spec.shape) if a != spec.axis):
            continue
        dims = list(array.shape)
        if spec.axis is not None:
            want = spec.shape[spec.axis]
            dims[spec.axis] = want if isinstance(want, int) and want > 0 else 1
        out[spec.name] = dims
    return out


@dataclasses.dataclass
class OptimizeResult:
    model: ir.Model
    output: Path | None
    before: ModelSummary
    after: ModelSummary
    stages: list[StageRecord]
    fidelity: evaluate.Fidelity
    verified_on: str
    lossless_only: bool
    bench: Any = None  # onnxopt.bench.BenchResult when measured
    metric: str | None = None
    baseline_score: float | None = None
    final_score: float | None = None
    speedup: float | None = None  # final check against the original (speed_check with a kept lossy stage)
    warnings: list[str] = dataclasses.field(default_factory=list)
    lossless_why: str | None = None  # why only lossless passes ran

    def to_dict(self) -> dict:
        return {
            "output": str(self.output) if self.output else None,
            "before": self.before.to_dict(),
            "after": self.after.to_dict(),
            "stages": [s.to_dict() for s in self.stages],
            "verification": {"inputs": self.verified_on, **self.fidelity.to_dict()},
            "lossless_only": self.lossless_only,
            "lossless_why": self.lossless_why,
            "metric": self.metric,
            "baseline_score": self.baseline_score,
            "final_score": self.final_score,
            "speedup": self.speedup,
            "warnings": self.warnings,
            "bench": self.bench.to_dict() if self.bench is not None else None,
        }


def _as_dataset(
    data: Dataset | str | os.PathLike | None, model: ir.Model, sample_axes: Mapping[str, int | None] | None = None
) -> Dataset | None:
    if data is None:
        return None
    if isinstance(data, Dataset):
        return check_dataset(data, model)
    return load_npz(data, model, sample_axes=sample_axes)


def optimize(
    model: str | os.PathLike | ir.Model,
    output: str | os.PathLike | None = None,
    *,
    data: Dataset | str | os.PathLike | None = None,
    eval_data: Dataset | str | os.PathLike | None = None,
    sample_axes: Mapping[str, int | None] | None = None,
    max_drop: float = 0.01,
    metric: str | evaluate.Metric | None = None,
    budget_se: float = evaluate.CONFIDENCE_Z,
    shapes: Mapping[str, Sequence[int]] | None = None,
    stages: Sequence[str] | None = None,
    lossless: Sequence[Stage] | None = None,
    stage_options: Mapping[str, Mapping[str, Any]] | None = None,
    seed: int = 0,
    target: str = "cpu",
    speed_check: bool = True,
    recipe: str | os.PathLike | None = None,
    bench: bool = False,
    bench_threads: int | None = 2,
    progress: Callable[[str], None] | None = None,
) -> OptimizeResult:
    """Run the recipe on ``model`` (a path or a model), write ``output`` if given.

    ``stages`` restricts the lossy stages (names in :data:`LOSSY_STAGES`; empty: none, so
    that given data only verifies the lossless passes); ``lossless``
    replaces the default lossless stages (e.g. only fold_bn). ``stage_options`` passes
    settings to a stage by name (they override the shared budget too, e.g.
    ``{"prune": {"ratio": 0.3}}``). ``target`` is the execution provider the speed check
    and the benchmark measure on. ``sample_axes`` names the axis that holds the samples of
    inputs read from an .npz whose shape does not say it (``--sample-axis``). A ``recipe`` (TOML, see :mod:`onnxopt.recipe`) pins
    settings: its values replace the corresponding arguments, so a pipeline reproduces the
    same run from the file alone.
    """
    if target not in TARGETS:
        raise OnnxoptError(f"unknown target {target!r}; choose from {', '.join(TARGETS)}")
    _, missing = resolve_providers(TARGETS[target][:1])
    if missing and speed_check:  # speed decisions measured on another device would not hold on the target
        raise OnnxoptError(
            f"target {target}: {missing[0].split(': ', 1)[1]} (pip install onnxruntime-gpu, or --no-speed-check "
            "to optimize without timing)"
        )
    if recipe is not None:
        pinned = load_recipe(recipe, set(LOSSY_STAGES))
        max_drop = pinned.optimize.get("max_accuracy_drop", max_drop)
        stages = pinned.optimize.get("stages", stages)
        metric = pinned.optimize.get("metric", metric)
        seed = pinned.optimize.get("seed", seed)
        budget_se = pinned.optimize.get("budget_se", budget_se)
        stage_options = {**pinned.stages, **dict(stage_options or {})}
    input_path = None if isinstance(model, ir.Model) else Path(model)
    if output is not None:
        check_output_path(output, input_path)
    original = load_model(input_path) if input_path is not None else model
    shapes = dict(shapes or {})
    calib = _as_dataset(data, original, sample_axes)
    held_out = _as_dataset(eval_data, original, sample_axes)
    if calib is not None and held_out is None:
        calib, held_out = calib.split(0.5, seed, multiple=feed_batch(original, calib) or 1)
    if calib is not None:
        shapes = shapes_from_data(original, calib, shapes)
    if held_out is not None:
        verify_data = held_out.take(slice(0, VERIFY_SAMPLES))
        verified_on = f"{len(verify_data)} held-out samples"
        reference = evaluate.run(original, verify_data)
    else:
        verify_data, reference, verified_on = _random_check_inputs(original, seed, shapes)
    evaluator = evaluate.Evaluator(original, held_out, metric=metric, confidence=budget_se) if held_out is not None else None
    ctx = Context(
        verify_data=verify_data,
        calib=calib,
        evaluator=evaluator,
        max_drop=max_drop,
        shapes=shapes,
        seed=seed,
        progress=progress or (lambda message: None),
        speed_check=speed_check,
        providers=TARGETS[target],
        threads=bench_threads,
    )
    pipeline = list(lossless) if lossless is not None else lossless_stages()
    lossless_why = None
    if calib is None:
        lossless_why = "no calibration data given (--data)"
    elif stages is not None and not list(stages):
        lossless_why = "no lossy stage asked for (--stages none)"
    lossless_only = lossless_why is not None
    whole_budget: dict[str, Stage] = {}
    if not lossless_only:
        names = list(stages) if stages is not None else list(LOSSY_STAGES)
        for name in names:
            if name not in LOSSY_STAGES:
                raise OnnxoptError(f"unknown stage {name!r}; available: {', '.join(LOSSY_STAGES) or 'none'}")
            factory, share = LOSSY_STAGES[name]
            options = dict((stage_options or {}).get(name, {}))
            if not any(k in options for k in _FIXED_AMOUNT_KEYS):
                options["max_drop"] = max_drop * share  # searched under its share of the budget
                if share < 1:  # for reclaim_budget, should the later stages leave theirs unused
                    whole_budget[name] = factory(**{**options, "max_drop": max_drop})
            pipeline.append(factory(**options))
    before = summarize(original, input_path, shapes)
    optimized, records = run_stages(original.clone(), pipeline, ctx)
    if speed_check:
        optimized, records = try_last_stage_alone(optimized, records, pipeline, ctx, whole_budget)
    speedup = final_timing = None
    if speed_check and any(r.kept and not r.lossless for r in records):
        ctx.progress("final speed check")
        optimized, speedup, final_timing = confirm_speedup(original, optimized, records, ctx)
    if speed_check:  # also when every lossy stage was rolled back: too little to be faster, say
        optimized, records, speedup, final_timing = reclaim_budget(
            original, optimized, records, whole_budget, ctx, speedup, final_timing
        )  # fmt: skip
    final_outputs = evaluate.run(optimized, verify_data)
    fidelity = evaluate.compare(reference, final_outputs, names=[o.name for o in original.graph.outputs], labels=verify_data.labels,
                                axes=evaluate.score_axes(original))  # fmt: skip
    written = save_model(optimized, output, input_path=input_path) if output is not None else None
    after = summarize(optimized, written, shapes)
    result = OptimizeResult(optimized, written, before, after, records, fidelity, verified_on, lossless_only, speedup=speedup,
                            lossless_why=lossless_why)  # fmt: skip
    if (why := _coarse_budget(held_out, max_drop, lossless_only)) is not None:
        result.warnings.append(why)
    if evaluator is not None:
        result.metric = evaluator.metric_name
        result.baseline_score = evaluator.baseline
        result.final_score = evaluator.score(optimized)
    if bench:
        result.bench = _bench(original, optimized, TARGETS[target], final_timing, bench_threads, shapes, verify_data)
    return result


def _coarse_budget(held_out: Dataset | None, max_drop: float, lossless_only: bool) -> str | None:
    """A warning when one held-out sample weighs more than the whole budget: the budget
    then only holds as "no held-out sample changed", which a handful of samples says little
    about (2 samples of data: 1 held out, and a 1 % budget passed an 87 % MAC cut)."""
    if lossless_only or held_out is None or not len(held_out) or 1.0 / len(held_out) <= max_drop:
        return None
    return (f"the budget was judged on {len(held_out)} held-out samples: one changed sample is "
            f"{100.0 / len(held_out):.3g}% of them, more than the {100 * max_drop:g}% budget, so it held only as "
            f"'no held-out sample changed'; measuring it needs {math.ceil(1 / max_drop)} held-out samples (--eval-data, or --data, half of which is held out)")  # fmt: skip


def _bench(original: ir.Model, optimized: ir.Model, providers: Sequence[str], final_timing: BenchResult | None, threads: int | None,
           shapes: Mapping[str, Sequence[int]], data: Dataset) -> BenchResult:  # fmt: skip
    """original vs optimized on every provider of the target. The final speed check's
    measurement stands for the provider it timed (the target's first): timing the same pair
    again would give a second number for the same question, and under load the two differed
    (ssdlite: 1.10× decided, 1.07× reported)."""
    rest = list(providers[1:] if final_timing is not None else providers)
    if not rest:
        return final_timing
    timed = benchmark([("original", original), ("optimized", optimized)], providers=rest, threads=threads, shapes=shapes,
                      seconds=5.0, data=data)  # fmt: skip
    if final_timing is None:
        return timed
    return BenchResult(final_timing.rows + timed.rows, final_timing.skipped + timed.skipped, final_timing.environment)


def _random_check_inputs(
    model: ir.Model, seed: int, shapes: Mapping[str, Sequence[int]]
) -> tuple[Dataset, evaluate.Outputs, str]:
    """Random check inputs the original runs on (:func:`onnxopt.evaluate.runnable_synthetic`),
    its outputs on them and their description. When it runs on none, say which shapes were
    used and which sizes of the dynamic dims were tried."""
    try:
        return evaluate.runnable_synthetic(model, VERIFY_SAMPLES, seed=seed, shapes=shapes)
    except OnnxoptError as exc:
        used = synthetic(model, VERIFY_SAMPLES, seed=seed, shapes=shapes)
        tried = (f"; dynamic dimensions {', '.join(map(str, (1, *evaluate.DYNAMIC_SIZES)))} were tried"
                 if has_dynamic_dims(model, shapes) else "")  # fmt: skip
        raise OnnxoptError(f"{exc} — on random check inputs ({shapes_text(used.inputs)}{tried}): "
                           "give real sizes with --shape NAME=DxD… or real inputs with --data") from None


def verify_models(
    original: str | os.PathLike | ir.Model,
    candidate: str | os.PathLike | ir.Model,
    *,
    data: Dataset | str | os.PathLike | None = None,
    samples: int = VERIFY_SAMPLES,
    shapes: Mapping[str, Sequence[int]] | None = None,
    seed: int = 0,
    sample_axes: Mapping[str, int | None] | None = None,
) -> tuple[evaluate.Fidelity, str]:
    """Run both models on the same inputs; returns the fidelity and what the inputs were."""
    a = original if isinstance(original, ir.Model) else load_model(original)
    b = candidate if isinstance(candidate, ir.Model) else load_model(candidate)
    names_a = [v.name for v in a.graph.outputs]
    names_b = [v.name for v in b.graph.outputs]
    if len(names_a) != len(names_b):
        raise OnnxoptError(f"the models have different numbers of outputs ({len(names_a)} vs {len(names_b)})")
    dataset = _as_dataset(data, a, sample_axes)
    if dataset is None:
        dataset, reference, described = evaluate.runnable_synthetic(a, samples, seed=seed, shapes=shapes)
    else:
        reference, described = evaluate.run(a, dataset), f"{len(dataset)} samples from data"
    fid = evaluate.compare(reference, evaluate.run(b, dataset), names=names_a, labels=dataset.labels, axes=evaluate.score_axes(a))
    return fid, described
