"""Calibration and evaluation data: loading, validation, synthesis, splitting, batching.

A :class:`Dataset` is a dict of named input arrays (samples on each input's sample axis,
:func:`onnxopt.graph.sample_axes`: the first one unless the model says otherwise) plus
optional labels. Sources:
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
    "feed_batch",
    "input_specs",
    "has_dynamic_dims",
    "sample_elements",
    "load_npz",
    "parse_sample_axes",
    "check_dataset",
    "synthetic",
    "length_inputs",
    "parse_shapes",
    "with_sample_axes",
    "limit_batch",
    "sample_value_sizes",
    "batch_keeping_all_values",
    "ACTIVATION_BUDGET",
]

import dataclasses
import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxopt.errors import OnnxoptError
from onnxopt.graph import attr, const_array, fixed_batch, sample_axes, static_shapes

_LABEL_KEYS = ("labels", "label", "y", "targets")


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """A graph input: name, numpy dtype, shape (ints, or None/str for dynamic dims) and the
    axis that carries samples (:func:`onnxopt.graph.sample_axes`; None for a scalar)."""

    name: str
    dtype: np.dtype
    shape: tuple[int | str | None, ...] | None
    axis: int | None = 0


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
    axes = sample_axes({s.name: s.shape for s in specs})
    return [dataclasses.replace(s, axis=axes[s.name]) for s in specs]


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
    """Named input arrays and optional labels. Samples lie on each input's sample axis
    (``axes``; the first axis unless it says otherwise, e.g. 1 for an RNN state
    ``[layers, batch, hidden]``); an input without it (a scalar, a state shared by all
    samples) is fed whole with every batch. An input in ``stacked`` takes one sample without
    a sample axis (torchvision's detectors read one image ``[3, H, W]``): its samples are
    stacked on a new first axis here, and each feed holds one of them without it."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None = None
    axes: dict[str, int | None] = dataclasses.field(default_factory=dict)
    stacked: frozenset[str] = frozenset()
    max_batch: int | None = None  # samples per run at most (:func:`limit_batch`)

    def axis(self, name: str) -> int | None:
        """The sample axis of input ``name`` (None: it has none, e.g. a scalar, or a
        sequence, map or optional input, which is never cut)."""
        value = self.inputs[name]
        if not isinstance(value, np.ndarray) or value.ndim == 0:
            return None
        axis = self.axes.get(name, 0)
        return axis if axis is not None and axis < np.ndim(value) else None

    def __len__(self) -> int:
        for name, value in self.inputs.items():
            axis = self.axis(name)
            if axis is not None:
                return value.shape[axis]
        return 1 if self.inputs else 0

    def _cut(self, index: np.ndarray | slice) -> dict[str, np.ndarray]:
        n = len(self)
        out = {}
        for name, value in self.inputs.items():
            axis = self.axis(name)
            if axis is None or value.shape[axis] != n:  # no sample axis: shared
                out[name] = value
            else:
                out[name] = value[(slice(None),) * axis + (index,)]
        return out

    def take(self, index: np.ndarray | slice) -> Dataset:
        """The samples at ``index``; an input without the sample axis (a scalar, or one of
        another length, such as a state shared by all samples) is shared."""
        labels = None if self.labels is None else self.labels[index]
        return Dataset(self._cut(index), labels, dict(self.axes), self.stacked, self.max_batch)

    @property
    def feed(self) -> dict[str, np.ndarray]:
        """The inputs as the model takes them: a stacked input's one sample without its axis."""
        if not self.stacked:
            return self.inputs
        if len(self) != 1:
            raise ValueError(f"a feed of stacked inputs holds one sample, not {len(self)}")
        return {k: v[0] if k in self.stacked else v for k, v in self.inputs.items()}

    def split(self, eval_fraction: float = 0.5, seed: int = 0, multiple: int = 1) -> tuple[Dataset, Dataset]:
        """Disjoint (calibration, evaluation) halves, shuffled with ``seed``; each holds a
        multiple of ``multiple`` samples (a model's fixed batch), the rest is left out."""
        n, multiple = len(self), max(1, multiple)
        if n < 2 * multiple:
            fixed = f" (2 batches of the model's fixed {multiple})" if multiple > 1 else ""
            hint = ("; a model that reads one sample without a sample axis takes them stacked on a new first axis"
                    if multiple > 1 and not self.stacked else "")  # fmt: skip
            raise OnnxoptError(
                f"need at least {2 * multiple} samples{fixed} to split into calibration and evaluation data, got {n}{hint}"
            )
        order = np.random.default_rng(seed).permutation(n)
        batches = n // multiple
        n_eval = min(batches - 1, max(1, round(batches * eval_fraction))) * multiple
        return self.take(np.sort(order[n_eval : batches * multiple])), self.take(np.sort(order[:n_eval]))

    def parts(self, batch_size: int) -> Iterator[Dataset]:
        """Consecutive parts of ``batch_size`` samples, or :attr:`max_batch` when fewer
        (the last one may be smaller; one sample each with stacked inputs)."""
        step = 1 if self.stacked else min(batch_size, self.max_batch or batch_size)
        for start in range(0, len(self), step):
            yield self.take(slice(start, start + step))

    def batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        """Feeds of ``batch_size`` samples (the last one may be smaller; see :meth:`parts`)."""
        for part in self.parts(batch_size):
            yield part.feed


def _stacked(array: np.ndarray, spec: InputSpec) -> bool:
    """Whether ``array`` holds samples of an input without a sample axis, stacked on a new
    first axis: one axis more than the input, the others of its fixed sizes."""
    if spec.shape is None or np.ndim(array) != len(spec.shape) + 1 or not array.shape[0]:
        return False
    return all(not isinstance(want, int) or want <= 0 or got == want for got, want in zip(array.shape[1:], spec.shape))


def _stacked_specs(inputs: Mapping[str, np.ndarray], specs: Sequence[InputSpec]) -> tuple[list[InputSpec], frozenset[str]]:
    """The specs with the sample axes of stacked inputs (0), and their names. When one input
    is stacked, the model takes one sample per run: the others are fed whole with each."""
    stacked = frozenset(s.name for s in specs if _stacked(inputs[s.name], s))
    if not stacked:
        return list(specs), stacked
    return [dataclasses.replace(s, axis=0 if s.name in stacked else None) for s in specs], stacked


def feed_batch(model: ir.Model, data: Dataset | None) -> int | None:
    """The samples one run of ``model`` takes from ``data``: one when its inputs are stacked,
    else the model's fixed batch (None: any number)."""
    return 1 if data is not None and data.stacked else fixed_batch(model)


def _check_array(name: str, array: np.ndarray, spec: InputSpec) -> np.ndarray:
    if _stacked(array, spec):  # each sample has the input's shape (``_stacked`` checked it)
        return _check_array_values(name, array, spec)
    if spec.shape is not None:
        if array.ndim != len(spec.shape):
            raise OnnxoptError(
                f"input {name!r}: data has shape {list(array.shape)} but the model expects rank "
                f"{len(spec.shape)} {_fmt_shape(spec.shape)} ({_samples_on(spec)})"
            )
        for i, (got, want) in enumerate(zip(array.shape, spec.shape)):
            if i != spec.axis and isinstance(want, int) and want > 0 and got != want:
                # a fixed batch of 1 off the first axis (an RNN state [layers, 1, hidden])
                hint = (f"; if axis {i} holds the samples, say so: --sample-axis {name}={i} "
                        f"(Dataset(axes={{{name!r}: {i}}}) in Python)") if want == 1 else ""  # fmt: skip
                raise OnnxoptError(
                    f"input {name!r}: data has shape {list(array.shape)} but the model expects "
                    f"{_fmt_shape(spec.shape)} (dimension {i} is {got}, expected {want}{hint})"
                )
    return _check_array_values(name, array, spec)


def _check_array_values(name: str, array: np.ndarray, spec: InputSpec) -> np.ndarray:
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


def _samples_on(spec: InputSpec) -> str:
    if spec.axis is None:
        return "a scalar"
    return "samples on the first axis" if spec.axis == 0 else f"samples on axis {spec.axis}"


def _sample_counts(inputs: Mapping[str, np.ndarray], specs: Sequence[InputSpec]) -> set[int]:
    return {inputs[s.name].shape[s.axis] for s in specs if s.axis is not None and inputs[s.name].ndim > s.axis}


def _fmt_shape(shape: Sequence) -> str:
    return "[" + ", ".join("?" if not isinstance(d, int) else str(d) for d in shape) + "]"


def parse_sample_axes(items: Sequence[str] | str | None) -> dict[str, int | None]:
    """Parse ``state=1`` / ``sr=none`` (several, comma or repeated) into name → sample axis
    (None: the input has no sample axis and is shared by every sample)."""
    if not items:
        return {}
    if isinstance(items, str):
        items = [items]
    axes: dict[str, int | None] = {}
    for part in (p.strip() for item in items for p in item.split(",")):
        if not part:
            continue
        name, sep, axis = part.rpartition("=")
        if not sep or not name or not (axis.strip().lower() == "none" or axis.strip().lstrip("-").isdigit()):
            raise OnnxoptError(f"--sample-axis {part!r}: expected NAME=AXIS (an integer, or none)")
        axes[name.strip()] = None if axis.strip().lower() == "none" else int(axis)
    return axes


def _named_sample_axes(specs: list[InputSpec], sample_axes: Mapping[str, int | None] | None) -> list[InputSpec]:
    """``specs`` with the sample axes the user named (``--sample-axis``)."""
    if not sample_axes:
        return specs
    by_name = {s.name: s for s in specs}
    unknown = [n for n in sample_axes if n not in by_name]
    if unknown:
        raise OnnxoptError(f"--sample-axis {unknown[0]!r}: the model has no input of that name (inputs: {sorted(by_name)})")
    out = []
    for spec in specs:
        if spec.name in sample_axes:
            axis = sample_axes[spec.name]
            rank = len(spec.shape) if spec.shape is not None else None
            if axis is not None and rank is not None:
                if not -rank <= axis < rank:
                    raise OnnxoptError(f"--sample-axis {spec.name}={axis}: the input has rank {rank}")
                axis %= rank
            spec = dataclasses.replace(spec, axis=axis)
        out.append(spec)
    return out


def load_npz(
    path: str | Path, model: ir.Model, *, min_samples: int = 1, sample_axes: Mapping[str, int | None] | None = None
) -> Dataset:
    """Load and validate an ``.npz`` of model inputs (and optional labels); ``sample_axes``
    names the sample axis of inputs whose shape does not say it (``--sample-axis``)."""
    path = Path(path)
    if not path.is_file():
        raise OnnxoptError(f"{path}: no such data file; give an .npz with one array per model input")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except Exception as exc:  # a damaged file fails deep inside zipfile/zlib/numpy's header parser
        detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise OnnxoptError(f"{path}: not a readable .npz file ({detail}); write it with numpy.savez") from None
    specs = _named_sample_axes(input_specs(model), sample_axes)
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
    specs, stacked = _stacked_specs(inputs, specs)
    counts = _sample_counts(inputs, specs)
    if labels is not None:
        counts.add(len(labels))
    if len(counts) > 1:
        raise OnnxoptError(f"{path}: arrays disagree on the number of samples ({sorted(counts)})")
    n = counts.pop() if counts else 0
    if n < min_samples:
        raise OnnxoptError(f"{path}: {n} samples, at least {min_samples} needed")
    if labels is not None:
        labels = np.asarray(labels).reshape(n, -1) if labels.ndim > 1 else np.asarray(labels)
    return limit_batch(Dataset(inputs, labels, {s.name: s.axis for s in specs}, stacked), model)


def check_dataset(dataset: Dataset, model: ir.Model) -> Dataset:
    """Validate a :class:`Dataset` built in Python as :func:`load_npz` validates a file."""
    specs = input_specs(model)
    missing = [s.name for s in specs if s.name not in dataset.inputs]
    if missing:
        raise OnnxoptError(f"data has no array for model input(s) {missing}; its keys are {sorted(dataset.inputs)}")
    inputs = {s.name: _check_array(s.name, np.asarray(dataset.inputs[s.name]), s) for s in specs}
    specs, stacked = _stacked_specs(inputs, specs)
    counts = _sample_counts(inputs, specs)
    if dataset.labels is not None:
        counts.add(len(dataset.labels))
    if len(counts) > 1:
        raise OnnxoptError(f"data arrays disagree on the number of samples ({sorted(counts)})")
    return limit_batch(Dataset(inputs, dataset.labels, {s.name: s.axis for s in specs}, stacked), model)


ACTIVATION_BUDGET = 256 * 2**20
"""Bytes the largest value of one batch may take (:func:`limit_batch`)."""


def limit_batch(data: Dataset, model: ir.Model) -> Dataset:
    """``data`` with :attr:`Dataset.max_batch` set so that the largest value of ``model``
    (after shape inference at one sample's shape, as float32) stays within
    :data:`ACTIVATION_BUDGET` per batch: DNSMOS's sig.onnx holds 128 × 901 × 161 floats per
    sample, 74 MB, and ran at 9-12 GB resident in batches of 16. A model with a fixed batch
    takes that batch; a dataset that already has a limit keeps it, and one of a single sample,
    or of stacked samples (fed one per run), has nothing to cut."""
    if data.max_batch is not None or data.stacked or len(data) <= 1 or fixed_batch(model):
        return data
    largest = 4 * max(sample_value_sizes(model, data), default=0)
    return dataclasses.replace(data, max_batch=max(1, ACTIVATION_BUDGET // largest)) if largest else data


def batch_keeping_all_values(model: ir.Model, data: Dataset, at_most: int) -> int:
    """Samples per run of ``model`` on ``data`` when every value of a run stays alive until
    its end: the model's fixed batch, else at most ``at_most`` and few enough that all its
    values fit :data:`ACTIVATION_BUDGET`. onnxruntime's calibration model, and a
    :class:`~onnxopt.importance.Probe`, read statistics of values after the graph's last node
    (SLANet-plus on 488 × 488 tables, 16 per calibration run: 5.3 GB resident and 13.5 s;
    one per run: 0.9 GB and 7.1 s)."""
    if fixed := fixed_batch(model):
        return fixed
    total = 4 * sum(sample_value_sizes(model, data))
    return max(1, min(at_most, ACTIVATION_BUDGET // total)) if total else at_most


def sample_value_sizes(model: ir.Model, data: Dataset) -> list[int]:
    """Elements of each value ``model`` computes for one sample of ``data`` (its inputs and
    node outputs whose shapes inference makes static; weights and constants excluded)."""
    if not len(data):
        return []
    one = data.take(slice(0, 1)).feed
    pinned = {k: np.shape(v) for k, v in one.items() if isinstance(v, np.ndarray)}
    shapes = static_shapes(model, pinned, execute=False)
    weights = set(model.graph.initializers) | {  # shared by all samples: not per batch
        node.outputs[0].name for node in model.graph if node.op_type == "Constant"}
    return [math.prod(shape) for name, shape in shapes.items()
            if name not in weights and shape and all(isinstance(d, int) and d > 0 for d in shape)]  # fmt: skip


def _batch_dims(spec: InputSpec, shapes: Mapping[str, Sequence[int]], n: int, dynamic_size: int) -> list[int]:
    """The shape :func:`synthetic` gives ``spec`` for ``n`` samples."""
    if spec.name in shapes:
        dims = list(shapes[spec.name])
    elif spec.shape is None:
        raise OnnxoptError(f"input {spec.name!r} has no shape in the model; give it with --shape {spec.name}=...")
    else:
        dims = [d if isinstance(d, int) and d > 0 else dynamic_size for d in spec.shape]
    if spec.axis is not None and spec.axis < len(dims) and not _fixed_dim(spec, spec.axis):
        dims[spec.axis] = n  # a fixed sample axis (an exported batch of 1) stays as exported
    return dims


def sample_elements(model: ir.Model, shapes: Mapping[str, Sequence[int]] | None = None, dynamic_size: int = 1) -> int:
    """The most elements :func:`synthetic` puts in one input for one sample (inputs without
    a shape, which it refuses, count 0): what a ``dynamic_size`` costs before it is built."""
    specs = [s for s in input_specs(model) if s.shape is not None or s.name in (shapes or {})]
    return max((math.prod(_batch_dims(s, dict(shapes or {}), 1, dynamic_size)) for s in specs), default=0)


def has_dynamic_dims(model: ir.Model, shapes: Mapping[str, Sequence[int]] | None = None) -> bool:
    """Whether an input not in ``shapes`` has a dynamic dimension besides its sample axis."""
    return any(
        spec.shape is not None and any(not _fixed_dim(spec, axis) for axis in range(len(spec.shape)) if axis != spec.axis)
        for spec in input_specs(model) if spec.name not in (shapes or {})
    )


def _fixed_dim(spec: InputSpec, axis: int) -> bool:
    return spec.shape is not None and isinstance(spec.shape[axis], int) and spec.shape[axis] > 0


def with_sample_axes(data: Dataset | None, model: ir.Model) -> Dataset | None:
    """``data`` with the model's sample axis for every input whose axis it does not say (a
    :class:`Dataset` built in Python)."""
    if data is None:
        return None
    axes = {s.name: s.axis for s in input_specs(model)} | data.axes
    return limit_batch(dataclasses.replace(data, axes=axes), model)


# ops that pass integer indices on unchanged (an input's ids reach their Gather through these)
_PASS_INDICES = {"Cast", "Identity", "Unsqueeze", "Squeeze", "Reshape", "Flatten", "Expand", "Transpose"}


# (domain, op) → {index input: the table input it indexes (rows on axis 0)}; onnxruntime's
# fused BERT embedding reads word, segment and position ids
_INDEXED_TABLES = {
    ("com.microsoft", "EmbedLayerNormalization"): {0: 2, 1: 4, 8: 3},
}


def _index_limit(model: ir.Model, name: str) -> int | None:
    """The rows of the smallest table that input ``name`` indexes (a Gather of a constant
    along its axis, or a table of a fused embedding op), or None when it indexes none."""
    stack = [v for v in model.graph.inputs if v.name == name]
    limit = None
    while stack:
        for user, index in stack.pop().uses():
            tables = _INDEXED_TABLES.get((user.domain or "", user.op_type), {})
            if user.op_type in _PASS_INDICES and index == 0:
                stack.extend(user.outputs)
            elif (user.op_type == "Gather" and user.domain in ("", "ai.onnx") and index == 1) or index in tables:
                at = tables.get(index, 0)  # a Gather's table is its input 0
                table = user.inputs[at] if at < len(user.inputs) else None
                if table is None:
                    continue
                # an initializer's shape is known without loading it
                dims = table.const_value.shape if table.const_value is not None else getattr(const_array(table), "shape", None)
                axis = attr(user, "axis", 0) if not tables else 0
                if dims is not None and -len(dims) <= axis < len(dims) and isinstance(dims[axis], int) and dims[axis] > 0:
                    limit = dims[axis] if limit is None else min(limit, dims[axis])
    return limit


def synthetic(
    model: ir.Model,
    n: int = 8,
    *,
    seed: int = 0,
    shapes: Mapping[str, Sequence[int]] | None = None,
    fill: Mapping[str, int] | None = None,
    dynamic_size: int = 1,
) -> Dataset:
    """Random inputs that fit the model's signature (dynamic dims: from ``shapes``, else
    ``dynamic_size``).

    ``shapes`` gives the full shape of one batch; the sample axis (of ``n``) is the one
    :func:`onnxopt.graph.sample_axes` names.
    Floats are standard normal, integers small non-negative (below 4 and below the rows of
    any table they index: a BERT's token types have 2), bools random. An integer input named
    in ``fill`` holds that value everywhere instead (see :func:`length_inputs`).
    """
    fill = dict(fill or {})
    rng = np.random.default_rng(seed)
    shapes = dict(shapes or {})
    inputs: dict[str, np.ndarray] = {}
    specs = input_specs(model)
    for spec in specs:
        dims = _batch_dims(spec, shapes, n, dynamic_size)
        kind = spec.dtype.kind
        if kind == "f":
            arr = rng.standard_normal(dims).astype(spec.dtype)
        elif kind in "iu" and spec.name in fill:
            arr = np.full(dims, fill[spec.name], dtype=spec.dtype)
        elif kind in "iu":
            arr = rng.integers(0, min(4, _index_limit(model, spec.name) or 4), size=dims).astype(spec.dtype)
        elif kind == "b":
            arr = rng.integers(0, 2, size=dims).astype(bool)
        else:
            raise OnnxoptError(f"input {spec.name!r}: cannot generate data of dtype {spec.dtype}; pass --data")
        inputs[spec.name] = arr
    return limit_batch(Dataset(inputs, axes={s.name: s.axis for s in specs}), model)


def length_inputs(model: ir.Model) -> list[str]:
    """Integer inputs that hold one value per sample (a ``[batch]`` vector, or a scalar) and
    index no table: the usual form of the valid lengths a speech or sequence model takes
    beside its padded input (torchaudio's Conformer and Emformer, NeMo's
    ``audio_signal_length``). Such a value is a size of another input's axis, which random
    small integers rarely are: :func:`onnxopt.evaluate.runnable_synthetic` tries those sizes."""
    names = []
    for spec in input_specs(model):
        if spec.dtype.kind not in "iu" or spec.shape is None or _index_limit(model, spec.name) is not None:
            continue
        per_sample = [d for i, d in enumerate(spec.shape) if i != spec.axis]
        if all(d == 1 for d in per_sample):
            names.append(spec.name)
    return names
