"""Low-rank compression of a model's fully connected layers: the API behind ``onnxopt lowrank``.

Steps of :func:`lowrank_model`:
1. Find the splittable layers (:func:`onnxopt.passes.lowrank.linear_layers`).
2. Data-aware mode (calibration data given): run the model once over the calibration set
   with every layer input added as an extra graph output and accumulate each input's
   second moment ``C = XᵀX / n`` (rows of the activation; 1×1 Conv: one row per pixel).
3. Decompose every layer once (:func:`~onnxopt.passes.lowrank.factorize`, whitened by ``C``
   in data-aware mode); candidates are then cheap to build from the cached SVDs.
4. Choose the ranks: ``rank``, ``energy`` or ``ratio`` give one candidate; ``max_drop``
   searches one global energy threshold in ``[0.5, 1]`` with
   :func:`onnxopt.search.search_budget` (a lower threshold compresses more) and keeps the
   most compressed candidate whose task score stays within the budget.
The input model is never modified; the result holds a new model and a per-layer report.
"""

from __future__ import annotations

__all__ = ["LowRankResult", "collect_second_moments", "lowrank_model", "lowrank_stage"]

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxopt import evaluate
from onnxopt.calibration import Dataset, feed_batch, with_sample_axes
from onnxopt.errors import OnnxoptError
from onnxopt.graph import attr, fixed_batch, static_shapes
from onnxopt.passes.lowrank import (
    Factorization,
    LayerDecision,
    LinearLayer,
    LowRankPass,
    choose_rank,
    factorize,
    linear_layers,
)
from onnxopt.pipeline import Context, Stage, StageOutcome
from onnxopt.search import SearchStep, search_budget

#: Energy thresholds searched under an accuracy budget. The search runs on the discarded
#: share ``d = 1 − energy`` in log scale, ``log10 d`` in ``[-4, log10 0.5]``, so that it resolves
#: 0.999 vs 0.9999 as well as 0.6 vs 0.7 (whitened spectra put the useful thresholds near 1).
ENERGY_RANGE = (0.5, 0.9999)
_LOG_DISCARD = (math.log10(1 - ENERGY_RANGE[1]), math.log10(1 - ENERGY_RANGE[0]))
#: Layers with more inputs than this use plain SVD (the K×K float64 moment would be too big).
MAX_WHITEN_DIM = 4096


@dataclasses.dataclass
class LowRankResult:
    """The compressed model and what happened to every candidate layer."""

    model: ir.Model
    layers: list[LayerDecision]
    mode: str  # "rank", "energy", "ratio" or "max_drop"
    knob: float | None  # the rank / energy / ratio used (the searched energy for max_drop)
    data_aware: bool
    metric: str | None = None
    baseline: float | None = None  # the original's task score on the evaluation data
    score: float | None = None  # the result's task score
    steps: list[SearchStep] = dataclasses.field(default_factory=list)
    applied: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def split_layers(self) -> list[LayerDecision]:
        return [d for d in self.layers if d.split]

    @property
    def macs_saved(self) -> int:
        return sum((d.macs_before or 0) - (d.macs_after or 0) for d in self.split_layers)

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "knob": self.knob,
            "data_aware": self.data_aware,
            "metric": self.metric,
            "baseline": self.baseline,
            "score": self.score,
            "layers_split": len(self.split_layers),
            "macs_saved": self.macs_saved,
            "layers": [
                {
                    "name": d.name,
                    "op_type": d.op_type,
                    "shape": [d.in_features, d.out_features],
                    "rank": d.rank if d.split else None,
                    "full_rank": d.full_rank,
                    "energy": d.energy if d.split else None,
                    "macs_before": d.macs_before,
                    "macs_after": d.macs_after if d.split else d.macs_before,
                    "data_aware": d.data_aware,
                    "exact_svd": d.exact_svd,
                    "split": d.split,
                    "skipped": d.reason or None,
                }
                for d in self.layers
            ],
            "search": [dataclasses.asdict(s) for s in self.steps],
            "notes": list(self.notes),
        }


# --------------------------------------------------------------------------- activations


def _rows(layer: LinearLayer, x: np.ndarray) -> np.ndarray:
    """The rows ``x_i`` that the layer multiplies by its weight (``y_i = x_i·W``)."""
    if layer.kind == "Gemm":
        x = x.reshape(x.shape[0], -1) if x.ndim != 2 else x
        return x.T if attr(layer.node, "transA", 0) else x
    if layer.kind == "Conv1x1":
        strides = attr(layer.node, "strides", None) or [1] * (x.ndim - 2)
        x = x[(slice(None), slice(None), *(slice(None, None, int(s)) for s in strides))]
        return np.moveaxis(x, 1, -1).reshape(-1, x.shape[1])
    return x.reshape(-1, x.shape[-1])


def collect_second_moments(
    model: ir.Model,
    data: Dataset,
    layers: Sequence[LinearLayer],
    *,
    batch_size: int = 32,
) -> dict[str, np.ndarray]:
    """Second moment ``XᵀX / n`` (float64) of every layer's input rows, keyed by node name.

    The model is run once over ``data`` (a clone with the layer inputs as extra outputs);
    layers sharing an input value share the accumulation.
    """
    if not layers:
        return {}
    probe = model.clone()
    by_name = {v.name: v for node in probe.graph for v in node.outputs}
    graph_inputs = {v.name for v in probe.graph.inputs}
    outputs = {v.name for v in probe.graph.outputs}
    dtypes = {layer.activation.name: layer.weight.dtype for layer in layers}
    wanted = sorted(dtypes)
    for name in wanted:
        if name in graph_inputs or name in outputs:
            continue
        value = by_name.get(name)
        if value is None:
            raise OnnxoptError(f"activation {name!r} of a low-rank layer is not produced in the graph")
        if value.type is None:
            value.type = ir.TensorType(ir.DataType.from_numpy(dtypes[name]))
        probe.graph.outputs.append(value)
        outputs.add(name)
    sess = evaluate.session(probe)
    feed_names = [i.name for i in sess.get_inputs()]
    fixed = fixed_batch(probe)  # exported with a fixed batch
    if fixed is not None:
        batch_size = fixed
    fetch = [n for n in wanted if n not in graph_inputs]
    groups: dict[tuple[str, str], LinearLayer] = {}
    for layer in layers:  # layers reading the same rows share one accumulation
        groups.setdefault((layer.activation.name, _row_key(layer)), layer)
    sums: dict[tuple[str, str], np.ndarray] = {}
    counts = dict.fromkeys(groups, 0)
    for part in data.parts(batch_size):
        if fixed is not None and len(part) != fixed:
            continue  # the incomplete last batch of a fixed-batch model
        feed = {k: part.feed[k] for k in feed_names}
        values = dict(zip(fetch, sess.run(fetch, feed))) if fetch else {}
        values.update({k: v for k, v in feed.items() if k in wanted})
        for key, layer in groups.items():
            rows = _rows(layer, np.asarray(values[key[0]])).astype(np.float64)
            if key not in sums:
                sums[key] = np.zeros((rows.shape[1], rows.shape[1]))
            sums[key] += rows.T @ rows
            counts[key] += len(rows)
    return {
        layer.name: sums[key] / counts[key]
        for layer in layers
        for key in [(layer.activation.name, _row_key(layer))]
        if counts[key]  # none when the data is smaller than a fixed batch: plain SVD
    }


def _row_key(layer: LinearLayer) -> str:
    if layer.kind == "Gemm":
        return f"gemm{attr(layer.node, 'transA', 0)}"
    if layer.kind == "Conv1x1":
        return f"conv{attr(layer.node, 'strides', None)}"
    return "rows"


# --------------------------------------------------------------------------- the API


def _mode(rank: int | None, energy: float | None, ratio: float | None, max_drop: float | None) -> str:
    given = [n for n, v in (("rank", rank), ("energy", energy), ("ratio", ratio), ("max_drop", max_drop)) if v is not None]
    if len(given) != 1:
        raise OnnxoptError(
            "choose exactly one of --rank, --energy, --ratio or --max-accuracy-drop (in Python: rank, energy, ratio, max_drop)"
            + (f" (got {', '.join(given)})" if given else "")
        )
    if rank is not None and rank < 1:
        raise OnnxoptError(f"rank must be a positive integer, got {rank}")
    if energy is not None and not 0 < energy <= 1:
        raise OnnxoptError(f"energy must be in (0, 1], e.g. 0.95; got {energy}")
    if ratio is not None and not 0 < ratio <= 1:
        raise OnnxoptError(f"ratio (share of MACs kept) must be in (0, 1], e.g. 0.5; got {ratio}")
    if max_drop is not None and not 0 <= max_drop < 1:
        raise OnnxoptError(f"max accuracy drop must be in [0, 1), e.g. 0.01; got {max_drop}")
    return given[0]


