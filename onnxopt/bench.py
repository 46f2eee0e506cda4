"""Latency and throughput with onnxruntime, several models interleaved in one process.

Method: one session per (model, provider, batch); inputs generated once from the model's
signature (seeded); ``warmup`` untimed runs each (at least one, which checks the
inputs); then rounds in which every model runs once, in rotating order, until
``iterations`` rounds or ``seconds`` have passed. Because
the models alternate, machine noise hits them alike and the **ratio** column (p50 of the
first model / p50 of this one; > 1 means faster) is the number to trust across runs.
``session_mb`` is the process RSS growth while the session was created and warmed up
(Linux only), a rough peak-memory figure per model; onnxruntime's one-time start-up is paid
by a throw-away session first, so it is not charged to the first model.
"""

from __future__ import annotations

__all__ = ["BenchRow", "BenchResult", "benchmark", "interleaved_times", "latency_ratio", "runs_per_turn", "PROVIDERS", "resolve_providers"]

import dataclasses
import functools
import math
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir
import onnxruntime as ort

from onnxopt.calibration import Dataset, feed_batch, input_specs, shapes_text, synthetic
from onnxopt.cpu import simd_level
from onnxopt.errors import OnnxoptError
from onnxopt.evaluate import _first_line, _session_shapes, runnable_synthetic, session
from onnxopt.graph import sample_axes
from onnxopt.model_io import load_model

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "dml": "DmlExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "rocm": "ROCMExecutionProvider",
}
OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


@dataclasses.dataclass
class BenchRow:
    model: str
    provider: str
    batch: int
    threads: int | None
    runs: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    throughput: float  # samples per second at p50
    session_mb: float | None
    ratio: float | None = None  # p50 of the first model / p50 of this one (>1 = faster)


@dataclasses.dataclass
class BenchResult:
    rows: list[BenchRow]
    skipped: list[str]
    environment: dict

    def to_dict(self) -> dict:
        return {
            "environment": self.environment,
            "skipped": self.skipped,
            "rows": [dataclasses.asdict(r) for r in self.rows],
        }

    def markdown(self) -> str:
        lines = [
            "| model | provider | batch | p50 ms | p90 ms | p99 ms | mean ± std ms | samples/s | session MB | ratio |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in self.rows:
            mem = f"{r.session_mb:.0f}" if r.session_mb is not None else "-"
            ratio = f"{r.ratio:.2f}×" if r.ratio is not None else "-"
            lines.append(
                f"| {r.model} | {r.provider} | {r.batch} | {r.p50_ms:.3f} | {r.p90_ms:.3f} | {r.p99_ms:.3f} | "
                f"{r.mean_ms:.3f} ± {r.std_ms:.3f} | {r.throughput:.1f} | {mem} | {ratio} |"
            )
        env = self.environment
        lines.append("")
        lines.append(
            f"onnxruntime {env.get('onnxruntime')}, {env.get('cpu')} ({env.get('simd')}), threads={env.get('threads')}, "
            f"optimization={env.get('opt_level')}; models interleaved in one process."
        )
        for s in self.skipped:
            lines.append(f"- skipped: {s}")
        return "\n".join(lines) + "\n"


def resolve_providers(names: Sequence[str]) -> tuple[list[tuple[str, str]], list[str]]:
    """Map short names to onnxruntime providers; unavailable ones are returned as skipped."""
    available = set(ort.get_available_providers())
    chosen, skipped = [], []
    for name in names:
        key = name.strip().lower()
        full = PROVIDERS.get(key, name.strip())
        if full not in available:
            skipped.append(f"{name}: {full} is not available in this onnxruntime build (available: {', '.join(sorted(available))})")
            continue
        chosen.append((key, full))
    return chosen, skipped


def _rss_mb() -> float | None:
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, AttributeError):
        return None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def benchmark(
    models: Sequence[str | os.PathLike | tuple[str, ir.Model | str | os.PathLike]],
    *,
    providers: Sequence[str] = ("cpu",),
    threads: int | None = None,
    batch_sizes: Sequence[int] = (1,),
    shapes: Mapping[str, Sequence[int]] | None = None,
    warmup: int = 10,
    iterations: int | None = None,
    seconds: float | None = None,
    opt_level: str = "all",
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    data: Dataset | None = None,
) -> BenchResult:
    """Benchmark ``models`` (paths, or ``(label, model_or_path)`` pairs) interleaved.

    Stops after ``iterations`` rounds, or ``seconds`` of timed running per (provider,
    batch) group, whichever is given (default: 100 rounds). Inputs are random, sized by
    ``batch_sizes`` and ``shapes``, unless ``data`` gives real samples: the first
    ``batch`` of them are timed (a model that branches on its inputs, on a sample rate or on
    the boxes it finds, then takes the path it takes in use).
    """
    if not models:
        raise OnnxoptError("no model to benchmark")
    if opt_level not in OPT_LEVELS:
        raise OnnxoptError(f"unknown optimization level {opt_level!r}; choose from {', '.join(OPT_LEVELS)}")
    if iterations is None and seconds is None:
        iterations = 100
    labelled = []
    for item in models:
        label, src = (item if isinstance(item, tuple) else (Path(item).name, item))
        model = src if isinstance(src, ir.Model) else load_model(src)
        labelled.append((label, src, model))
    chosen, skipped = resolve_providers(providers)
    if not chosen:
        raise OnnxoptError("no requested execution provider is available: " + "; ".join(skipped))
    rows: list[BenchRow] = []
    for key, provider in chosen:
        for batch in batch_sizes:
            given, given_samples = (None, None) if data is None else _first_samples(data, batch, labelled[0][2])
            rows.extend(
                _bench_group(labelled, key, provider, batch, threads, shapes, warmup, iterations, seconds, opt_level, seed,
                             progress, given, given_samples)
            )  # fmt: skip
    env = {
        "onnxruntime": ort.__version__,
        "cpu": _cpu_name(),
        "simd": simd_level(),  # int8 ratios differ most between AVX2 and AVX-512 VNNI machines
        "threads": threads,
        "opt_level": opt_level,
        "providers_available": ort.get_available_providers(),
    }
    return BenchResult(rows, skipped, env)


