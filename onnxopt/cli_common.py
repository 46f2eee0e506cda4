"""Shared pieces of the command line: options, error handling, output.

Errors: an :class:`OnnxoptError` prints ``error: <one line>`` on stderr and exits 2; any
other exception is a bug and prints one line asking for ``--debug`` (exit 3), which shows
the traceback. Ctrl-C exits 130. Output files are written atomically by the API, so an
error never leaves a partial file.
"""

from __future__ import annotations

__all__ = [
    "console",
    "err_console",
    "command",
    "data_options",
    "sample_axis_option",
    "output_options",
    "shape_option",
    "load_dataset",
    "LossyRun",
    "progress",
]

import dataclasses
import functools
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

import click
from rich.console import Console
from rich.markup import escape

from onnxopt.errors import OnnxoptError

# Reports are wide tables: when output is not a terminal (CI logs, pipes), do not squeeze
# them into 80 columns.
console = Console(highlight=False, width=None if sys.stdout.isatty() else 140)
err_console = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 140)

EXIT_ERROR = 2
EXIT_BUG = 3


def command(fn: Callable) -> Callable:
    """Wrap a click callback: ``--debug`` option and one-line errors."""

    @click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
    @functools.wraps(fn)
    def wrapper(*args, debug: bool = False, **kwargs):
        debug = debug or bool(os.environ.get("ONNXOPT_DEBUG"))
        try:
            return fn(*args, **kwargs)
        except OnnxoptError as exc:
            if debug:
                traceback.print_exc()
            err_console.print(f"[bold red]error:[/bold red] {escape(str(exc))}", markup=True, soft_wrap=True)
            sys.exit(EXIT_ERROR)
        except KeyboardInterrupt:
            err_console.print("interrupted")
            sys.exit(130)
        except click.exceptions.Exit:
            raise
        except Exception as exc:
            if debug:
                traceback.print_exc()
            msg = str(exc).splitlines()[0] if str(exc) else ""
            err_console.print(
                f"[bold red]internal error:[/bold red] {type(exc).__name__}: {escape(msg)} "
                "(run again with --debug for the traceback, and please report it)",
                soft_wrap=True,
            )
            sys.exit(EXIT_BUG)

    return wrapper


def score_text(score: float | None) -> str:
    """A search step's score with its standard error where the metric has one."""
    if score is None:
        return "rejected by onnxruntime"
    se = getattr(score, "se", 0.0)
    return f"{score:.4f} ± {se:.4f}" if se else f"{score:.4f}"


def progress(message: str) -> None:
    """Progress of long steps, dimmed on stderr so stdout stays the report."""
    err_console.print(f"[dim]… {escape(message)}[/dim]")


def shape_option(fn: Callable) -> Callable:
    return click.option(
        "--shape",
        "shapes",
        multiple=True,
        metavar="NAME=DxD…",
        help="Fix an input shape, e.g. input=1x3x224x224 (repeatable). Dynamic dims default to 1.",
    )(fn)


def output_options(fn: Callable) -> Callable:
    fn = click.option("--report", "report_path", type=click.Path(dir_okay=False), help="Write the report as JSON here.")(fn)
    fn = click.option("-o", "--output", type=click.Path(dir_okay=False), help="Output model path (default: <input>.opt.onnx).")(fn)
    return fn


def sample_axis_option(fn: Callable) -> Callable:
    return click.option(
        "--sample-axis", "sample_axes", multiple=True, metavar="NAME=AXIS",
        help="The axis of input NAME that holds the samples in the data, where its shape does not say "
             "(e.g. state=1 for [layers, batch, hidden]; none: shared by all samples). Repeatable.",
    )(fn)  # fmt: skip


