"""The headline benchmark (issue 7): onnxopt against the tools people use today.

Per model, every variant is built from the same exported file and all are timed in ONE
interleaved onnxruntime run (``onnxopt.bench.benchmark``: CPU EP, ENABLE_ALL, 2 threads,
batch 1). Three disjoint sets per model: calibration (given to every tool that takes data),
held-out (onnxopt full's budget search scores its candidates on it) and test (no tool sees
it; the quality column). Quality: label accuracy
for the hard-digits CNN, agreement with the original otherwise (top-1 for classifiers,
per-step argmax for the OCR recognizer, 1 − relative L2 error for dense outputs).

Variants: original; ``onnxscript`` optimizer (+ its rewrite rules); ``onnxsim``;
``onnxslim``; onnxruntime ``quantize_static`` with its defaults; for the encoder the
onnxruntime transformer optimizer (``onnxruntime.transformers``, successor of the dead
``onnxruntime-tools``) and ``quantize_dynamic``; onnxopt lossless (no data) and onnxopt full
(with calibration data, 1 % budget).

Run: ``python -m benchmarks.suite [--quick] [--only NAME …]`` → ``benchmarks/results/suite.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx

from onnxopt import evaluate
from onnxopt.bench import _cpu_name, benchmark
from onnxopt.calibration import Dataset
from onnxopt.cpu import simd_level
from onnxopt.model_io import file_size, load_model
from onnxopt.optimize import optimize

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
BUDGET = 0.01
HARD_DIGITS = "hard-digits CNN"
RANDOM_ARCHS = ["resnet18", "mobilenet_v2", "resnet50", "vgg16"]  # --quick: the first two
CAVEATS = """## Caveats

- **Random-weight rows** (resnet18, mobilenet_v2, resnet50, vgg16, bert_encoder): quality is
  agreement with the original on 12 photo crops (cosine on random vectors for the encoder).
  A random network's output can be nearly independent of its input (randomised BatchNorm
  statistics kill most activations), so pruning can remove almost everything and still
  "agree" (resnet50 and mobilenet_v2 with max rel. error ≤ 2e-2: that artefact, not a result
  on a trained model), and 12 samples make agreement coarse (one sample = 0.083). Read these
  rows for latency and for the lossless and int8 variants; lossy claims come from the trained
  and pretrained models.
- Quality comes from a test set no optimizer saw; onnxopt's budget search selects on a
  separate held-out set, so a result can sit inside the budget there ("search" in the note)
  and slightly outside it on the test set: that is the selection's real generalisation.
  Since 2026-12-01 a candidate passes only when its drop plus one standard error of the
  per-sample drop fits the budget; the detector still lands outside on the test set (F1
  0.984, 0.992 on its 128 held-out crops; with 64 crops 0.985 / 0.993): its per-image losses
  are rare and large.
- "final check" is `optimize`'s own timing of its result against the original (4 s,
  interleaved); the speed-up column is the suite's (8 s). Sections timed with the spinning
  fix read 0.99–1.04× for variants with the same graph as the original (before it,
  0.90–1.14×).