def interleaved_times(
    sessions: Sequence[ort.InferenceSession],
    feeds: Sequence[Mapping[str, np.ndarray]],
    *,
    rounds: int | None = None,
    seconds: float | None = None,
    block: int = 1,
    progress: Callable[[int], None] | None = None,
) -> list[np.ndarray]:
    """Milliseconds of every timed run of each session, measured interleaved.

    In each round every session runs ``block`` times, the sessions in an order rotated by one
    each round, so that whatever else the machine does slows all of them alike. Stops after
    ``rounds`` rounds, or once ``seconds`` have passed (at least 3 rounds). The one timer of
    the project: ``benchmark`` reports p50/p90/p99 of it; the int8 speed guard takes a low
    percentile (:func:`latency_ratio`).
    """
    if rounds is None and seconds is None:
        raise ValueError("give rounds or seconds")
    times: list[list[float]] = [[] for _ in sessions]
    deadline = time.perf_counter() + seconds if seconds else None
    done = 0
    while not (rounds is not None and done >= rounds) and not (
        deadline is not None and time.perf_counter() >= deadline and done >= 3
    ):
        shift = done % len(sessions)
        for i in [*range(shift, len(sessions)), *range(shift)]:
            for _ in range(block):
                t0 = time.perf_counter()
                sessions[i].run(None, feeds[i])
                times[i].append(time.perf_counter() - t0)
        done += 1
        if progress and done % 20 == 0:
            progress(done)
    return [np.asarray(t) * 1e3 for t in times]


def _one_run_seconds(sess: ort.InferenceSession, feed: Mapping[str, np.ndarray]) -> float:
    start = time.perf_counter()
    sess.run(None, feed)
    return max(time.perf_counter() - start, 1e-5)


def _turn_size(seconds: float, per_run: float) -> int:
    return max(1, min(20, int(seconds / per_run)))


def runs_per_turn(sess: ort.InferenceSession, feed: Mapping[str, np.ndarray], seconds: float) -> int:
    """How many runs of ``sess`` fill about ``seconds`` (1–20): one timed run decides."""
    return _turn_size(seconds, _one_run_seconds(sess, feed))


