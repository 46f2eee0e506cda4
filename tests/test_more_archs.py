"""Architecture families beyond the classifiers (benchmarks/archs_more.py), both exporters:
``optimize`` with data runs every stage without a crash, keeps the budget and the input file,
and channel pruning of every group it calls prunable equals zeroing those channels."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnxopt import evaluate
from onnxopt.calibration import Dataset
from onnxopt.groups import analyze_groups
from onnxopt.model_io import load_model
from onnxopt.optimize import optimize
from tests.test_groups import _assert_exact

torch = pytest.importorskip("torch")

from benchmarks.archs import randomize_bn_stats  # noqa: E402
from benchmarks.archs_more import MORE_ARCHS, MiniBert, MiniLlama, MiniT5, TorchAttentionEncoder  # noqa: E402
from benchmarks.export import export_onnx  # noqa: E402

# What the group analysis must find unprunable in each family, and why (part of a reason).
BLOCKED_BY = {
    "vit_tiny": "concatenation along a non-channel axis",  # the residual stream: class token + patches
    "vit_packed": "concatenation along a non-channel axis",
    "convnext_tiny": "LayerNormalization",
}
# Families whose attention heads prune as units of head-size channels (Q, K, V and the output projection).
HEAD_SIZE = {"vit_tiny": 16, "vit_packed": 16}
# Families whose heads come from one packed projection (timm's qkv): one source per head group.
PACKED = {"vit_packed"}

# Families whose last convolution feeds a recurrent layer (its input features are pruned).
FEEDS_RNN = {"crnn_speech": "GRU", "crnn_text": "LSTM"}


def _export(name: str, dynamo: bool, tmp_path):
    builder, shape = MORE_ARCHS[name]
    torch.manual_seed(0)
    net = randomize_bn_stats(builder().eval())
    path = export_onnx(net, (torch.randn(2, *shape),), tmp_path / f"{name}.onnx", dynamo=dynamo, dynamic_batch=True)
    data = np.random.default_rng(0).standard_normal((48, *shape)).astype(np.float32)
    return path, data


@pytest.mark.parametrize("dynamo", [False, pytest.param(True, marks=pytest.mark.slow)])
@pytest.mark.parametrize("name", list(MORE_ARCHS))
def test_optimize_and_prune_other_families(name, dynamo, tmp_path):
    path, data = _export(name, dynamo, tmp_path)
    before = path.read_bytes()
    model = load_model(path)
    dataset = Dataset({model.graph.inputs[0].name: data})
    out = tmp_path / "out.onnx"
    result = optimize(path, out, data=dataset, max_drop=0.02, speed_check=False)
    assert path.read_bytes() == before
    crashed = [f"{r.name}: {r.reason}" for r in result.stages if r.reason.startswith("stage failed")]
    assert not crashed, crashed
    for record in result.stages:
        if record.lossless and record.kept and record.fidelity:
            assert record.fidelity["max_rel"] <= 1e-4 or record.fidelity["max_abs"] <= 1e-5, record.name
    assert result.baseline_score - result.final_score <= 0.02 + 1e-9
    onnx.checker.check_model(str(out))
    evaluate.run(load_model(out), dataset.take(slice(0, 4)))

    if dynamo:  # as the prune stage sees it: dynamo's computed weights folded first
        from onnxopt.passes.cleanup import CleanupPass

        CleanupPass()(model)
    analysis, _ = _assert_exact(model, Dataset({model.graph.inputs[0].name: data[:2]}), fraction=0.3)
    assert analysis.prunable
    assert all(g.reasons for g in analysis.unprunable)
    if name == "unet_small":  # transposed convolutions prune on both sides
        roles = {(m.node.op_type, m.role) for g in analysis.prunable for m in g.members}
        assert {("ConvTranspose", "producer"), ("ConvTranspose", "consumer")} <= roles
    if name == "fpn_segmenter":  # grouped 3×3s prune by whole groups; the upsampling follows
        grouped = [g for g in analysis.prunable if any(m.role == "grouped" for m in g.members)]
        assert len(grouped) == 4 and all(g.unit_width == 8 for g in grouped)
        assert len(analysis.unprunable) == 1, [g.reasons for g in analysis.unprunable]  # the graph output
    if name in FEEDS_RNN:  # the convolutional features feeding the recurrent layer prune
        consumers = {m.node.op_type for g in analysis.prunable for m in g.members if m.role == "consumer"}
        assert FEEDS_RNN[name] in consumers, consumers
    if name in BLOCKED_BY:
        reasons = " ".join(r for g in analysis.unprunable for r in g.reasons)
        assert BLOCKED_BY[name] in reasons, reasons
    if name in HEAD_SIZE:
        heads = [g for g in analysis.prunable if g.unit_width == HEAD_SIZE[name] * (3 if name in PACKED else 1)]
        sources = 1 if name in PACKED else 3  # one per block: Q, K, V (or the packed qkv)
        assert len(heads) == 2 and all(len(g.sources) == sources for g in heads), [g.describe() for g in analysis.groups]


@pytest.mark.parametrize("dynamo", [False, True])
def test_dynamic_int8_quantizes_the_lstm_of_an_exported_crnn(dynamo, tmp_path):
    """Both exporters' LSTM (dynamo's weights are computed by Slice/Concat) becomes
    DynamicQuantizeLSTM, and the output stays close to float."""
    from onnxopt.quantization import quantize_model

    path, data = _export("crnn_text", dynamo, tmp_path)
    model = load_model(path)
    dataset = Dataset({model.graph.inputs[0].name: data[:16]})
    result = quantize_model(model, mode="int8-dynamic", check_speed=False)
    ops = {n.op_type for n in result.model.graph}
    assert result.applied and "DynamicQuantizeLSTM" in ops and "LSTM" not in ops
    assert evaluate.compare(evaluate.run(model, dataset), evaluate.run(result.model, dataset)).cosine > 0.999
    if dynamo:  # the clean-up folds the sliced and concatenated LSTM weights into initializers
        from onnxopt.passes.cleanup import CleanupPass

        CleanupPass()(model)
        lstm = next(n for n in model.graph if n.op_type == "LSTM")
        assert all(v.const_value is not None for v in lstm.inputs[1:4])
        assert evaluate.compare(evaluate.run(load_model(path), dataset), evaluate.run(model, dataset)).within(1e-5, 1e-6)


@pytest.mark.parametrize("dynamo", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_text_model_with_int64_inputs(dynamo, tmp_path):
    """Two int64 inputs (token ids, mask): lossless optimize verifies on safe random ids,
    optimize with data runs every stage, bench feeds both inputs."""
    from onnxopt.bench import benchmark

    torch.manual_seed(0)
    ids, mask = torch.randint(0, 100, (2, 16)), torch.ones(2, 16, dtype=torch.int64)
    path = export_onnx(MiniBert().eval(), (ids, mask), tmp_path / "bert.onnx", dynamo=dynamo,
                       input_names=["input_ids", "attention_mask"], dynamic_batch=True)  # fmt: skip
    rng = np.random.default_rng(0)
    mask = (np.arange(16) < rng.integers(4, 17, size=(48, 1))).astype(np.int64)
    data = Dataset({"input_ids": rng.integers(0, 100, (48, 16)) * mask, "attention_mask": mask})
    lossless = optimize(path, tmp_path / "lossless.onnx")
    assert lossless.lossless_only and lossless.fidelity.within(1e-4, 1e-5)
    result = optimize(path, tmp_path / "full.onnx", data=data, max_drop=0.02, speed_check=False)
    crashed = [f"{r.name}: {r.reason}" for r in result.stages if r.reason.startswith("stage failed")]
    assert not crashed, crashed
    assert result.baseline_score - result.final_score <= 0.02 + 1e-9
    bench = benchmark([path, tmp_path / "full.onnx"], threads=1, iterations=3, warmup=1)
    assert all(row.p50_ms > 0 for row in bench.rows)


def _token_model(net: type, dynamo: bool, tmp_path) -> tuple:
    """``net`` exported with int64 ``input_ids`` + ``attention_mask`` (dynamic batch) and
    cleaned up, and 8 samples of 16 tokens with padding masked at random lengths."""
    from onnxopt.passes.cleanup import CleanupPass

    torch.manual_seed(0)
    ids, mask = torch.randint(0, 100, (2, 16)), torch.ones(2, 16, dtype=torch.int64)
    path = export_onnx(net().eval(), (ids, mask), tmp_path / f"{net.__name__}.onnx", dynamo=dynamo,
                       input_names=["input_ids", "attention_mask"], dynamic_batch=True)  # fmt: skip
    model = load_model(path)
    CleanupPass()(model)
    rng = np.random.default_rng(0)
    mask = (np.arange(16) < rng.integers(4, 17, size=(8, 1))).astype(np.int64)
    return model, Dataset({"input_ids": rng.integers(0, 100, (8, 16)) * mask, "attention_mask": mask})


@pytest.mark.parametrize("dynamo", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_attention_heads_prune_exactly_as_units(dynamo, tmp_path):
    """A BERT layer's Q, K and V split into 4 heads of 16 channels; each product (Q·Kᵀ,
    scores·V) stays within a head, so head h of Q, K and V and its 16 input rows of the
    output projection are one unit. Removing heads equals zeroing their rows of the output
    projection, masked tokens included, and the Reshape targets follow (4 → 2 heads)."""
    from onnxopt.pruning import prune_model

    model, data = _token_model(MiniBert, dynamo, tmp_path)
    analysis, _ = _assert_exact(model, data.take(slice(0, 3)), fraction=0.5)
    heads = [g for g in analysis.prunable if g.unit_width == 16]
    assert [(g.units, len(g.sources)) for g in heads] == [(4, 3), (4, 3)]
    result = prune_model(model, data, ratio=0.5, criterion="l1", round_to=1)
    assert [(layer["before"], layer["after"]) for layer in result.layers if layer["channels_per_unit"] == 16] == [(64, 32)] * 2
    assert evaluate.run(result.model, data)[0].shape == (8, 3)


@pytest.mark.parametrize("dynamo", [False, True])
def test_grouped_query_attention_prunes_kv_heads_with_their_query_heads(dynamo, tmp_path):
    """LLaMA's grouped-query attention: 4 query heads share 2 key/value heads, each key and
    value head repeated for its 2 query heads by expand + reshape (HuggingFace's
    ``repeat_kv``), rotary positions in between. Key/value head g, query heads 2g and
    2g + 1 and their output-projection rows are one unit; removing one equals zeroing its
    rows of the output projection, and the Expand targets (shared by every layer in the
    dynamo export) and Reshape targets follow. Tokens and sequence length stay dynamic."""
    from onnxopt.pruning import prune_model

    model, data = _token_model(MiniLlama, dynamo, tmp_path)
    analysis, _ = _assert_exact(model, data.take(slice(0, 3)), fraction=0.5)
    heads = [g for g in analysis.prunable if len(g.sources) == 3]
    assert [g.units for g in heads] == [2, 2]  # the key/value heads are the units
    result = prune_model(model, data, ratio=0.5, criterion="l1", round_to=1)
    q_layers = [layer for layer in result.layers if layer["before"] == 64 and layer["after"] == 32]
    assert len(q_layers) == 2, result.layers
    assert evaluate.run(result.model, data)[0].shape == (8, 16, 100)


@pytest.mark.parametrize("dynamo", [False, True])
def test_attention_biases_computed_from_sizes_follow_the_heads(dynamo, tmp_path):
    """T5's biases. TorchScript keeps them computed: the relative position bias is a
    Gather from a [buckets, heads] table (its head column is pruned with the heads, and
    every layer reading the one bias prunes the same heads), the cross-attention's zero
    bias a ConstantOfShape whose head entry is rewritten; with a dynamic sequence length
    (a static one folds them). Removing heads equals zeroing their rows of the output
    projections; dynamo folds both biases into constants."""
    torch.manual_seed(0)
    ids = torch.randint(0, 100, (2, 12))
    from onnxopt.passes.cleanup import CleanupPass

    path = export_onnx(MiniT5().eval(), (ids,), tmp_path / "t5.onnx", dynamo=dynamo, input_names=["input_ids"], dynamic_batch=True,
                       sequence_axis=None if dynamo else 1)  # fmt: skip
    model = load_model(path)
    CleanupPass()(model)
    data = Dataset({"input_ids": np.random.default_rng(0).integers(0, 100, (3, 12))})
    analysis, _ = _assert_exact(model, data, fraction=0.5)
    heads = sorted(len(g.sources) for g in analysis.prunable if g.units == 4)
    # TorchScript: one self-attention group and one cross-attention group, each spanning
    # both layers (they read one bias); dynamo: a group per attention
    assert heads == ([6, 6] if not dynamo else [3, 3, 3, 3])


class _SdpaBlock(torch.nn.Module):
    """torchaudio's wav2vec2 self-attention: Q, K, V ``view(B, T, H, D).transpose(1, 2)``,
    ``F.scaled_dot_product_attention``, back to [B, T, H·D], output projection, residual."""

    def __init__(self, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.out = (torch.nn.Linear(dim, dim) for _ in range(4))
        self.head = torch.nn.Linear(dim, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (f(x).view(b, t, self.heads, d // self.heads).transpose(1, 2) for f in (self.q, self.k, self.v))
        a = torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, d)
        return self.head(x + self.out(a))


@pytest.mark.parametrize("dynamo", [False, True])
def test_sdpa_heads_at_batch_one_prune_exactly(dynamo, tmp_path):
    """At a static batch of 1 the dynamo exporter writes Kᵀ of the decomposed attention as
    [1, H, T, D] → Reshape [H, T, D] → Transpose → Reshape [1, H, D, T]: the head axis moves
    past the dropped batch axis and back. Heads stay the units of Q, K, V and the output
    projection's rows, and removing them equals zeroing those rows."""
    from onnxopt.passes.cleanup import CleanupPass

    torch.manual_seed(0)
    path = export_onnx(_SdpaBlock().eval(), (torch.randn(1, 6, 32),), tmp_path / "sdpa.onnx", dynamo=dynamo)
    model = load_model(path)
    CleanupPass()(model)
    data = Dataset({model.graph.inputs[0].name: np.random.default_rng(0).standard_normal((3, 6, 32)).astype(np.float32)})
    analysis, _ = _assert_exact(model, data, fraction=0.5)
    heads = [g for g in analysis.prunable if g.unit_width == 8]
    assert [(g.units, len(g.sources)) for g in heads] == [(4, 3)], [(g.name, g.reasons) for g in analysis.groups]


