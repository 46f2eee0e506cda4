"""Load and save ONNX models safely.

Rules:
1. Loading never writes: the input file and its external data are only read.
2. Every load error becomes one :class:`OnnxoptError` line: missing path, a directory,
   bytes that are not an ONNX protobuf, a truncated file, a graph the checker rejects,
   an opset outside what onnx knows.
3. Saving is atomic: the model (and its external data, if any) is written into a
   temporary folder next to the destination and moved into place only when complete;
   on any failure nothing is left behind.
4. An output path equal to the input path (or sharing its external-data file) is refused.
5. Models whose tensors exceed the 2 GB protobuf limit are saved with external data
   (``<output name>.data`` beside the output), which onnxruntime loads transparently.
"""

from __future__ import annotations

__all__ = [
    "load_model",
    "save_model",
    "model_bytes",
    "serialized_size",
    "file_size",
    "check_output_path",
    "MIN_OPSET",
]

import os
import shutil
import tempfile
from pathlib import Path

import onnx
import onnx_ir as ir
import onnx_ir.passes.common as common
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message

from onnxopt.errors import OnnxoptError
from onnxopt.graph import name_nodes, subgraphs

MIN_OPSET = 7
# Protobuf cannot serialize a message of 2 GiB or more; stay well below it.
_PROTOBUF_LIMIT = 1_800_000_000


def _external_files(proto: onnx.ModelProto) -> set[str]:
    files = set()
    for tensor in _all_tensors(proto.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            for entry in tensor.external_data:
                if entry.key == "location":
                    files.add(entry.value)
    return files


def _all_tensors(graph: onnx.GraphProto):
    for g in _graphs(graph):
        yield from g.initializer
        yield from (attr.t for node in g.node for attr in node.attribute if attr.HasField("t"))


def _read_proto(path: Path) -> onnx.ModelProto:
    if not path.exists():
        raise OnnxoptError(f"{path}: no such file; check the path")
    if path.is_dir():
        raise OnnxoptError(f"{path}: is a directory; give the path of a .onnx file")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeWarning, ValueError, UnicodeDecodeError) as exc:
        raise OnnxoptError(
            f"{path}: not a valid ONNX model (protobuf could not be parsed: "
            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
            "is the file truncated or of another format?"
        ) from exc
    except OSError as exc:
        raise OnnxoptError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    if not proto.HasField("graph") or (not proto.graph.node and not proto.graph.output):
        raise OnnxoptError(
            f"{path}: not a valid ONNX model (no graph found); is the file truncated or of another format?"
        )
    bad_text = _invalid_text(proto)
    if bad_text:
        raise OnnxoptError(
            f"{path}: not a valid ONNX model ({bad_text} is not UTF-8 text); is the file corrupted?"
        )
    return proto


def _invalid_text(message: Message) -> str | None:
    """The first string field holding bytes that are not UTF-8 (protobuf hands those out
    as ``bytes``; the checker and the IR then fail on them), or None."""
    for field, value in message.ListFields():
        if field.type == FieldDescriptor.TYPE_STRING:
            for text in [value] if isinstance(value, (str, bytes)) else value:
                if isinstance(text, bytes):
                    return f"field {field.name!r} ({text[:30]!r})"
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            for item in [value] if isinstance(value, Message) else value:
                found = _invalid_text(item)
                if found:
                    return found
    return None


def _check_opset(path: Path, proto: onnx.ModelProto) -> None:
    newest = onnx.defs.onnx_opset_version()
    for opset in proto.opset_import:
        if opset.domain in ("", "ai.onnx"):
            if opset.version < MIN_OPSET or opset.version > newest:
                raise OnnxoptError(
                    f"{path}: opset {opset.version} is not supported (supported: {MIN_OPSET}-{newest}); "
                    "convert it with onnx.version_converter or re-export with another opset"
                )
            return
    # A model with no default-domain opset but default-domain nodes is invalid; the
    # checker below reports it.


