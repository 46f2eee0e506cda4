"""Calibration and evaluation data: loading, validation, synthesis, splitting, batching.

A :class:`Dataset` is a dict of named input arrays (first axis = samples) plus optional
labels. Sources:
- an ``.npz`` file whose keys are the model's input names (a single-input model also
  accepts any one array, e.g. ``x``), and optionally ``labels`` (or ``y``/``label``);
- :func:`synthetic`: random inputs generated from the model's input signature with a
  fixed seed (for lossless verification when no data is given).

Validation names the offending input: wrong rank or shape, wrong dtype kind, NaN/Inf,
mismatched sample counts, too few samples.
"""

from __future__ import annotations

__all__ = [
    "Dataset",
    "InputSpec",
    "input_specs",
    "load_npz",
    "check_dataset",
    "synthetic",
    "parse_shapes",
]

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxopt.errors import OnnxoptError

_LABEL_KEYS = ("labels", "label", "y", "targets")


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """A graph input: name, numpy dtype and shape (ints, or None/str for dynamic dims)."""

    name: str
    dtype: np.dtype
    shape: tuple[int | str | None, ...] | None


def input_specs(model: ir.Model) -> list[InputSpec]:
    """The model's real inputs (graph inputs that are not initializers)."""
    specs = []
    for value in model.graph.inputs:
        if value.name in model.graph.initializers:
            continue
        dtype = value.dtype.numpy() if value.dtype is not None else np.dtype(np.float32)
        shape = None
        if value.shape is not None:
            shape = tuple(d if isinstance(d, int) else (d.value if d.value else None) for d in value.shape)
        specs.append(InputSpec(value.name, np.dtype(dtype), shape))
    return specs


def parse_shapes(items: Sequence[str] | str | None) -> dict[str, list[int]]:
    """Parse ``input=1x3x224x224`` (several, comma or repeated) into name → dims."""
    if not items:
        return {}
    if isinstance(items, str):
        items = [items]
    shapes: dict[str, list[int]] = {}
    for item in items:
        for part in item.split(","):
            part = part.strip()
            if not part:
                continue
            name, sep, dims = part.rpartition("=")
            try:
                if not sep or not name:
                    raise ValueError
                shapes[name] = [int(d) for d in dims.lower().split("x")]
                if any(d <= 0 for d in shapes[name]):
                    raise ValueError
            except ValueError:
                raise OnnxoptError(
                    f"--shape {part!r}: expected NAME=DxDx... with positive integers, e.g. input=1x3x224x224"
                ) from None
    return shapes


