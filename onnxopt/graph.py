"""Thin helpers over ``onnx_ir`` that every pass needs.

Rules the passes rely on:
1. A constant is an initializer or the output of a ``Constant`` node; :func:`const_array`
   reads both. A graph input that also has an initializer is *not* constant (it can be
   overridden at run time).
2. Tensors are never modified in place: a pass builds a new array and calls
   :func:`set_const_input`. This keeps ``Model.clone()`` (which shares tensors) a cheap and
   safe snapshot for rollback.
3. An initializer used by several nodes is copied before it is changed for one of them
   (copy on write), so simplifier-merged tensors (e.g. identical zero biases) stay correct.
"""

from __future__ import annotations

__all__ = [
    "ancestors",
    "batch_along",
    "const_array",
    "fixed_batch",
    "input_shapes",
    "sample_axes",
    "consumers",
    "producer",
    "attr",
    "set_const_input",
    "new_initializer",
    "unique_name",
    "default_opset",
    "static_shapes",
    "has_subgraph",
    "subgraphs",
    "iter_nodes",
    "quiet_loggers",
]

import contextlib
import hashlib
import logging
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir


def const_array(value: ir.Value | None) -> np.ndarray | None:
    """The constant behind ``value`` as a numpy array, or None if it is not constant."""
    if value is None or value.is_graph_input():
        return None
    try:
        tensor = ir.convenience.get_const_tensor(value)
    except ValueError:
        return None
    if tensor is None:
        return None
    try:
        return tensor.numpy()
    except Exception:  # unreadable external data or an unsupported dtype
        return None


def subgraphs(node: ir.Node) -> list[ir.Graph]:
    """The graphs ``node`` carries as attributes (an If's branches, a Loop's or Scan's body)."""
    bodies = []
    for a in node.attributes.values():
        if a.type == ir.AttributeType.GRAPH:
            bodies.append(a.value)
        elif a.type == ir.AttributeType.GRAPHS:
            bodies.extend(a.value)
    return bodies


def ancestors(nodes: Iterable[ir.Node]) -> set[int]:
    """``id`` of every node that feeds one of ``nodes``, directly or through others (values
    read inside subgraphs not followed)."""
    seen: set[int] = set()
    stack = list(nodes)
    while stack:
        for value in stack.pop().inputs:
            parent = value.producer() if value is not None else None
            if parent is not None and id(parent) not in seen:
                seen.add(id(parent))
                stack.append(parent)
    return seen


def has_subgraph(node: ir.Node) -> bool:
    """Whether ``node`` carries a graph attribute (If, Loop, Scan, ...)."""
    return bool(subgraphs(node))


def producer(value: ir.Value | None) -> ir.Node | None:
    return None if value is None else value.producer()


def consumers(value: ir.Value) -> list[ir.Node]:
    """Nodes that read ``value`` (each once, in graph order of first use)."""
    seen: dict[int, ir.Node] = {}
    for node, _ in value.uses():
        seen.setdefault(id(node), node)
    return list(seen.values())


def attr(node: ir.Node, name: str, default: Any = None) -> Any:
    """An attribute's Python value (int, float, str, list, tensor), or ``default``."""
    a = node.attributes.get(name)
    if a is None:
        return default
    value = a.value
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return list(value)
    return value


def default_opset(model: ir.Model) -> int:
    return model.opset_imports.get("", model.opset_imports.get("ai.onnx", 1))


def value_names(graph: ir.Graph) -> set[str]:
    """Every value name of ``graph`` (initializers, inputs, node outputs), and its node names:
    a name made by :func:`unique_name` may name a new node too (onnxruntime refuses two nodes
    of one name)."""
    taken = set(graph.initializers)
    taken.update(v.name for v in graph.inputs)
    for node in graph:
        taken.update(o.name for o in node.outputs)
        if node.name:
            taken.add(node.name)
    return taken


def unique_name(graph: ir.Graph, base: str, taken: set[str] | None = None) -> str:
    """A name no value or node of ``graph`` uses yet. ``taken`` (:func:`value_names`, kept up to
    date by the caller; the name returned is added) spares the scan of the whole graph when
    many names are made at once: 525 of them took 4 of 11 s of five int8 sensitivities on
    ssdlite."""
    if taken is None:
        taken = value_names(graph)
    name, i = base, 0
    while name in taken:
        i += 1
        name = f"{base}_{i}"
    taken.add(name)
    return name


