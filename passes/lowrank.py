"""Low-rank split of fully connected layers (and 1×1 convolutions) by truncated SVD.

Every supported layer computes, for each row ``x`` of its activation, ``y = x·W (+ bias)``
with a constant weight ``W`` of ``K`` inputs × ``N`` outputs (Gemm: ``W = alpha·op(B)``;
1×1 Conv: ``W = weight[:, :, 0, 0]ᵀ`` on every pixel). With the SVD ``W = U S Vᵀ``::

    W ≈ W_k = U_k S_k V_kᵀ = A·B,   A = U_k S_k^½ (K×k),   B = S_k^½ V_kᵀ (k×N)

Eckart–Young: ``W_k`` is the best rank-``k`` approximation and its error is exactly the
discarded spectrum, ``‖W − W_k‖_F = sqrt(Σ_{i>k} σ_i²)``. The *energy kept* is
``Σ_{i≤k} σ_i² / Σ_i σ_i²``. Cost per row: ``K·N`` MACs and parameters before,
``k·(K+N)`` after, so a split pays only when ``k·(K+N) ≤ (1 − min_saving)·K·N``.

Data-aware (whitened) SVD minimises the error of the layer *output* on calibration rows
``X`` instead of the weight error: with the second moment ``C = XᵀX/n + λI = L·Lᵀ``
(Cholesky; ``λ`` a small damping), ``‖X·Δ‖_F² ≈ n·‖Lᵀ·Δ‖_F²``, so decompose the whitened
weight ``M = Lᵀ·W = U S Vᵀ`` and un-whiten: ``A = L^{-T} U_k S_k^½``, ``B = S_k^½ V_kᵀ``.
Energies are then shares of the output energy.
"""

from __future__ import annotations

__all__ = [
    "Factorization",
    "LayerDecision",
    "LinearLayer",
    "LowRankPass",
    "choose_rank",
    "factorize",
    "linear_layers",
]

import dataclasses
import logging
import math
from collections.abc import Mapping

import numpy as np
import onnx_ir as ir

from onnxopt.graph import attr, const_array, new_initializer, unique_name
from onnxopt.passes.base import LoggedPass

logger = logging.getLogger(__name__)

#: Relative damping of the activation second moment before its Cholesky factorisation.
WHITENING_DAMPING = 0.01
#: Matrices with more elements than this are decomposed in float32 (speed), others in float64.
_FLOAT64_LIMIT = 1 << 20
#: Below this smaller dimension a full SVD is always cheap enough.
_EXACT_SVD_DIM = 1024


# --------------------------------------------------------------------------- layers


@dataclasses.dataclass
class LinearLayer:
    """A node computing ``y = x·weight (+ bias)`` row by row; ``weight`` is ``K×N``."""

    node: ir.Node
    kind: str  # "MatMul", "Gemm" or "Conv1x1"
    weight: np.ndarray
    activation: ir.Value

    @property
    def name(self) -> str:
        """The node name, or its output's name when unnamed (stable across ``clone()``)."""
        return self.node.name or self.node.outputs[0].name or f"{self.node.op_type}@{id(self.node):x}"


def _float_weight(array: np.ndarray | None) -> bool:
    return array is not None and array.dtype.kind == "f"


def _weight_array(value: ir.Value | None) -> np.ndarray | None:
    """A constant, or a ``Transpose`` of a constant (the dynamo exporter's unfolded ``Wᵀ``)."""
    array = const_array(value)
    if array is not None or value is None:
        return array
    node = value.producer()
    if node is None or node.op_type != "Transpose" or node.domain not in ("", "ai.onnx"):
        return None
    source = const_array(node.inputs[0])
    if source is None:
        return None
    perm = attr(node, "perm", None)
    return np.transpose(source, perm) if perm is not None else source.T


