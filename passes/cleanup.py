"""Lossless clean-up: what the ONNX ecosystem already does well, wired as one pass.

Rules, in order:
1. Sizes read off ``Shape`` that are static fold to constants (:func:`fold_static_shape_reads`),
   then ``onnxscript``'s optimizer: constant folding (shape arithmetic, the dynamo exporter's
   ``Expand(CastLike(0, x))`` zero biases among them), its default rewrite rules (no-op
   removal, BatchNormalization fusion into Conv / ConvTranspose / Gemm, Pad into Conv, …)
   and removal of unused nodes, functions and opsets. Functions are inlined. A
   ``ConstantOfShape`` of at most 1,024 elements is folded too (onnxscript keeps them all):
   TorchScript builds ReflectionPad2d's ``pads`` from one.
   Then :func:`fold_weight_subgraphs`: subgraphs that compute a weight of a
   Conv/ConvTranspose/Gemm/MatMul/LSTM/GRU/RNN from constants alone are folded whatever their
   size (onnxscript skips tensors above 8192 elements in, 262144 out): the dynamo exporter
   builds an LSTM's ``W``/``R``/``B`` by slicing and concatenating its parameters, and a
   quantizer or a pruner only sees weights that are initializers. A subgraph that reads a
   tensor also read elsewhere is left alone: folding it would store that data twice. The
   same for a constant operand of an element-wise Add/Sub/Mul/Div that holds no more
   elements than its inputs (Swin's relative position bias, a lookup too large for
   onnxscript, viewed and transposed): the group analysis then sees a per-channel constant.
2. Identity elimination (an Identity that writes a graph output is kept, in subgraphs too;
   run before the folding too, which would copy a weight shared through Identities), then
   ``onnx_ir`` common passes: ``Constant`` nodes lifted to initializers (so later passes see
   every weight the same way), unused-node removal, topological sort.
3. Attributes the model's opset does not define are dropped when they hold the value the
   newer opset defines as default, or when they cannot change the result (``allowzero`` of a
   Reshape whose constant shape has no 0): onnxscript's rewrite rules write
   ``Reshape(allowzero=1)`` into opset-12 models, which the ONNX checker rejects. Anything
   else is left for the checker (the pipeline then rolls the stage back).
In IR < 4 models (every initializer is also a graph input) the initializers created by
folding are listed as graph inputs too, as that IR version requires.
Initializers are never de-duplicated here: a merged tensor would be shared by several
nodes and pruning would then have to copy it back.
``modified`` is computed from a structural fingerprint taken before and after.
"""

from __future__ import annotations

__all__ = ["CleanupPass", "fold_static_shape_reads", "fold_weight_subgraphs"]

import numpy as np
import onnx
import onnx_ir as ir
import onnx_ir.passes.common as common
import onnxscript.optimizer

from onnxopt.graph import (
    const_array,
    has_subgraph,
    new_initializer,
    quiet_loggers,
    unique_name,
    value_names,
)
from onnxopt.passes.base import LoggedPass


def _fingerprint(model: ir.Model) -> tuple:
    nodes = tuple(
        (n.op_type, tuple(v.name if v is not None else "" for v in n.inputs)) for n in model.graph
    )
    inits = tuple(sorted((k, id(v.const_value)) for k, v in model.graph.initializers.items()))
    return nodes, inits, len(model.functions)


