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
    console.print("[bold]1. lossless only[/bold] (no data): cleanup + BatchNorm folding, verified exact")
    lossless = optimize(DEMO_MODEL, workdir / "digits_cnn.lossless.onnx", bench=True, progress=progress)
    print_optimize_result(lossless)
    console.print("[bold]2. full pipeline[/bold] with calibration data, budget 1 % accuracy on held-out digits")
    full = optimize(DEMO_MODEL, workdir / "digits_cnn.opt.onnx", data=DEMO_DATA, max_drop=0.01, bench=True, progress=progress)
    print_optimize_result(full)
    report = {"lossless": lossless.to_dict(), "full": full.to_dict()}
    write_json(workdir / "report.json", report)
    console.print(f"report: {workdir / 'report.json'}")
    return report
