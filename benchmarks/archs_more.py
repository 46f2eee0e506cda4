"""More architecture families, small, in plain torch.nn: the op patterns the classifiers of
:mod:`benchmarks.archs` do not have.

- :func:`efficientnet_tiny` — MBConv blocks: SiLU, depthwise 3×3, squeeze-excitation gate
  (``x * sigmoid(conv(silu(conv(gap(x)))))``), BN after every conv, residual ``+``.
- :func:`convnext_tiny` — depthwise 7×7, ``permute`` to channels-last, ``LayerNorm`` over the
  channels, ``Linear`` MLP with GELU, per-channel layer scale, residual ``+``.
- :func:`unet_small` — encoder/decoder with ``ConvTranspose2d`` upsampling and ``torch.cat``
  skip connections; dense per-pixel logits ``[N, K, H, W]``.
- :func:`fpn_segmenter` — RegNetY/ResNeXt blocks (grouped 3×3 convolutions, SE gates) and
  an FPN-style head: ``F.interpolate(size=…)`` to a skip connection's size, lateral ``+``.
- :func:`crnn_speech` — ``Conv1d`` front end on ``[N, mels, T]``, bidirectional ``GRU``,
  per-frame log-probabilities ``[N, T', classes]`` (a CTC speech recognizer's shape).
- :func:`crnn_text` — a CRNN text-line recognizer (ddddocr's shape): ``Conv2d`` stack on a
  ``[N, 1, 32, W]`` line image, height collapsed to a sequence ``[W/4, N, C]``, bidirectional
  ``LSTM``, per-step logits ``[W/4, N, classes]`` (time-major, as CTC decoders read them).
- :func:`vit_tiny` — patch-embedding conv, class token, learned position embedding, pre-LN
  transformer blocks (HuggingFace attention op pattern), ``Linear`` head.
- :func:`vit_packed` — the same with timm's packed ``qkv`` projection taken apart after a
  ``[B, N, 3, heads, d]`` reshape, and a relative-position-style per-head score bias.
- :class:`MiniBert` — a HuggingFace-style text classifier with int64 ``input_ids`` and
  ``attention_mask`` inputs (embedding ``Gather``s, mask arithmetic).

Weights are random (seeded by the caller); BatchNorm statistics can be randomised with
:func:`benchmarks.archs.randomize_bn_stats`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from benchmarks.archs import BertLayer, BertSelfAttention


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, squeezed: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, squeezed, 1)
        self.expand = nn.Conv2d(squeezed, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.expand(F.silu(self.reduce(F.adaptive_avg_pool2d(x, 1))))
        return x * torch.sigmoid(gate)


class MBConv(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int, expand: int = 4) -> None:
        super().__init__()
        mid = in_ch * expand
        self.block = nn.Sequential(
            nn.Conv2d(in_ch, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.SiLU(),
            nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False), nn.BatchNorm2d(mid), nn.SiLU(),
            SqueezeExcite(mid, max(4, in_ch // 4)),
            nn.Conv2d(mid, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch),
        )  # fmt: skip
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.residual else y


def efficientnet_tiny(num_classes: int = 10) -> nn.Module:
    """``[N, 3, H, W]`` → ``[N, classes]``; EfficientNet-B0's block pattern at 1/4 the depth."""
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.SiLU(),
        MBConv(16, 24, 2), MBConv(24, 24, 1), MBConv(24, 40, 2), MBConv(40, 40, 1),
        nn.Conv2d(40, 128, 1, bias=False), nn.BatchNorm2d(128), nn.SiLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(128, num_classes),
    )  # fmt: skip


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW tensor (ConvNeXt's permute pattern)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.dwconv(x).permute(0, 2, 3, 1))
        y = self.gamma * self.fc2(F.gelu(self.fc1(y)))
        return x + y.permute(0, 3, 1, 2)


def convnext_tiny(num_classes: int = 10, dims: tuple[int, ...] = (32, 64)) -> nn.Module:
    """``[N, 3, H, W]`` → ``[N, classes]``; ConvNeXt's stem, blocks and downsampling, 2 stages."""
    layers: list[nn.Module] = [nn.Conv2d(3, dims[0], 4, 4), LayerNorm2d(dims[0], eps=1e-6)]
    for i, dim in enumerate(dims):
        if i:
            layers += [LayerNorm2d(dims[i - 1], eps=1e-6), nn.Conv2d(dims[i - 1], dim, 2, 2)]
        layers += [ConvNeXtBlock(dim), ConvNeXtBlock(dim)]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.LayerNorm(dims[-1], eps=1e-6), nn.Linear(dims[-1], num_classes)]
    return nn.Sequential(*layers)