class CleanupPass(LoggedPass):
    """Constant folding, onnxscript rewrite rules, dead-code and Identity removal.

    ``onnxscript_rules=False`` keeps constant folding but skips the rewrite rules (and
    function inlining): the conservative variant ``optimize`` falls back to when the full
    clean-up does not verify (onnxscript 0.7's rules change ddddocr's recognizer's output
    shape). ``shape_inference`` lets that variant fold ``Shape`` nodes of values whose shape
    ONNX inference proves static (the full clean-up always does)."""

    def __init__(self, *, onnxscript_rules: bool = True, shape_inference: bool = False) -> None:
        super().__init__()
        self.onnxscript_rules = onnxscript_rules
        self.shape_inference = shape_inference

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        before = _fingerprint(model)
        ops_before = _op_counts(model)
        # Identities first: onnxscript folds Identity(initializer) into a copy of the tensor,
        # and a TorchScript ALBERT, whose layers share weights through Identity nodes, grew
        # from 343 to 466 kB with each layer's own copy
        _eliminate_identities(model)
        fold_static_shape_reads(model.graph)
        with quiet_loggers("onnxscript", "onnx_ir"):  # per-initializer notes would flood the CLI
            if self.onnxscript_rules:
                onnxscript.optimizer.optimize_ir(model, should_fold=_small_constant_of_shape)
            else:
                onnxscript.optimizer.fold_constants(model, should_fold=_small_constant_of_shape,
                                                    onnx_shape_inference=self.shape_inference)  # fmt: skip
            _register_loose_constants(model.graph)
            if fold_static_shape_reads(model.graph):  # shape inference may have proven more sizes
                onnxscript.optimizer.fold_constants(model, should_fold=_small_constant_of_shape)
            fold_weight_subgraphs(model)
        _eliminate_identities(model)
        ir.passes.Sequential(
            common.LiftConstantsToInitializersPass(),
            common.RemoveUnusedNodesPass(),
            common.TopologicalSortPass(),
        )(model)
        _drop_newer_default_attributes(model)
        if model.ir_version is not None and model.ir_version < 4:
            _list_initializers_as_inputs(model)
        ops_after = _op_counts(model)
        for op in sorted(set(ops_before) | set(ops_after)):
            delta = ops_after.get(op, 0) - ops_before.get(op, 0)
            if delta:
                self.did(op, f"{op} {delta:+d}")
        return ir.passes.PassResult(model, modified=_fingerprint(model) != before)


SMALL_CONSTANT = 1024  # elements: a pads or shape vector, not a tensor worth keeping compact


def _small_constant_of_shape(node: ir.Node) -> bool | None:
    """Fold a ConstantOfShape whose constant shape asks for at most :data:`SMALL_CONSTANT`
    elements. onnxscript keeps every ConstantOfShape, to keep large zero tensors compact;
    but TorchScript's ReflectionPad2d builds its ``pads`` from one (``ConstantOfShape →
    Concat → Reshape → Slice → Transpose → Reshape``), and an unfolded ``pads`` hides that the
    Pad leaves the channels alone: the group analysis then blocked every group of a
    style-transfer network. None: onnxscript's default rules."""
    if node.op_type != "ConstantOfShape" or node.domain not in ("", "ai.onnx"):
        return None
    shape = const_array(node.inputs[0]) if node.inputs and node.inputs[0] is not None else None
    return True if shape is not None and shape.size and int(np.prod(shape)) <= SMALL_CONSTANT else None


def _register_loose_constants(graph: ir.Graph) -> None:
    """Register constants that nodes read but no graph holds. onnxscript 0.7's
    ``Flatten2Reshape`` names its shape ``<x>/shape``; a second Flatten of the same ``x``
    (HuggingFace BART flattens its attention mask twice) gets ``<x>/shape_1``, never
    registered, and the model no longer clones or serialises."""
    taken = value_names(graph)
    for node in graph:
        for v in node.inputs:
            if v is None or v.producer() is not None or v.is_graph_input() or v.is_initializer() or v.const_value is None:
                continue
            if v.name is None or v.name in taken:
                v.name = unique_name(graph, v.name or "constant", taken)
            taken.add(v.name)
            graph.register_initializer(v)