def _rows_per_layer(model: ir.Model, layers: Iterable[LinearLayer], shapes: Mapping | None) -> dict[str, int]:
    """How many rows each layer multiplies per inference (batch × seq, pixels…), 1 if unknown."""
    try:
        known = static_shapes(model, shapes)
    except Exception:
        known = {}
    rows: dict[str, int] = {}
    for layer in layers:
        out = known.get(layer.node.outputs[0].name)
        n_out = layer.weight.shape[1]
        if out and all(isinstance(d, int) and d > 0 for d in out):
            rows[layer.name] = max(1, math.prod(out) // n_out)
        else:
            rows[layer.name] = 1
    return rows


def lowrank_model(
    model: ir.Model,
    calib: Dataset | None = None,
    evaluator: evaluate.Evaluator | None = None,
    *,
    rank: int | None = None,
    energy: float | None = None,
    ratio: float | None = None,
    max_drop: float | None = None,
    data_aware: bool = True,
    round_to: int = 8,
    conv1x1: bool = False,
    shapes: Mapping[str, Sequence[int]] | None = None,
    min_saving: float = 0.1,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> LowRankResult:
    """Split the fully connected layers of ``model`` by (data-aware) truncated SVD.

    Exactly one of ``rank``, ``energy``, ``ratio`` (share of a layer's MACs kept) or
    ``max_drop`` (largest allowed task-score drop, searched) is required. ``calib`` enables
    the data-aware SVD (unless ``data_aware=False``); ``evaluator`` scores candidates on
    held-out data (for ``max_drop`` without one, ``calib`` is split in two halves).
    """
    mode = _mode(rank, energy, ratio, max_drop)
    calib = with_sample_axes(calib, model)
    say = progress or (lambda message: None)
    notes: list[str] = []
    if mode == "max_drop" and evaluator is None:
        if calib is None:
            raise OnnxoptError("an accuracy budget needs data: pass calibration data (--data)")
        calib, held_out = calib.split(0.5, seed, multiple=feed_batch(model, calib) or 1)
        evaluator = evaluate.Evaluator(model, held_out)
        notes.append(f"evaluation on {len(held_out)} held-out samples split from the calibration data")
    layers, _ = linear_layers(model.graph, conv1x1=conv1x1)
    splittable = [
        layer for layer in layers
        if (layer.weight.shape[0] * layer.weight.shape[1] * (1 - min_saving)) / sum(layer.weight.shape) >= max(1, rank or 1)
    ]
    moments: dict[str, np.ndarray] = {}
    if data_aware and calib is not None:
        whitenable = [layer for layer in splittable if layer.weight.shape[0] <= MAX_WHITEN_DIM]
        wide = [layer.name for layer in splittable if layer.weight.shape[0] > MAX_WHITEN_DIM]
        if wide:
            notes.append(f"plain SVD for {len(wide)} layer(s) wider than {MAX_WHITEN_DIM} inputs: {', '.join(wide[:5])}")
        say(f"collecting activations of {len(whitenable)} layer(s) on {len(calib)} samples")
        moments = collect_second_moments(model, calib, whitenable)
    elif data_aware:
        notes.append("no calibration data: plain (weight-space) SVD")
    factorizations: dict[str, Factorization] = {}
    for i, layer in enumerate(splittable):
        say(f"SVD {i + 1}/{len(splittable)}: {layer.name} {layer.weight.shape[0]}×{layer.weight.shape[1]}")
        max_rank = rank
        if mode == "ratio":
            max_rank = choose_rank(Factorization.shape_only(*layer.weight.shape), ratio=ratio, round_to=round_to)
        factorizations[layer.name] = factorize(layer.weight, moments.get(layer.name), max_rank=max_rank, seed=seed)
    rows = _rows_per_layer(model, layers, shapes)

    def build(**selection: Any) -> tuple[ir.Model, LowRankPass]:
        candidate = model.clone()
        lowrank = LowRankPass(
            round_to=round_to, conv1x1=conv1x1, min_saving=min_saving,
            factorizations=factorizations, **selection,
        )
        lowrank(candidate)
        return candidate, lowrank

    def mac_share(built: tuple[ir.Model, LowRankPass]) -> float:
        decisions = built[1].decisions
        before = sum((d.macs_before or 0) * rows.get(d.name, 1) for d in decisions if d.macs_before)
        after = sum(
            ((d.macs_after if d.split else d.macs_before) or 0) * rows.get(d.name, 1)
            for d in decisions if d.macs_before
        )
        return after / before if before else 1.0

    steps: list[SearchStep] = []
    score = None
    if mode == "max_drop" and not splittable:  # every candidate would be the model itself
        kinds = "Gemm/MatMul/1×1 Conv" if conv1x1 else "Gemm/MatMul"
        notes.append(f"no {kinds} with a constant weight that a split makes {min_saving:.0%} cheaper: nothing to search")
        built, knob, score = build(energy=1.0), 1.0, evaluator.baseline if evaluator is not None else None
    elif mode == "max_drop":
        assert evaluator is not None and max_drop is not None
        scores: dict[int, float] = {}

        def judge(built: tuple[ir.Model, LowRankPass]) -> tuple[float, bool]:
            value = evaluator.score(built[0])
            scores[id(built)] = value
            say(f"energy candidate: {evaluator.metric_name} {value:.4f}, MACs ×{mac_share(built):.3f}")
            return value, evaluator.within(value, max_drop)

        def energy_of(log_discard: float) -> float:
            return 1.0 - 10.0**log_discard

        search = search_budget(
            lambda t: build(energy=energy_of(t)), judge,
            lo=_LOG_DISCARD[0], hi=_LOG_DISCARD[1], more_compression="up", tolerance=0.05,
            cost=mac_share,
        )
        steps = [dataclasses.replace(step, knob=energy_of(step.knob)) for step in search.steps]
        if search.best is None:
            notes.append(f"no energy threshold in {list(ENERGY_RANGE)} kept the drop within {max_drop:g}")
            built, knob = build(energy=1.0), 1.0
            score = evaluator.baseline
        else:
            built, knob = search.best, energy_of(search.best_knob)
            score = scores[id(built)]
    else:
        knob = {"rank": rank, "energy": energy, "ratio": ratio}[mode]
        built = build(**{mode: knob})
        if evaluator is not None:
            score = evaluator.score(built[0])
    candidate, lowrank = built
    decisions = []
    for d in lowrank.decisions:
        d = dataclasses.replace(d)
        factor = rows.get(d.name, 1)
        d.macs_before = None if d.macs_before is None else d.macs_before * factor
        d.macs_after = None if d.macs_after is None else d.macs_after * factor
        decisions.append(d)
    return LowRankResult(
        model=candidate,
        layers=decisions,
        mode=mode,
        knob=knob,
        data_aware=bool(moments),
        metric=evaluator.metric_name if evaluator is not None else None,
        baseline=evaluator.baseline if evaluator is not None else None,
        score=score,
        steps=steps,
        applied=list(lowrank.applied),
        skipped=list(lowrank.skipped),
        notes=notes,
    )


# --------------------------------------------------------------------------- pipeline stage


def lowrank_stage(**options: Any) -> Stage:
    """A lossy pipeline stage running :func:`lowrank_model` with the context's data.

    ``options`` are keyword arguments of :func:`lowrank_model` (``rank``, ``energy``,
    ``ratio``, ``data_aware``, ``round_to``, ``conv1x1``, ...). Without an explicit rank
    setting the stage searches under ``ctx.max_drop`` with ``ctx.evaluator``, and does
    nothing (saying why) when the context has no evaluation data or no budget.
    """

    def run(model: ir.Model, ctx: Context) -> StageOutcome:
        kwargs = dict(options)
        explicit = any(kwargs.get(k) is not None for k in ("rank", "energy", "ratio", "max_drop"))
        if not explicit:
            if ctx.evaluator is None or ctx.max_drop is None:
                return StageOutcome(model, False, skipped=[("lowrank", "needs evaluation data and an accuracy budget")])
            kwargs["max_drop"] = ctx.max_drop
        kwargs.setdefault("shapes", ctx.shapes or None)
        kwargs.setdefault("seed", ctx.seed)
        kwargs.setdefault("progress", ctx.progress)
        result = lowrank_model(model, ctx.calib, ctx.evaluator, **kwargs)
        modified = bool(result.split_layers)
        details = result.to_dict()
        details["budget_limited"] = any(not step.accepted for step in result.steps)  # a stronger setting failed it
        if not modified:
            details["reason"] = (
                f"no split within the budget ({len(result.steps)} search steps)" if result.steps
                else result.notes[-1] if result.notes else "no layer split"
            )
        return StageOutcome(result.model if modified else model, modified, result.applied, result.skipped, details)

    return Stage("lowrank", run, lossless=False)