def _match_matmul(node: ir.Node) -> LinearLayer | str | None:
    a, b = const_array(node.inputs[0]), _weight_array(node.inputs[1])
    if b is None:
        return None if a is None else "constant weight on the left (W·x) is not supported"
    if a is not None:
        return "both inputs are constant"
    if b.ndim != 2:
        return f"weight is {b.ndim}-D, not a 2-D matrix"
    if not _float_weight(b):
        return f"weight dtype {b.dtype} is not floating point"
    return LinearLayer(node, "MatMul", b, node.inputs[0])


def _match_gemm(node: ir.Node) -> LinearLayer | str | None:
    a, b = const_array(node.inputs[0]), _weight_array(node.inputs[1])
    if b is None:
        return None if a is None else "constant weight in input A is not supported"
    if a is not None:
        return "both inputs are constant"
    if not _float_weight(b):
        return f"weight dtype {b.dtype} is not floating point"
    weight = b.T if attr(node, "transB", 0) else b
    alpha = float(attr(node, "alpha", 1.0))
    if alpha != 1.0:
        weight = (weight.astype(np.float64) * alpha).astype(b.dtype)
    return LinearLayer(node, "Gemm", weight, node.inputs[0])


def _match_conv(node: ir.Node) -> LinearLayer | str | None:
    w = const_array(node.inputs[1]) if len(node.inputs) > 1 else None
    if w is None:
        return "weight is not constant"
    if w.ndim < 3 or any(d != 1 for d in w.shape[2:]):
        return f"kernel {'×'.join(map(str, w.shape[2:]))} is not 1×1"
    if int(attr(node, "group", 1)) != 1:
        return "grouped convolution"
    if not _float_weight(w):
        return f"weight dtype {w.dtype} is not floating point"
    return LinearLayer(node, "Conv1x1", w.reshape(w.shape[0], w.shape[1]).T, node.inputs[0])


def linear_layers(
    graph: ir.Graph, *, conv1x1: bool = False
) -> tuple[list[LinearLayer], list[tuple[ir.Node, str]]]:
    """Splittable layers of ``graph`` and the candidate nodes that cannot be split (with why).

    MatMul/Gemm nodes whose two inputs are both activations (attention scores) are not
    candidates and are not listed.
    """
    layers: list[LinearLayer] = []
    declined: list[tuple[ir.Node, str]] = []
    for node in graph:
        if node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type == "MatMul":
            found = _match_matmul(node)
        elif node.op_type == "Gemm":
            found = _match_gemm(node)
        elif node.op_type == "Conv" and conv1x1:
            found = _match_conv(node)
        else:
            continue
        if isinstance(found, LinearLayer):
            layers.append(found)
        elif found is not None:
            declined.append((node, found))
    return layers, declined


# --------------------------------------------------------------------------- factorisation


@dataclasses.dataclass
class Factorization:
    """Top singular triplets of a (possibly whitened) weight, already un-whitened.

    ``W_k = left[:, :k] · diag(singular[:k]) · right[:k]``; ``total_energy`` is
    ``Σ σ²`` of the *whole* spectrum (known even when only the top triplets were computed).
    """

    left: np.ndarray  # K×r
    singular: np.ndarray  # r
    right: np.ndarray  # r×N
    total_energy: float
    whitened: bool = False
    exact: bool = True  # full SVD (True) or randomized top-r SVD (False)

    @classmethod
    def shape_only(cls, k_in: int, n_out: int) -> Factorization:
        """An empty stand-in when only the shape matters (ranks chosen by MAC ratio)."""
        return cls(np.zeros((k_in, 0)), np.zeros(0), np.zeros((0, n_out)), 0.0)

    @property
    def shape(self) -> tuple[int, int]:
        return self.left.shape[0], self.right.shape[1]

    def energy(self, k: int) -> float:
        if self.total_energy <= 0:
            return 1.0
        return float(min(1.0, np.sum(self.singular[:k].astype(np.float64) ** 2) / self.total_energy))

    def factors(self, k: int, dtype: np.dtype | type = np.float32) -> tuple[np.ndarray, np.ndarray]:
        """``A`` (K×k) and ``B`` (k×N) with ``A·B = W_k``, singular values split evenly."""
        root = np.sqrt(self.singular[:k].astype(np.float64))
        a = self.left[:, :k].astype(np.float64) * root
        b = root[:, None] * self.right[:k].astype(np.float64)
        return a.astype(dtype), b.astype(dtype)