def _eliminate_identities(model: ir.Model) -> None:
    """Remove every ``Identity`` whose output is not a graph output, in the main graph and
    in subgraphs: its readers read its input instead. One that writes a graph output stays:
    the output may not be renamed, and in an ``If``/``Loop`` body its input may come from the
    outer scope, which a subgraph may not list as its output (onnx_ir's
    IdentityEliminationPass raises there, or writes a model the checker rejects:
    silero-vad's opset-15 export)."""
    graphs = [model.graph, *(
        a.value for n in ir.traversal.RecursiveGraphIterator(model.graph) for a in n.attributes.values()
        if a.type == ir.AttributeType.GRAPH
    ), *(
        g for n in ir.traversal.RecursiveGraphIterator(model.graph) for a in n.attributes.values()
        if a.type == ir.AttributeType.GRAPHS for g in a.value
    )]  # fmt: skip
    for graph in graphs:
        outputs = {id(v) for v in graph.outputs}
        for node in list(graph):
            if node.op_type != "Identity" or node.domain not in ("", "ai.onnx") or not node.inputs or node.inputs[0] is None:
                continue
            out = node.outputs[0]
            if id(out) in outputs or out.is_graph_output():
                continue
            out.replace_all_uses_with(node.inputs[0])
            graph.remove(node, safe=True)


def fold_static_shape_reads(graph: ir.Graph) -> bool:
    """Replace ``Slice(Shape(x))`` and ``Gather(Shape(x), i)`` by a constant where every entry
    they pick is a static size of ``x`` (onnxscript folds neither a ``Slice`` nor a scalar
    ``Gather`` index). The TorchScript exporter reads ``nn.MultiheadAttention``'s embedding
    size so when the batch is dynamic (``query.shape[2:3]``, then ``in_proj_weight[0:E]``
    and ``E // num_heads``): unfolded, the attention's weights were computed tensors and its
    heads unprunable. Returns whether anything was folded."""
    folded = False
    for node in list(graph):
        picked = _static_shape_read(node)
        if picked is None or node.outputs[0].is_graph_output():
            continue
        ir.convenience.replace_all_uses_with(node.outputs[0], new_initializer(graph, picked, node.outputs[0].name))
        graph.remove(node, safe=True)
        folded = True
    return folded


def _static_shape_read(node: ir.Node) -> np.ndarray | None:
    """The sizes a ``Slice`` or ``Gather`` of a ``Shape`` picks, when they are all static;
    else None."""
    if node.op_type not in ("Slice", "Gather") or node.domain not in ("", "ai.onnx") or len(node.inputs) < 2 or node.inputs[0] is None:
        return None
    shape_node = node.inputs[0].producer()
    if shape_node is None or shape_node.op_type != "Shape" or shape_node.domain not in ("", "ai.onnx"):
        return None
    x = shape_node.inputs[0]
    if x is None or x.shape is None:
        return None
    dims = list(x.shape)[shape_node.attributes.get_int("start", 0) : shape_node.attributes.get_int("end", len(x.shape))]
    if node.op_type == "Gather":  # onnxscript folds a Gather of static sizes only with a 1-D index
        indices = const_array(node.inputs[1])
        if indices is None or indices.dtype.kind not in "iu" or node.attributes.get_int("axis", 0) != 0:
            return None
        flat = [int(i) for i in indices.reshape(-1)]
        if not all(-len(dims) <= i < len(dims) and isinstance(dims[i], int) for i in flat):
            return None
        return np.array([int(dims[i]) for i in flat], dtype=np.int64).reshape(indices.shape)
    if "starts" in node.attributes:  # opset < 10
        bounds = [node.attributes.get_ints(k) for k in ("starts", "ends", "axes")] + [None]
    else:
        inputs = [*node.inputs[1:5], None, None, None, None][:4]
        bounds = [None if v is None else const_array(v) for v in inputs]
        if any(v is not None and b is None for v, b in zip(inputs, bounds)):
            return None  # a bound computed at run time
    starts, ends, axes, steps = (None if b is None else [int(v) for v in np.asarray(b).reshape(-1)] for b in bounds)
    if starts is None or ends is None or len(starts) != 1 or len(ends) != 1 or axes not in (None, [0], [-1]):
        return None
    step = 1 if steps is None else steps[0] if len(steps) == 1 else 0
    if step == 0:
        return None
    picked = dims[slice(starts[0], ends[0], step)]
    return np.array([int(d) for d in picked], dtype=np.int64) if all(isinstance(d, int) for d in picked) else None


WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "LSTM", "GRU", "RNN"})
_UNLIMITED = 1 << 62


def fold_weight_subgraphs(model: ir.Model) -> bool:
    """Fold the constant-only subgraphs that compute the weights (inputs after the first) of
    :data:`WEIGHTED_OPS` nodes into initializers, whatever their size; nothing else is
    touched. Returns whether anything was folded (a cone onnxscript declines to fold, e.g.
    an op it cannot evaluate, leaves the graph as it was and does not count)."""
    cone: set[int] = set()
    computable = _computable_from_constants(model.graph)
    for node in model.graph:
        if node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type in WEIGHTED_OPS:
            operands = node.inputs[1:]
        elif node.op_type in _ELEMENTWISE:  # a per-channel constant, if it does not grow
            operands = [v for v in node.inputs if v is not None and id(v) in computable]
        else:
            continue
        for value in operands:
            if value is not None and value.const_value is None:
                nodes = _constant_cone(value)
                if node.op_type in _ELEMENTWISE and not _folds_no_larger(value, nodes):
                    continue
                if not _shares_a_leaf(model, nodes, _SMALL_OPERAND if node.op_type in _ELEMENTWISE else _SMALL_WEIGHT):
                    cone |= nodes
    if not cone:
        return False
    nodes_before = len(model.graph)
    _fold_constant_splits(model.graph, cone)
    with quiet_loggers("onnxscript", "onnx_ir"):
        onnxscript.optimizer.fold_constants(
            model, input_size_limit=_UNLIMITED, output_size_limit=_UNLIMITED, should_fold=lambda n: id(n) in cone
        )
    common.RemoveUnusedNodesPass()(model)
    return len(model.graph) < nodes_before


