"""Lossless ``optimize`` on torchvision architectures vs onnxscript and onnxsim (issue 3).

For resnet18, resnet50 and mobilenet_v2 (random weights, BatchNorm statistics randomised
so that a wrong fold would show) exported by torch with ``dynamo=True, optimize=False``
(BN kept) and by the TorchScript exporter (BN kept with TrainingMode.PRESERVE), four
variants are measured in one interleaved onnxruntime run (ENABLE_ALL, 2 threads, batch 1,
224×224): the original, ``onnxscript.optimizer.optimize`` (constant folding + default
rewrite rules, which include BN fusion), ``onnxsim.simplify`` and ``onnxopt optimize``
(lossless). Exactness is the max relative error against the original on 4 random inputs.

Run: ``python -m benchmarks.bench_lossless [--quick]`` → ``benchmarks/results/lossless.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch

from benchmarks import archs
from benchmarks.export import export_onnx
from onnxopt import evaluate
from onnxopt.bench import benchmark
from onnxopt.calibration import synthetic
from onnxopt.model_io import load_model
from onnxopt.optimize import optimize

RESULTS = Path(__file__).resolve().parent / "results"
ARCHS = ("resnet18", "resnet50", "mobilenet_v2")


def _onnxscript(src: Path, dst: Path) -> None:
    import onnxscript.optimizer

    onnx.save(onnxscript.optimizer.optimize(onnx.load(str(src))), str(dst))


def _onnxsim(src: Path, dst: Path) -> None:
    import onnxsim

    model, ok = onnxsim.simplify(onnx.load(str(src)))
    if not ok:
        raise RuntimeError("onnxsim check failed")
    onnx.save(model, str(dst))


def _onnxopt(src: Path, dst: Path) -> None:
    optimize(src, dst)


VARIANTS = {"onnxscript": _onnxscript, "onnxsim": _onnxsim, "onnxopt": _onnxopt}


def _bn_count(path: Path) -> int:
    return sum(n.op_type == "BatchNormalization" for n in onnx.load(str(path), load_external_data=False).graph.node)


def run(quick: bool = False, seconds: float = 8.0) -> list[dict]:
    torch.manual_seed(0)
    size = 112 if quick else 224
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for arch in ARCHS:
            net = archs.randomize_bn_stats(archs.ARCHS[arch](num_classes=1000), seed=0).eval()
            example = (torch.randn(1, 3, size, size),)
            for exporter, dynamo in (("dynamo", True), ("torchscript", False)):
                src = export_onnx(net, example, tmp / f"{arch}_{exporter}.onnx", dynamo=dynamo, input_names=["input"])
                paths = {"original": src}
                seconds_taken = {}
                errors = {}
                for name, fn in VARIANTS.items():
                    dst = tmp / f"{arch}_{exporter}_{name}.onnx"
                    t0 = time.perf_counter()
                    try:
                        fn(src, dst)
                        paths[name] = dst
                    except Exception as exc:  # a competitor failing is a result, not a crash
                        errors[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                    seconds_taken[name] = time.perf_counter() - t0
                original = load_model(src)
                data = synthetic(original, 4, seed=0)
                reference = evaluate.run(original, data, batch_size=1)
                bench = benchmark(list(paths.items()), threads=2, seconds=seconds, warmup=5)
                for r in bench.rows:
                    fid = evaluate.compare(reference, evaluate.run(load_model(paths[r.model]), data, batch_size=1))
                    rows.append({
                        "arch": arch, "exporter": exporter, "variant": r.model, "p50_ms": r.p50_ms,
                        "speedup_vs_original": r.ratio, "max_rel_error": fid.max_rel,
                        "bn_nodes": _bn_count(paths[r.model]), "optimize_seconds": seconds_taken.get(r.model),
                    })
                for name, err in errors.items():
                    rows.append({"arch": arch, "exporter": exporter, "variant": name, "error": err})
                print(f"{arch}/{exporter}: " + ", ".join(f"{r['variant']} {r.get('speedup_vs_original', 0) or 0:.2f}×" for r in rows[-len(paths) - len(errors):]), flush=True)
    return rows


def write(rows: list[dict], env: dict) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "lossless.json").write_text(json.dumps({"environment": env, "rows": rows}, indent=2) + "\n")
    lines = [
        "# Lossless optimize vs onnxscript and onnxsim",
        "",
        f"onnxruntime ENABLE_ALL, {env['threads']} threads, batch 1, input {env['input']}, CPU: {env['cpu']}. "
        "Variants of one model are timed interleaved in one process; **speed-up** = p50(original) / p50(variant). "
        "Max rel. error = max |Δ| / max |original output| on 4 random inputs.",
        "",
        "| model | exporter | variant | BN nodes | p50 ms | speed-up | max rel. error | optimize s |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['arch']} | {r['exporter']} | {r['variant']} | failed: {r['error']} | | | | |")
            continue
        opt_s = f"{r['optimize_seconds']:.1f}" if r["optimize_seconds"] is not None else "-"
        lines.append(
            f"| {r['arch']} | {r['exporter']} | {r['variant']} | {r['bn_nodes']} | {r['p50_ms']:.2f} | "
            f"{r['speedup_vs_original']:.2f}× | {r['max_rel_error']:.1e} | {opt_s} |"
        )
    (RESULTS / "lossless.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="112×112 inputs and shorter timing")
    args = parser.parse_args()
    from onnxopt.bench import _cpu_name

    rows = run(args.quick, seconds=3.0 if args.quick else 8.0)
    write(rows, {"threads": 2, "input": "1x3x112x112" if args.quick else "1x3x224x224", "cpu": _cpu_name(),
                 "onnxruntime": __import__("onnxruntime").__version__, "torch": torch.__version__})
    print((RESULTS / "lossless.md").read_text())


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