def latency_ratio(
    baseline: ir.Model, candidate: ir.Model, feed: Mapping[str, np.ndarray], *, rounds: int = 9, threads: int = 1,
    percentile: float = 25, min_seconds: float = 1.5,
) -> tuple[float, float, float]:
    """(candidate / baseline latency, baseline ms, candidate ms) from :func:`interleaved_times`.

    Each turn runs a model for about 20 ms; a model's latency is a low ``percentile`` of its
    single runs. On a shared machine a run is only ever slowed down by other processes, so a
    low percentile estimates what the model itself costs (medians of 2-thread runs swung by
    ±30 % under load 9 on 2 cores; p25 stayed within 3 %). Slow models get more rounds, up to
    ``min_seconds`` of the baseline's runs (at most 48 rounds): 9 single runs of ddddocr's
    detector (75 ms) put the same int8 model at 0.78 and 0.96 in two runs.
    """
    ratios, base, cands = latency_ratios(baseline, [candidate], feed, rounds=rounds, threads=threads,
                                         percentile=percentile, min_seconds=min_seconds)  # fmt: skip
    return ratios[0], base, cands[0]


def latency_ratios(
    baseline: ir.Model, candidates: Sequence[ir.Model], feed: Mapping[str, np.ndarray], *, rounds: int = 9,
    threads: int = 1, percentile: float = 25, min_seconds: float = 1.5,
) -> tuple[list[float], float, list[float]]:
    """:func:`latency_ratio` of several candidates timed in one interleaved run, so that
    choosing between them compares measurements taken under the same load: (ratios,
    baseline ms, candidate ms)."""
    sessions = [session(m, threads=threads) for m in (baseline, *candidates)]
    for sess in sessions:
        for _ in range(2):
            sess.run(None, feed)
    per_run = _one_run_seconds(sessions[0], feed)
    block = _turn_size(0.02, per_run)
    rounds = max(rounds, min(48, math.ceil(min_seconds / (block * per_run))))
    times = interleaved_times(sessions, [feed] * len(sessions), rounds=rounds, block=block)
    base, *cands = (float(np.percentile(t, percentile)) for t in times)
    return [c / base for c in cands], base, cands


def _batch_shapes(model: ir.Model, batch: int, shapes: Mapping[str, Sequence[int]] | None) -> dict[str, list[int]]:
    """Each input's shape at ``batch`` samples (on its sample axis, when that is dynamic or
    ``shapes`` names the input)."""
    out = {}
    for spec in input_specs(model):
        if shapes and spec.name in shapes:
            dims = list(shapes[spec.name])
        elif spec.shape is not None:
            dims = [d if isinstance(d, int) and d > 0 else 1 for d in spec.shape]
        else:
            raise OnnxoptError(f"input {spec.name!r} has no shape; give it with --shape {spec.name}=...")
        axis = spec.axis
        if axis is not None and axis < len(dims):
            dynamic = spec.shape is not None and not (isinstance(spec.shape[axis], int) and spec.shape[axis] > 0)
            if dynamic or (shapes and spec.name in shapes):
                dims[axis] = batch
        out[spec.name] = dims
    return out


def _samples_in(sess: ort.InferenceSession, feed: Mapping[str, np.ndarray], outputs: Sequence[Any]) -> int:
    """The samples one run on ``feed`` holds: the size of the inputs' sample axis — unless
    that axis is fixed above 1 and no output has it first, declared or at run time. Such a
    model reads one sample without a sample axis (torchvision's detectors take one image
    ``[3, H, W]`` and return boxes ``[k, 4]``): its 3 is channels, not a batch of 3."""
    shapes = _session_shapes(sess)
    axes = sample_axes(shapes)
    n = len(Dataset(dict(feed), axes=axes))
    if n <= 1 or any(a is not None and shapes[k] and not isinstance(shapes[k][a], int) for k, a in axes.items()):
        return n  # a dynamic sample axis is one the random inputs were sized on
    # first axes, and the second of a time-major sequence [T, N, C]
    declared = [d for o in sess.get_outputs() for d in (o.shape or [])[: 2 if len(o.shape or []) >= 3 else 1]]
    run = [d for o in outputs for d in np.shape(o)[: 2 if np.ndim(o) >= 3 else 1]]
    return n if n in declared or n in run else 1


def _first_samples(data: Dataset, batch: int, model: ir.Model) -> tuple[dict[str, np.ndarray], int]:
    """The feed of the first ``batch`` samples of ``data`` (as many as one run takes, if the
    model says: :func:`~onnxopt.calibration.feed_batch`), and their number."""
    batch = feed_batch(model, data) or batch
    if len(data) < batch:
        raise OnnxoptError(f"the data has {len(data)} samples, fewer than the batch of {batch} to time")
    return data.take(slice(0, batch)).feed, batch