"""


# ---------------------------------------------------------------- competitors (file → file)
def onnxscript_opt(src: Path, dst: Path, calib: Dataset) -> None:
    import onnxscript.optimizer

    onnx.save(onnxscript.optimizer.optimize(onnx.load(str(src))), str(dst))


def onnxsim_opt(src: Path, dst: Path, calib: Dataset) -> None:
    import onnxsim

    model, ok = onnxsim.simplify(onnx.load(str(src)))
    if not ok:
        raise RuntimeError("onnxsim: check failed")
    onnx.save(model, str(dst))


def onnxslim_opt(src: Path, dst: Path, calib: Dataset) -> None:
    import onnxslim

    onnx.save(onnxslim.slim(onnx.load(str(src))), str(dst))


class _Reader:
    def __init__(self, data: Dataset) -> None:
        self.items = [{k: v[i : i + 1] for k, v in data.inputs.items()} for i in range(len(data))]

    def get_next(self):
        return self.items.pop(0) if self.items else None


def ort_static_int8(src: Path, dst: Path, calib: Dataset) -> None:
    from onnxruntime.quantization import quantize_static

    quantize_static(str(src), str(dst), _Reader(calib))


def ort_dynamic_int8(src: Path, dst: Path, calib: Dataset) -> None:
    from onnxruntime.quantization import quantize_dynamic

    quantize_dynamic(str(src), str(dst))


def ort_transformers(src: Path, dst: Path, calib: Dataset, *, heads: int = 12, hidden: int = 768) -> None:
    from onnxruntime.transformers.optimizer import optimize_model

    optimize_model(str(src), model_type="bert", num_heads=heads, hidden_size=hidden).save_model_to_file(str(dst))


def onnxopt_lossless(src: Path, dst: Path, calib: Dataset) -> None:
    optimize(src, dst)


def onnxopt_full(src: Path, dst: Path, calib: Dataset, held_out: Dataset | None = None, metric=None) -> dict:
    result = optimize(src, dst, data=calib, eval_data=held_out, max_drop=BUDGET, metric=metric, speed_check=True)
    return {"stages": [(s.name, s.kept, s.reason) for s in result.stages], "search_score": result.final_score,
            "final_check": result.speedup}


# ---------------------------------------------------------------- models
def _export(name: str, tmp: Path, *, quick: bool) -> tuple[Path, Dataset, Dataset, Dataset, str | None]:
    import torch

    from benchmarks import archs
    from benchmarks.export import export_onnx
    from benchmarks.real_data import photo_crops

    torch.manual_seed(0)
    if name == "bert_encoder":
        layers = 2 if quick else 12
        net = archs.bert_encoder(layers=layers)
        example = torch.randn(1, 128, 768)
        data = np.random.default_rng(0).standard_normal((36, 128, 768)).astype(np.float32)
    else:
        net = archs.randomize_bn_stats(archs.ARCHS[name]())
        example = torch.randn(1, 3, 224, 224)
        data = photo_crops(36)
    path = export_onnx(net, (example,), tmp / f"{name}.onnx", dynamo=False, input_names=["input"])
    ds = Dataset({"input": data})
    splits = [ds.take(slice(i, i + 12)) for i in (0, 12, 24)]
    return path, *splits, "cosine" if name == "bert_encoder" else None


def _hard_digits() -> tuple[Path, Dataset, Dataset, Dataset, None]:
    from benchmarks.bench_prune import HARD, hard_digits_sets

    calib, (held_out, test) = hard_digits_sets(load_model(HARD), parts=2)
    return HARD, calib, held_out, test, None


def _real(kind: str, scale: float) -> tuple[Path, Dataset, Dataset, Dataset, Callable | None]:
    """Calibration from photo 0, held-out and test from photo 1 (different random crops)."""
    from benchmarks.real_data import real_inputs, real_model, sample_counts

    path, calib, held_out, metric = real_model(kind, scale)
    (name, array), = held_out.inputs.items()
    test = Dataset({name: real_inputs(kind, 1, sample_counts(kind, scale)[1], 2)})
    seen = {a.tobytes() for a in array}
    assert not any(b.tobytes() in seen for b in test.inputs[name]), "test overlaps held-out"
    return path, calib, held_out, test, metric


def models(tmp: Path, quick: bool) -> list[tuple[str, str, Callable[[], tuple]]]:
    """(name, kind, loader)."""
    from benchmarks.real_data import REAL_NAMES, model_path

    out: list = [(HARD_DIGITS, "labelled", _hard_digits)]
    for kind, name in REAL_NAMES.items():
        try:
            model_path(kind)
        except FileNotFoundError as exc:
            print(f"skip: {exc}")
            continue
        out.append((name, "real", lambda k=kind: _real(k, 0.5 if quick else 1.0)))
    for arch in RANDOM_ARCHS if not quick else RANDOM_ARCHS[:2]:
        out.append((arch, "random-weights", lambda a=arch: _export(a, tmp, quick=quick)))
    out.append(("bert_encoder", "transformer", lambda: _export("bert_encoder", tmp, quick=quick)))
    return out


# ---------------------------------------------------------------- run
def run_model(name: str, kind: str, loader, tmp: Path, seconds: float) -> dict:
    print(f"== {name}", flush=True)
    src, calib, held_out, test, metric = loader()
    variants: dict[str, Callable] = {
        "onnxscript": onnxscript_opt,
        "onnxsim": onnxsim_opt,
        "onnxslim": onnxslim_opt,
    }
    if kind == "transformer":
        variants["ort transformers"] = ort_transformers
        variants["ort dynamic int8"] = ort_dynamic_int8
    else:
        variants["ort static int8"] = ort_static_int8
    variants["onnxopt lossless"] = onnxopt_lossless
    variants["onnxopt full"] = lambda s, d, c: onnxopt_full(s, d, c, held_out, metric)
    paths = {"original": src}
    info: dict[str, dict] = {"original": {}}
    for label, fn in variants.items():
        dst = tmp / f"{name.replace(' ', '_')}.{label.replace(' ', '_')}.onnx"
        t0 = time.perf_counter()
        try:
            extra = fn(src, dst, calib) or {}
            paths[label] = dst
            info[label] = {"seconds": time.perf_counter() - t0, **extra}
        except Exception as exc:  # a competitor failing is a result
            info[label] = {"error": f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:160]}"}
        print(f"  {label}: {info[label]}", flush=True)
    original = load_model(src)
    reference = evaluate.run(original, test)
    runnable = {}
    for label, p in paths.items():
        try:
            out = evaluate.run(load_model(p), test)
            info[label]["score"] = evaluate.task_score(reference, out, labels=test.labels, metric=metric)
            info[label]["max_rel"] = evaluate.compare(reference, out).max_rel
        except Exception as exc:  # does not run, or changed the outputs' shapes: a broken model
            info[label]["error"] = f"broken: {exc}"[:200]
            continue
        info[label]["size"] = file_size(p)
        runnable[label] = p
    baseline = evaluate.task_score(reference, reference, labels=test.labels, metric=metric)
    # Timed at the evaluation inputs' shape (batch 1): a dynamic axis (the OCR's width) would
    # otherwise be timed at size 1.
    shapes = {k: [1, *v.shape[1:]] for k, v in test.inputs.items()}
    result = benchmark(list(runnable.items()), threads=2, seconds=seconds, warmup=3, shapes=shapes)
    for r in result.rows:
        info[r.model]["p50_ms"] = r.p50_ms
        info[r.model]["speedup"] = r.ratio
    return {
        "model": name,
        "kind": kind,
        "metric": evaluate.metric_name(test.labels, metric),
        "baseline": baseline,
        "eval_samples": len(held_out),
        "test_samples": len(test),
        "variants": info,
    }


SPINNING_NOTE = (
    "; **timed before the spinning fix**: idle sessions' worker threads still spun while another was timed "
    "(2-3x slower, uneven runs), so these speed-ups are less reliable than the sections above"
)


def merge(results: list[dict], meta: dict, stem: str = "suite") -> tuple[list[dict], dict]:
    """Results of this run replace the committed rows of the same models; rows of models not
    re-run (``--only``) are kept with the run metadata they were measured under."""
    path = RESULTS / f"{stem}.json"
    if not path.exists():
        return results, meta
    old = json.loads(path.read_text())
    fresh = {r["model"] for r in results}
    kept = [dict(r, meta=r.get("meta", old.get("meta"))) for r in old.get("results", []) if r["model"] not in fresh]
    return kept + [{**r, "meta": meta} if "meta" not in r else r for r in results], meta


def write(results: list[dict], meta: dict, stem: str = "suite") -> None:
    """``benchmarks/results/{stem}.{json,md,png}``, merged with the committed results there."""
    RESULTS.mkdir(exist_ok=True)
    from benchmarks.real_data import REAL_NAMES

    results, meta = merge(results, meta, stem)
    order = [HARD_DIGITS, *REAL_NAMES.values(), *RANDOM_ARCHS, "bert_encoder"]  # the order of models()
    results.sort(key=lambda r: order.index(r["model"]) if r["model"] in order else len(order))
    (RESULTS / f"{stem}.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2, default=str) + "\n")
    lines = [
        "# onnxopt vs the tools people use today",
        "",
        f"Latest run: {meta['cpu']} (each section names the machine it ran on), onnxruntime {meta['onnxruntime']}, CPU EP, ENABLE_ALL, {meta['threads']} threads, batch 1. "
        "Variants of one model are timed interleaved in one process; **speed-up** = p50(original) / p50(variant). "
        f"Quality on test inputs no tool saw (onnxopt full's {BUDGET:.0%}-budget search scores on a separate held-out set). "
        f"Plot: `{stem}.png` (hatched bars lose more than the budget).",
        "",
    ]
    if stem != "suite":
        lines += ["The same suite on another kind of machine (its SIMD level is in each section's run line); "
                  "the README's headline table is `suite.md`, and the caveats below were written for its runs.", ""]
    for res in results:
        run = res.get("meta") or meta
        lines += [f"## {res['model']} ({res['kind']})", "",
                  f"quality = {res['metric']}; original: {res['baseline']:.4f}; test samples: {res.get('test_samples', '(held-out set, older run)')}; "
                  f"held-out samples: {res.get('eval_samples', '?')}; "
                  f"run: {run['cpu']}{' (' + run['simd'] + ')' if run.get('simd') else ''}{', ' + run['date'] if run.get('date') else ''}, load average {run['loadavg']}"
                  f"{', ' + run['note'] if run.get('note') else ''}"
                  f"{'' if run.get('spinning_stopped') else SPINNING_NOTE}", "",
                  "| variant | speed-up | p50 ms | quality | size | max rel. error | note |",
                  "|---|---:|---:|---:|---:|---:|---|"]  # fmt: skip
        for label, v in res["variants"].items():
            if "error" in v and "p50_ms" not in v:
                lines.append(f"| {label} | - | - | - | - | - | failed: {v['error']} |")
                continue
            note = ""
            if "stages" in v:
                note = ", ".join(f"{n}{'' if kept else ' ✗'}" for n, kept, _ in v["stages"] if kept or _)
                if v.get("search_score") is not None:
                    note += f"; search {v['search_score']:.4f}"
                if v.get("final_check") is not None:
                    note += f"; final check {v['final_check']:.2f}×"
            lines.append(
                f"| {label} | {v.get('speedup', 0):.2f}× | {v.get('p50_ms', 0):.2f} | {v.get('score', float('nan')):.4f} | "
                f"{v.get('size', 0) / 1e6:.2f} MB | {v.get('max_rel', float('nan')):.1e} | {note} |"
            )
        lines.append("")
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n" + CAVEATS)
    plot(results, RESULTS / f"{stem}.png")


def plot(results: list[dict], path: Path) -> None:
    """Speed-up per model and variant; hatched bars lose more than the budget in quality."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(dict.fromkeys(v for r in results for v in r["variants"] if v != "original"))
    fig, ax = plt.subplots(figsize=(max(8, 1.4 * len(results)), 4.5))
    width = 0.8 / max(1, len(labels))
    for i, label in enumerate(labels):
        xs, ys, hatches = [], [], []
        for m, res in enumerate(results):
            v = res["variants"].get(label, {})
            if "speedup" not in v:
                continue
            xs.append(m + i * width)
            ys.append(v["speedup"])
            hatches.append("//" if res["baseline"] - v.get("score", 0.0) > BUDGET + 1e-9 else "")
        bars = ax.bar(xs, ys, width, label=label)
        for bar, hatch in zip(bars, hatches):
            bar.set_hatch(hatch)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks([m + width * (len(labels) - 1) / 2 for m in range(len(results))])
    ax.set_xticklabels([r["model"] for r in results], rotation=20, ha="right")
    ax.set_ylabel("speed-up vs original (×)")
    ax.set_title(f"CPU, onnxruntime ENABLE_ALL; hatched: quality drop > {BUDGET:.0%}")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2-layer encoder, no resnet50/vgg16, shorter timing")
    parser.add_argument("--only", nargs="*", help="model names to run")
    parser.add_argument("--tag", help="write suite_TAG.{md,json,png} instead (a machine unlike the committed runs', "
                        "e.g. its SIMD level)")
    args = parser.parse_args()
    import onnxruntime

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, kind, loader in models(Path(tmp), args.quick):
            if args.only and name not in args.only:
                continue
            results.append(run_model(name, kind, loader, Path(tmp), seconds=3.0 if args.quick else 8.0))
    meta = {
        "cpu": _cpu_name(), "simd": simd_level(), "onnxruntime": onnxruntime.__version__, "threads": 2,
        "loadavg": ", ".join(f"{x:.1f}" for x in os.getloadavg()),
        "note": "--quick run (2-layer encoder)." if args.quick else "",
        "date": time.strftime("%Y-%m-%d"), "spinning_stopped": True,
    }  # fmt: skip
    stem = f"suite_{args.tag}" if args.tag else "suite"
    write(results, meta, stem)
    print((RESULTS / f"{stem}.md").read_text())


if __name__ == "__main__":
    main()
