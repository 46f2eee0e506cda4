"""Operator corpus: every ONNX backend node test model through onnxopt, checked against onnxruntime.

Run ``python -m benchmarks.corpus [--sample N] [--seed S]``; writes
``benchmarks/results/corpus.md`` and ``corpus.json``.

Sources:
- the ``onnx`` package's backend node test cases (``collect_testcases``: ~1,900 one-node
  models with their inputs, generated in memory);
- the small real architectures shipped in ``onnx/backend/test/data/light`` (alexnet,
  densenet121, inception v1/v2, resnet50, shufflenet, squeezenet, vgg19, zfnet), as shipped
  (IR 3: weights are overridable graph inputs, so nothing may fold them) and in IR 4 form
  (weights are constants), fed with seeded random inputs; their reference ``.pb`` output
  is not used for the verdict (it was produced from other inputs), onnxruntime's output on
  the original is.

For each model that onnxruntime itself can load and run (deterministically), every
configuration is applied:
- ``optimize``: the lossless recipe of :func:`onnxopt.optimize.optimize` (load with the
  checker → cleanup → fold_bn, each verified and rolled back by the pipeline → summary →
  atomic save), verified on the test case's own inputs;
- each lossless pass in isolation (``CleanupPass``, ``FoldBatchNormPass``), as a
  one-stage pipeline;
- ``lowrank (energy 1.0)``: the low-rank split with the full rank kept (a split only where a
  weight is rank-deficient), checked as if it were lossless: robustness of a lossy pass;
- ``optimize() API``: the public call ``optimize(path, output)`` exactly as a user makes it,
  without data, so the pipeline verifies on its own seeded random inputs (an
  :class:`OnnxoptError`, e.g. random inputs the model rejects, is a clean skip).
The saved file is then run by onnxruntime on the same inputs and compared with the original:
float outputs within ``rtol``/``atol`` (NaN equals NaN), integer, bool and string outputs
exactly, sequences element by element.

Verdicts: ``unchanged`` (no stage kept a change), ``transformed`` (a change was kept and the
outputs match), ``rolled back`` (at least one stage was undone by the pipeline; others may
have been kept), ``skipped`` (an :class:`OnnxoptError`, e.g. the checker rejects the model;
the reason is counted), ``crash`` (any other exception escaping the run), ``wrong`` (outputs differ and
nothing was rolled back). A stage that raised inside the pipeline is rolled back and counted
under ``rolled back`` with its exception name (those are pass bugs to look at, not crashes
of the run).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import glob
import importlib
import json
import pkgutil
import random
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from onnxopt.calibration import Dataset
from onnxopt.errors import OnnxoptError
from onnxopt.model_io import load_model, save_model
from onnxopt.optimize import lossless_stages, optimize
from onnxopt.passes.cleanup import CleanupPass
from onnxopt.passes.fold_bn import FoldBatchNormPass
from onnxopt.pipeline import Context, Stage, pass_stage, run_stages
from onnxopt.report import summarize

RESULTS = Path(__file__).resolve().parent / "results"
RTOL = 1e-4
ATOL = 1e-5
VERDICTS = ("unchanged", "transformed", "rolled back", "skipped", "crash", "wrong")


@dataclasses.dataclass
class Case:
    """One corpus model with its inputs (graph-input name → value, as onnxruntime takes it)."""

    name: str
    source: str  # "node" or "light"
    model: onnx.ModelProto
    feeds: dict[str, Any]


@dataclasses.dataclass
class Verdict:
    case: str
    config: str
    verdict: str
    reason: str = ""


# ---------------------------------------------------------------------------------------
# Collecting the corpus


def _node_module_names() -> list[str]:
    import onnx.backend.test.case.node as node_pkg

    return sorted(m.name for m in pkgutil.iter_modules(node_pkg.__path__))


_CASES_BY_MODULE: dict[str, list] = {}


def node_cases(modules: Iterable[str] | None = None) -> list[Case]:
    """The backend node test cases, optionally only those of some ``case/node`` modules.

    Importing a module runs its ``export*`` functions, which append its test cases to a
    global registry; the new entries are remembered per module (imported once per process).
    """
    import onnx.backend.test.case.node as node_pkg

    names = _node_module_names() if modules is None else list(modules)
    cases = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for module in names:
            if module not in _CASES_BY_MODULE:
                already = len(node_pkg._NodeTestCases)
                importlib.import_module(f"{node_pkg.__name__}.{module}")
                _CASES_BY_MODULE[module] = node_pkg._NodeTestCases[already:]
            for tc in _CASES_BY_MODULE[module]:
                inputs, _outputs = tc.data_sets[0]
                cases.append(Case(tc.name, "node", tc.model, _feeds(tc.model, inputs)))
    return cases


def _feeds(model: onnx.ModelProto, inputs: Sequence[Any]) -> dict[str, Any]:
    initializers = {t.name for t in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in initializers]
    return {name: _as_feed(value) for name, value in zip(names, inputs)}


def _as_feed(value: Any) -> Any:
    """What onnxruntime's Python API takes: arrays (not TensorProtos or numpy scalars)."""
    if isinstance(value, onnx.TensorProto):
        return onnx.numpy_helper.to_array(value)
    if isinstance(value, np.generic):
        return np.asarray(value)
    if isinstance(value, list):
        return [_as_feed(v) for v in value]
    return value