@functools.cache
def _start_runtime(provider: str, threads: int) -> None:
    """Create and run a one-node session, once per provider and thread count: onnxruntime's
    one-time start-up (its environment, thread pools, kernel registry: ~10 MB) then is not
    measured as the first model's memory."""
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "start", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])  # fmt: skip
    tiny = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    session(tiny, providers=[provider], threads=threads).run(None, {"x": np.zeros(1, np.float32)})


def _bench_group(labelled, key, provider, batch, threads, shapes, warmup, iterations, seconds, opt_level, seed, progress,
                 given=None, given_samples=None):  # fmt: skip
    sessions, feeds, mems = [], [], []
    _start_runtime(provider, threads)
    for _label, src, model in labelled:
        before = _rss_mb()
        sess = session(src if not isinstance(src, ir.Model) else model, providers=[provider], threads=threads, opt_level=OPT_LEVELS[opt_level])
        if given is None:
            data = synthetic(model, batch, seed=seed, shapes=_batch_shapes(model, batch, shapes)).inputs
        else:
            data = given
        feed = {i.name: data[i.name] for i in sess.get_inputs()}
        try:
            try:
                outputs = sess.run(None, feed)
            except Exception:
                if given is not None:
                    raise
                # random lengths, or dynamic dims of 1, may not fit: runnable_synthetic tries sizes
                # (of the dims the user did not give)
                given_shapes = {k: v for k, v in _batch_shapes(model, batch, shapes).items() if k in (shapes or {})}
                data = runnable_synthetic(model, batch, seed=seed, shapes=given_shapes, sess=sess)[0].inputs
                feed = {i.name: data[i.name] for i in sess.get_inputs()}
                outputs = sess.run(None, feed)
            for _ in range(warmup - 1):  # the run above, which checks the inputs, is the first warm-up run
                sess.run(None, feed)
        except Exception as exc:  # e.g. a dynamic dimension that 1 does not fit
            what = "random inputs" if given is None else "the timing inputs"
            raise OnnxoptError(f"onnxruntime cannot run {_label} on {what} ({shapes_text(feed)}): "
                               f"{_first_line(exc)}; give input sizes with --shape NAME=DxD…, or real samples with --data") from None
        after = _rss_mb()
        sessions.append(sess)
        feeds.append(feed)
        if len(sessions) == 1:
            first_outputs = outputs
        mems.append(after - before if before is not None and after is not None else None)
    # samples timed: the count taken from the data (whose axes may be the user's), else
    # what the random inputs hold on the model's sample axis
    b = given_samples if given is not None else _samples_in(sessions[0], feeds[0], first_outputs)
    say = (lambda rounds: progress(f"{key} batch {b}: {rounds} rounds")) if progress else None
    times = interleaved_times(sessions, feeds, rounds=iterations, seconds=seconds, progress=say)
    rows = []
    for (label, _, _), ms, mem in zip(labelled, times, mems):
        p50 = float(np.percentile(ms, 50))
        rows.append(
            BenchRow(
                label, key, b, threads, len(ms), p50, float(np.percentile(ms, 90)), float(np.percentile(ms, 99)),
                float(ms.mean()), float(ms.std()), b / (p50 / 1e3) if p50 > 0 else 0.0, mem,
            )
        )
    base = rows[0].p50_ms
    for r in rows:
        r.ratio = base / r.p50_ms if r.p50_ms > 0 else None
    return rows


def plot(result: BenchResult, path: str | os.PathLike) -> None:
    """Bar chart of p50 latency per model and provider (needs the ``plot`` extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise OnnxoptError("--plot needs matplotlib: pip install 'onnxopt[plot]'") from exc
    groups = sorted({(r.provider, r.batch) for r in result.rows})
    labels = list(dict.fromkeys(r.model for r in result.rows))
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(labels) * len(groups)), 4))
    width = 0.8 / max(1, len(groups))
    for gi, (prov, batch) in enumerate(groups):
        vals = [next((r.p50_ms for r in result.rows if r.model == m and r.provider == prov and r.batch == batch), 0) for m in labels]
        ax.bar([i + gi * width for i in range(len(labels))], vals, width, label=f"{prov} b{batch}")
    ax.set_xticks([i + width * (len(groups) - 1) / 2 for i in range(len(labels))])
    ax.set_xticklabels(labels, rotation=20, ha="right")
    ax.set_ylabel("p50 latency (ms)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
