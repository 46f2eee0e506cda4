"""Low-rank SVD split of fully connected layers (issue 5): realised speed-up and accuracy.

Three parts, one run:
1. **VGG classifier head** (Gemm 25088→4096→ReLU→4096→ReLU→1000, random N(0, 0.01)
   weights, ~470 MB fp32 kept in memory only): the original and the model split at several
   uniform ranks, benchmarked interleaved (onnxruntime ENABLE_ALL, 2 threads, batch 1 and 8).
   Large layers use the randomized top-r SVD, computed once for the largest rank.
2. **BERT-base encoder layer** (hidden 768, FFN 3072, 12 heads, random BERT init, sequence
   128, batch 1), exported with the TorchScript exporter: same measurement.
   Both report the realised speed-up next to the MAC reduction of the whole model.
3. **Digits MLPs** (scikit-learn digits upsampled to 16×16, and the distorted "hard digits"
   of :mod:`benchmarks.digits`; MLP 256→512→512→10 trained with torch for seconds):
   held-out accuracy and logit error vs rank for plain and data-aware SVD (200 training
   images as calibration data), and the automatic mode under a 1 % budget.
Random weights have a flat spectrum, so parts 1-2 measure speed only (output error shown).

Run: ``python -m benchmarks.bench_lowrank [--quick]`` → ``benchmarks/results/lowrank.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

from onnxopt import evaluate
from onnxopt.bench import benchmark
from onnxopt.calibration import Dataset, synthetic
from onnxopt.cost import model_cost
from onnxopt.lowrank import lowrank_model
from onnxopt.passes.lowrank import LowRankPass, factorize, linear_layers

RESULTS = Path(__file__).resolve().parent / "results"
THREADS = 2


def vgg_head(seed: int = 0, dims=(25088, 4096, 4096, 1000)) -> ir.Model:
    """x[N, 25088] → Gemm → Relu → Gemm → Relu → Gemm (torch Linear layout, transB=1)."""
    rng = np.random.default_rng(seed)
    nodes, inits, prev = [], [], "x"
    for i in range(len(dims) - 1):
        w = rng.standard_normal((dims[i + 1], dims[i]), dtype=np.float32)
        w *= 0.01
        inits += [numpy_helper.from_array(w, f"fc{i}.weight"),
                  numpy_helper.from_array(np.zeros(dims[i + 1], np.float32), f"fc{i}.bias")]
        last = i == len(dims) - 2
        out = "logits" if last else f"fc{i}_out"
        nodes.append(helper.make_node("Gemm", [prev, f"fc{i}.weight", f"fc{i}.bias"], [out], name=f"fc{i}", transB=1))
        if not last:
            nodes.append(helper.make_node("Relu", [out], [f"relu{i}"]))
            out = f"relu{i}"
        prev = out
        del w
    graph = helper.make_graph(
        nodes, "vgg_head",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", dims[0]])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", dims[-1]])],
        inits,
    )
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def bert_layer(tmp: Path, seq: int) -> ir.Model:
    import torch

    from benchmarks.archs import bert_encoder_layer
    from benchmarks.export import export_onnx

    torch.manual_seed(0)
    path = export_onnx(bert_encoder_layer().eval(), (torch.randn(1, seq, 768),), tmp / "bert_layer.onnx", dynamo=False)
    return ir.load(str(path))


def latency_vs_rank(name: str, model: ir.Model, ranks: list[int], *, shapes: dict, batches: tuple[int, ...],
                    iterations: int) -> dict:
    """Split ``model`` at each rank (one SVD per layer), benchmark all variants interleaved."""
    start = time.perf_counter()
    layers, _ = linear_layers(model.graph)
    factorizations = {layer.name: factorize(layer.weight, max_rank=max(ranks)) for layer in layers}
    svd_seconds = time.perf_counter() - start
    base_cost = model_cost(model, shapes)
    verify = synthetic(model, 2, seed=1, shapes=shapes)
    reference = evaluate.run(model, verify)
    variants, rows = [("original", model)], []
    for rank in ranks:
        candidate = model.clone()
        lowrank = LowRankPass(rank=rank, factorizations=factorizations)
        lowrank(candidate)
        cost = model_cost(candidate, shapes)
        fid = evaluate.compare(reference, evaluate.run(candidate, verify))
        label = f"rank {rank}"
        variants.append((label, candidate))
        rows.append({
            "variant": label, "rank": rank,
            "layers_split": [d.name for d in lowrank.decisions if d.split],
            "layers_kept": {d.name: d.reason for d in lowrank.decisions if not d.split},
            "macs": cost.macs, "mac_ratio": cost.macs / base_cost.macs,
            "params": cost.params, "param_ratio": cost.params / base_cost.params,
            "output_rel_error": fid.max_rel, "cosine": fid.cosine,
        })
    print(f"[{name}] SVD {svd_seconds:.1f}s; benchmarking {len(variants)} variants", flush=True)
    bench = benchmark(variants, threads=THREADS, batch_sizes=batches, shapes=shapes, warmup=3, iterations=iterations)
    timing = {(r.model, r.batch): r for r in bench.rows}
    for row in rows:
        for b in batches:
            t, base = timing[(row["variant"], b)], timing[("original", b)]
            row[f"p50_ms_b{b}"] = t.p50_ms
            row[f"speedup_b{b}"] = base.p50_ms / t.p50_ms
    baseline = {f"p50_ms_b{b}": timing[("original", b)].p50_ms for b in batches}
    return {"name": name, "svd_seconds": svd_seconds, "macs": base_cost.macs, "params": base_cost.params,
            "baseline": baseline, "batches": list(batches), "rows": rows, "environment": bench.environment}


def _train_mlp(x: np.ndarray, y: np.ndarray, epochs: int, max_seconds: float = 45.0):
    """Adam on mini-batches of 64; stops after ``epochs`` or ``max_seconds`` of training."""
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(1)  # a small MLP: more threads only fight over the shared cores
    net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 512), torch.nn.ReLU(), torch.nn.Linear(512, 512),
                              torch.nn.ReLU(), torch.nn.Linear(512, 10))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=1e-4)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    deadline = time.perf_counter() + max_seconds
    for _epoch in range(epochs):
        if time.perf_counter() > deadline:
            break
        for idx in torch.randperm(len(xt)).split(64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(xt[idx]), yt[idx]).backward()
            opt.step()
    return net.eval()


def digits_accuracy(kind: str, quick: bool) -> dict:
    """Held-out accuracy and logit error vs rank, plain vs data-aware SVD, on a trained MLP."""
    import torch

    from benchmarks.digits import hard_digits, load_digits_split
    from benchmarks.export import export_onnx

    split = load_digits_split(seed=0, size=16) if kind == "digits" else hard_digits(seed=0, size=16, train_copies=2)
    x_train = split.x_train.reshape(len(split.x_train), -1)
    x_test = split.x_test.reshape(len(split.x_test), -1)
    start = time.perf_counter()
    net = _train_mlp(x_train, split.y_train, epochs=(10 if quick else 25))
    train_seconds = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(net, (torch.from_numpy(x_train[:2]),), Path(tmp) / "mlp.onnx", dynamo=False, dynamic_batch=True)
        model = ir.load(str(path))
    name = model.graph.inputs[0].name
    calib = Dataset({name: x_train[:200]})
    test = Dataset({name: x_test}, split.y_test)
    evaluator = evaluate.Evaluator(model, test)
    reference = evaluator.reference[0]
    base_macs = model_cost(model).macs
    rows = []
    for rank in [4, 8, 16, 24, 32, 48, 64, 96, 128]:
        row = {"rank": rank}
        for aware in (False, True):
            result = lowrank_model(model, calib, evaluator, rank=rank, data_aware=aware)
            key = "data_aware" if aware else "plain"
            logits = evaluate.run(result.model, test)[0]
            row[f"{key}_accuracy"] = result.score
            row[f"{key}_logit_rel_error"] = float(np.linalg.norm(logits - reference) / np.linalg.norm(reference))
            row["layers_split"] = [f"{d.in_features}×{d.out_features}" for d in result.split_layers]
            row["mac_ratio"] = model_cost(result.model).macs / base_macs
        rows.append(row)
        print(f"[{kind}] rank {rank}: plain {row['plain_accuracy']:.4f} data-aware {row['data_aware_accuracy']:.4f}", flush=True)
    auto = {}
    for aware in (False, True):
        result = lowrank_model(model, calib, evaluator, max_drop=0.01, data_aware=aware)
        auto["data-aware" if aware else "plain"] = {
            "energy": result.knob, "accuracy": result.score,
            "ranks": {f"{d.in_features}×{d.out_features}": d.rank for d in result.split_layers},
            "mac_ratio": model_cost(result.model).macs / base_macs, "steps": len(result.steps),
        }
    return {"name": kind, "baseline_accuracy": evaluator.baseline, "train_seconds": train_seconds,
            "calibration_samples": len(calib), "train_samples": len(x_train), "test_samples": len(test),
            "rows": rows, "auto_1pct": auto}


def markdown(results: dict) -> str:
    lines = ["# Low-rank SVD split of fully connected layers", "",
             "Generated by `python -m benchmarks.bench_lowrank`"
             + (" --quick" if results["quick"] else "") + f" in {results['seconds']:.0f} s.", ""]
    for part in results["latency"]:
        env = part["environment"]
        lines += [f"## {part['name']}", "",
                  f"Original: {part['macs'] / 1e6:.1f} M MACs, {part['params'] / 1e6:.1f} M parameters; "
                  f"SVD of all layers once: {part['svd_seconds']:.1f} s. onnxruntime {env['onnxruntime']}, "
                  f"{env['cpu']}, {THREADS} threads, ENABLE_ALL, variants interleaved in one process.", ""]
        head = "| variant | MACs × | 1 / MACs × | params × | " + " | ".join(
            f"p50 ms (batch {b}) | speed-up (batch {b})" for b in part["batches"]) + " | output rel. error | layers kept whole |"
        lines += [head, "|" + "---|" * (head.count("|") - 1)]
        base = " | ".join(f"{part['baseline'][f'p50_ms_b{b}']:.2f} | 1.00×" for b in part["batches"])
        lines.append(f"| original | 1.000 | 1.00× | 1.000 | {base} | 0 | |")
        for r in part["rows"]:
            timing = " | ".join(f"{r[f'p50_ms_b{b}']:.2f} | {r[f'speedup_b{b}']:.2f}×" for b in part["batches"])
            kept = ", ".join(r["layers_kept"]) or "-"
            lines.append(f"| {r['variant']} | {r['mac_ratio']:.3f} | {1 / r['mac_ratio']:.2f}× | {r['param_ratio']:.3f} | {timing} | "
                         f"{r['output_rel_error']:.3f} | {kept} |")
        lines += ["", "Speed-up is the p50 latency ratio measured interleaved; `1 / MACs ×` is what the MAC count "
                  "alone would promise. Outputs differ a lot because random weights have a flat spectrum "
                  "(nothing to truncate safely): these rows measure speed only.", ""]
    for d in results["digits"]:
        lines += [f"## {d['name']} MLP: held-out accuracy vs rank, plain vs data-aware SVD", "",
                  f"MLP {256}→512→512→10 on {d['name']} (16×16, {d['train_samples']} training images), "
                  f"trained {d['train_seconds']:.0f} s; original accuracy {d['baseline_accuracy']:.4f} on "
                  f"{d['test_samples']} held-out images; data-aware SVD whitened with {d['calibration_samples']} "
                  "training images. The same rank is kept in every layer it makes cheaper; logit error is "
                  "‖Δlogits‖/‖logits‖ on the held-out set.", "",
                  "| rank | MACs × | layers split | accuracy plain | accuracy data-aware | gain | logit error plain | logit error data-aware |",
                  "|---:|---:|---|---:|---:|---:|---:|---:|"]
        for r in d["rows"]:
            lines.append(
                f"| {r['rank']} | {r['mac_ratio']:.3f} | {', '.join(r['layers_split'])} | {r['plain_accuracy']:.4f} | "
                f"{r['data_aware_accuracy']:.4f} | {r['data_aware_accuracy'] - r['plain_accuracy']:+.4f} | "
                f"{r['plain_logit_rel_error']:.3f} | {r['data_aware_logit_rel_error']:.3f} |")
        lines += ["", "Automatic mode (`--max-accuracy-drop 0.01`: one global energy threshold, binary search):", "",
                  "| SVD | energy | ranks | MACs × | accuracy |", "|---|---:|---|---:|---:|"]
        for key, a in d["auto_1pct"].items():
            ranks = ", ".join(f"{k}: {v}" for k, v in a["ranks"].items()) or "none (nothing fits the budget)"
            lines.append(f"| {key} | {a['energy']:.4f} | {ranks} | {a['mac_ratio']:.3f} | {a['accuracy']:.4f} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Smaller VGG head (4096 inputs), fewer iterations.")
    parser.add_argument("--markdown-only", action="store_true", help="Rewrite lowrank.md from lowrank.json.")
    args = parser.parse_args()
    if args.markdown_only:
        (RESULTS / "lowrank.md").write_text(markdown(json.loads((RESULTS / "lowrank.json").read_text())))
        return
    start = time.perf_counter()
    RESULTS.mkdir(exist_ok=True)
    iterations = 10 if args.quick else 30
    latency = []
    dims = (4096, 4096, 4096, 1000) if args.quick else (25088, 4096, 4096, 1000)
    head = vgg_head(dims=dims)
    latency.append(latency_vs_rank(f"VGG classifier head {'→'.join(map(str, dims))}", head, [128, 256, 512, 1024],
                                   shapes={"x": [1, dims[0]]}, batches=(1, 8), iterations=iterations))
    del head
    with tempfile.TemporaryDirectory() as tmp:
        seq = 128
        bert = bert_layer(Path(tmp), seq)
        latency.append(latency_vs_rank(f"BERT-base encoder layer (seq {seq})", bert, [64, 128, 256],
                                       shapes={bert.graph.inputs[0].name: [1, seq, 768]}, batches=(1,),
                                       iterations=iterations))
    digits = [digits_accuracy(kind, args.quick) for kind in ("digits", "hard digits")]
    results = {"quick": args.quick, "seconds": time.perf_counter() - start, "threads": THREADS,
               "latency": latency, "digits": digits}
    (RESULTS / "lowrank.json").write_text(json.dumps(results, indent=2, default=float) + "\n")
    (RESULTS / "lowrank.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