def _fold_constant_splits(graph: ir.Graph, cone: set[int]) -> None:
    """Evaluate the ``Split`` nodes of ``cone`` whose inputs are all constant into one
    initializer per output: onnxscript folds single-output nodes only, and the dynamo
    exporter takes ``nn.MultiheadAttention``'s packed ``in_proj_weight`` apart with a Split
    when the query differs from the key (cross-attention)."""
    for node in [n for n in graph if id(n) in cone and n.op_type == "Split"]:
        data = const_array(node.inputs[0])
        sizes = const_array(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] is not None else None
        if data is None or (len(node.inputs) > 1 and node.inputs[1] is not None and sizes is None):
            continue
        axis = node.attributes.get_int("axis", 0) % data.ndim
        if sizes is None:  # equal parts (the last one smaller, opset 18's ``num_outputs``)
            part = -(-data.shape[axis] // len(node.outputs))
            sizes = [min(part, data.shape[axis] - i * part) for i in range(len(node.outputs))]
        bounds = np.cumsum([0, *np.asarray(sizes).reshape(-1).tolist()])
        if len(bounds) != len(node.outputs) + 1 or bounds[-1] != data.shape[axis]:
            continue
        for i, out in enumerate(node.outputs):
            piece = np.take(data, np.arange(bounds[i], bounds[i + 1]), axis=axis)
            ir.convenience.replace_all_uses_with(out, new_initializer(graph, piece, out.name))
        graph.remove(node, safe=True)


_ELEMENTWISE = frozenset({"Add", "Sub", "Mul", "Div"})
_NONDETERMINISTIC = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"})


def _folds_no_larger(value: ir.Value, nodes: set[int]) -> bool:
    """Whether ``value``, computed from constants alone by the nodes ``nodes`` (its
    :func:`_constant_cone`), holds no more elements than the constants they read (a Swin
    block's relative position bias: a ``[N², heads]`` lookup viewed and transposed to
    ``[1, heads, N, N]``); an ``Expand`` or a broadcast that multiplies a small tensor stays
    as it is."""
    shape = value.shape
    if not nodes or shape is None or not all(isinstance(d, int) for d in shape):
        return False
    leaves = {id(v): v.const_value.size for n in _nodes_of(value, nodes) for v in n.inputs
              if v is not None and v.const_value is not None}  # fmt: skip
    return int(np.prod(shape)) <= sum(leaves.values())


def _computable_from_constants(graph: ir.Graph) -> set[int]:
    """ids of the computed values of ``graph`` that depend on constants alone (one sweep in
    topological order, so that asking for each operand is not a walk up the graph)."""
    found: set[int] = set()
    for node in graph:
        if has_subgraph(node) or node.op_type in _NONDETERMINISTIC:
            continue
        if all(v is None or v.const_value is not None or id(v) in found for v in node.inputs):
            found.update(id(o) for o in node.outputs)
    return found


def _nodes_of(value: ir.Value, ids: set[int]) -> list[ir.Node]:
    found, stack, seen = [], [value], set()
    while stack:
        node = stack.pop().producer()
        if node is None or id(node) not in ids or id(node) in seen:
            continue
        seen.add(id(node))
        found.append(node)
        stack.extend(v for v in node.inputs if v is not None)
    return found


_SMALL_WEIGHT = 64  # elements of a shared tensor a weight's folding may copy
_SMALL_OPERAND = 4096  # the same for an element-wise operand (a bias: the dynamo exporter merges
# equal ones, so nn.MultiheadAttention's zero-initialised in_proj_bias is read by two layers)


def _shares_a_leaf(model: ir.Model, cone: set[int], small: int = _SMALL_WEIGHT) -> bool:
    """Whether a tensor the cone reads (more than ``small`` entries) is also read outside it:
    folding would then store its data twice (silero-vad's LSTM weights are read by an
    Unsqueeze in the graph and again inside an If branch: the file grew by 38 %)."""
    nodes = [n for n in ir.traversal.RecursiveGraphIterator(model.graph) if id(n) in cone]
    for node in nodes:
        for value in node.inputs:
            if value is None or value.const_value is None or value.const_value.size <= small:
                continue
            if any(id(user) not in cone for user, _ in value.uses()):
                return True
    return False


def _constant_cone(value: ir.Value) -> set[int]:
    """ids of the nodes computing ``value`` when it depends on constants only, else empty."""
    nodes: set[int] = set()
    stack = [value]
    while stack:
        v = stack.pop()
        if v.const_value is not None:
            continue
        node = v.producer()
        if v.is_graph_input() or node is None or has_subgraph(node):
            return set()
        if id(node) not in nodes:
            nodes.add(id(node))
            stack.extend(i for i in node.inputs if i is not None)
    return nodes


def _drop_newer_default_attributes(model: ir.Model) -> None:
    """Rule 3 of the module docstring (default ONNX domain only, subgraphs included)."""
    opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx"))
    if opset is None:
        return
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node.domain not in ("", "ai.onnx") or not node.attributes:
            continue
        try:
            known = onnx.defs.get_schema(node.op_type, opset, "").attributes
            latest = onnx.defs.get_schema(node.op_type).attributes
        except onnx.defs.SchemaError:
            continue
        for name in [n for n in node.attributes if n not in known and n in latest]:
            default = latest[name].default_value
            same = default.type != onnx.AttributeProto.UNDEFINED and (
                node.attributes[name].value == onnx.helper.get_attribute_value(default)
            )
            if same or (node.op_type == "Reshape" and name == "allowzero" and _shape_without_zero(node)):
                del node.attributes[name]


def _shape_without_zero(reshape: ir.Node) -> bool:
    shape = const_array(reshape.inputs[1]) if len(reshape.inputs) > 1 else None
    return shape is not None and not np.any(shape == 0)


def _list_initializers_as_inputs(model: ir.Model) -> None:
    """IR < 4 requires every initializer to be a graph input too: list the folded ones."""
    listed = {id(v) for v in model.graph.inputs}
    for value in model.graph.initializers.values():
        tensor = value.const_value
        if id(value) in listed or tensor is None:
            continue
        value.dtype = value.dtype or tensor.dtype
        value.shape = value.shape or ir.Shape(tensor.shape)
        model.graph.inputs.append(value)


def _op_counts(model: ir.Model) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in model.graph:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts
