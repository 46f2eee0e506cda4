"""Reports: model summaries, before/after tables on the terminal, JSON for machines."""

from __future__ import annotations

__all__ = [
    "ModelSummary",
    "summarize",
    "before_after_table",
    "stage_table",
    "write_json",
    "fmt_count",
    "fmt_bytes",
]

import dataclasses
import json
import math
import os
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir
from rich.markup import escape
from rich.table import Table

from onnxopt.cost import model_cost
from onnxopt.graph import default_opset
from onnxopt.model_io import file_size, model_bytes


@dataclasses.dataclass
class ModelSummary:
    nodes: int
    ops: dict[str, int]
    params: int
    macs: int
    size_bytes: int
    opset: int
    macs_unknown: int = 0  # nodes whose shapes stayed unknown: ``macs`` is a lower bound

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def summarize(model: ir.Model, path: str | os.PathLike | None = None, shapes: Mapping | None = None) -> ModelSummary:
    """Node/op counts, parameters, MACs and size (file size if ``path`` is given)."""
    cost = model_cost(model, shapes)
    ops = Counter(n.op_type for n in model.graph)
    size = file_size(path) if path is not None and Path(path).exists() else model_bytes(model)
    unknown = sum(n.unknown for n in cost.nodes)
    return ModelSummary(len(model.graph), dict(sorted(ops.items())), cost.params, cost.macs, size, default_opset(model), unknown)


def fmt_count(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:g}" if isinstance(n, float) else str(n)


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} B"


def _ratio(a: float, b: float) -> str:
    if not a or not b:
        return ""
    return f"×{b / a:.3f}"


def before_after_table(
    before: ModelSummary,
    after: ModelSummary,
    extra: Sequence[tuple[str, str, str, str]] = (),
    title: str = "before / after",
) -> Table:
    """Rows: size, params, MACs, nodes, then each op type whose count changed, then ``extra``."""
    table = Table(title=title)
    for col in ("", "before", "after", "change"):
        table.add_column(col, justify="right" if col else "left")
    table.add_row("file size", fmt_bytes(before.size_bytes), fmt_bytes(after.size_bytes), _ratio(before.size_bytes, after.size_bytes))
    table.add_row("parameters", fmt_count(before.params), fmt_count(after.params), _ratio(before.params, after.params))
    def macs(summary: ModelSummary) -> str:  # a lower bound where some shapes stayed unknown
        return ("≥ " if summary.macs_unknown else "") + fmt_count(summary.macs)

    exact = not (before.macs_unknown or after.macs_unknown)
    table.add_row("MACs", macs(before), macs(after), _ratio(before.macs, after.macs) if exact else "")
    table.add_row("nodes", str(before.nodes), str(after.nodes), f"{after.nodes - before.nodes:+d}")
    for op in sorted(set(before.ops) | set(after.ops)):
        b, a = before.ops.get(op, 0), after.ops.get(op, 0)
        if a != b:
            table.add_row(f"  {op}", str(b), str(a), f"{a - b:+d}")
    for row in extra:
        table.add_row(*row)
    return table


def stage_table(records: Sequence[Any]) -> Table:
    """One row per pipeline stage: kept or rolled back, error, MACs, time."""
    table = Table(title="stages")
    for col in ("stage", "result", "max rel. error", "score", "MACs", "time", "note"):
        table.add_column(col)
    for r in records:
        if r.kept:
            result = "[green]applied[/green]"
        elif r.reason:
            result = "[yellow]rolled back[/yellow]"
        else:
            result = "no change"
        err = f"{r.fidelity['max_rel']:.2e}" if r.fidelity else "-"
        score = f"{r.score:.4f}" if r.score is not None else "-"
        # one entry per distinct message: quantize applies one mode to many layers
        messages = [m if n == 1 else f"{m} ×{n}" for m, n in Counter(m for _, m in r.applied).items()]
        why_not = "" if r.modified else str((r.details or {}).get("reason") or "")
        note = r.reason or why_not or ", ".join(messages[:4]) + (" …" if len(messages) > 4 else "")
        if r.skipped and not r.reason:
            note = (note + "; " if note else "") + f"{len(r.skipped)} skipped"
        table.add_row(escape(r.name), result, err, score, fmt_count(r.macs), f"{r.seconds:.2f}s", escape(note))
    return table


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _jsonable(obj.to_dict() if hasattr(obj, "to_dict") else dataclasses.asdict(obj))
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return _jsonable(obj.item())
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as JSON atomically (numpy values and dataclasses converted)."""
    path = Path(path)
    text = json.dumps(_jsonable(data), indent=2)
    fd, tmp = tempfile.mkstemp(prefix=".onnxopt-", suffix=".json", dir=path.parent if str(path.parent) else ".")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text + "\n")
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; a report is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def to_json_text(data: Any) -> str:
    return json.dumps(_jsonable(data), indent=2)