@pytest.mark.parametrize(("dynamo", "dynamic_batch"), [(False, False), (False, True), (True, False), (True, True)])
@pytest.mark.parametrize("need_weights", [False, True])
def test_torch_multihead_attention_prunes_its_heads(dynamo, dynamic_batch, need_weights, tmp_path):
    # nn.MultiheadAttention packs q, k, v (or k, v) in one projection and merges the heads
    # into the batch axis: each head is one unit of d = 8 columns per part, pruned exactly.
    # Returning the head-averaged weights mixes the self-attention's heads: blocked.
    torch.manual_seed(0)
    net = TorchAttentionEncoder(need_weights=need_weights).eval()
    path = export_onnx(net, (torch.randn(2, 7, 16),), tmp_path / "mha.onnx", dynamo=dynamo, dynamic_batch=dynamic_batch)
    model = load_model(path)
    # dynamo takes the cross-attention's packed weight apart with a Split, TorchScript with a
    # dynamic batch slices it at ``query.shape[2]`` and computes ``bsz · num_heads``: the
    # clean-up folds the weights, the pass scales the computed head entries
    from onnxopt.passes.cleanup import CleanupPass

    CleanupPass()(model)
    # a dynamic batch runs at 5, not the batch the analysis and the scaled entries saw
    data = np.random.default_rng(0).standard_normal((5 if dynamic_batch else 2, 7, 16)).astype(np.float32)
    analysis, _ = _assert_exact(model, Dataset({model.graph.inputs[0].name: data}), fraction=0.5)
    heads = sorted((g.unit_width, len(g.sources)) for g in analysis.prunable if g.units == 4)
    cross, packed = (8, 2), (24, 1)  # q's 8 columns + the packed kv; q, k and v in one projection
    assert heads == ([cross] if need_weights else [cross, packed]), [g.describe() for g in analysis.groups]
    memory = [g for g in analysis.prunable if g.units == 32]  # the memory projection, read by k and v
    assert len(memory) == 1
    if need_weights:
        reasons = " ".join(r for g in analysis.unprunable for r in g.reasons)
        assert "reduces over the channel axis" in reasons, reasons