def new_initializer(graph: ir.Graph, array: np.ndarray, name_hint: str, taken: set[str] | None = None) -> ir.Value:
    """Register a new initializer holding ``array`` under a fresh name (``taken``: see
    :func:`unique_name`)."""
    name = unique_name(graph, name_hint, taken)
    value = ir.Value(name=name, const_value=ir.tensor(np.asarray(array, order="C"), name=name))
    value.shape = ir.Shape(array.shape)
    value.type = ir.TensorType(ir.DataType.from_numpy(array.dtype))
    graph.register_initializer(value)
    return value


def set_const_input(node: ir.Node, index: int, array: np.ndarray, name_hint: str | None = None) -> ir.Value:
    """Make input ``index`` of ``node`` the constant ``array``.

    Updates the initializer in place when ``node`` is its only user, otherwise (shared
    initializer, ``Constant`` node, missing optional input) creates a new initializer, so
    no other node sees the change.
    """
    graph = node.graph
    assert graph is not None, "node must belong to a graph"
    old = node.inputs[index] if index < len(node.inputs) else None
    array = np.asarray(array, order="C")
    if (
        old is not None
        and old.is_initializer()
        and not old.is_graph_input()
        and not old.is_graph_output()
        and old.graph is graph
        and len(old.uses()) == 1
    ):
        old.const_value = ir.tensor(array, name=old.name)
        old.shape = ir.Shape(array.shape)
        old.type = ir.TensorType(ir.DataType.from_numpy(array.dtype))
        return old
    hint = name_hint or (old.name if old is not None and old.name else f"{node.name}_input{index}")
    value = new_initializer(graph, array, hint)
    if index < len(node.inputs):
        node.replace_input_with(index, value)
    else:
        node.resize_inputs(index + 1)
        node.replace_input_with(index, value)
    # A Constant node whose last reader this was would stay in the file with the old weights
    # (PaddlePaddle exports hold every weight in Constant nodes: a pruned detector grew 1.7×).
    source = old.producer() if old is not None else None
    if source is not None and source.op_type == "Constant" and not old.uses() and not old.is_graph_output():
        source.graph.remove(source, safe=True)
    return value


_BATCH_NAME = re.compile(r"batch|^(n|b|bs)$", re.IGNORECASE)


def _fixed(dim: Any) -> bool:
    return isinstance(dim, int) and dim > 0


def sample_axes(shapes: Mapping[str, Sequence[Any] | None]) -> dict[str, int | None]:
    """Per input (name → dims: ints, symbol names, None), the axis that carries the samples;
    None for a scalar. Rules, first match wins:

    1. a dimension named like a batch (``batch``, ``batch_size``, ``N``, ``B``, ``bs``);
    2. the first axis, when it is dynamic;
    3. the axis whose symbol is another input's dynamic first axis (an LSTM state
       ``[layers, s0, hidden]`` beside ``x [s0, T, F]``, as the dynamo exporter names them);
    4. the first dynamic axis, when the first axis is fixed above 1 and another input's
       first axis is dynamic (a state ``[2, ?, 128]`` beside audio ``[?, ?]``: its first
       axis is layers, not samples);
    5. otherwise the first axis (a model exported with a fixed batch).
    """
    firsts = {s[0] for s in shapes.values() if s and isinstance(s[0], str)}
    dynamic_batch = any(s and not _fixed(s[0]) for s in shapes.values())
    axes: dict[str, int | None] = {}
    for name, shape in shapes.items():
        if shape is None:
            axes[name] = 0
            continue
        if len(shape) == 0:
            axes[name] = None
            continue
        named = [a for a, d in enumerate(shape) if isinstance(d, str) and _BATCH_NAME.search(d)]
        shared = [a for a, d in enumerate(shape) if isinstance(d, str) and d in firsts]
        dynamic = [a for a, d in enumerate(shape) if not _fixed(d)]
        if named:
            axes[name] = named[0]
        elif not _fixed(shape[0]):
            axes[name] = 0
        elif shared:
            axes[name] = shared[0]
        elif dynamic and shape[0] > 1 and dynamic_batch:
            axes[name] = dynamic[0]
        else:
            axes[name] = 0
    return axes


def batch_along(shapes: Mapping[str, Sequence[Any] | None]) -> int | None:
    """The batch size that the inputs' sample axes fix together, or None when any of them
    is dynamic or they disagree."""
    sizes = {
        shape[axis] if _fixed(shape[axis]) else None
        for shape, axis in ((shapes[k], a) for k, a in sample_axes(shapes).items())
        if axis is not None and shape is not None
    }
    return sizes.pop() if len(sizes) == 1 else None


