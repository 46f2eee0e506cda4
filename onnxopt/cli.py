"""The ``onnxopt`` command line: argument parsing and printing over the Python API."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from onnxopt import __version__
from onnxopt.cli_common import (
    command,
    console,
    data_options,
    default_output,
    err_console,
    load_dataset,
    output_options,
    progress,
    sample_axis_option,
    shape_option,
)
from onnxopt.cli_lowrank import lowrank_command
from onnxopt.cli_prune import prune_command
from onnxopt.cli_quantize import quantize_command
from onnxopt.report import (
    before_after_table,
    fmt_bytes,
    fmt_count,
    stage_table,
    to_json_text,
    write_json,
)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="onnxopt")
def main() -> None:
    """Make exported ONNX models smaller and faster on stock onnxruntime, with proof.

    Every command that writes a model verifies it against its input and never writes
    to the input path. Errors are one line; add --debug for a traceback.
    """



def _fidelity_rows(fid, verified_on: str) -> list[tuple[str, str, str, str]]:
    rows = [("verified on", verified_on, "", ""), ("max abs error", "", f"{fid.max_abs:.3g}", ""),
            ("max rel. error", "", f"{fid.max_rel:.3g}", ""), ("cosine", "", f"{fid.cosine:.6f}", "")]
    if fid.top1_agreement is not None:
        rows.append(("top-1 agreement", "", f"{fid.top1_agreement:.4f}", ""))
    if fid.accuracy_original is not None:
        rows.append(("accuracy", f"{fid.accuracy_original:.4f}", f"{fid.accuracy_candidate:.4f}",
                     f"{fid.accuracy_candidate - fid.accuracy_original:+.4f}"))
    return rows


def latency_rows(result) -> list[tuple[str, str, str, str]]:
    """One row per provider timed. The target's row is the final speed check itself when one
    ran (optimize reuses its measurement), so the table shows the number that decided."""
    rows = []
    if result.bench is not None:  # rows come as (original, optimized) per provider, target first
        timed = result.bench.rows
        for o, n in zip(timed[0::2], timed[1::2]):
            what = "final speed check" if result.speedup is not None and not rows else "bench"
            rows.append((f"latency p50 ms ({o.provider})", f"{o.p50_ms:.3f}", f"{n.p50_ms:.3f}", f"{n.ratio:.2f}× ({what})"))
    if result.speedup is not None and not rows:  # timed, but no bench asked for
        rows.append(("final speed check", "", f"{result.speedup:.2f}×", "p50 ratio, interleaved"))
    return rows


def print_optimize_result(result) -> None:
    extra = _fidelity_rows(result.fidelity, result.verified_on)
    if result.final_score is not None:
        extra.append((f"score ({result.metric})", f"{result.baseline_score:.4f}", f"{result.final_score:.4f}",
                      f"{result.final_score - result.baseline_score:+.4f}"))
    extra.extend(latency_rows(result))
    console.print(stage_table(result.stages))
    console.print(before_after_table(result.before, result.after, extra))
    if result.lossless_only:
        why = result.lossless_why or "no lossy stage ran"
        console.print(f"[dim]{why[0].upper()}{why[1:]}: only lossless passes were applied.[/dim]")
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}")
    if result.output:
        console.print(f"wrote {result.output}")


@main.command("optimize")
@click.argument("model", type=click.Path(dir_okay=True))
@output_options
@data_options
@click.option("--max-accuracy-drop", type=float, default=0.01, show_default=True, help="Budget for the lossy stages, on held-out data.")
@click.option("--stages", "stage_names", type=str, default=None,
              help="Comma-separated lossy stages to run (default: all; none: only the lossless passes, checked on --data).")  # fmt: skip
@click.option("--bench/--no-bench", default=True, show_default=True, help="Measure latency of original vs optimized (interleaved).")
@click.option("--threads", type=int, default=2, show_default=True, help="onnxruntime threads for --bench and the speed check.")
@click.option("--target", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True, help="Execution provider to be fast on (cuda needs onnxruntime-gpu; without it the run stops).")
@click.option("--speed-check/--no-speed-check", default=True, show_default=True, help="Keep a lossy stage only if it is measurably faster.")
@click.option("--recipe", type=click.Path(dir_okay=False), default=None, help="TOML recipe pinning the settings of every stage.")
@shape_option
@command
def optimize_cmd(model, output, report_path, data, eval_data, sample_axes, metric, seed, budget_se, max_accuracy_drop, stage_names, bench, threads,
                 target, speed_check, recipe, shapes):
    """Optimize MODEL: lossless passes, and with --data the lossy ones under a budget."""
    from onnxopt.calibration import parse_sample_axes, parse_shapes
    from onnxopt.optimize import optimize

    output = output or default_output(model, "opt")
    result = optimize(
        model,
        output,
        data=data,
        eval_data=eval_data,
        sample_axes=parse_sample_axes(sample_axes),
        max_drop=max_accuracy_drop,
        metric=metric,
        budget_se=budget_se,
        shapes=parse_shapes(shapes),
        stages=([] if stage_names.strip().lower() == "none" else stage_names.split(",")) if stage_names else None,
        seed=seed,
        target=target,
        speed_check=speed_check,
        recipe=recipe,
        bench=bench,
        bench_threads=threads,
        progress=progress,
    )
    print_optimize_result(result)
    if report_path:
        write_json(report_path, result.to_dict())


@main.command("fold-bn")
@click.argument("model", type=click.Path(dir_okay=True))
@output_options
@shape_option
@command
def fold_bn_cmd(model, output, report_path, shapes):
    """Fold BatchNormalization into neighbouring Conv/ConvTranspose/Gemm/MatMul (exact)."""
    from onnxopt.calibration import parse_shapes
    from onnxopt.optimize import optimize
    from onnxopt.passes.fold_bn import FoldBatchNormPass
    from onnxopt.pipeline import pass_stage

    output = output or default_output(model, "foldbn")
    result = optimize(model, output, shapes=parse_shapes(shapes), stages=[], progress=progress,
                      lossless=[pass_stage("fold_bn", FoldBatchNormPass)])
    print_optimize_result(result)
    for name, reason in result.stages[0].skipped:
        console.print(f"[dim]skipped {escape(name)}: {escape(reason)}[/dim]")
    if report_path:
        write_json(report_path, result.to_dict())


@main.command("verify")
@click.argument("original", type=click.Path(dir_okay=True))
@click.argument("candidate", type=click.Path(dir_okay=True))
@click.option("--data", type=click.Path(dir_okay=False), help=".npz inputs (+ optional labels); default: random inputs.")
@click.option("--samples", type=int, default=16, show_default=True, help="Random samples when no --data.")
@click.option("--rtol", type=float, default=1e-4, show_default=True, help="Max relative error (to the output's largest magnitude).")
@click.option("--atol", type=float, default=1e-5, show_default=True, help="Max absolute error accepted regardless of rtol.")
@click.option("--min-agreement", type=float, default=None, help="Instead of rtol/atol: pass when top-1 agreement ≥ this.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--seed", type=int, default=0, show_default=True)
@sample_axis_option
@shape_option
@command
def verify_cmd(original, candidate, data, samples, rtol, atol, min_agreement, as_json, seed, sample_axes, shapes):
    """Compare CANDIDATE against ORIGINAL on the same inputs; exit 1 when out of tolerance."""
    from onnxopt.calibration import parse_sample_axes, parse_shapes
    from onnxopt.optimize import verify_models

    fid, described = verify_models(original, candidate, data=data, samples=samples, shapes=parse_shapes(shapes), seed=seed,
                                   sample_axes=parse_sample_axes(sample_axes))  # fmt: skip
    if min_agreement is not None:
        agreement = fid.top1_agreement
        ok = agreement is not None and agreement >= min_agreement
    else:
        ok = fid.within(rtol, atol)
    if as_json:
        click.echo(to_json_text({"ok": ok, "inputs": described, **fid.to_dict()}))
    else:
        table = Table(title=f"verify ({described})")
        for col in ("output", "max abs", "max rel", "cosine", "top-1 agree"):
            table.add_column(col)
        for o in fid.outputs:
            table.add_row(o.name, f"{o.max_abs:.3g}", f"{o.max_rel:.3g}", f"{o.cosine:.6f}",
                          "-" if o.top1_agreement is None else f"{o.top1_agreement:.4f}")
        console.print(table)
        if fid.accuracy_original is not None:
            console.print(f"accuracy: {fid.accuracy_original:.4f} → {fid.accuracy_candidate:.4f}")
        console.print("[green]OK[/green]" if ok else "[red]FAILED: outside tolerance[/red]")
    sys.exit(0 if ok else 1)


@main.command("inspect")
@click.argument("model", type=click.Path(dir_okay=True))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--top", type=int, default=20, show_default=True, help="Layers to list, by MACs.")
@shape_option
@command
def inspect_cmd(model, as_json, top, shapes):
    """Show op histogram, inputs/outputs, opset, parameters and MACs by layer."""
    from onnxopt.calibration import parse_shapes
    from onnxopt.inspection import inspect_model
    from onnxopt.model_io import load_model

    info = inspect_model(load_model(model), model, parse_shapes(shapes))
    if as_json:
        click.echo(to_json_text(info))
        return
    console.print(f"[bold]{escape(model)}[/bold]  {fmt_bytes(info['file_size'])}, IR v{info['ir_version']}, "
                  f"opsets {info['opsets']}, producer {info['producer'] or '?'}")
    console.print(f"{info['nodes']} nodes, {fmt_count(info['params'])} parameters, {fmt_count(info['macs'])} MACs"
                  + (f" ({info['macs_unknown_nodes']} nodes with unknown shapes)" if info["macs_unknown_nodes"] else ""))
    io = Table(title="inputs / outputs")
    for col in ("", "name", "dtype", "shape"):
        io.add_column(col)
    for kind in ("inputs", "outputs"):
        for v in info[kind]:
            io.add_row(kind[:-1], escape(v["name"]), str(v["dtype"]), escape(str(v["shape"])))
    console.print(io)
    ops = Table(title="ops")
    ops.add_column("op")
    ops.add_column("count", justify="right")
    for op, n in info["ops"].items():
        ops.add_row(escape(op), str(n))
    console.print(ops)
    layers = Table(title=f"top {top} layers by MACs")
    for col in ("layer", "op", "MACs", "params"):
        layers.add_column(col)
    for layer in sorted(info["layers"], key=lambda x: -x["macs"])[:top]:
        layers.add_row(escape(layer["name"]), escape(layer["op_type"]), fmt_count(layer["macs"]), fmt_count(layer["params"]))
    console.print(layers)


@main.command("bench")
@click.argument("models", nargs=-1, required=True, type=click.Path(dir_okay=True))
@click.option("--providers", default="cpu", show_default=True, help="Comma-separated: cpu, cuda, tensorrt, openvino, dml, coreml.")
@click.option("--threads", type=int, default=None, help="intra-op threads (default: onnxruntime's).")
@click.option("--batch", "batches", default="1", show_default=True, help="Comma-separated batch sizes.")
@click.option("--warmup", type=int, default=10, show_default=True)
@click.option("--iterations", type=int, default=None, help="Timed rounds (default 100 unless --seconds).")
@click.option("--seconds", type=float, default=None, help="Timed seconds per provider/batch group.")
@click.option("--opt-level", type=click.Choice(["disable", "basic", "extended", "all"]), default="all", show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Write results as JSON ('-' for stdout).")
@click.option("--markdown", "md_path", type=click.Path(dir_okay=False), default=None, help="Write a markdown table.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None, help="Write a PNG bar chart (plot extra).")
@click.option("--data", "data_path", type=click.Path(dir_okay=False), default=None,
              help="Time real samples (.npz, one array per input of the first model) instead of random ones.")
@sample_axis_option
@shape_option
@command
def bench_cmd(models, providers, threads, batches, warmup, iterations, seconds, opt_level, json_path, md_path, plot_path,
              data_path, sample_axes, shapes):  # fmt: skip
    """Latency of one or more models, interleaved in one process; ratio vs the first."""
    from onnxopt.bench import benchmark, plot
    from onnxopt.calibration import parse_shapes
    from onnxopt.errors import OnnxoptError
    from onnxopt.model_io import load_model

    try:
        batch_sizes = [int(b) for b in batches.split(",") if b.strip()]
    except ValueError:
        raise OnnxoptError(f"--batch {batches!r}: expected comma-separated integers, e.g. 1,8,32") from None
    data = load_dataset(data_path, load_model(models[0]), sample_axes=sample_axes) if data_path else None
    result = benchmark(
        list(models), providers=providers.split(","), threads=threads, batch_sizes=batch_sizes,
        shapes=parse_shapes(shapes), warmup=warmup, iterations=iterations, seconds=seconds, opt_level=opt_level,
        data=data,
    )
    for s in result.skipped:
        err_console.print(f"[yellow]skipped[/yellow] {s}")
    table = Table(title="latency (interleaved)")
    for col in ("model", "provider", "batch", "p50 ms", "p90 ms", "p99 ms", "mean ± std", "samples/s", "session MB", "ratio"):
        table.add_column(col, justify="left" if col in ("model", "provider") else "right")
    for r in result.rows:
        table.add_row(r.model, r.provider, str(r.batch), f"{r.p50_ms:.3f}", f"{r.p90_ms:.3f}", f"{r.p99_ms:.3f}",
                      f"{r.mean_ms:.3f} ± {r.std_ms:.3f}", f"{r.throughput:.1f}",
                      "-" if r.session_mb is None else f"{r.session_mb:.0f}", f"{r.ratio:.2f}×" if r.ratio else "-")
    if json_path == "-":
        click.echo(to_json_text(result.to_dict()))
    else:
        console.print(table)
        if json_path:
            write_json(json_path, result.to_dict())
    if md_path:
        Path(md_path).write_text(result.markdown())
    if plot_path:
        plot(result, plot_path)


@main.command("demo")
@click.option("--workdir", type=click.Path(file_okay=False), default="demo-output", show_default=True, help="Where the demo writes its outputs.")
@command
def demo_cmd(workdir):
    """Run optimize → verify → bench on the bundled digits CNN (no torch, no network)."""
    from onnxopt.demo import run_demo

    run_demo(Path(workdir), console=console, progress=progress)


main.add_command(prune_command)
main.add_command(lowrank_command)
main.add_command(quantize_command)