def _double_conv(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True),
        nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True),
    )  # fmt: skip


class UNetSmall(nn.Module):
    def __init__(self, in_ch: int = 3, classes: int = 4, width: int = 16) -> None:
        super().__init__()
        self.enc1, self.enc2 = _double_conv(in_ch, width), _double_conv(width, 2 * width)
        self.bottom = _double_conv(2 * width, 4 * width)
        self.up2 = nn.ConvTranspose2d(4 * width, 2 * width, 2, stride=2)
        self.dec2 = _double_conv(4 * width, 2 * width)
        self.up1 = nn.ConvTranspose2d(2 * width, width, 2, stride=2)
        self.dec1 = _double_conv(2 * width, width)
        self.head = nn.Conv2d(width, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        b = self.bottom(F.max_pool2d(e2, 2))
        d2 = self.dec2(torch.cat([self.up2(b), e2], 1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], 1))
        return self.head(d1)


def unet_small(classes: int = 4) -> nn.Module:
    """``[N, 3, H, W]`` (H, W multiples of 4) → per-pixel logits ``[N, classes, H, W]``."""
    return UNetSmall(classes=classes)


class GroupedBottleneck(nn.Module):
    """RegNetY's block (ResNeXt's with an SE gate): 1×1 → grouped 3×3 (``width`` channels
    per group) → SE → 1×1, projection shortcut when the shape changes."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, width: int = 8) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(in_ch, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(),
            nn.Conv2d(out_ch, out_ch, 3, stride, 1, groups=out_ch // width, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(),
            SqueezeExcite(out_ch, max(4, in_ch // 4)),
            nn.Conv2d(out_ch, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch),
        )  # fmt: skip
        project = stride != 1 or in_ch != out_ch
        self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch)) if project else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.shortcut(x) + self.block(x))


class FPNSegmenter(nn.Module):
    """Grouped-bottleneck backbone with an FPN-style head: the deep map is upsampled to the
    size of the shallow one (``F.interpolate(size=…)``, sizes read off the input at run time
    with a dynamic batch) and added to its lateral 1×1 projection; per-pixel logits at full
    resolution (upsampled again)."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.stage1 = nn.Sequential(GroupedBottleneck(16, 32, 1), GroupedBottleneck(32, 32, 1))
        self.stage2 = nn.Sequential(GroupedBottleneck(32, 64, 2), GroupedBottleneck(64, 64, 1))
        self.lateral1, self.lateral2 = nn.Conv2d(32, 32, 1), nn.Conv2d(64, 32, 1)
        self.head = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, classes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c1 = self.stage1(self.stem(x))
        c2 = self.stage2(c1)
        p = self.lateral1(c1) + F.interpolate(self.lateral2(c2), size=c1.shape[-2:], mode="nearest")
        return F.interpolate(self.head(p), size=x.shape[-2:], mode="bilinear", align_corners=False)


def fpn_segmenter(classes: int = 4) -> nn.Module:
    """``[N, 3, H, W]`` (H, W even) → per-pixel logits ``[N, classes, H, W]``."""
    return FPNSegmenter(classes)