def input_shapes(model: ir.Model) -> dict[str, tuple[Any, ...] | None]:
    """The real inputs' dims (ints, symbol names, None); initializers listed as inputs are
    left out."""
    return {
        v.name: None if v.shape is None else tuple(d if isinstance(d, int) else d.value for d in v.shape)
        for v in model.graph.inputs
        if v.name not in model.graph.initializers
    }


def fixed_batch(model: ir.Model) -> int | None:
    """The batch size fixed by the graph inputs' sample axes (None = dynamic)."""
    return batch_along(input_shapes(model))


def name_nodes(model: ir.Model) -> bool:
    """Give every unnamed node (subgraphs included) a name unique in the model,
    ``<op_type>_<k>``: the passes find layers by name (the re-fit's consumers, the
    quantizer's float-kept layers), and a hand-built or converted graph may name none.
    Returns whether any name was given."""
    nodes = list(iter_nodes(model))
    taken = {n.name for n in nodes if n.name}
    given = False
    for k, node in enumerate(nodes):
        if node.name:
            continue
        name = f"{node.op_type}_{k}"
        while name in taken:
            name += "_"
        node.name = name
        taken.add(name)
        given = True
    return given


def iter_nodes(model: ir.Model) -> Iterator[ir.Node]:
    """Every node of the main graph and its subgraphs (not functions)."""
    yield from ir.traversal.RecursiveGraphIterator(model.graph)


def static_shapes(
    model: ir.Model, input_shapes: Mapping[str, Sequence[int]] | None = None, *, execute: bool = True
) -> dict[str, tuple[int | str | None, ...]]:
    """Shapes of all values after ONNX shape inference, with graph inputs pinned.

    ``input_shapes`` fixes dynamic input dimensions (e.g. ``{"input": [1, 3, 224, 224]}``);
    unset dynamic dimensions are taken as 1 so that costs can still be counted per sample.
    Node outputs that inference leaves incomplete are measured in one onnxruntime run at the
    same input shapes (``execute``; :func:`_executed_shapes`).
    Returns name → shape; dims that stay unknown are ``None`` or a symbol string.
    """
    input_shapes = dict(input_shapes or {})
    proto = _proto_without_weights(model)
    init_names = set(model.graph.initializers)
    for inp in proto.graph.input:
        if inp.name in init_names:
            continue
        dims = inp.type.tensor_type.shape.dim
        forced = input_shapes.get(inp.name)
        if forced is not None:
            del dims[:]
            for d in forced:
                dims.add().dim_value = int(d)
        else:
            for d in dims:
                if not d.HasField("dim_value"):
                    d.Clear()
                    d.dim_value = 1
    # Stale intermediate annotations (left by an exporter or a pass) make inference stop at
    # the first disagreement; it recomputes them anyway.
    del proto.graph.value_info[:]
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, data_prop=True)
    except Exception:
        inferred = proto
    shapes: dict[str, tuple[int | str | None, ...]] = {}
    g = inferred.graph
    main = {vi.name: vi for vi in list(g.input) + list(g.value_info) + list(g.output)}
    subs = {vi.name: vi for sub in _subgraph_protos(g) for vi in [*sub.input, *sub.value_info, *sub.output]}
    for vi in ({**subs, **main}).values():  # the main graph's annotation wins over a subgraph's
        t = vi.type.tensor_type
        if not t.HasField("shape"):
            continue
        shapes[vi.name] = tuple(
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim
        )
    for name, value in model.graph.initializers.items():
        if value.const_value is not None:
            shapes[name] = tuple(value.const_value.shape)
    for node in model.graph:  # inference does not always record a Constant's output
        if node.op_type == "Constant" and node.outputs[0].name not in shapes:
            tensor = attr(node, "value")
            if tensor is not None and hasattr(tensor, "shape"):
                shapes[node.outputs[0].name] = tuple(tensor.shape)
    if execute:
        incomplete = [
            o.name for node in model.graph for o in node.outputs
            if o.name and not _concrete(shapes.get(o.name)) and (o.type is None or isinstance(o.type, ir.TensorType))
        ]  # fmt: skip
        if incomplete:
            pinned = {
                i.name: [d.dim_value for d in i.type.tensor_type.shape.dim]
                for i in proto.graph.input if i.name not in init_names
            }  # fmt: skip
            shapes.update(_executed_shapes(model, pinned, incomplete))
    return shapes


