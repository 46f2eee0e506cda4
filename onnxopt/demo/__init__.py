"""The bundled demo: a small residual CNN trained on scikit-learn's digits.

``digits_cnn.onnx`` (BatchNorm kept, TorchScript export) and ``digits.npz`` (held-out
images + labels) are produced by ``benchmarks/train_demo.py``. :func:`run_demo` runs the
main job on them — optimize (lossless, then the lossy stages under a 1 % budget) → verify
→ bench — with no torch and no network.
"""

from __future__ import annotations

__all__ = ["DEMO_MODEL", "DEMO_DATA", "run_demo"]

from collections.abc import Callable
from pathlib import Path

from rich.console import Console

DEMO_DIR = Path(__file__).resolve().parent
DEMO_MODEL = DEMO_DIR / "digits_cnn.onnx"
DEMO_DATA = DEMO_DIR / "digits.npz"


def run_demo(workdir: Path, *, console: Console, progress: Callable[[str], None] | None = None) -> dict:
    """Optimize the demo model into ``workdir``; returns the JSON report it also writes."""
    from onnxopt.cli import print_optimize_result
    from onnxopt.optimize import optimize
    from onnxopt.report import write_json

    workdir.mkdir(parents=True, exist_ok=True)
    console.rule("onnxopt demo: digits CNN (residual blocks, BatchNorm, two FC layers)")
    console.print(f"model: {DEMO_MODEL.name}, data: {DEMO_DATA.name} (held-out digits with labels)")
    console.print("[bold]1. lossless only[/bold] (no data): cleanup + BatchNorm folding + channel padding where it measures faster, verified exact")
    lossless = optimize(DEMO_MODEL, workdir / "digits_cnn.lossless.onnx", bench=True, progress=progress)
    print_optimize_result(lossless)
    console.print("[bold]2. full pipeline[/bold] with calibration data, budget 1 % accuracy on held-out digits")
    full = optimize(DEMO_MODEL, workdir / "digits_cnn.opt.onnx", data=DEMO_DATA, max_drop=0.01, bench=True, progress=progress)
    print_optimize_result(full)
    console.print("[bold]3. weight quantization alone[/bold] on the BN-folded model: int8 (QDQ, u8 × s8 per channel) and ternary weights")
    quantized = _quantization_table(lossless.model, console, progress)
    report = {"lossless": lossless.to_dict(), "full": full.to_dict(), "quantization": quantized}
    write_json(workdir / "report.json", report)
    console.print(f"report: {workdir / 'report.json'}")
    return report


def _quantization_table(model, console: Console, progress) -> dict:
    """int8 and ternary on the demo model: size, held-out accuracy, latency ratio (interleaved)."""
    from rich.table import Table

    from onnxopt.bench import benchmark
    from onnxopt.calibration import load_npz
    from onnxopt.evaluate import Evaluator
    from onnxopt.quantization import quantize_model
    from onnxopt.report import fmt_bytes

    calib, held_out = load_npz(DEMO_DATA, model).split(0.5, seed=0)
    evaluator = Evaluator(model, held_out)
    results = {
        # The speed guard is off here so the demo shows int8 even where it does not pay off;
        # `optimize` keeps int8 only when it is measurably faster.
        "int8": quantize_model(model, calib, evaluator, mode="int8", check_speed=False, progress=progress or (lambda m: None)),
        "ternary": quantize_model(model, calib, evaluator, mode="ternary", progress=progress or (lambda m: None)),
    }
    bench = benchmark([("float", model)] + [(k, r.model) for k, r in results.items()], threads=2, seconds=3.0)
    speed = {row.model: row.ratio for row in bench.rows}
    table = Table(title="weight quantization (held-out digits)")
    for col in ("variant", "size", "smaller", "accuracy", "float layers", "speed-up"):
        table.add_column(col, justify="left" if col == "variant" else "right")
    table.add_row("float", fmt_bytes(next(iter(results.values())).size_before), "1.0×", f"{evaluator.baseline:.4f}", "-", "1.00×")
    summary = {}
    for name, r in results.items():
        table.add_row(name, fmt_bytes(r.size_after), f"{r.size_before / r.size_after:.1f}×", f"{evaluator.score(r.model):.4f}",
                      str(len(r.layers_float)), f"{speed[name]:.2f}×")
        summary[name] = {**r.to_dict(), "speedup": speed[name]}
    console.print(table)
    return summary