class CRNNSpeech(nn.Module):
    def __init__(self, mels: int = 40, channels: int = 64, hidden: int = 48, classes: int = 30) -> None:
        super().__init__()
        self.front = nn.Sequential(
            nn.Conv1d(mels, channels, 5, padding=2, bias=False), nn.BatchNorm1d(channels), nn.ReLU(),
            nn.Conv1d(channels, channels, 3, stride=2, padding=1, bias=False), nn.BatchNorm1d(channels), nn.ReLU(),
        )  # fmt: skip
        self.rnn = nn.GRU(channels, hidden, batch_first=True, bidirectional=True)
        self.out = nn.Linear(2 * hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.rnn(self.front(x).transpose(1, 2))
        return F.log_softmax(self.out(y), dim=-1)


def crnn_speech(classes: int = 30) -> nn.Module:
    """``[N, 40, T]`` log-mel frames → ``[N, ceil(T/2), classes]`` log-probabilities."""
    return CRNNSpeech(classes=classes)


class CRNNText(nn.Module):
    def __init__(self, channels: int = 32, hidden: int = 48, classes: int = 40) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(channels, 2 * channels, 3, padding=1, bias=False), nn.BatchNorm2d(2 * channels), nn.ReLU(),
            nn.MaxPool2d(2),
        )  # fmt: skip
        self.collapse = nn.Conv2d(2 * channels, 2 * channels, (8, 1))  # height 8 → 1
        self.rnn = nn.LSTM(2 * channels, hidden, bidirectional=True)
        self.out = nn.Linear(2 * hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq = self.collapse(self.features(x)).squeeze(2).permute(2, 0, 1)  # [T, N, C]
        y, _ = self.rnn(seq)
        return self.out(y)


def crnn_text(classes: int = 40) -> nn.Module:
    """``[N, 1, 32, W]`` (W a multiple of 4) → per-step logits ``[W/4, N, classes]``."""
    return CRNNText(classes=classes)


class ViTBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attention = BertSelfAttention(dim, heads)
        self.proj = nn.Linear(dim, dim)
        self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.proj(self.attention(self.norm1(x)))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class PackedSelfAttention(nn.Module):
    """timm's (and torchvision Swin's) attention: one packed ``qkv`` Linear, reshaped to
    ``[B, N, 3, heads, head_dim]``, permuted to ``[3, B, heads, N, head_dim]`` and taken
    apart into q, k, v; a per-head constant bias on the scores (Swin's relative position
    bias, here a ``[N², heads]`` table lookup viewed as ``[heads, N, N]``)."""

    def __init__(self, hidden: int, heads: int, tokens: int) -> None:
        super().__init__()
        self.heads, self.head_dim, self.tokens = heads, hidden // heads, tokens
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.bias_table = nn.Parameter(torch.randn(2 * tokens, heads) * 0.1)
        self.register_buffer("bias_index", torch.randint(0, 2 * tokens, (tokens * tokens,)), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape  # timm reads C off the input: TorchScript computes it at run time
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        bias = self.bias_table[self.bias_index].view(self.tokens, self.tokens, -1).permute(2, 0, 1).unsqueeze(0)
        scores = (q * self.head_dim**-0.5) @ k.transpose(-2, -1) + bias
        return (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, n, c)


class ViTTiny(nn.Module):
    def __init__(self, image: int = 32, patch: int = 4, dim: int = 64, depth: int = 2, heads: int = 4, classes: int = 10,
                 packed: bool = False) -> None:  # fmt: skip
        super().__init__()
        self.patch = nn.Conv2d(3, dim, patch, patch)
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, (image // patch) ** 2 + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*(ViTBlock(dim, heads) for _ in range(depth)))
        if packed:
            for block in self.blocks:
                block.attention = PackedSelfAttention(dim, heads, (image // patch) ** 2 + 1)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(x.shape[0], -1, -1), tokens], 1) + self.pos
        return self.head(self.norm(self.blocks(tokens))[:, 0])


def vit_tiny(classes: int = 10) -> nn.Module:
    """``[N, 3, 32, 32]`` → ``[N, classes]``; ViT's op pattern at 2 blocks of width 64."""
    return ViTTiny(classes=classes)


def vit_packed(classes: int = 10) -> nn.Module:
    """:func:`vit_tiny` with timm's packed ``qkv`` attention and a per-head score bias."""
    return ViTTiny(classes=classes, packed=True)


class MiniBert(nn.Module):
    """A HuggingFace-style text classifier: int64 ``input_ids`` and ``attention_mask``,
    token + position + type embeddings, LayerNorm, BERT layers, tanh pooler, classifier."""

    def __init__(self, vocab: int = 100, dim: int = 64, layers: int = 2, classes: int = 3) -> None:
        super().__init__()
        self.tokens, self.positions, self.types = nn.Embedding(vocab, dim), nn.Embedding(64, dim), nn.Embedding(2, dim)
        self.norm = nn.LayerNorm(dim)
        self.layers = nn.Sequential(*(BertLayer(dim, 4, 4 * dim) for _ in range(layers)))
        self.pooler, self.classifier = nn.Linear(dim, dim), nn.Linear(dim, classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1]).unsqueeze(0)
        x = self.norm(self.tokens(input_ids) + self.positions(positions) + self.types(torch.zeros_like(input_ids)))
        x = self.layers(x) * attention_mask.unsqueeze(-1).to(x.dtype)
        return self.classifier(torch.tanh(self.pooler(x[:, 0])))


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(dim)), eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class LlamaBlock(nn.Module):
    """A LLaMA decoder layer: RMSNorm, rotary positions, grouped-query attention (each
    key/value head repeated for ``heads // kv_heads`` query heads with ``expand`` +
    ``reshape``, as HuggingFace's ``repeat_kv``), a causal mask and a SwiGLU MLP."""

    def __init__(self, dim: int, heads: int, kv_heads: int, hidden: int) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, dim // heads
        self.q = nn.Linear(dim, dim, bias=False)
        self.k, self.v = (nn.Linear(dim, kv_heads * self.head_dim, bias=False) for _ in range(2))
        self.o = nn.Linear(dim, dim, bias=False)
        self.gate, self.up = nn.Linear(dim, hidden, bias=False), nn.Linear(dim, hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)
        self.norm1, self.norm2 = RMSNorm(dim), RMSNorm(dim)

    def _heads(self, x: torch.Tensor, n: int) -> torch.Tensor:
        return x.view(x.shape[0], x.shape[1], n, self.head_dim).transpose(1, 2)

    def _repeat_kv(self, x: torch.Tensor) -> torch.Tensor:
        b, kv, s, d = x.shape
        n_rep = self.heads // self.kv_heads
        return x[:, :, None, :, :].expand(b, kv, n_rep, s, d).reshape(b, kv * n_rep, s, d)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        q, k, v = self._heads(self.q(h), self.heads), self._heads(self.k(h), self.kv_heads), self._heads(self.v(h), self.kv_heads)
        q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
        k, v = self._repeat_kv(k), self._repeat_kv(v)
        scores = q @ k.transpose(-1, -2) / self.head_dim**0.5 + mask
        context = (scores.softmax(-1) @ v).transpose(1, 2).reshape(x.shape[0], x.shape[1], -1)
        x = x + self.o(context)
        h = self.norm2(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


class MiniLlama(nn.Module):
    """A LLaMA-style language model: int64 ``input_ids`` and ``attention_mask`` → logits."""

    def __init__(self, vocab: int = 100, dim: int = 64, heads: int = 4, kv_heads: int = 2, layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.layers = nn.ModuleList(LlamaBlock(dim, heads, kv_heads, 2 * dim) for _ in range(layers))
        self.norm, self.head = RMSNorm(dim), nn.Linear(dim, vocab, bias=False)
        head_dim = dim // heads
        self.register_buffer("inv_freq", 1.0 / 10000 ** (torch.arange(0, head_dim, 2).float() / head_dim), persistent=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        seq = input_ids.shape[1]
        angles = torch.arange(seq, dtype=torch.float32)[:, None] * self.inv_freq[None, :]
        angles = torch.cat((angles, angles), dim=-1)
        cos, sin = angles.cos()[None, None], angles.sin()[None, None]
        causal = torch.ones(seq, seq, dtype=torch.bool).tril()
        allowed = causal[None, None] & attention_mask[:, None, None, :].bool()
        mask = torch.zeros(allowed.shape).masked_fill(~allowed, -1e4)
        x = self.embed(input_ids)
        for layer in self.layers:
            x = layer(x, cos, sin, mask)
        return self.head(self.norm(x))


class BiasedAttention(nn.Module):
    """Multi-head attention whose scores get an additive ``[1, heads, S, S]`` bias."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim, bias=False) for _ in range(4))

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], x.shape[1], self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, bias: torch.Tensor, memory: torch.Tensor | None = None) -> torch.Tensor:
        source = x if memory is None else memory
        q, k, v = self._split(self.q(x)), self._split(self.k(source)), self._split(self.v(source))
        scores = q @ k.transpose(-1, -2) + bias
        return self.o((scores.softmax(-1) @ v).transpose(1, 2).reshape(x.shape[0], x.shape[1], -1))


class MiniT5(nn.Module):
    """T5's attention biases: a relative position bias looked up in a ``[buckets, heads]``
    table by buckets computed from the sequence length, computed once and added in every
    layer's self-attention, and a zero bias ``torch.zeros(1, heads, S, S)`` (HuggingFace's
    cross-attention without relative positions) shared by every cross-attention."""

    def __init__(self, vocab: int = 100, dim: int = 64, heads: int = 4, layers: int = 2, buckets: int = 8) -> None:
        super().__init__()
        self.heads, self.buckets = heads, buckets
        self.embed, self.table = nn.Embedding(vocab, dim), nn.Embedding(buckets, heads)
        self.attention = nn.ModuleList(BiasedAttention(dim, heads) for _ in range(layers))
        self.cross = nn.ModuleList(BiasedAttention(dim, heads) for _ in range(layers))
        self.ffn = nn.ModuleList(nn.Sequential(nn.Linear(dim, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim)) for _ in range(layers))
        self.head = nn.Linear(dim, vocab)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        seq = input_ids.shape[1]
        positions = torch.arange(seq)
        half = self.buckets // 2
        relative = (positions[None, :] - positions[:, None]).clamp(-half, half - 1) + half
        bias = self.table(relative).permute(2, 0, 1).unsqueeze(0)
        zero = torch.zeros(1, self.heads, seq, seq)
        x = memory = self.embed(input_ids)
        for attention, cross, ffn in zip(self.attention, self.cross, self.ffn):
            x = x + attention(x, bias)
            x = x + cross(x, zero, memory)
            x = x + ffn(x)
        return self.head(x)


class TorchAttentionEncoder(nn.Module):
    """``[N, T, 16]`` → ``[N, T, 5]`` through ``torch.nn.MultiheadAttention``: self-attention
    (one packed ``in_proj``, split into q, k, v after a ``[T, N, 3, E]`` reshape, heads merged
    into the batch axis as ``[T, N·H, d]``) and cross-attention to a shorter memory (q
    projected alone, k and v packed as two parts). ``need_weights`` adds the head-averaged
    attention weights to the output, which mixes the self-attention's heads."""

    def __init__(self, dim: int = 32, heads: int = 4, need_weights: bool = False) -> None:
        super().__init__()
        self.inp, self.memory = nn.Linear(16, dim), nn.Linear(16, dim)
        self.attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.cross = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.need_weights = need_weights
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, memory = self.inp(x), self.memory(x[:, ::2])
        a, weights = self.attention(h, h, h, need_weights=self.need_weights)
        c, _ = self.cross(h, memory, memory, need_weights=False)
        y = self.head(self.norm(h + a + c))
        return y + weights.mean(-1, keepdim=True) if self.need_weights else y


MORE_ARCHS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "efficientnet_tiny": (efficientnet_tiny, (3, 32, 32)),
    "convnext_tiny": (convnext_tiny, (3, 32, 32)),
    "unet_small": (unet_small, (3, 32, 32)),
    "fpn_segmenter": (fpn_segmenter, (3, 32, 32)),
    "crnn_speech": (crnn_speech, (40, 50)),
    "crnn_text": (crnn_text, (1, 32, 64)),
    "vit_tiny": (vit_tiny, (3, 32, 32)),
    "vit_packed": (vit_packed, (3, 32, 32)),
}
"""name → (builder, input shape without the batch axis)."""
