"""Writing a benchmark's rows as ``benchmarks/results/<stem>.{json,md}`` with the machine,
onnxruntime version, date and run time that every results file states."""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from pathlib import Path

import onnxruntime as ort

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def write(stem: str, rows: list[dict], start: float, markdown: Callable[[dict], str], **versions: str) -> dict:
    """Save ``rows`` (measured since ``time.perf_counter()`` was ``start``) and print the
    markdown; ``versions`` (e.g. ``torch="2.13.0"``) are stated beside onnxruntime's."""
    results = {
        "machine": platform.machine(), "onnxruntime": ort.__version__, **versions, "date": time.strftime("%Y-%m-%d"),
        "seconds": time.perf_counter() - start, "rows": rows,
    }  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(results, indent=2, default=float) + "\n")
    (RESULTS / f"{stem}.md").write_text(markdown(results))
    print(markdown(results))
    return results
