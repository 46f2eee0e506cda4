"""``onnxopt prune``: structured channel pruning with a per-layer report."""

from __future__ import annotations

__all__ = ["prune_command"]

import click
from rich.table import Table

from onnxopt.cli_common import (
    LossyRun,
    command,
    console,
    data_options,
    output_options,
    progress,
    score_text,
    shape_option,
)
from onnxopt.importance import CRITERIA
from onnxopt.pruning import ALLOCATIONS
from onnxopt.report import before_after_table, fmt_count, write_json


def channels_table(result) -> Table:
    table = Table(title=f"channels per group ({result.criterion}, {result.allocation})")
    for col in ("group", "source layers", "before", "after", "kept"):
        table.add_column(col, justify="right" if col in ("before", "after", "kept") else "left", overflow="fold")
    for layer in result.layers:
        sources = ", ".join(layer["sources"][:3]) + (" …" if len(layer["sources"]) > 3 else "")
        kept = layer["after"] / layer["before"] if layer["before"] else 1.0
        style = "" if layer["after"] < layer["before"] else "dim"
        table.add_row(layer["group"], sources, str(layer["before"]), str(layer["after"]), f"{kept:.0%}", style=style)
    return table


def search_table(result) -> Table:
    knob = "cr" if result.allocation == "cr" else "ratio"
    table = Table(title=f"automatic search on {knob} ({result.metric})")
    for col in ("step", knob, "MACs kept", result.metric or "score", "accepted"):
        table.add_column(col, justify="right")
    for i, step in enumerate(result.steps, 1):
        table.add_row(str(i), f"{step.knob:.4f}", f"{step.cost:.1%}" if step.cost is not None else "-",
                      score_text(step.score), "yes" if step.accepted else "no")
    return table


@click.command("prune")
@click.argument("model", type=click.Path(dir_okay=False))
@output_options
@data_options
@click.option("--criterion", type=click.Choice(CRITERIA), default=None,
              help="Channel importance (default with --data: obs for --ratio, permutation for --cr and "
                   "--max-accuracy-drop or with --no-reconstruct; l1 without data).")
@click.option("--ratio", type=float, default=None, help="Remove this share of each group's channels, e.g. 0.3.")
@click.option("--cr", type=float, default=None, help="Cumulative contribution rate kept per group, e.g. 0.9.")
@click.option("--max-accuracy-drop", "max_drop", type=float, default=None,
              help="Search cr (or, with --allocation uniform/global, the ratio) automatically under this "
                   "budget on held-out data (needs --data).")
@click.option("--allocation", type=click.Choice(ALLOCATIONS), default=None,
              help="uniform or global with --ratio; cr with --cr; any with --max-accuracy-drop (default cr).")
@click.option("--round-to", type=int, default=None,
              help="Keep channel counts that are multiples of this; default: onnxruntime's NCHWc block on this "
                   "CPU (16 with AVX-512, else 8), which its fast convolutions need. With --ratio the nearest "
                   "multiple of the asked share, else rounded up. 1 keeps exact counts.")
@click.option("--no-reconstruct", is_flag=True, help="Skip the least-squares re-fit of consumer layers.")
@click.option("--no-bias-compensation", is_flag=True, help="Skip moving removed channels' means into biases.")
@shape_option
@command
def prune_command(model, output, report_path, data, eval_data, sample_axes, metric, seed, budget_se, criterion, ratio, cr, max_drop,
                  allocation, round_to, no_reconstruct, no_bias_compensation, shapes):
    """Remove whole channels (filters) of MODEL, on channel dependency groups."""
    from onnxopt.errors import OnnxoptError
    from onnxopt.pruning import prune_model

    if sum(v is not None for v in (ratio, cr, max_drop)) != 1:
        raise OnnxoptError("give exactly one of --ratio, --cr or --max-accuracy-drop")
    run = LossyRun.start(model, output, "pruned", data, eval_data, metric, seed, shapes, budget_se=budget_se,
                         sample_axes=sample_axes)
    if max_drop is not None and run.held_out is None:
        raise OnnxoptError("--max-accuracy-drop needs --data (and optionally --eval-data) to score candidates")
    result = prune_model(
        run.original, run.calib, run.evaluator, criterion=criterion, ratio=ratio, cr=cr, max_drop=max_drop,
        allocation=allocation, round_to=round_to, reconstruct=not no_reconstruct,
        bias_compensation=not no_bias_compensation, seed=seed, shapes=run.shapes or None, progress=progress,
    )
    before, after, fidelity = run.finish(result.model)
    extra = [("cosine", "", f"{fidelity.cosine:.6f}", "")]
    if fidelity.top1_agreement is not None:
        extra.append(("top-1 agreement", "", f"{fidelity.top1_agreement:.4f}", ""))
    scores = result.scores
    if "pruned" in scores:
        base = scores["original"]
        if "pruned_without_recovery" in scores:
            s = scores["pruned_without_recovery"]
            extra.append((f"{result.metric} (no recovery)", f"{base:.4f}", f"{s:.4f}", f"{s - base:+.4f}"))
        s = scores["pruned"]
        extra.append((f"{result.metric}", f"{base:.4f}", f"{s:.4f}", f"{s - base:+.4f}"))
    console.print(channels_table(result))
    if result.steps:
        console.print(search_table(result))
    console.print(before_after_table(before, after, extra))
    console.print(
        f"MACs {fmt_count(result.macs_before)} → {fmt_count(result.macs_after)} "
        f"({1 - result.macs_after / max(result.macs_before, 1):.1%} removed), params "
        f"{fmt_count(result.params_before)} → {fmt_count(result.params_after)}"
    )
    for note in result.notes:
        console.print(f"[yellow]note:[/yellow] {note}")
    for u in result.unprunable:
        console.print(f"[dim]unprunable {u['group']} ({u['channels']} ch): {'; '.join(u['reasons'])}[/dim]")
    console.print(f"wrote {run.output}")
    if report_path:
        write_json(report_path, {
            "input": model, "output": run.output, "before": before, "after": after,
            "fidelity": fidelity.to_dict(), "prune": result.to_dict(),
        })