def _graphs(graph: onnx.GraphProto):
    """``graph`` and every subgraph in it."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            for g in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _graphs(g)


def _only_out_of_order(graph: onnx.GraphProto) -> bool:
    """Whether every value a node reads is defined somewhere in the model (a graph input,
    an initializer or a node output): the checker's "topologically sorted" error then means
    the order, not a missing value, which it reports in the same words."""
    graphs = list(_graphs(graph))
    defined = {""}
    for g in graphs:
        defined.update(v.name for v in g.input)
        defined.update(t.name for t in g.initializer)
        defined.update(t.values.name for t in g.sparse_initializer)
        defined.update(o for n in g.node for o in n.output)
    return all(i in defined for g in graphs for n in g.node for i in n.input)


def _check_model(path: Path, proto: onnx.ModelProto, *, unsorted_ok: bool = False) -> bool:
    """Raise for a model the ONNX checker rejects. With ``unsorted_ok``, nodes out of
    topological order are not an error (returns True: the caller sorts and checks again):
    onnxruntime sorts them itself, and its own ``float16.convert_float_to_float16(...,
    keep_io_types=True)`` writes the input Casts after the nodes that read them."""
    try:
        if proto.ByteSize() < _PROTOBUF_LIMIT and not _external_files(proto):
            onnx.checker.check_model(proto)
        else:
            onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as exc:
        first = next((line for line in str(exc).splitlines() if line.strip()), "invalid graph")
        if unsorted_ok and "topologically sorted" in first and _only_out_of_order(proto.graph):
            return True
        raise OnnxoptError(f"{path}: the ONNX checker rejects this model: {first}") from exc
    return False


def _ir_rejection(proto: onnx.ModelProto, exc: BaseException) -> str:
    """Why ``onnx_ir`` refused ``proto``: the innermost error (the outer ones only name the
    function that failed), and for a map-typed graph input or output which one it is."""
    root = exc
    while root.__cause__ is not None or (root.__context__ is not None and not root.__suppress_context__):
        root = root.__cause__ or root.__context__
    message = str(root) or type(root).__name__
    for kind, values in (("input", proto.graph.input), ("output", proto.graph.output)):
        for value in values:
            if _has_map(value.type):
                return (f"{message} ({kind} {value.name!r} is a map; skl2onnx writes one for its ZipMap: "
                        "convert with options={'zipmap': False})")  # fmt: skip
    return message


def _has_map(tp: onnx.TypeProto) -> bool:
    kind = tp.WhichOneof("value")
    if kind == "map_type":
        return True
    if kind == "sequence_type":
        return _has_map(tp.sequence_type.elem_type)
    if kind == "optional_type":
        return _has_map(tp.optional_type.elem_type)
    return False


def load_model(path: str | os.PathLike, *, check: bool = True) -> ir.Model:
    """Load ``path`` into an ``onnx_ir`` model, with one-line errors for bad input.

    External data is memory-mapped lazily from beside the file, as ``onnx_ir`` does.
    """
    path = Path(path)
    proto = _read_proto(path)
    _check_opset(path, proto)
    missing = [f for f in _external_files(proto) if not (path.parent / f).is_file()]
    if missing:
        raise OnnxoptError(
            f"{path}: external data file {missing[0]!r} is missing; keep it beside the model"
        )
    unsorted = check and _check_model(path, proto, unsorted_ok=True)
    try:
        model = ir.serde.deserialize_model(proto)
    except Exception as exc:  # the IR rejects a few things the checker lets pass
        raise OnnxoptError(f"{path}: cannot be read into the IR: {_ir_rejection(proto, exc)}") from exc
    if unsorted:  # sorted, then checked again for whatever the order hid
        common.TopologicalSortPass()(model)
        sorted_proto = ir.serde.serialize_model(model)
        if sorted_proto.ByteSize() < _PROTOBUF_LIMIT:
            _check_model(path, sorted_proto)
    ir.external_data.set_base_dir(model.graph, str(path.parent.resolve()))
    name_nodes(model)
    _negative_dims_as_dynamic(model)
    return model


def _negative_dims_as_dynamic(model: ir.Model) -> None:
    """paddle2onnx writes a dynamic batch as ``dim_value: -1`` (PP-OCR's classifier): a size
    of −1 is read as unknown, not as a fixed size (``inspect`` built a −1-sized input)."""
    graphs = [model.graph, *(g for n in ir.traversal.RecursiveGraphIterator(model.graph) for g in subgraphs(n))]
    for graph in graphs:
        values = [*graph.inputs, *graph.outputs, *(o for n in graph for o in n.outputs)]
        for value in values:
            shape = value.shape
            if shape is not None and any(isinstance(d, int) and d < 0 for d in shape):
                value.shape = ir.Shape([None if isinstance(d, int) and d < 0 else d for d in shape])


def model_bytes(model: ir.Model) -> int:
    """Sum of the byte sizes of all initializers (a lower bound of the file size)."""
    total = 0
    for value in model.graph.initializers.values():
        if value.const_value is not None:
            total += value.const_value.nbytes
    return total


def serialized_size(model: ir.Model) -> int:
    """Bytes of the model written as one file, weights embedded (Constant nodes included,
    which :func:`model_bytes` does not count)."""
    return _embedded_proto(model).ByteSize()


def file_size(path: str | os.PathLike) -> int:
    """Size of a model file on disk, its external data files included."""
    path = Path(path)
    size = path.stat().st_size
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:
        return size
    for name in _external_files(proto):
        f = path.parent / name
        if f.is_file():
            size += f.stat().st_size
    return size


def check_output_path(output: str | os.PathLike, input_path: str | os.PathLike | None) -> Path:
    """Refuse an output that would overwrite the input model or its external data."""
    output = Path(output)
    if output.is_dir():
        raise OnnxoptError(f"{output}: output path is a directory; give a file name")
    if input_path is not None:
        input_path = Path(input_path)
        if output.resolve() == input_path.resolve():
            raise OnnxoptError(
                f"{output}: output path equals the input; give another -o/--output path"
            )
        data_name = output.name + ".data"
        try:
            inputs_data = {
                (input_path.parent / f).resolve()
                for f in _external_files(onnx.load(str(input_path), load_external_data=False))
            }
        except Exception:
            inputs_data = set()
        if output.resolve() in inputs_data:
            raise OnnxoptError(
                f"{output}: output path is the input's external data file; give another -o/--output path"
            )
        if (output.parent / data_name).resolve() in inputs_data | {input_path.resolve()}:
            raise OnnxoptError(
                f"{output}: its external data file would overwrite the input's; choose another name"
            )
    if not output.parent.exists():
        raise OnnxoptError(f"{output}: folder {output.parent} does not exist")
    return output


def _embedded_proto(model: ir.Model) -> onnx.ModelProto:
    """Serialize with every tensor inside the protobuf (external ones read into memory)."""
    swapped: list[tuple[ir.Value, ir.TensorProtocol]] = []
    for graph in model.graphs():
        for value in graph.initializers.values():
            tensor = value.const_value
            if isinstance(tensor, ir.ExternalTensor):
                swapped.append((value, tensor))
                value.const_value = ir.Tensor(tensor.numpy(), name=tensor.name)
    try:
        proto = ir.to_proto(model)
    finally:
        for value, tensor in swapped:
            value.const_value = tensor
    _drop_untyped_value_info(proto.graph)
    return proto


def _drop_untyped_value_info(graph: onnx.GraphProto) -> None:
    """A value with a shape but no element type is written as a ValueInfoProto without a
    type, which the ONNX checker rejects; such an entry carries nothing a consumer needs."""
    typed = [vi for vi in graph.value_info if vi.type.WhichOneof("value") is not None]
    if len(typed) != len(graph.value_info):
        del graph.value_info[:]
        graph.value_info.extend(typed)
    for node in graph.node:
        for attribute in node.attribute:
            for sub in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
                _drop_untyped_value_info(sub)


def save_model(
    model: ir.Model,
    path: str | os.PathLike,
    *,
    input_path: str | os.PathLike | None = None,
    external_data: bool | None = None,
) -> Path:
    """Write ``model`` to ``path`` atomically; returns the path.

    ``external_data=None`` chooses external data only when the tensors would not fit in a
    protobuf. The model object is not changed.
    """
    path = check_output_path(path, input_path)
    if external_data is None:
        external_data = model_bytes(model) > _PROTOBUF_LIMIT
    data_name = path.name + ".data" if external_data else None
    try:
        tmp_dir = Path(tempfile.mkdtemp(prefix=".onnxopt-", dir=path.parent))
    except OSError as exc:
        raise OnnxoptError(f"{path}: cannot write in {path.parent} ({exc.strerror or exc})") from exc
    moved_data: Path | None = None  # an external-data file already moved into place
    try:
        tmp_model = tmp_dir / path.name
        if data_name:
            ir.save(model, tmp_model, external_data=data_name)
        else:
            onnx.save_model(_embedded_proto(model), str(tmp_model))
        if data_name:
            os.replace(tmp_dir / data_name, path.parent / data_name)
            moved_data = path.parent / data_name
        os.replace(tmp_model, path)
        moved_data = None
    except OSError as exc:
        raise OnnxoptError(f"{path}: cannot write the model ({exc.strerror or exc})") from exc
    finally:
        if moved_data is not None:  # the model itself did not make it: no orphan data file
            moved_data.unlink(missing_ok=True)
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return path