def light_cases(seed: int = 0) -> list[Case]:
    """The real architectures shipped with onnx (weights are random, ~1-2 MB each)."""
    import onnx.backend.test as backend_test

    folder = Path(backend_test.__file__).parent / "data" / "light"
    cases = []
    rng = np.random.default_rng(seed)
    for path in sorted(glob.glob(str(folder / "*.onnx"))):
        model = onnx.load(path)
        feeds = {}
        initializers = {t.name for t in model.graph.initializer}
        for inp in model.graph.input:
            if inp.name in initializers:
                continue
            tt = inp.type.tensor_type
            dims = [d.dim_value if d.dim_value > 0 else 1 for d in tt.shape.dim]
            dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)
            feeds[inp.name] = rng.standard_normal(dims).astype(dtype)
        cases.append(Case(Path(path).stem, "light", model, feeds))
        cases.append(Case(Path(path).stem + "_ir4", "light", _frozen_weights(model), feeds))
    return cases


def _frozen_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """The IR 4 form of an IR 3 model: initializers are no longer graph inputs.

    In IR 3 every initializer is also a graph input, i.e. a default a caller may override,
    so no pass may treat the weights as constants; this variant gives the passes real work.
    """
    frozen = onnx.ModelProto()
    frozen.CopyFrom(model)
    initializers = {t.name for t in frozen.graph.initializer}
    kept = [i for i in frozen.graph.input if i.name not in initializers]
    del frozen.graph.input[:]
    frozen.graph.input.extend(kept)
    frozen.ir_version = max(frozen.ir_version, 4)
    return frozen


def sample_modules(n: int, seed: int = 0) -> list[str]:
    """``n`` operator modules chosen with ``seed`` (always including a core set)."""
    core = ["batch_normalization", "conv", "convtranspose", "gemm", "matmul", "identity", "if_", "loop", "scan", "constant"]
    names = _node_module_names()
    rest = [m for m in names if m not in core]
    random.Random(seed).shuffle(rest)
    return sorted([m for m in core if m in names] + rest[: max(0, n - len(core))])


# ---------------------------------------------------------------------------------------
# Running and comparing