def data_options(fn: Callable) -> Callable:
    fn = click.option("--seed", type=int, default=0, show_default=True, help="Seed for splits, sampling and search.")(fn)
    fn = click.option(
        "--budget-se", type=float, default=1.0, show_default=True,
        help="Standard errors of the per-sample drop added to the measured drop before it is compared with the "
             "budget (0: the bare drop).",
    )(fn)  # fmt: skip
    fn = click.option(
        "--metric",
        type=str,
        default=None,
        help="Task metric for budgets: accuracy, agreement, top1, cosine, rel-l2, or your own function as "
             "module:function or file.py:function, called as f(original_outputs, candidate_outputs) -> score "
             "(default: accuracy with labels, else agreement).",
    )(fn)
    fn = sample_axis_option(fn)
    fn = click.option("--eval-data", type=click.Path(dir_okay=False), help="Held-out evaluation data (.npz); default: half of --data.")(fn)
    fn = click.option("--data", type=click.Path(dir_okay=False), help="Calibration data: .npz with one array per model input (+ optional 'labels').")(fn)
    return fn


def load_dataset(path: str | None, model, *, min_samples: int = 1, sample_axes=()):
    from onnxopt.calibration import load_npz, parse_sample_axes

    return None if path is None else load_npz(path, model, min_samples=min_samples, sample_axes=parse_sample_axes(sample_axes))


@dataclasses.dataclass
class LossyRun:
    """What the lossy commands (prune, lowrank, quantize) share before and after their pass."""

    model_path: str
    output: str
    original: Any
    shapes: dict[str, list[int]]
    seed: int
    calib: Any = None
    held_out: Any = None
    evaluator: Any = None

    @classmethod
    def start(cls, model, output, suffix, data, eval_data, metric, seed, shapes, *, min_split=2, budget_se=1.0,
              sample_axes=()) -> LossyRun:  # fmt: skip
        """Load the model and data, refuse a bad output path, split calibration/evaluation."""
        from onnxopt.calibration import parse_shapes
        from onnxopt.evaluate import Evaluator
        from onnxopt.model_io import check_output_path, load_model

        output = output or default_output(model, suffix)
        original = load_model(model)
        check_output_path(output, model)
        run = cls(model, output, original, parse_shapes(shapes), seed)
        run.calib = load_dataset(data, original, sample_axes=sample_axes)
        run.held_out = load_dataset(eval_data, original, sample_axes=sample_axes)
        if run.calib is not None and run.held_out is None and len(run.calib) >= min_split:
            run.calib, run.held_out = run.calib.split(0.5, seed)
        if run.held_out is not None:
            run.evaluator = Evaluator(original, run.held_out, metric=metric, confidence=budget_se)
        data_given = run.calib if run.calib is not None else run.held_out
        if data_given is not None:  # costs at the data's sizes (a sequence's length), not with dynamic axes at 1
            from onnxopt.optimize import shapes_from_data

            run.shapes = shapes_from_data(original, data_given, run.shapes)
        return run

    def finish(self, candidate) -> tuple[Any, Any, Any]:
        """Save ``candidate``; (before, after, fidelity) on held-out data or random inputs."""
        from onnxopt import evaluate
        from onnxopt.model_io import save_model
        from onnxopt.report import summarize

        save_model(candidate, self.output, input_path=self.model_path)
        if self.held_out is not None:
            data, reference = self.held_out, evaluate.run(self.original, self.held_out)
        else:
            data, reference, _ = evaluate.runnable_synthetic(self.original, 8, seed=self.seed, shapes=self.shapes)
        fidelity = evaluate.compare(
            reference, evaluate.run(candidate, data),
            names=[o.name for o in self.original.graph.outputs], labels=data.labels,
            axes=evaluate.score_axes(self.original),
        )  # fmt: skip
        before = summarize(self.original, self.model_path, self.shapes)
        return before, summarize(candidate, self.output, self.shapes), fidelity


def default_output(input_path: str, suffix: str) -> str:
    base = input_path[:-5] if input_path.endswith(".onnx") else input_path
    return f"{base}.{suffix}.onnx"
