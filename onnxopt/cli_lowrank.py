"""``onnxopt lowrank``: SVD split of fully connected layers, with a per-layer report."""

from __future__ import annotations

__all__ = ["lowrank_command"]

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
from onnxopt.report import before_after_table, fmt_count, write_json


def layer_table(result) -> Table:
    """One row per candidate layer: shape, rank kept, energy kept, MACs before/after."""
    table = Table(title=f"low-rank layers ({'data-aware' if result.data_aware else 'plain'} SVD)")
    for col in ("layer", "op", "K×N", "rank", "energy", "MACs before", "MACs after", "note"):
        right = col.startswith(("rank", "energy", "MACs"))
        table.add_column(col, justify="right" if right else "left", overflow="fold", no_wrap=right or col == "K×N")
    for d in result.layers:
        if not d.in_features:
            continue  # not a candidate at all (e.g. a 3×3 Conv): summarised below the table
        if d.split:
            rank, energy, after = f"{d.rank}/{d.full_rank}", f"{d.energy:.3f}", fmt_count(d.macs_after)
            note = "" if d.exact_svd else "randomized SVD"
        else:
            rank, energy, after, note = "-", "-", fmt_count(d.macs_before), f"[yellow]kept: {d.reason}[/yellow]"
        table.add_row(d.name, d.op_type, f"{d.in_features}×{d.out_features}", rank, energy,
                      fmt_count(d.macs_before), after, note)
    return table


def _declined_summary(result) -> list[str]:
    counts: dict[tuple[str, str], int] = {}
    for d in result.layers:
        if not d.in_features:
            counts[(d.op_type, d.reason)] = counts.get((d.op_type, d.reason), 0) + 1
    return [f"not split: {n} {op} ({reason})" for (op, reason), n in sorted(counts.items())]


@click.command("lowrank")
@click.argument("model", type=click.Path(dir_okay=False))
@output_options
@data_options
@click.option("--rank", type=int, default=None, help="Keep this rank in every layer that it makes cheaper.")
@click.option("--energy", type=float, default=None, help="Keep the smallest rank reaching this share of squared singular values, e.g. 0.95.")
@click.option("--ratio", type=float, default=None, help="Keep at most this share of each layer's MACs, e.g. 0.5.")
@click.option("--max-accuracy-drop", "max_drop", type=float, default=None, help="Search one global energy threshold under this budget (needs --data).")
@click.option("--data-aware/--no-data-aware", default=True, show_default=True, help="Whiten by the layer inputs' covariance (with --data).")
@click.option("--round-to", type=int, default=8, show_default=True, help="Round ranks to a multiple of this.")
@click.option("--conv1x1", is_flag=True, help="Also split 1×1 convolutions.")
@shape_option
@command
def lowrank_command(model, output, report_path, data, eval_data, sample_axes, metric, seed, budget_se, rank, energy, ratio, max_drop,
                    data_aware, round_to, conv1x1, shapes):
    """Split Gemm/MatMul layers of MODEL into two low-rank layers where that saves MACs."""
    from onnxopt.lowrank import lowrank_model

    run = LossyRun.start(model, output, "lowrank", data, eval_data, metric, seed, shapes, budget_se=budget_se,
                         sample_axes=sample_axes)
    result = lowrank_model(
        run.original, run.calib, run.evaluator, rank=rank, energy=energy, ratio=ratio, max_drop=max_drop,
        data_aware=data_aware, round_to=round_to, conv1x1=conv1x1, shapes=run.shapes or None,
        seed=seed, progress=progress,
    )
    before, after, fidelity = run.finish(result.model)
    extra = [("max rel. error", "", f"{fidelity.max_rel:.3g}", ""), ("cosine", "", f"{fidelity.cosine:.6f}", "")]
    if fidelity.top1_agreement is not None:
        extra.append(("top-1 agreement", "", f"{fidelity.top1_agreement:.4f}", ""))
    if result.score is not None:
        extra.append((f"score ({result.metric})", f"{result.baseline:.4f}", f"{result.score:.4f}",
                      f"{result.score - result.baseline:+.4f}"))
    console.print(layer_table(result))
    console.print(before_after_table(before, after, extra))
    for step in result.steps:
        console.print(f"[dim]search: energy {step.knob:.4f} → score {score_text(step.score)} "
                      f"({'accepted' if step.accepted else 'rejected'}), layer MACs ×{step.cost:.3f}[/dim]")
    for note in [*_declined_summary(result), *result.notes]:
        console.print(f"[dim]{note}[/dim]")
    console.print(f"wrote {run.output}")
    if report_path:
        write_json(report_path, {
            "input": model, "output": run.output, "before": before, "after": after,
            "fidelity": fidelity.to_dict(), "lowrank": result.to_dict(),
        })


#: The name ``onnxopt.cli`` registers.