def _session(model: onnx.ModelProto | str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 4
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    source = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def _run(model: onnx.ModelProto | str, feeds: dict[str, Any]) -> list[Any]:
    sess = _session(model)
    names = {i.name for i in sess.get_inputs()}
    return sess.run(None, {k: v for k, v in feeds.items() if k in names})


def outputs_match(reference: Sequence[Any], candidate: Sequence[Any], rtol: float = RTOL, atol: float = ATOL) -> str:
    """'' when ``candidate`` reproduces ``reference``, else why not (first difference)."""
    if len(reference) != len(candidate):
        return f"{len(reference)} outputs vs {len(candidate)}"
    for i, (a, b) in enumerate(zip(reference, candidate)):
        why = _value_match(a, b, rtol, atol)
        if why:
            return f"output {i}: {why}"
    return ""


def _value_match(a: Any, b: Any, rtol: float, atol: float) -> str:
    if isinstance(a, list) or isinstance(b, list):
        if not (isinstance(a, list) and isinstance(b, list)) or len(a) != len(b):
            return "sequence lengths differ"
        for x, y in zip(a, b):
            why = _value_match(x, y, rtol, atol)
            if why:
                return why
        return ""
    if isinstance(a, dict) or isinstance(b, dict):
        return "" if a == b else "maps differ"
    if a is None or b is None:
        return "" if a is None and b is None else "optional differs"
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return f"shape {list(a.shape)} vs {list(b.shape)}"
    if a.dtype != b.dtype:
        return f"dtype {a.dtype} vs {b.dtype}"
    if a.dtype.kind != "f" and a.dtype.kind != "c":
        return "" if np.array_equal(a, b) else "values differ (exact comparison)"
    a64, b64 = a.astype(np.complex128 if a.dtype.kind == "c" else np.float64), b.astype(
        np.complex128 if b.dtype.kind == "c" else np.float64
    )
    nan_a, nan_b = np.isnan(a64), np.isnan(b64)
    if not np.array_equal(nan_a, nan_b):
        return "NaN positions differ"
    inf_a = np.isinf(a64)
    if not np.array_equal(inf_a, np.isinf(b64)) or not np.array_equal(a64[inf_a], b64[inf_a]):
        return "Inf positions differ"
    finite = ~(nan_a | inf_a)
    if not finite.any():
        return ""
    diff = np.abs(a64[finite] - b64[finite])
    scale = float(np.abs(a64[finite]).max())
    err = float(diff.max())
    # The pipeline's rule (onnxopt.evaluate.Fidelity.within): low-precision floats get at
    # least 4 units of their machine epsilon.
    if a.dtype.kind == "f" and a.dtype.itemsize < 4:
        rtol = max(rtol, 4 * float(np.finfo(a.dtype).eps))
    if err <= atol or err <= rtol * scale:
        return ""
    return f"max abs error {err:.3g} (scale {scale:.3g})"


# Name → the lossless stages it runs (a fresh list per model).
CONFIGS: dict[str, Callable[[], list[Stage]]] = {
    "optimize": lossless_stages,
    "CleanupPass": lambda: [pass_stage("cleanup", CleanupPass)],
    "FoldBatchNormPass": lambda: [pass_stage("fold_bn", FoldBatchNormPass)],
}


def _exact_lowrank() -> list[Stage]:
    """The low-rank split at energy 1.0 (rank kept in full: a split happens only where a
    weight is rank-deficient), checked as a lossless stage."""
    from onnxopt.lowrank import lowrank_stage

    stage = lowrank_stage(energy=1.0, data_aware=False)
    return [Stage("lowrank-exact", stage.run, lossless=True)]


CONFIGS["lowrank (energy 1.0)"] = _exact_lowrank

# The public API as a pipeline calls it: optimize(path, output), no data, so the pipeline
# verifies on its own seeded random inputs; an OnnxoptError (e.g. random inputs the model
# rejects) is a clean skip, any other exception escaping it a crash.
API_CONFIG = "optimize() API"
CONFIGS[API_CONFIG] = lossless_stages
DEFAULT_CONFIGS = tuple(CONFIGS)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def reference_outputs(case: Case) -> tuple[list[Any] | None, str]:
    """onnxruntime's outputs on the original (twice: nondeterministic models are skipped)."""
    try:
        first = _run(case.model, case.feeds)
    except Exception as exc:
        return None, f"onnxruntime cannot run the original: {_ort_reason(exc)}"
    try:
        second = _run(case.model, case.feeds)
    except Exception:
        return None, "onnxruntime fails on a second run"
    if outputs_match(first, second, 0.0, 0.0):
        return None, "outputs are not deterministic"
    return first, ""


def _ort_reason(exc: BaseException) -> str:
    """A short class of why onnxruntime rejects a model, for counting."""
    text = str(exc)
    if "NOT_IMPLEMENTED" in text:
        return "no kernel for this op and type (NOT_IMPLEMENTED)"
    if "is not a registered function/op" in text:
        return "op not registered (e.g. ai.onnx.preview.training)"
    if "MLDataType" in text or "No corresponding Numpy type" in text:
        return "tensor type not supported by its Python API (bfloat16, float8, int4, int2, ...)"
    return _first_line(exc)[:90]


def check_case(case: Case, workdir: Path, configs: Sequence[str] | None = None, reference: list[Any] | None = None) -> list[Verdict]:
    """Run every configuration on ``case``; ``reference`` = onnxruntime on the original."""
    names = list(configs or DEFAULT_CONFIGS)
    if reference is None:
        reference, why = reference_outputs(case)
        if reference is None:
            return [Verdict(case.name, c, "skipped", why) for c in names]
    src = workdir / f"{case.name}.onnx"
    onnx.save(case.model, str(src))
    verdicts = []
    for config in names:
        out = workdir / f"{case.name}.{config}.onnx"
        verdicts.append(_check_config(case, src, out, config, CONFIGS[config](), reference))
        for leftover in (out, out.with_name(out.name + ".data")):
            leftover.unlink(missing_ok=True)
    src.unlink(missing_ok=True)
    return verdicts


def _check_config(case: Case, src: Path, out: Path, config: str, stages: list[Stage], reference: list[Any]) -> Verdict:
    """The lossless recipe of ``optimize`` with the case's inputs as verification data
    (or, for ``optimize()``, the API call itself, verified on its own random inputs)."""
    try:
        if config == API_CONFIG:
            records = optimize(src, out).stages
        else:
            original = load_model(src)
            summarize(original, src)
            ctx = Context(verify_data=Dataset(dict(case.feeds)))
            optimized, records = run_stages(original.clone(), stages, ctx, rtol=RTOL, atol=ATOL)
            save_model(optimized, out, input_path=src)
            summarize(optimized, out)
    except OnnxoptError as exc:
        return Verdict(case.name, config, "skipped", _skip_reason(str(exc)))
    except Exception as exc:
        return Verdict(case.name, config, "crash", _first_line(exc) + " | " + traceback.format_exc(limit=-3).replace("\n", " "))
    try:
        candidate = _run(str(out), case.feeds)
    except Exception as exc:
        return Verdict(case.name, config, "wrong", f"onnxruntime cannot run the output: {_first_line(exc)}")
    rolled_back = [r for r in records if not r.kept and r.reason]
    kept = [r for r in records if r.kept]
    why = outputs_match(reference, candidate)
    if why:
        return Verdict(case.name, config, "wrong", why)
    if rolled_back:
        return Verdict(case.name, config, "rolled back", "; ".join(f"{r.name}: {_reason_kind(r.reason)}" for r in rolled_back))
    if kept:
        return Verdict(case.name, config, "transformed", ", ".join(r.name for r in kept))
    return Verdict(case.name, config, "unchanged")


def _reason_kind(reason: str) -> str:
    """A short class of a rollback reason, for counting."""
    if reason.startswith("not exact"):
        return "not exact"
    if reason.startswith("stage failed"):
        return reason.split(":")[0] + ": " + reason.split(":")[1].strip()
    return reason.split(":")[0][:80]


def _skip_reason(message: str) -> str:
    """Drop the temp path from an error message so reasons can be counted."""
    parts = message.split(": ", 1)
    text = parts[1] if len(parts) == 2 and parts[0].endswith(".onnx") else message
    return text[:160]


# ---------------------------------------------------------------------------------------
# The table


def summarize_verdicts(verdicts: Sequence[Verdict], models: int) -> dict[str, Any]:
    by_config: dict[str, dict[str, Any]] = {}
    for config in dict.fromkeys(v.config for v in verdicts):
        mine = [v for v in verdicts if v.config == config]
        counts = collections.Counter(v.verdict for v in mine)
        skipped_runnable = [v for v in mine if v.verdict == "skipped" and not _ort_skip(v.reason)]
        by_config[config] = {
            "models": models,
            "runnable": sum(1 for v in mine if not _ort_skip(v.reason) or v.verdict != "skipped"),
            **{k: counts.get(k, 0) for k in VERDICTS},
            "skip_reasons": dict(collections.Counter(v.reason for v in skipped_runnable).most_common()),
            "rollback_reasons": dict(
                collections.Counter(v.reason for v in mine if v.verdict == "rolled back").most_common()
            ),
            "crash_cases": [dataclasses.asdict(v) for v in mine if v.verdict == "crash"],
            "wrong_cases": [dataclasses.asdict(v) for v in mine if v.verdict == "wrong"],
            "rolled_back_cases": [dataclasses.asdict(v) for v in mine if v.verdict == "rolled back"],
            "transformed_cases": sorted(v.case for v in mine if v.verdict == "transformed"),
            "skipped_cases": {v.case: v.reason for v in mine if v.verdict == "skipped"},
        }
    return by_config


def _ort_skip(reason: str) -> bool:
    return reason.startswith("onnxruntime cannot run the original") or reason in (
        "outputs are not deterministic",
        "onnxruntime fails on a second run",
    )


def run_corpus(cases: Sequence[Case], configs: Sequence[str] | None = None, progress: bool = False) -> list[Verdict]:
    verdicts: list[Verdict] = []
    with tempfile.TemporaryDirectory(prefix="onnxopt-corpus-") as tmp:
        for i, case in enumerate(cases):
            if progress and i % 100 == 0:
                print(f"  {i}/{len(cases)} {case.name}", file=sys.stderr, flush=True)
            verdicts.extend(check_case(case, Path(tmp), configs))
    return verdicts


def write_results(summary: dict[str, Any], ort_skips: dict[str, int], meta: dict[str, Any], stem: str = "corpus") -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps({"meta": meta, "not_runnable": ort_skips, "configs": summary}, indent=1) + "\n")
    lines = [
        "# Operator corpus: onnxopt on every ONNX backend node test model",
        "",
        f"Generated by `python -m benchmarks.corpus{' --sample ' + str(meta['sample']) if meta.get('sample') else ''}` "
        f"on {meta['date']} (onnx {meta['onnx']}, onnxruntime {meta['onnxruntime']}, {meta['seconds']:.0f} s).",
        "",
        f"Models: {meta['models']} ({meta['node_cases']} node test cases from `collect_testcases`, "
        f"{meta['light_cases']} real architectures from `onnx/backend/test/data/light`). "
        f"Runnable by onnxruntime (loads and runs the original deterministically): {meta['runnable']}.",
        "Outputs of the saved file are compared with onnxruntime on the original, on the test case's "
        f"inputs: floats within rtol {RTOL:g} / atol {ATOL:g} (NaN = NaN), integers, bools and strings exactly.",
        "",
        "| configuration | runnable | unchanged | transformed | rolled back | skipped | crashes | wrong results |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for config, s in summary.items():
        lines.append(
            f"| {config} | {meta['runnable']} | {s['unchanged']} | {s['transformed']} | {s['rolled back']} | "
            f"{s['skipped']} | {s['crash']} | {s['wrong']} |"
        )
    lines += ["", "## Not runnable by onnxruntime (not counted above)", "", "| reason | models |", "|---|---:|"]
    lines += [f"| {r} | {n} |" for r, n in ort_skips.items()]
    for config, s in summary.items():
        if s["skip_reasons"]:
            lines += ["", f"## {config}: skipped (OnnxoptError), by reason", "", "| reason | models |", "|---|---:|"]
            lines += [f"| {r} | {n} |" for r, n in s["skip_reasons"].items()]
        if s["rollback_reasons"]:
            lines += ["", f"## {config}: rolled back by the pipeline, by reason", "", "| reason | models |", "|---|---:|"]
            lines += [f"| {r} | {n} |" for r, n in s["rollback_reasons"].items()]
        for kind in ("crash", "wrong"):
            if s[f"{kind}_cases"]:
                lines += ["", f"## {config}: {kind}", ""]
                lines += [f"- `{v['case']}`: {v['reason'][:300]}" for v in s[f"{kind}_cases"]]
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", type=int, default=None, help="only N operator modules (seeded) instead of all")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-light", action="store_true", help="leave out the real architectures")
    args = parser.parse_args(argv)
    start = time.time()
    modules = sample_modules(args.sample, args.seed) if args.sample else None
    cases = node_cases(modules)
    n_node = len(cases)
    if not args.no_light:
        cases += light_cases(args.seed)
    print(f"{len(cases)} models", file=sys.stderr)
    verdicts = []
    ort_skips: collections.Counter[str] = collections.Counter()
    runnable = 0
    with tempfile.TemporaryDirectory(prefix="onnxopt-corpus-") as tmp:
        for i, case in enumerate(cases):
            if i % 100 == 0:
                print(f"  {i}/{len(cases)} {case.name} ({time.time() - start:.0f} s)", file=sys.stderr, flush=True)
            reference, why = reference_outputs(case)
            if reference is None:
                ort_skips[why] += 1
                continue
            runnable += 1
            verdicts.extend(check_case(case, Path(tmp), reference=reference))
    summary = summarize_verdicts(verdicts, len(cases))
    meta = {
        "date": time.strftime("%Y-%m-%d"),
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
        "sample": args.sample,
        "seed": args.seed,
        "models": len(cases),
        "node_cases": n_node,
        "light_cases": len(cases) - n_node,
        "runnable": runnable,
        "seconds": time.time() - start,
    }
    write_results(summary, dict(ort_skips.most_common()), meta)
    for config, s in summary.items():
        print(f"{config}: " + ", ".join(f"{k} {s[k]}" for k in VERDICTS))
    return 0 if all(s["crash"] == 0 and s["wrong"] == 0 for s in summary.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
