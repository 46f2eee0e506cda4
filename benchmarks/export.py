"""One call to export a torch model to a self-contained ONNX file with either torch exporter.

Both exporters are needed because they produce different graphs for the same model:

* ``dynamo=False`` (TorchScript exporter): plain ``Conv → BatchNormalization`` patterns. In
  ``TrainingMode.EVAL`` it folds BN into Conv itself, so with ``optimize=False`` (the default)
  we export in ``TrainingMode.PRESERVE`` on an eval-mode model: same inference graph, BN kept.
* ``dynamo=True`` (torch.export + onnxscript): with ``optimize=False`` BN stays unfused and
  bias-free convs get a zero bias built as ``Expand(CastLike(0, x), …)``, the case onnxopt
  must handle; ``optimize=True`` runs onnxscript's optimizer (BN fusion, constant folding).

Models under 2 GB are always written as one file without external data.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import onnx
import torch

_DYNAMO_MIN_OPSET = 18
_TWO_GB = 2**31
_EXTERNAL_DATA_THRESHOLD = int(1.8 * 2**30)  # leave headroom for the graph itself


def _tensor_bytes(model: torch.nn.Module) -> int:
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def _make_self_contained(path: Path) -> None:
    """Re-save ``path`` with all tensors inline if the exporter wrote external data."""
    proto = onnx.load(str(path), load_external_data=False)
    locations = {
        entry.value
        for tensor in onnx.external_data_helper._get_all_tensors(proto)
        if tensor.data_location == onnx.TensorProto.EXTERNAL
        for entry in tensor.external_data
        if entry.key == "location"
    }
    if not locations:
        return
    onnx.load_external_data_for_model(proto, str(path.parent))
    if proto.ByteSize() >= _TWO_GB:
        return  # cannot be inlined; leave the exporter's external data in place
    tmp = path.with_name(path.name + ".tmp")
    onnx.save_model(proto, str(tmp), save_as_external_data=False)
    os.replace(tmp, path)
    for location in locations:
        (path.parent / location).unlink(missing_ok=True)


def _export_dynamo(
    model: torch.nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    path: Path,
    opset: int | None,
    input_names: list[str] | None,
    output_names: list[str] | None,
    dynamic_batch: bool,
    optimize: bool,
    batch_axes: dict[str, int],
    sequence_axis: int | None,
) -> None:
    if opset is not None and opset < _DYNAMO_MIN_OPSET:
        # The exporter would fall back to 18 on its own after a failed down-conversion.
        raise ValueError(f"dynamo=True needs opset >= {_DYNAMO_MIN_OPSET}, got {opset}")
    dynamic_shapes = None
    if dynamic_batch:
        batch = torch.export.Dim("batch")
        names = input_names or [""] * len(example_inputs)
        sequence = {} if sequence_axis is None else {sequence_axis: torch.export.Dim("sequence")}
        dynamic_shapes = tuple({batch_axes.get(name, 0): batch, **sequence} for name in names)
    # Without torchvision the exporter logs one warning per torchvision op it cannot register.
    registration_log = logging.getLogger("torch.onnx._internal.exporter._registration")
    old_level = registration_log.level
    registration_log.setLevel(logging.ERROR)
    try:
        torch.onnx.export(
            model,
            example_inputs,
            str(path),
            dynamo=True,
            opset_version=opset,
            input_names=input_names,
            output_names=output_names,
            dynamic_shapes=dynamic_shapes,
            optimize=optimize,
            external_data=_tensor_bytes(model) > _EXTERNAL_DATA_THRESHOLD,
            verbose=False,
        )
    finally:
        registration_log.setLevel(old_level)
    _make_self_contained(path)


def _export_torchscript(
    model: torch.nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    path: Path,
    opset: int | None,
    input_names: list[str] | None,
    output_names: list[str] | None,
    dynamic_batch: bool,
    optimize: bool,
    batch_axes: dict[str, int],
    sequence_axis: int | None,
) -> None:
    dynamic_axes = None
    if dynamic_batch:  # dynamic_axes is keyed by name, so every input and output needs one
        input_names = input_names or [f"input_{i}" for i in range(len(example_inputs))]
        with torch.no_grad():
            outputs = model(*example_inputs)
        n_outputs = len(outputs) if isinstance(outputs, tuple | list) else 1
        output_names = output_names or [f"output_{i}" for i in range(n_outputs)]
        dynamic_axes = {name: {batch_axes.get(name, 0): "batch"} for name in [*input_names, *output_names]}
        for name in input_names if sequence_axis is not None else ():
            dynamic_axes[name][sequence_axis] = "sequence"
    # EVAL runs the exporter's Conv+BN fusion; PRESERVE on an eval-mode model skips only that.
    mode = torch.onnx.TrainingMode.EVAL if optimize else torch.onnx.TrainingMode.PRESERVE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        # Its advice against constant folding with PRESERVE is for models in training mode.
        warnings.filterwarnings("ignore", message="It is recommended that constant folding")
        torch.onnx.export(
            model,
            example_inputs,
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=dynamic_axes,
            training=mode,
            do_constant_folding=True,
        )


def export_onnx(
    model: torch.nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    path: str | os.PathLike[str],
    *,
    dynamo: bool,
    opset: int | None = None,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    dynamic_batch: bool = False,
    optimize: bool = False,
    batch_axes: Mapping[str, int] | None = None,
    sequence_axis: int | None = None,
) -> Path:
    """Export ``model`` (run in eval mode) on ``example_inputs`` to ``path`` and return it.

    ``opset=None`` uses the exporter's default (20 with torch 2.13; dynamo needs >= 18).
    ``dynamic_batch`` makes dimension 0 of every input and output symbolic (``batch``);
    ``batch_axes`` (name → axis, implies ``dynamic_batch``) moves it for the named inputs and
    outputs, e.g. an RNN state ``[layers, batch, hidden]``. ``sequence_axis`` (with
    ``dynamic_batch``) makes that axis of every input symbolic too (``sequence``).
    ``optimize=False`` keeps BatchNormalization nodes unfused with both exporters (see the
    module docstring). The model's train/eval mode is restored afterwards.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    export = _export_dynamo if dynamo else _export_torchscript
    was_training = model.training
    model.eval()
    try:
        export(
            model,
            tuple(example_inputs),
            path,
            opset,
            list(input_names) if input_names else None,
            list(output_names) if output_names else None,
            dynamic_batch or bool(batch_axes),
            optimize,
            dict(batch_axes or {}),
            sequence_axis,
        )
    finally:
        model.train(was_training)
    return path
