"""``obs`` importance: what the next layers lose, after the best linear re-fit, when a
channel goes — Optimal Brain Surgeon on whole input channels of the consumer layers.

For one consumer (Conv with group 1 / Gemm / MatMul) with input rows ``X`` (im2col patches of
the *original* network on calibration data, plus a ones column for the bias of Conv and Gemm),
weights ``W`` (features × outputs, bias as the last row) and ``P = (XᵀX + R)⁻¹`` with a ridge
term ``R`` of the re-fit's form (:func:`~onnxopt.reconstruction.ridge`, bias not regularised)
but 10× smaller — ``ΔE`` includes the ridge's ``≈ λ‖W_S‖²``, which is not output error (a
dead channel must cost ≈ 0), so here it only keeps ``P`` well conditioned — removing the features
``S`` of one input channel and re-fitting all other weights by least squares raises the
squared output error by::

    ΔE(S) = tr(W_Sᵀ (P_SS)⁻¹ W_S)

(Hassibi & Stork's OBS; this block form over a channel's ``kh·kw`` taps is the structured
case of Optimal Brain Compression, Frantar & Alistarh 2022). Conv rows are sampled at 64
output positions per sample and weighted by ``oh·ow / 64``, so ``ΔE`` estimates the squared
error summed over every output position and sample whatever the consumer type — the costs of
a group's consumers add up in one unit. The re-fit is
``W ← W − P_:S (P_SS)⁻¹ W_S`` and the remaining features' inverse Hessian is
``P ← P − P_:S (P_SS)⁻¹ P_S:`` (the rows and columns of ``S`` are dropped).

Per :class:`~onnxopt.groups.ChannelGroup`, units are removed **greedily**: the unit with the
smallest ΔE summed over every consumer of the group goes first, then ``W`` and ``P`` of those
consumers are updated and the costs recomputed. Unlike a per-channel score this sees
redundancy: of two channels that carry the same signal the first is free to remove, the
second is not. A group takes at most 64 steps (chunks of ``ceil(units / 64)`` units, one
update per chunk).

What ``ΔE`` predicts is the re-fit of each layer on the *original* network's inputs; the
pruner's re-fit (:mod:`onnxopt.reconstruction`) uses the pruned network's inputs, with errors
of earlier layers already in them, so the prediction is a ranking, not the final error.

A unit's score is ``ΔE^¼`` at its removal, raised to the running maximum so that larger =
removed later = more important and every allocation removes units in greedy order. The root
matters for ``cr`` only (ranks do not change): ΔE grows by orders of magnitude over the last
few units of a group (they carry what the re-fits moved onto them), so with ``Σ ΔE`` every
useful setting would lie in cr > 0.99, finer than the search's Δcr = 0.01. With ``ΔE^¼`` the
hard-digits CNN loses 2 / 16 / 32 / 54 % of its MACs at cr 0.99 / 0.95 / 0.9 / 0.8 (close to
``permutation``'s 3 % at cr 0.99; ``√ΔE`` gives 9 / 38 / 57 / 80 %).

Groups with a consumer the least squares cannot model (grouped Conv, ConvTranspose, 1-D/3-D
Conv, ``auto_pad``, more than :data:`~onnxopt.reconstruction.MAX_FEATURES` input features)
are scored by ``fallback`` (the pruner passes ``permutation``). Per-group allocations
(``uniform``, ``cr``) are unaffected by the different scale; ``global`` ranks the two kinds of
scores against each other, which is only meaningful when (nearly) all groups are of one kind.
"""

from __future__ import annotations

__all__ = ["inverse_hessian", "obs_importance", "obs_groups"]

import math
from collections.abc import Callable, Sequence

import numpy as np
import onnx_ir as ir

from onnxopt.calibration import Dataset, batch_keeping_all_values
from onnxopt.groups import CONSUMER, ChannelGroup, GroupAnalysis, Member, const_array
from onnxopt.importance import Probe
from onnxopt.reconstruction import (
    RIDGE_ALPHA,
    NormalEquations,
    conv_output_hw,
    conv_patches,
    fittable,
    has_intercept,
    ridge,
    sample_positions,
    weight_matrix,
)

_MAX_STEPS = 64
OBS_ALPHA = RIDGE_ALPHA / 10  # module docstring: why smaller than the re-fit's


def obs_groups(analysis: GroupAnalysis) -> list[ChannelGroup]:
    """The prunable groups every consumer of which is a least-squares fittable layer."""
    out = []
    for g in analysis.prunable:
        consumers = [m for m in g.members if m.role == CONSUMER]
        if consumers and all(fittable(m.node) for m in consumers):
            out.append(g)
    return out


def _input_rows(
    x: np.ndarray, node: ir.Node, rng: np.random.Generator, per_sample: int
) -> tuple[np.ndarray, float]:
    """The input rows of ``node`` on batch ``x`` and the weight of each row (Conv: ``oh·ow``
    positions per sample stand behind each sampled one)."""
    if node.op_type != "Conv":
        return x.reshape(-1, x.shape[-1]), 1.0
    kernel = const_array(node.inputs[1]).shape[2:]
    oh, ow = conv_output_hw(node, x.shape, kernel)
    pos = sample_positions(rng, x.shape[0], oh, ow, per_sample)
    return conv_patches(x, node, kernel, pos), oh * ow / min(per_sample, oh * ow)


def input_grams(
    model: ir.Model, nodes: Sequence[ir.Node], calib: Dataset, *, per_sample: int = 64, seed: int = 0, batch_size: int = 8
) -> list[np.ndarray]:
    """``[X, 1]ᵀ[X, 1]`` (float64; ``XᵀX`` for MatMul, which has no bias) of each node's
    input rows on ``calib``, Conv rows weighted by the positions they stand for; one run of
    the original network."""
    probe = Probe(model)
    for i, node in enumerate(nodes):
        probe.output(f"x{i}", probe.value(node.inputs[0].name))
    sess = probe.session()
    names = [i.name for i in sess.get_inputs()]
    rng = np.random.default_rng(seed)
    sums = [NormalEquations() for _ in nodes]
    for batch in calib.batches(batch_keeping_all_values(probe.model, calib, batch_size)):
        for i, (node, x) in enumerate(zip(nodes, sess.run(probe.keys, {k: batch[k] for k in names}))):
            a, weight = _input_rows(x, node, rng, per_sample)
            if has_intercept(node):
                a = np.concatenate([a, np.ones((len(a), 1), a.dtype)], axis=1)
            # rows scaled by √weight: their products carry the weight
            sums[i].add(a if weight == 1.0 else a * np.sqrt(weight, dtype=np.float64))
    return [s.result()[0] for s in sums]  # type: ignore[misc]


def inverse_hessian(node: ir.Node, gram: np.ndarray, alpha: float = OBS_ALPHA) -> np.ndarray:
    """``P = (gram + R)⁻¹``, ``R`` a ridge term of the re-fit's form (bias not regularised)."""
    regularised = gram.copy()
    regularised[np.diag_indices_from(gram)] += ridge(gram, alpha, has_intercept(node))
    p = np.linalg.inv(regularised)
    p += p.T  # symmetric (rounding in inv() is not)
    p *= 0.5
    return p


class _Consumer:
    """OBS state of one consumer within one group: inverse Hessian and weights of the
    features still alive (``p`` is shared with other groups of the same node and never
    written), and, per feature count, the units and the rows of ``p`` each unit owns."""

    def __init__(self, group: ChannelGroup, member: Member, p: np.ndarray) -> None:
        node = member.node
        self.p = p
        w = weight_matrix(node)
        self.w = w if has_intercept(node) else w[:-1]
        width = member.block * (int(np.prod(const_array(node.inputs[1]).shape[2:])) if node.op_type == "Conv" else 1)
        feats = [
            (group.removed_positions(member.value, [u])[:, None] * width + np.arange(width)[None, :]).reshape(-1)
            for u in range(group.units)
        ]
        lengths = np.array([len(fe) for fe in feats])
        self.by_length = {
            int(n): (units, np.stack([feats[u] for u in units]))
            for n in np.unique(lengths)
            if n
            for units in [np.nonzero(lengths == n)[0]]
        }

    def costs(self, alive: np.ndarray) -> np.ndarray:
        """ΔE of removing each unit alone (0 for units this consumer does not read)."""
        out = np.zeros(len(alive))
        for units, rows in self.by_length.values():
            live = alive[units]
            units, rows = units[live], rows[live]
            if not len(units):
                continue
            p_blocks = self.p[rows[:, :, None], rows[:, None, :]]
            w_blocks = self.w[rows]  # n × L × Cout
            out[units] = np.einsum("nlc,nlc->n", w_blocks, np.linalg.solve(p_blocks, w_blocks))
        # rounding in a nearly singular P_SS can give NaN / inf: such a unit counts as the
        # most expensive finite one (kept late), never as free, and never as an infinite
        # score that would swamp a group's normalised importance
        bad = ~np.isfinite(out)
        if bad.any():
            out[bad] = out[~bad].max() if (~bad).any() else 0.0
        return out

    def remove(self, units: np.ndarray) -> None:
        """Re-fit the other weights and drop the units' rows from ``p`` and ``w``: later steps
        work on ever smaller matrices (a third of the work of keeping them at full size)."""
        chosen = np.zeros(len(self.p), dtype=bool)
        for group_units, rows in self.by_length.values():
            chosen[rows[np.isin(group_units, units)].reshape(-1)] = True
        fe = np.nonzero(chosen)[0]
        if not len(fe):
            return
        keep = np.nonzero(~chosen)[0]
        inv = np.linalg.inv(self.p[np.ix_(fe, fe)])
        b = self.p.take(fe, axis=1).take(keep, axis=0)  # P_:S on the kept rows
        column = b @ ((inv + inv.T) / 2)
        self.w = self.w.take(keep, axis=0) - column @ self.w[fe]
        # take(): a gather ~25× faster than p[np.ix_(keep, keep)] on 4609² float64
        p = self.p.take(keep, axis=0).take(keep, axis=1)
        p -= column @ b.T  # symmetric up to rounding; only small blocks are ever solved
        self.p = p
        position = np.cumsum(~chosen) - 1  # old row → row in the smaller matrices
        self.by_length = {n: (u, position[r]) for n, (u, r) in self.by_length.items()}


def _greedy_scores(group: ChannelGroup, consumers: list[_Consumer]) -> np.ndarray:
    alive = np.ones(group.units, dtype=bool)
    scores = np.zeros(group.units)
    chunk = max(1, math.ceil(group.units / _MAX_STEPS))
    level = 0.0
    while alive.any():
        cost = sum((c.costs(alive) for c in consumers), np.zeros(group.units))
        candidates = np.nonzero(alive)[0]
        chosen = candidates[np.argsort(cost[candidates], kind="stable")[:chunk]]
        for u in chosen:  # strictly increasing: allocations keep the greedy order
            level = max(max(float(cost[u]), 0.0) ** 0.25, level * (1 + 1e-9) + 1e-30)
            scores[u] = level
        alive[chosen] = False
        for c in consumers:
            c.remove(chosen)
    return scores


def obs_importance(
    model: ir.Model,
    analysis: GroupAnalysis,
    calib: Dataset,
    fallback: Callable[[list[ChannelGroup]], dict[str, np.ndarray]],
    *,
    alpha: float = OBS_ALPHA,
    per_sample: int = 64,
    seed: int = 0,
    batch_size: int = 8,
) -> dict[str, np.ndarray]:
    """Score every unit of every prunable group (module docstring); groups OBS cannot model
    are scored by ``fallback(groups)``."""
    groups = obs_groups(analysis)
    covered = {g.name for g in groups}
    scores = fallback([g for g in analysis.prunable if g.name not in covered])
    nodes = list({id(m.node): m.node for g in groups for m in g.members if m.role == CONSUMER}.values())
    if not nodes:
        return scores
    grams = input_grams(model, nodes, calib, per_sample=per_sample, seed=seed, batch_size=batch_size)
    inverses = {}
    for node in nodes:  # one inverse per node (a Conv after a Concat serves several groups)
        inverses[id(node)] = inverse_hessian(node, grams.pop(0), alpha)
    for g in groups:
        consumers = [_Consumer(g, m, inverses[id(m.node)]) for m in g.members if m.role == CONSUMER]
        scores[g.name] = _greedy_scores(g, consumers)
    return scores