@dataclasses.dataclass
class Dataset:
    """Named input arrays with the sample axis first, and optional labels."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None = None

    def __len__(self) -> int:
        # scalar inputs (a flag, a step count) have no sample axis and are shared by all
        batched = [v for v in self.inputs.values() if np.ndim(v) > 0]
        return len(batched[0]) if batched else (1 if self.inputs else 0)

    def take(self, index: np.ndarray | slice) -> Dataset:
        """The samples at ``index``; an input without the sample axis (a scalar, or a first
        axis of another length, such as an RNN state's layers in generated data) is shared."""
        n = len(self)
        labels = None if self.labels is None else self.labels[index]
        return Dataset({k: v[index] if np.ndim(v) > 0 and len(v) == n else v for k, v in self.inputs.items()}, labels)

    def split(self, eval_fraction: float = 0.5, seed: int = 0) -> tuple[Dataset, Dataset]:
        """Disjoint (calibration, evaluation) halves, shuffled with ``seed``."""
        n = len(self)
        if n < 2:
            raise OnnxoptError(
                f"need at least 2 samples to split into calibration and evaluation data, got {n}"
            )
        order = np.random.default_rng(seed).permutation(n)
        n_eval = min(n - 1, max(1, round(n * eval_fraction)))
        return self.take(np.sort(order[n_eval:])), self.take(np.sort(order[:n_eval]))

    def batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        n = len(self)
        for start in range(0, n, batch_size):
            yield {k: v[start : start + batch_size] for k, v in self.inputs.items()}


def _check_array(name: str, array: np.ndarray, spec: InputSpec) -> np.ndarray:
    if spec.shape is not None:
        if array.ndim != len(spec.shape):
            raise OnnxoptError(
                f"input {name!r}: data has shape {list(array.shape)} but the model expects rank "
                f"{len(spec.shape)} {_fmt_shape(spec.shape)} (samples on the first axis)"
            )
        for i, (got, want) in enumerate(zip(array.shape, spec.shape)):
            if i > 0 and isinstance(want, int) and want > 0 and got != want:
                raise OnnxoptError(
                    f"input {name!r}: data has shape {list(array.shape)} but the model expects "
                    f"{_fmt_shape(spec.shape)} (dimension {i} is {got}, expected {want})"
                )
    if array.dtype != spec.dtype:
        same_kind = (array.dtype.kind in "f") == (spec.dtype.kind in "f") and array.dtype.kind != "b"
        if not same_kind and not (array.dtype.kind in "iu" and spec.dtype.kind in "iu"):
            raise OnnxoptError(
                f"input {name!r}: data has dtype {array.dtype} but the model expects {spec.dtype}"
            )
        array = array.astype(spec.dtype)
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise OnnxoptError(f"input {name!r}: data contains NaN or Inf values")
    return array


def shapes_text(inputs: Mapping[str, Any]) -> str:
    """``name=1x3x224x224, flag=scalar``: the shapes of a feed, for error messages."""
    return ", ".join(f"{k}={'x'.join(str(d) for d in getattr(v, 'shape', ())) or 'scalar'}" for k, v in inputs.items())


def _fmt_shape(shape: Sequence) -> str:
    return "[" + ", ".join("?" if not isinstance(d, int) else str(d) for d in shape) + "]"


def load_npz(path: str | Path, model: ir.Model, *, min_samples: int = 1) -> Dataset:
    """Load and validate an ``.npz`` of model inputs (and optional labels)."""
    path = Path(path)
    if not path.is_file():
        raise OnnxoptError(f"{path}: no such data file; give an .npz with one array per model input")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except Exception as exc:  # a damaged file fails deep inside zipfile/zlib/numpy's header parser
        detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise OnnxoptError(f"{path}: not a readable .npz file ({detail}); write it with numpy.savez") from None
    specs = input_specs(model)
    labels = None
    for key in _LABEL_KEYS:
        if key in arrays and key not in {s.name for s in specs}:
            labels = arrays.pop(key)
            break
    inputs: dict[str, np.ndarray] = {}
    missing = [s.name for s in specs if s.name not in arrays]
    if missing:
        if len(specs) == 1 and len(arrays) == 1:
            arrays = {specs[0].name: next(iter(arrays.values()))}
        else:
            raise OnnxoptError(
                f"{path}: no array for model input(s) {missing}; the .npz keys are {sorted(arrays)}"
            )
    for spec in specs:
        inputs[spec.name] = _check_array(spec.name, arrays[spec.name], spec)
    counts = {len(a) for a in inputs.values()}
    if labels is not None:
        counts.add(len(labels))
    if len(counts) > 1:
        raise OnnxoptError(f"{path}: arrays disagree on the number of samples ({sorted(counts)})")
    n = counts.pop() if counts else 0
    if n < min_samples:
        raise OnnxoptError(f"{path}: {n} samples, at least {min_samples} needed")
    if labels is not None:
        labels = np.asarray(labels).reshape(n, -1) if labels.ndim > 1 else np.asarray(labels)
    return Dataset(inputs, labels)


def check_dataset(dataset: Dataset, model: ir.Model) -> Dataset:
    """Validate a :class:`Dataset` built in Python as :func:`load_npz` validates a file."""
    specs = input_specs(model)
    missing = [s.name for s in specs if s.name not in dataset.inputs]
    if missing:
        raise OnnxoptError(f"data has no array for model input(s) {missing}; its keys are {sorted(dataset.inputs)}")
    inputs = {s.name: _check_array(s.name, np.asarray(dataset.inputs[s.name]), s) for s in specs}
    counts = {len(a) for a in inputs.values() if a.ndim}
    if dataset.labels is not None:
        counts.add(len(dataset.labels))
    if len(counts) > 1:
        raise OnnxoptError(f"data arrays disagree on the number of samples ({sorted(counts)})")
    return Dataset(inputs, dataset.labels)


def synthetic(
    model: ir.Model,
    n: int = 8,
    *,
    seed: int = 0,
    shapes: Mapping[str, Sequence[int]] | None = None,
) -> Dataset:
    """Random inputs that fit the model's signature (dynamic dims: from ``shapes`` or 1).

    ``shapes`` gives the full shape of one batch; the sample axis is the first one.
    Floats are standard normal, integers small non-negative (safe as indices), bools random.
    """
    rng = np.random.default_rng(seed)
    shapes = dict(shapes or {})
    inputs: dict[str, np.ndarray] = {}
    for spec in input_specs(model):
        if spec.name in shapes:
            dims = list(shapes[spec.name])
        elif spec.shape is None:
            raise OnnxoptError(
                f"input {spec.name!r} has no shape in the model; give it with --shape {spec.name}=..."
            )
        else:
            dims = [d if isinstance(d, int) and d > 0 else 1 for d in spec.shape]
        fixed_first = bool(spec.shape) and isinstance(spec.shape[0], int) and spec.shape[0] > 0
        if dims and not fixed_first:  # a fixed first axis (an RNN state's layers) is not the sample axis
            dims[0] = n
        kind = spec.dtype.kind
        if kind == "f":
            arr = rng.standard_normal(dims).astype(spec.dtype)
        elif kind in "iu":
            arr = rng.integers(0, 4, size=dims).astype(spec.dtype)
        elif kind == "b":
            arr = rng.integers(0, 2, size=dims).astype(bool)
        else:
            raise OnnxoptError(f"input {spec.name!r}: cannot generate data of dtype {spec.dtype}; pass --data")
        inputs[spec.name] = arr
    return Dataset(inputs)
