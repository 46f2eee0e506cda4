"""``onnxopt quantize``: int8 (static / dynamic), ternary or binary weights, with a report."""

from __future__ import annotations

__all__ = ["quantize_command"]

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
from onnxopt.report import before_after_table, write_json


def layer_table(result) -> Table:
    """One row per layer: quantized or float, and why it stayed float."""
    table = Table(title=f"{result.mode} layers")
    for col in ("layer", "result", "sensitivity", "note"):
        table.add_column(col)
    for name in result.layers_quantized:
        table.add_row(name, "[green]quantized[/green]", _sensitivity_text(result, name), "")
    for name, reason in result.layers_float.items():
        table.add_row(name, "[yellow]float[/yellow]", _sensitivity_text(result, name), reason)
    return table


def _sensitivity_text(result, name: str) -> str:
    if name in result.sensitivity:
        return f"{result.sensitivity[name]:.3g}"
    return f"{result.local_error[name]:.3g} (local)" if name in result.local_error else "-"


@click.command("quantize")
@click.argument("model", type=click.Path(dir_okay=False))
@output_options
@data_options
@click.option("--mode", type=click.Choice(["int8", "int8-dynamic", "int8-mixed", "ternary", "binary"]), default="int8", show_default=True,
              help="int8: static QDQ of every op onnxruntime quantizes but Softmax and its input (needs --data); "
                   "int8-dynamic: MatMul/Gemm/LSTM weights, for transformers and recurrent models; "
                   "int8-mixed: dynamic MatMul/Gemm/LSTM, static QDQ for the other ops (convolutions, adds, pools; CRNNs; needs --data); "
                   "ternary/binary: TWN / binary weights, packed (layers ≥16× smaller, fp32 speed).")  # fmt: skip
@click.option("--method", type=click.Choice(["minmax", "entropy", "percentile"]), default="minmax", show_default=True,
              help="Calibration method for static int8.")  # fmt: skip
@click.option("--max-accuracy-drop", "max_drop", type=float, default=None,
              help="Keep the most sensitive layers float until the drop on held-out data is within this.")  # fmt: skip
@click.option("--exclude", multiple=True, metavar="NODE", help="Keep this node float (repeatable).")
@click.option("--keep-first-last/--quantize-first-last", "keep_first_last", default=None,
              help="Keep the first and last weighted layer float (default: yes for ternary/binary, no for int8).")  # fmt: skip
@click.option("--types", type=click.Choice(["u8s8", "s8s8", "auto"]), default="u8s8", show_default=True,
              help="Static int8 activation×weight types; auto measures both and keeps the faster.")  # fmt: skip
@click.option("--storage", type=click.Choice(["packed", "dq"]), default="packed", show_default=True,
              help="Ternary/binary storage: packed uint8 decoded at load (fp32 speed) or INT2/INT4 + DequantizeLinear.")  # fmt: skip
@click.option("--allow-slower", is_flag=True, help="Keep an int8 model even when it is not faster than float.")
@shape_option
@command
def quantize_command(model, output, report_path, data, eval_data, sample_axes, metric, seed, budget_se, mode, method, max_drop, exclude,
                     keep_first_last, types, storage, allow_slower, shapes):  # fmt: skip
    """Quantize MODEL's weights (and activations for int8) and report what it cost."""
    from onnxopt.errors import OnnxoptError
    from onnxopt.quantization import already_quantized, quantize_model

    run = LossyRun.start(model, output, mode, data, eval_data, metric, seed, shapes, min_split=4, budget_se=budget_se,
                         sample_axes=sample_axes)
    if why := already_quantized(run.original):
        raise OnnxoptError(why)
    if mode in ("int8", "int8-mixed") and run.calib is None:
        raise OnnxoptError(f"--mode {mode} needs calibration data (--data calib.npz); or use --mode int8-dynamic")
    if max_drop is not None and run.calib is None and run.held_out is None:
        raise OnnxoptError("--max-accuracy-drop needs data to measure the drop on (--data or --eval-data)")
    act, wt = {"u8s8": ("u8", "s8"), "s8s8": ("s8", "s8"), "auto": ("auto", None)}[types]
    result = quantize_model(
        run.original, run.calib, run.evaluator, mode=mode, calibrate_method=method, activation_type=act, weight_type=wt,
        exclude=exclude, max_drop=max_drop, skip_first_last=keep_first_last, storage=storage,
        check_speed=None if not allow_slower else False, seed=seed, progress=progress,
    )  # fmt: skip
    before, after, fidelity = run.finish(result.model)
    extra = [("max rel. error", "", f"{fidelity.max_rel:.3g}", ""), ("cosine", "", f"{fidelity.cosine:.6f}", "")]
    if fidelity.top1_agreement is not None:
        extra.append(("top-1 agreement", "", f"{fidelity.top1_agreement:.4f}", ""))
    if result.score is not None:
        extra.append((f"score ({result.metric})", f"{result.baseline:.4f}", f"{result.score:.4f}",
                      f"{result.score - result.baseline:+.4f}"))  # fmt: skip
    if result.latency_ms:
        extra.append(("latency (ms, interleaved)", f"{result.latency_ms['float']:.3f}",
                      f"{result.latency_ms['quantized']:.3f}", f"×{result.latency_ratio:.2f}"))  # fmt: skip
    console.print(layer_table(result))
    console.print(before_after_table(before, after, extra))
    for step in result.search:
        console.print(f"[dim]search: {step['float_layers']} layer(s) float → score {score_text(step['score'])} "
                      f"({'accepted' if step['accepted'] else 'rejected'})[/dim]")  # fmt: skip
    for note in result.notes:
        console.print(f"[dim]{note}[/dim]")
    if not result.applied:
        console.print(f"[yellow]{result.reason}[/yellow]")
    console.print(f"wrote {run.output}")
    if report_path:
        write_json(report_path, {
            "input": model, "output": run.output, "before": before, "after": after,
            "fidelity": fidelity.to_dict(), "quantize": result.to_dict(),
        })  # fmt: skip