class _NonLocalNet(torch.nn.Module):
    """A CNN with a non-local block (Wang et al.; SAGAN's and DANet's position attention):
    θ, φ and g are 1×1 convolutions flattened to ``[N, HW, C']`` / ``[N, C', HW]``, the
    affinity ``θ·φ`` sums over their ``C'`` channels, and ``softmax(θ·φ)·g`` keeps g's
    channels apart; a 1×1 convolution W maps them back onto the residual."""

    def __init__(self, c: int = 16, inner: int = 8) -> None:
        super().__init__()
        nn = torch.nn
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU())
        self.theta, self.phi, self.g = (nn.Conv2d(c, inner, 1) for _ in range(3))
        self.w = nn.Sequential(nn.Conv2d(inner, c, 1), nn.BatchNorm2d(c))
        self.head = nn.Linear(c, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        b, _, h, w = x.shape
        theta, phi, g = self.theta(x).flatten(2).transpose(1, 2), self.phi(x).flatten(2), self.g(x).flatten(2).transpose(1, 2)
        y = ((theta @ phi).softmax(-1) @ g).transpose(1, 2).reshape(b, -1, h, w)
        return self.head((x + self.w(y)).mean((2, 3)))


class _OneHeadAttention(torch.nn.Module):
    """Self-attention with a single head (SegFormer's and PVT's first stage) and, beside
    it, 4 heads with a LayerNorm over each head's 8 channels (the query/key norm of OLMo 2,
    Qwen3, ViT-22B), both on the residual stream of a token classifier."""

    def __init__(self, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        nn = torch.nn
        self.heads = heads
        self.q1, self.k1, self.v1, self.o1 = (nn.Linear(dim, dim) for _ in range(4))
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.q_norm, self.k_norm = nn.LayerNorm(dim // heads), nn.LayerNorm(dim // heads)
        self.head = nn.Linear(dim, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.q1(x), self.k1(x), self.v1(x)
        x = x + self.o1(((q @ k.transpose(1, 2)) / d**0.5).softmax(-1) @ v)

        def split(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, t, self.heads, d // self.heads).transpose(1, 2)

        q, k, v = split(self.q_norm(split(self.q(x)).transpose(1, 2))), split(self.k_norm(split(self.k(x)).transpose(1, 2))), split(self.v(x))
        a = ((q @ k.transpose(-1, -2)) * (d // self.heads) ** -0.5).softmax(-1) @ v
        return self.head(x + self.o(a.transpose(1, 2).reshape(b, t, d)))


@pytest.mark.parametrize("dynamo", [False, True])
def test_non_local_block_prunes_its_affinity_and_value_channels(dynamo, tmp_path):
    """θ's and φ's channel c meet only in the affinity's sum (a ``contracted`` member):
    they are one unit, and removing it equals masking that term; g's channels pass through
    ``softmax(θ·φ)·g`` to W, whose input columns they are. Both groups prune exactly."""
    from onnxopt.groups import CONTRACTED
    from onnxopt.passes.cleanup import CleanupPass
    from onnxopt.pruning import prune_model

    torch.manual_seed(0)
    net = randomize_bn_stats(_NonLocalNet().eval())
    path = export_onnx(net, (torch.randn(2, 3, 8, 8),), tmp_path / "nonlocal.onnx", dynamo=dynamo, dynamic_batch=True)
    model = load_model(path)
    CleanupPass()(model)
    data = Dataset({model.graph.inputs[0].name: np.random.default_rng(0).standard_normal((3, 3, 8, 8)).astype(np.float32)})
    analysis, _ = _assert_exact(model, data, fraction=0.5)
    inner = [g for g in analysis.prunable if g.units == 8]
    roles = sorted(sorted({m.role for m in g.members if m.role in ("producer", "consumer", CONTRACTED)}) for g in inner)
    assert roles == [["consumer", "producer"], [CONTRACTED, "producer"]], [g.describe() for g in analysis.groups]
    assert sorted(len(g.sources) for g in inner) == [1, 2]  # g alone; θ and φ together
    result = prune_model(model, data, ratio=0.5, criterion="l1", allocation="uniform", round_to=1)
    assert sorted(layer["after"] for layer in result.layers if layer["before"] == 8) == [4, 4]
    assert evaluate.run(result.model, data)[0].shape == (3, 5)


@pytest.mark.parametrize("dynamo", [False, True])
def test_single_head_attention_and_per_head_norms_prune_exactly(dynamo, tmp_path):
    """One head: Q's and K's channel c meet in the score's sum and V's channels pass through
    ``scores·V`` to the output projection: two groups. With a LayerNorm over each head's
    channels (not over the heads), the 4 heads stay units of 8 channels."""
    from onnxopt.passes.cleanup import CleanupPass

    torch.manual_seed(0)
    path = export_onnx(_OneHeadAttention().eval(), (torch.randn(2, 6, 32),), tmp_path / "one_head.onnx", dynamo=dynamo,
                       dynamic_batch=True)  # fmt: skip
    model = load_model(path)
    CleanupPass()(model)
    data = Dataset({model.graph.inputs[0].name: np.random.default_rng(0).standard_normal((3, 6, 32)).astype(np.float32)})
    analysis, _ = _assert_exact(model, data, fraction=0.5)
    single = sorted(len(g.sources) for g in analysis.prunable if g.units == 32 and g.unit_width == 1)
    assert single == [1, 2], [g.describe() for g in analysis.groups]  # V; Q with K
    heads = [(g.units, g.unit_width, len(g.sources)) for g in analysis.prunable if g.unit_width == 8]
    assert heads == [(4, 8, 3)], [g.describe() for g in analysis.groups]


class _ExpandAsGate(torch.nn.Module):
    """A squeeze-excitation gate applied as ``x * gate.expand_as(x)`` (Shape(x) read at run
    time with a dynamic batch), and optionally a per-channel constant scale expanded the
    same way (``scale`` [1, C, 1, 1]: no channel axis of size 1 to broadcast)."""

    def __init__(self, c: int = 16, constant_scale: bool = False) -> None:
        super().__init__()
        nn = torch.nn
        self.c1, self.c2, self.fc = nn.Conv2d(3, c, 3, padding=1), nn.Conv2d(c, 8, 3, padding=1), nn.Linear(8, 5)
        self.fc1, self.fc2 = nn.Conv2d(c, c // 4, 1), nn.Conv2d(c // 4, c, 1)
        self.scale = nn.Parameter(torch.rand(1, c, 1, 1) + 0.5) if constant_scale else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.c1(x))
        gate = torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean((2, 3), keepdim=True)))))
        x = x * gate.expand_as(x)
        if self.scale is not None:
            x = x * self.scale.expand_as(x)
        return self.fc(self.c2(x).mean((2, 3)))


@pytest.mark.parametrize(("dynamo", "dynamic_batch"), [(False, False), (False, True), (True, True)])
def test_expand_as_gate_prunes_with_the_tensor_it_takes_the_shape_of(dynamo, dynamic_batch, tmp_path):
    """``Expand(gate, Shape(x))`` takes x's channel count: the gate's channels and x's are one
    unit (the Mul unites them too), so the SE block and its backbone group prune exactly.
    A per-channel constant expanded to x's shape is sliced with x (since 2026-12-07; it
    used to block the group)."""
    from onnxopt.passes.cleanup import CleanupPass

    torch.manual_seed(0)
    batch = 3 if dynamic_batch else 2
    data = Dataset({"x": np.random.default_rng(0).standard_normal((batch, 3, 8, 8)).astype(np.float32)})
    for constant_scale in (False, True):
        path = export_onnx(_ExpandAsGate(constant_scale=constant_scale).eval(), (torch.randn(2, 3, 8, 8),),
                           tmp_path / f"gate_{constant_scale}.onnx", dynamo=dynamo, dynamic_batch=dynamic_batch,
                           input_names=["x"])  # fmt: skip
        model = load_model(path)
        CleanupPass()(model)
        analysis, _ = _assert_exact(model, data, fraction=0.5)
        assert len(analysis.prunable) == 3 and len(analysis.unprunable) == 1, [g.describe() for g in analysis.groups]


class _LinearAttention(torch.nn.Module):
    """EfficientViT-B's LiteMLA: a 1×1 qkv convolution and its multi-scale twin (depthwise,
    then grouped per head) viewed as heads ``[N, H, 3d, HW]``, ReLU linear attention
    ``q·(kᵀ·[v, 1])`` normalised by its last column, the heads merged back into channels
    ``[N, H·d, h, w]`` for a depthwise convolution (a block of d channels per head) and
    the output projection."""

    def __init__(self, c: int = 16, dim: int = 4) -> None:
        super().__init__()
        nn = torch.nn
        self.dim, heads = dim, c // dim
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU())
        self.qkv = nn.Conv2d(c, 3 * c, 1, bias=False)
        self.aggreg = nn.Sequential(nn.Conv2d(3 * c, 3 * c, 3, padding=1, groups=3 * c, bias=False),
                                    nn.Conv2d(3 * c, 3 * c, 1, groups=3 * heads, bias=False))  # fmt: skip
        self.local = nn.Conv2d(2 * c, 2 * c, 3, padding=1, groups=2 * c)
        self.proj = nn.Sequential(nn.Conv2d(2 * c, c, 1, bias=False), nn.BatchNorm2d(c))
        self.head = nn.Linear(c, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        b, _, h, w = x.shape
        qkv = self.qkv(x)
        qkv = torch.cat([qkv, self.aggreg(qkv)], dim=1).reshape(b, -1, 3 * self.dim, h * w).transpose(-1, -2)
        q, k, v = qkv.chunk(3, dim=-1)
        v = torch.nn.functional.pad(v, (0, 1), mode="constant", value=1.0)
        out = torch.relu(q) @ (torch.relu(k).transpose(-1, -2) @ v)
        out = (out[..., :-1] / (out[..., -1:] + 1e-5)).transpose(-1, -2).reshape(b, -1, h, w)
        return self.head((x + self.proj(self.local(out))).mean((2, 3)))


class _PooledAttention(torch.nn.Module):
    """MViT's pooling attention: k and v of every head are pooled by one depthwise
    convolution over ``[N·H, d, h, w]`` (the heads merged into the batch), then split back
    into ``[N, H, L, d]``."""

    def __init__(self, dim: int = 32, heads: int = 4, side: int = 4) -> None:
        super().__init__()
        nn = torch.nn
        self.heads, self.side, d = heads, side, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.pool_k, self.pool_v = (nn.Conv2d(d, d, 3, stride=2, padding=1, groups=d, bias=False) for _ in range(2))
        self.proj, self.head = nn.Linear(dim, dim), nn.Linear(dim, 5)

    def _pool(self, conv: torch.nn.Module, t: torch.Tensor) -> torch.Tensor:
        b, h, _, d = t.shape
        t = conv(t.reshape(b * h, self.side, self.side, d).permute(0, 3, 1, 2))
        return t.reshape(b, h, d, -1).transpose(2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        k, v = self._pool(self.pool_k, k), self._pool(self.pool_v, v)
        a = ((q @ k.transpose(-1, -2)) * 0.3).softmax(-1) @ v
        return self.head(x + self.proj(a.transpose(1, 2).reshape(b, n, c)))


class _EinsumAttention(torch.nn.Module):
    """Multi-head attention written with ``torch.einsum`` (exported as Einsum nodes), and
    optionally a single-head one whose score sums over the channels (``bqc,bkc->bqk``)."""

    def __init__(self, dim: int = 32, heads: int = 4, single: bool = False) -> None:
        super().__init__()
        nn = torch.nn
        self.heads, self.single = heads, single
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.head = nn.Linear(dim, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        if self.single:
            a = torch.einsum("bqc,bkc->bqk", self.q(x), self.k(x)).softmax(-1)
            return self.head(x + self.o(torch.einsum("bqk,bkc->bqc", a, self.v(x))))
        q, k, v = (p(x).view(b, t, self.heads, c // self.heads) for p in (self.q, self.k, self.v))
        a = torch.einsum("bqhd,bkhd->bhqk", q, k).softmax(-1)
        return self.head(x + self.o(torch.einsum("bhqk,bkhd->bqhd", a, v).reshape(b, t, c)))


def _exact_groups(net: torch.nn.Module, shape: tuple, dynamo: bool, tmp_path, name: str, sequence_axis: int | None = None,
                  dynamic_batch: bool = True) -> list[tuple[int, int, int]]:  # fmt: skip
    """Export ``net`` at batch 2, with a dynamic batch (and ``sequence_axis``) unless told
    not, check that pruning every prunable group equals zeroing it (at batch 3 where the
    batch is dynamic), and return the groups as ``(units, unit width, sources)``."""
    from onnxopt.passes.cleanup import CleanupPass

    path = export_onnx(net, (torch.randn(2, *shape),), tmp_path / f"{name}.onnx", dynamo=dynamo, dynamic_batch=dynamic_batch,
                       sequence_axis=sequence_axis)  # fmt: skip
    model = load_model(path)
    CleanupPass()(model)
    name = model.graph.inputs[0].name
    batch = 3 if dynamic_batch else 2
    data = Dataset({name: np.random.default_rng(0).standard_normal((batch, *shape)).astype(np.float32)})
    shapes = {name: [1, *shape]} if sequence_axis is not None else None  # analysed at the data's size, as `prune --data` does
    analysis, _ = _assert_exact(model, data, fraction=0.5, shapes=shapes)
    return sorted((g.units, g.unit_width, len(g.sources)) for g in analysis.prunable)


@pytest.mark.parametrize("dynamo", [False, True])
def test_linear_attention_heads_prune_through_their_merge_back(dynamo, tmp_path):
    """A LiteMLA head owns 3d channels of qkv and of its multi-scale twin; merged back into
    channels, each head is a block of d input channels of the depthwise convolution (its
    group count shrinks by d per head) and of the projection: heads prune as units."""
    torch.manual_seed(0)
    groups = _exact_groups(randomize_bn_stats(_LinearAttention().eval()), (3, 8, 8), dynamo, tmp_path, "lite_mla")
    assert groups == [(4, 12, 1), (16, 1, 2)], groups


@pytest.mark.parametrize(("dynamo", "dynamic_batch"), [(False, True), (True, True), (False, False), (True, False)])
def test_heads_pooled_on_the_batch_axis_prune_exactly(dynamo, dynamic_batch, tmp_path):
    """Heads merged into the batch pass the pooling convolution (its weights serve every
    head); TorchScript spells the merged size ``Shape[0]·Shape[1]``, which follows the
    pruning. Split back (``[N·H, d, h, w] → [N, H, d, h·w]``, at a fixed batch of 2 too) the
    heads are one group of q, k and v, each head a unit, exact at any batch."""
    torch.manual_seed(0)
    groups = _exact_groups(_PooledAttention().eval(), (16, 32), dynamo, tmp_path, "pooled", dynamic_batch=dynamic_batch)
    assert groups == [(4, 24, 1)], groups


@pytest.mark.parametrize("dynamo", [False, True])
def test_einsum_attention_heads_prune_exactly(dynamo, tmp_path):
    """Einsum passes the heads on where their letter stays in the output (``bqhd,bkhd->bhqk``
    unites q's and k's heads); a single head whose score sums over the channels is blocked
    at the Einsum, with the reason."""
    from onnxopt.passes.cleanup import CleanupPass

    torch.manual_seed(0)
    assert _exact_groups(_EinsumAttention().eval(), (6, 32), dynamo, tmp_path, "einsum") == [(4, 8, 3)]
    path = export_onnx(_EinsumAttention(single=True).eval(), (torch.randn(2, 6, 32),), tmp_path / "single.onnx",
                       dynamo=dynamo, dynamic_batch=True)  # fmt: skip
    model = load_model(path)
    CleanupPass()(model)
    reasons = [r for g in analyze_groups(model).unprunable for r in g.reasons]
    assert any("Einsum" in r and "summed over" in r for r in reasons), reasons


class _CosineWindowAttention(torch.nn.Module):
    """Swin V2's cosine attention (q and k divided by their L2 norm over each head's
    channels, a learnt logit scale per head) inside MaxViT's window partition, whose
    TorchScript targets read the sizes at run time (``x.reshape(B, C, H // P, P, W // P, P)``)."""

    def __init__(self, c: int = 16, heads: int = 4, p: int = 4) -> None:
        super().__init__()
        nn = torch.nn
        self.heads, self.p = heads, p
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU())
        self.qkv, self.proj = nn.Linear(c, 3 * c), nn.Linear(c, c)
        self.logit_scale = nn.Parameter(torch.log(10 * torch.rand(heads, 1, 1) + 1))
        self.out = nn.Conv2d(c, 8, 1)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        b, c, h, w = x.shape
        p = self.p
        win = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p, c)
        g, n = win.shape[1], win.shape[2]
        q, k, v = self.qkv(win).reshape(b, g, n, 3, self.heads, -1).permute(3, 0, 1, 4, 2, 5).unbind(0)
        scores = torch.nn.functional.normalize(q, dim=-1) @ torch.nn.functional.normalize(k, dim=-1).transpose(-2, -1)
        a = (scores * torch.clamp(self.logit_scale, max=4.6).exp()).softmax(-1) @ v
        y = self.proj(a.transpose(2, 3).reshape(b, g, n, c))
        y = y.reshape(b, h // p, w // p, p, p, c).permute(0, 5, 1, 3, 2, 4).reshape(b, c, h, w)
        return self.head(self.out(x + y).mean((2, 3)))


@pytest.mark.parametrize("dynamo", [False, True])
def test_cosine_attention_in_windows_prunes_its_heads(dynamo, tmp_path):
    """A reduction over each head's channels (ReduceL2) keeps the heads apart; a target
    entry that divides a size read at run time (``H // P``) reads no channel count, so the
    window partition around it follows the pruning. Heads and the stem's channels prune."""
    torch.manual_seed(0)
    net = randomize_bn_stats(_CosineWindowAttention().eval())
    groups = _exact_groups(net, (3, 8, 8), dynamo, tmp_path, "cosine", sequence_axis=2)  # any height: H // P at run time
    assert groups == [(4, 12, 1), (8, 1, 1), (16, 1, 2)], groups


class _SplitAttention(torch.nn.Module):
    """ResNeSt's split attention (radix 2, one cardinal group): a grouped convolution makes
    R·C channels, viewed as ``[N, R, C, h, w]`` and summed over the R splits; the attention
    ``fc2`` makes R·C logits, a softmax over R per channel weighs the splits."""

    def __init__(self, c: int = 16, radix: int = 2) -> None:
        super().__init__()
        nn = torch.nn
        self.radix = radix
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU())
        self.conv = nn.Sequential(nn.Conv2d(c, c * radix, 3, padding=1, groups=radix), nn.BatchNorm2d(c * radix), nn.ReLU())
        self.fc1 = nn.Sequential(nn.Conv2d(c, 8, 1), nn.ReLU())
        self.fc2 = nn.Conv2d(8, c * radix, 1)
        self.out, self.head = nn.Conv2d(c, 8, 1), nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(self.stem(x))
        b, rc, h, w = x.shape
        x = x.reshape(b, self.radix, rc // self.radix, h, w)
        attn = self.fc2(self.fc1(x.sum(1).mean((2, 3), keepdim=True)))
        attn = attn.view(b, 1, self.radix, -1).transpose(1, 2).softmax(1).reshape(b, -1).view(b, -1, 1, 1)
        y = (x * attn.reshape(b, self.radix, rc // self.radix, 1, 1)).sum(1)
        return self.head(self.out(y).mean((2, 3)))


@pytest.mark.parametrize("dynamo", [False, True])
def test_split_attention_prunes_channel_j_of_every_radix_split(dynamo, tmp_path):
    """The grouped convolution whose groups are split apart afterwards is pruned within its
    groups: channel j of every split, its attention logits and the consumers' columns are one
    unit (the softmax over the splits stays within it). Its input channels are kept, with
    the reason; every other group prunes, exact at any batch."""
    torch.manual_seed(0)
    net = randomize_bn_stats(_SplitAttention().eval())
    assert _exact_groups(net, (3, 8, 8), dynamo, tmp_path, "split_attn") == [(8, 1, 1), (8, 1, 1), (16, 2, 2)]


class _ExpandedConstants(torch.nn.Module):
    """Per-channel constants broadcast by ``Expand`` before they scale or shift channels: a
    layer scale ``gamma.expand_as(x)``, a bias expanded over the batch with ``-1`` for its
    channels, and one expanded to fixed sizes that name the channel count."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.Conv2d(16, 12, 3, padding=1)
        self.c3, self.c4 = torch.nn.Conv2d(12, 8, 3, padding=1), torch.nn.Conv2d(8, 4, 1)
        self.gamma = torch.nn.Parameter(torch.rand(16, 1, 1) + 0.5)
        self.bias = torch.nn.Parameter(torch.randn(1, 12, 1, 1))
        self.shift = torch.nn.Parameter(torch.randn(1, 8, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.c1(x))
        y = torch.relu(self.c2(y * self.gamma.expand_as(y)))
        y = torch.relu(self.c3(y + self.bias.expand(x.shape[0], -1, y.shape[2], y.shape[3])))
        return self.c4(y + self.shift.expand(1, 8, 8, 8))


@pytest.mark.parametrize("dynamo", [False, True])
def test_per_channel_constants_broadcast_by_expand_are_sliced(dynamo, tmp_path):
    """Each expanded constant is a per-channel parameter of its group (the fixed target's
    channel entry is rewritten): all three groups prune exactly."""
    torch.manual_seed(0)
    groups = _exact_groups(_ExpandedConstants().eval(), (3, 8, 8), dynamo, tmp_path, "expanded")
    assert groups == [(8, 1, 1), (12, 1, 1), (16, 1, 1)], groups