def _whitening_factor(second_moment: np.ndarray) -> np.ndarray:
    """Lower-triangular ``L`` with ``L·Lᵀ = C + λ·mean(diag C)·I``."""
    c = np.asarray(second_moment, dtype=np.float64)
    c = (c + c.T) / 2
    scale = float(np.mean(np.diag(c)))
    if not math.isfinite(scale) or scale <= 0:
        scale = 1.0
    damping = WHITENING_DAMPING * scale
    for _ in range(6):
        try:
            return np.linalg.cholesky(c + damping * np.eye(len(c)))
        except np.linalg.LinAlgError:
            damping *= 10
    raise np.linalg.LinAlgError("activation second moment is not positive definite")


def _randomized_svd(
    m: np.ndarray, rank: int, *, oversample: int = 16, power: int = 2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-``rank`` SVD by randomized range finding (Halko et al. 2011, with power steps)."""
    rng = np.random.default_rng(seed)
    probe = rng.standard_normal((m.shape[1], rank + oversample)).astype(m.dtype)
    q = _orthonormalize(m @ probe)
    for _ in range(power):
        q = _orthonormalize(m.T @ q)
        q = _orthonormalize(m @ q)
    # SVD of the small (r+p)×N projection via its (r+p)×(r+p) Gram matrix: LAPACK's SVD
    # of a wide block is many times slower, and float64 keeps σ_r/σ_1 down to ~1e-7 exact.
    small = (q.T @ m).astype(np.float64)
    eigenvalues, eigenvectors = np.linalg.eigh(small @ small.T)
    order = np.argsort(eigenvalues)[::-1][:rank]
    s = np.sqrt(np.maximum(eigenvalues[order], 0.0))
    u_small = eigenvectors[:, order]
    vt = (u_small.T @ small) / np.where(s > 0, s, 1.0)[:, None]
    return (q @ u_small.astype(q.dtype)), s.astype(m.dtype), vt.astype(m.dtype)


def _orthonormalize(y: np.ndarray) -> np.ndarray:
    """An orthonormal basis of the columns of tall ``y``: Cholesky-QR twice (two matrix
    products, several times faster than Householder QR on large blocks), QR if ``y`` is
    too ill-conditioned for it."""
    q = y
    for _ in range(2):
        gram = q.T.astype(np.float64) @ q.astype(np.float64)
        try:
            upper = np.linalg.cholesky(gram).T
        except np.linalg.LinAlgError:
            return np.linalg.qr(y)[0]
        q = q @ np.linalg.inv(upper).astype(y.dtype)
    return q


def factorize(
    weight: np.ndarray,
    second_moment: np.ndarray | None = None,
    *,
    max_rank: int | None = None,
    seed: int = 0,
) -> Factorization:
    """SVD of ``weight`` (K×N), whitened by the input ``second_moment`` (K×K) if given.

    With ``max_rank`` well below ``min(K, N)`` on a large matrix only the top ``max_rank``
    triplets are computed (randomized SVD); otherwise the SVD is exact.
    """
    k_in, n_out = weight.shape
    dtype = np.float64 if weight.size <= _FLOAT64_LIMIT else np.float32
    w = np.asarray(weight, dtype=np.float64 if second_moment is not None else dtype)
    lower = None
    if second_moment is not None:
        lower = _whitening_factor(second_moment)
        w = lower.T @ w
    w = w.astype(dtype, copy=False)
    total = float(np.sum(w.astype(np.float64) ** 2))
    full = min(k_in, n_out)
    randomized = (
        max_rank is not None and full > _EXACT_SVD_DIM and max_rank + 16 <= full // 2
    )
    if randomized:
        u, s, vt = _randomized_svd(w, max_rank, seed=seed)
    else:
        u, s, vt = np.linalg.svd(w, full_matrices=False)
    if lower is not None:
        u = np.linalg.solve(lower.T, u.astype(np.float64))
    return Factorization(u, s, vt, total, whitened=lower is not None, exact=not randomized)


def choose_rank(
    factorization: Factorization,
    *,
    rank: int | None = None,
    energy: float | None = None,
    ratio: float | None = None,
    round_to: int = 8,
) -> int:
    """The rank to keep: explicit, by energy share, or by MAC ratio; clipped to ``min(K, N)``.

    ``rank`` is taken as given; ``energy`` picks the smallest ``k`` whose energy reaches the
    share, rounded *up* to a multiple of ``round_to``; ``ratio`` keeps at most that share of
    the ``K·N`` MACs (``k = ratio·K·N/(K+N)``), rounded *down* (unrounded below ``round_to``).
    """
    k_in, n_out = factorization.shape
    full = min(k_in, n_out)
    step = max(1, int(round_to))
    if rank is not None:
        k = int(rank)
    elif energy is not None:
        if energy >= 1.0 or factorization.total_energy <= 0:
            k = full
        else:
            cumulative = np.cumsum(factorization.singular.astype(np.float64) ** 2)
            reached = np.nonzero(cumulative >= energy * factorization.total_energy * (1 - 1e-12))[0]
            k = int(reached[0]) + 1 if len(reached) else full
            k = math.ceil(k / step) * step
    elif ratio is not None:
        k = int(ratio * k_in * n_out / (k_in + n_out))
        k = k // step * step if k >= step else max(1, k)
    else:
        raise ValueError("choose_rank needs rank, energy or ratio")
    return max(1, min(k, full))


# --------------------------------------------------------------------------- the pass


@dataclasses.dataclass
class LayerDecision:
    """What the pass did with one candidate layer (MACs are per activation row)."""

    name: str
    op_type: str
    in_features: int
    out_features: int
    rank: int | None = None
    full_rank: int | None = None
    energy: float | None = None
    macs_before: int | None = None
    macs_after: int | None = None
    data_aware: bool = False
    exact_svd: bool = True
    split: bool = False
    reason: str = ""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class LowRankPass(LoggedPass):
    """Split constant-weight Gemm / MatMul (and 1×1 Conv) nodes into two layers of rank k.

    Rules:
    1. Candidates: ``MatMul(x, W)`` with a constant 2-D float ``W`` (``x`` of any rank, e.g.
       ``[batch, seq, hidden]``; ``W`` may be a ``Transpose`` of a constant, as the dynamo
       exporter leaves it); ``Gemm(A, B, C)`` with constant ``B`` and any ``transA``,
       ``transB``, ``alpha``, ``beta`` and bias; with ``conv1x1=True`` also a ``Conv`` with
       a constant 1×1 kernel and ``group=1`` (any strides and pads).
    2. Replacement: ``MatMul → MatMul(x, A) → MatMul(·, B)``; ``Gemm → Gemm(A_in, A,
       transA) → Gemm(·, B, C, beta)`` (``alpha`` folded into the factors); ``Conv →
       Conv(x, A, strides, pads) → Conv(·, B, bias)``. The bias stays on the second layer
       and the original output value (name, graph outputs) is kept.
    3. Rank per node: ``ranks[node]`` if given, else ``rank``, else the ``energy`` share,
       else the MAC ``ratio`` (see :func:`choose_rank`); ``second_moments[node]`` switches
       that node to the data-aware (whitened) SVD; ``factorizations[node]`` reuses an SVD
       computed earlier (the budget search builds many candidates from one SVD).
    4. Must not act: when ``k·(K+N) > (1 − min_saving)·K·N`` (no real saving of MACs and
       parameters; ``min_saving=None`` disables this check, e.g. to split at full rank), on
       non-float or non-2-D weights, constant-left MatMuls, grouped or non-1×1 convolutions,
       and nodes absent from ``ranks`` when no global setting is given. Each such node is
       listed in ``skipped`` with the reason. Only the main graph is visited.
    Old weight initializers that lose their last user are removed.
    """

    def __init__(
        self,
        ranks: Mapping[str, int] | None = None,
        *,
        energy: float | None = None,
        rank: int | None = None,
        ratio: float | None = None,
        round_to: int = 8,
        second_moments: Mapping[str, np.ndarray] | None = None,
        conv1x1: bool = False,
        min_saving: float | None = 0.1,
        factorizations: Mapping[str, Factorization] | None = None,
    ) -> None:
        super().__init__()
        if ranks is None and energy is None and rank is None and ratio is None:
            raise ValueError("LowRankPass needs ranks, rank, energy or ratio")
        if energy is not None and not 0 < energy <= 1:
            raise ValueError(f"energy must be in (0, 1], got {energy}")
        if ratio is not None and not 0 < ratio <= 1:
            raise ValueError(f"ratio must be in (0, 1], got {ratio}")
        if rank is not None and rank < 1:
            raise ValueError(f"rank must be at least 1, got {rank}")
        self.ranks = dict(ranks or {})
        self.energy, self.rank, self.ratio = energy, rank, ratio
        self.round_to = round_to
        self.second_moments = dict(second_moments or {})
        self.conv1x1 = conv1x1
        self.min_saving = min_saving
        self.factorizations = dict(factorizations or {})
        self.decisions: list[LayerDecision] = []

    def requires(self, model: ir.Model) -> None:
        super().requires(model)
        self.decisions = []

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        layers, declined = linear_layers(model.graph, conv1x1=self.conv1x1)
        for node, reason in declined:
            name = node.name or node.outputs[0].name
            self.skip(name, reason)
            self.decisions.append(LayerDecision(name, node.op_type, 0, 0, reason=reason))
        modified = False
        for layer in layers:
            modified |= self._try_split(model.graph, layer)
        return ir.passes.PassResult(model, modified=modified)

    def _factorization(self, layer: LinearLayer, max_rank: int | None) -> Factorization:
        cached = self.factorizations.get(layer.name)
        if cached is not None and cached.shape == layer.weight.shape:
            return cached
        return factorize(layer.weight, self.second_moments.get(layer.name), max_rank=max_rank)

    def _decline(self, layer: LinearLayer, decision: LayerDecision, k: int, limit: float) -> bool:
        k_in, n_out = layer.weight.shape
        decision.reason = (
            f"rank {k} of {min(k_in, n_out)} saves too little: k·(K+N) = {k * (k_in + n_out)} vs "
            f"K·N = {k_in * n_out} (splitting pays for k ≤ {int(limit)})"
        )
        self.skip(layer.name, decision.reason)
        return False

    def _try_split(self, graph: ir.Graph, layer: LinearLayer) -> bool:
        k_in, n_out = layer.weight.shape
        full = min(k_in, n_out)
        decision = LayerDecision(
            layer.name, layer.node.op_type, k_in, n_out, full_rank=full, macs_before=k_in * n_out
        )
        self.decisions.append(decision)
        explicit = self.ranks.get(layer.name, self.rank)
        if explicit is None and self.energy is None and self.ratio is None:
            decision.reason = "no rank given for this node"
            self.skip(layer.name, decision.reason)
            return False
        # The most the MAC budget allows: no SVD is needed to know a split cannot pay.
        limit = k_in * n_out * (1 - self.min_saving) / (k_in + n_out) if self.min_saving is not None else full
        if self.min_saving is not None and limit < 1:
            decision.reason = f"{k_in}×{n_out} is too small to save MACs at any rank"
            self.skip(layer.name, decision.reason)
            return False
        if explicit is not None and min(explicit, full) > limit:
            return self._decline(layer, decision, min(explicit, full), limit)
        max_rank = explicit
        if max_rank is None and self.energy is None and self.ratio is not None:
            max_rank = choose_rank(Factorization.shape_only(k_in, n_out), ratio=self.ratio, round_to=self.round_to)
        fact = self._factorization(layer, max_rank)
        k = choose_rank(
            fact,
            rank=explicit,
            energy=None if explicit is not None else self.energy,
            ratio=None if explicit is not None else self.ratio,
            round_to=self.round_to,
        )
        k = min(k, len(fact.singular))
        decision.rank, decision.energy = k, fact.energy(k)
        decision.data_aware, decision.exact_svd = fact.whitened, fact.exact
        decision.macs_after = k * (k_in + n_out)
        if k > limit:
            return self._decline(layer, decision, k, limit)
        a, b = fact.factors(k, layer.weight.dtype)
        _replace(graph, layer, a, b)
        decision.split = True
        self.did(
            layer.name,
            f"{k_in}×{n_out} → rank {k} of {full} (energy {decision.energy:.3f}"
            f"{', data-aware' if fact.whitened else ''}), MACs ×{decision.macs_after / decision.macs_before:.2f}",
        )
        return True


def _replace(graph: ir.Graph, layer: LinearLayer, a: np.ndarray, b: np.ndarray) -> None:
    node = layer.node
    base = layer.name
    old_weight = node.inputs[1]
    x = node.inputs[0]
    if layer.kind == "MatMul":
        a_val = new_initializer(graph, a, f"{base}_lowrank_a")
        b_val = new_initializer(graph, b, f"{base}_lowrank_b")
        first = ir.node("MatMul", [x, a_val], name=f"{base}_lowrank_a")
        second = ir.node("MatMul", [first.outputs[0], b_val], name=f"{base}_lowrank_b")
    elif layer.kind == "Gemm":
        a_val = new_initializer(graph, a, f"{base}_lowrank_a")
        b_val = new_initializer(graph, b, f"{base}_lowrank_b")
        first = ir.node("Gemm", [x, a_val], {"transA": int(attr(node, "transA", 0))}, name=f"{base}_lowrank_a")
        bias = node.inputs[2] if len(node.inputs) > 2 else None
        inputs = [first.outputs[0], b_val] + ([bias] if bias is not None else [])
        attrs = {"beta": float(attr(node, "beta", 1.0))} if bias is not None else {}
        second = ir.node("Gemm", inputs, attrs, name=f"{base}_lowrank_b")
    else:  # Conv1x1: a is I×k, b is k×O; kernels are [k, I, 1…] and [O, k, 1…]
        spatial = (1,) * (len(const_array(old_weight).shape) - 2)
        a_val = new_initializer(graph, a.T.reshape(a.shape[1], a.shape[0], *spatial), f"{base}_lowrank_a")
        b_val = new_initializer(graph, b.T.reshape(b.shape[1], b.shape[0], *spatial), f"{base}_lowrank_b")
        first_attrs = {k: v.value for k, v in node.attributes.items()}
        first = ir.node("Conv", [x, a_val], first_attrs, name=f"{base}_lowrank_a")
        second_attrs = {"kernel_shape": list(spatial)} if "kernel_shape" in node.attributes else {}
        bias = node.inputs[2] if len(node.inputs) > 2 else None
        inputs = [first.outputs[0], b_val] + ([bias] if bias is not None else [])
        second = ir.node("Conv", inputs, second_attrs, name=f"{base}_lowrank_b")
    dtype = ir.DataType.from_numpy(a.dtype)
    first.outputs[0].name = unique_name(graph, f"{base}_lowrank_hidden")
    first.outputs[0].type = ir.TensorType(dtype)
    ir.convenience.replace_nodes_and_values(
        graph, node, [node], [first, second], list(node.outputs), list(second.outputs)
    )
    _drop_if_unused(graph, old_weight)


def _drop_if_unused(graph: ir.Graph, value: ir.Value | None) -> None:
    """Remove an initializer, ``Constant`` or ``Transpose`` of one that lost its last user."""
    if value is None or value.uses() or value.is_graph_output() or value.is_graph_input():
        return
    producer = value.producer()
    if producer is not None and producer.op_type in ("Transpose", "Constant") and producer.graph is graph:
        sources = list(producer.inputs)
        graph.remove(producer, safe=True)
        for source in sources:
            _drop_if_unused(graph, source)
        return
    if value.name in graph.initializers and graph.initializers[value.name] is value:
        del graph.initializers[value.name]
