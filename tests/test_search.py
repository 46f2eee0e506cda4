"""The budget search: bisection on a monotone knob, gentlest-first early stop."""

from __future__ import annotations

import pytest

from onnxopt.errors import OnnxoptError
from onnxopt.search import search_budget


def _run(threshold: float, **kw):
    built: list[float] = []

    def build(knob: float) -> float:
        built.append(knob)
        return knob

    result = search_budget(build, lambda k: (k, k >= threshold), lo=0.0, hi=1.0, more_compression="down", tolerance=0.01, **kw)
    return result, built


@pytest.mark.parametrize("threshold", [0.05, 0.37, 0.8])
def test_finds_most_compressed_accepted_knob(threshold):
    result, _ = _run(threshold)
    assert result.best_knob is not None
    assert threshold <= result.best_knob <= threshold + 0.011
    assert all(s.accepted == (s.knob >= threshold) for s in result.steps)


def test_gentlest_failure_stops_after_one_candidate():
    result, built = _run(0.999)
    assert result.best is None and result.best_knob is None
    assert built == [pytest.approx(0.99)]
    assert result.steps[0].note == "gentlest setting first"


def test_without_gentlest_probe_bisects_to_the_end():
    result, built = _run(0.999, probe_gentlest=False)
    assert result.best_knob == 1.0  # only the no-compression end passes
    assert len(built) >= 8  # log2(1 / 0.01) failing midpoints, then that end


def test_up_direction():
    result = search_budget(lambda k: k, lambda k: (k, k <= 3.0), lo=0.0, hi=10.0, more_compression="up", tolerance=0.05)
    assert 2.95 <= result.best_knob <= 3.0


def test_a_candidate_onnxruntime_rejects_is_outside_the_budget_and_the_search_goes_on():
    # Knobs below 0.3 are refused (as onnxruntime refuses a graph); above, scored as usual.
    def evaluate(k: float) -> tuple[float, bool]:
        if k < 0.3:
            raise OnnxoptError("onnxruntime cannot load the model: no kernel")
        return k, True

    result = search_budget(lambda k: k, evaluate, lo=0.0, hi=1.0, more_compression="down", tolerance=0.01)
    assert 0.3 <= result.best_knob <= 0.311
    rejected = [s for s in result.steps if s.score is None]
    assert rejected and all(not s.accepted and s.note.startswith("rejected: onnxruntime cannot load") for s in rejected)


def test_a_rejected_gentlest_candidate_does_not_end_the_search():
    def evaluate(k: float) -> tuple[float, bool]:
        if abs(k - 0.99) < 1e-9:
            raise OnnxoptError("refused")
        return k, k >= 0.5

    result = search_budget(lambda k: k, evaluate, lo=0.0, hi=1.0, more_compression="down", tolerance=0.01)
    assert result.steps[0].score is None and result.steps[0].note == "rejected: refused"
    assert 0.5 <= result.best_knob <= 0.511