def _subgraph_protos(graph: onnx.GraphProto) -> list[onnx.GraphProto]:
    """The bodies of If / Loop / Scan nodes in ``graph``, nested ones included."""
    found, stack = [], [graph]
    while stack:
        for node in stack.pop().node:
            for a in node.attribute:
                subs = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)
                found.extend(subs)
                stack.extend(subs)
    return found


def _concrete(shape: tuple | None) -> bool:
    return shape is not None and all(isinstance(d, int) and d >= 0 for d in shape)


def _executed_shapes(
    model: ir.Model, input_shapes: Mapping[str, Sequence[int]], names: Sequence[str]
) -> dict[str, tuple[int, ...]]:
    """Shapes of the values ``names`` in one onnxruntime run at ``input_shapes``.

    ONNX shape inference stops where it cannot compute a shape argument: a Reshape whose
    target is ``Concat(Slice(Shape(x)), -1)`` in opset 12, where ``Slice`` has no data
    propagation (PaddleOCR's recognizer: 140 values unknown, its channel groups unprunable,
    its MACs uncounted). Running the model once with those values as extra outputs gives them
    at the same pinned input shapes. Inputs are seeded random floats, zero integers and false
    booleans; a model that does not run on them (or a value of a sequence type) keeps what
    inference gave. Values whose size depends on the data (NonZero) get this run's size.
    """
    from onnxopt import evaluate  # evaluate imports this module

    probe = model.clone()
    by_name = {o.name: o for node in probe.graph for o in node.outputs}
    present = {o.name for o in probe.graph.outputs}
    wanted = [by_name[n] for n in names if n in by_name]
    if not wanted:
        return {}
    rng = np.random.default_rng(0)
    feed: dict[str, np.ndarray] = {}
    for value in probe.graph.inputs:
        if value.name in probe.graph.initializers or value.name not in input_shapes or value.dtype is None:
            continue
        try:
            dtype = value.dtype.numpy()
        except Exception:  # a type numpy cannot hold (bfloat16, float8…)
            return {}
        dims = list(input_shapes[value.name])
        if dtype.kind == "f":
            feed[value.name] = rng.standard_normal(dims).astype(dtype)
        else:
            feed[value.name] = np.zeros(dims, dtype)
    probe.graph.outputs.extend(v for v in wanted if v.name not in present)
    try:
        sess = evaluate.session(probe, opt_level=evaluate.ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
        outputs = sess.run([v.name for v in wanted], feed)
    except Exception as exc:  # the shapes stay as inference left them
        logging.getLogger(__name__).debug("shapes by execution failed: %s", exc)
        return {}
    return {
        v.name: tuple(int(d) for d in out.shape)
        for v, out in zip(wanted, outputs) if isinstance(out, np.ndarray)
    }  # fmt: skip


def _proto_without_weights(model: ir.Model) -> onnx.ModelProto:
    """Serialize the graph structure with large initializers replaced by shape-only stubs.

    Shape inference needs initializer shapes but not their bytes; skipping the bytes keeps
    it fast and memory-light on big models. Small integer tensors (shape arguments of
    Reshape etc.) are kept because data propagation reads them.
    """
    keep_limit = 1024
    swapped: list[tuple[ir.Value, Any]] = []
    for value in model.graph.initializers.values():
        tensor = value.const_value
        if tensor is None or tensor.size <= keep_limit:
            continue
        swapped.append((value, tensor))
        value.const_value = None
    try:
        with quiet_loggers("onnx_ir.serde"):  # it warns about every stubbed initializer
            proto = ir.to_proto(model)
    finally:
        for value, tensor in swapped:
            value.const_value = tensor
    existing = {i.name for i in proto.graph.input}
    for value, tensor in swapped:
        if value.name in existing:
            continue
        vi = onnx.helper.make_tensor_value_info(
            value.name, int(tensor.dtype), list(tensor.shape)
        )
        proto.graph.input.append(vi)
    return proto


def content_digest(model: ir.Model) -> str:
    """A hash of ``model``'s graph and weights: equal for a clone, different after any change
    of a node, a name or a weight (a key for what is computed from a model, e.g. the
    pruning importances a budget search re-uses)."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(_proto_without_weights(model).SerializeToString())
    for name, value in model.graph.initializers.items():
        tensor = value.const_value
        if tensor is not None and tensor.size > 1024:  # the smaller ones are in the proto
            digest.update(name.encode())
            digest.update(np.ascontiguousarray(tensor.numpy()).tobytes())
    return digest.hexdigest()


@contextlib.contextmanager
def quiet_loggers(*names: str) -> Iterator[None]:
    """Raise the given loggers to ERROR for the duration (their levels are restored)."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
