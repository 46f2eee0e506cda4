"""Binary search of one global compression knob under an accuracy budget (thesis §4).

The lossy passes expose one scalar that orders candidates from "keeps everything" to
"removes the most": pruning's cumulative contribution rate ``cr``, low-rank's energy
threshold, quantization's number of float-kept layers. Importances are computed once by
the caller; :func:`search_budget` only builds and scores candidates.

Algorithm (thesis ch. 4, generalised): the knob lies in ``[lo, hi]`` and
``more_compression`` says which direction removes more. Evaluate the midpoint; if the
score drop is within the budget, accept it and move towards more compression, else
towards less; stop when the interval is narrower than ``tolerance``. Returns the most
compressed accepted candidate (None when even the least compressed one breaks the budget).

With ``probe_gentlest`` (the default) the gentlest candidate — one ``tolerance`` step from
the no-compression end — is evaluated first: when it already breaks the budget, no stronger
setting can be expected to pass (the knob is monotone in compression), and the search stops
after one candidate instead of bisecting through ~log2(span / tolerance) failing ones. On
sensitive models (OCR, detectors) this is most of a stage's run time.

A candidate that ``evaluate`` refuses with an :class:`~onnxopt.errors.OnnxoptError`
(onnxruntime rejects the graph, its outputs turn non-finite) is outside the budget: it is
recorded with ``score=None`` and the reason, and the search moves towards less compression,
as after a score that breaks the budget. A rejected gentlest candidate does not end the
search early — a rejection (one layer's kernel, one fusion) says nothing about the other
settings, a score does — the bisection then runs over the whole interval.
"""

from __future__ import annotations

__all__ = ["SearchStep", "SearchResult", "search_budget"]

import dataclasses
from collections.abc import Callable
from typing import Generic, TypeVar

from onnxopt.errors import OnnxoptError

T = TypeVar("T")


@dataclasses.dataclass
class SearchStep:
    knob: float
    score: float | None  # None: the candidate could not be scored (see ``note``)
    accepted: bool
    cost: float | None = None  # e.g. MACs kept as a fraction of the original
    note: str = ""


@dataclasses.dataclass
class SearchResult(Generic[T]):
    best: T | None
    best_knob: float | None
    steps: list[SearchStep]

    def to_dict(self) -> dict:
        return {"best_knob": self.best_knob, "steps": [dataclasses.asdict(s) for s in self.steps]}


def search_budget(
    build: Callable[[float], T],
    evaluate: Callable[[T], tuple[float, bool]],
    *,
    lo: float,
    hi: float,
    more_compression: str = "down",
    tolerance: float = 0.01,
    cost: Callable[[T], float] | None = None,
    max_steps: int = 20,
    probe_gentlest: bool = True,
) -> SearchResult[T]:
    """Binary search on ``knob`` in ``[lo, hi]``.

    ``build(knob)`` makes a candidate; ``evaluate(candidate)`` returns ``(score, accepted)``.
    ``more_compression="down"`` means smaller knob values compress more (pruning's cr).
    """
    if more_compression not in ("down", "up"):
        raise ValueError("more_compression must be 'down' or 'up'")
    steps: list[SearchStep] = []
    best: T | None = None
    best_knob: float | None = None
    # The search interval in terms of "compression" c in [0, 1]: c=0 least, c=1 most.
    def knob_of(c: float) -> float:
        return hi - c * (hi - lo) if more_compression == "down" else lo + c * (hi - lo)

    def step(knob: float, note: str = "") -> tuple[T, SearchStep]:
        candidate = build(knob)
        try:
            score, ok = evaluate(candidate)
        except OnnxoptError as e:
            score, ok, note = None, False, f"rejected: {e}"
        entry = SearchStep(knob, score, ok, cost(candidate) if cost else None, note)
        steps.append(entry)
        return candidate, entry

    c_lo, c_hi = 0.0, 1.0
    span = abs(hi - lo)
    if probe_gentlest and span > tolerance:
        c_gentle = tolerance / span
        knob = knob_of(c_gentle)
        candidate, entry = step(knob, "gentlest setting first")
        if entry.accepted:
            best, best_knob, c_lo = candidate, knob, c_gentle
        elif entry.score is not None:
            return SearchResult(None, None, steps)
        # Rejected: says nothing about stronger settings; bisect the whole interval.
    for _ in range(max_steps):
        if (c_hi - c_lo) * span < tolerance:
            break
        c_mid = (c_lo + c_hi) / 2
        knob = knob_of(c_mid)
        candidate, entry = step(knob)
        if entry.accepted:
            best, best_knob = candidate, knob
            c_lo = c_mid
        else:
            c_hi = c_mid
    if best is None:
        # The least compressed end itself: evaluate it so the caller knows why nothing fit.
        knob = knob_of(c_lo)
        candidate, entry = step(knob)
        if entry.accepted:
            best, best_knob = candidate, knob
    return SearchResult(best, best_knob, steps)
