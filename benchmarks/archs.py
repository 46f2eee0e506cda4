"""Compact re-implementations of torchvision classifiers and a BERT encoder, in plain torch.nn.

The benchmarks need the ONNX graphs that people actually export, without installing
torchvision. Each builder below keeps torchvision's module structure and forward-pass op
pattern (conv without bias followed by BatchNorm, ReLU/ReLU6, residual ``+``, ``torch.cat``
for DenseNet/SqueezeNet/ShuffleNet, ``view``/``transpose`` channel shuffle, adaptive average
pooling, ``torch.flatten`` before the classifier), so the exported graphs have the same node
sequence as torchvision's. Weights are random (torchvision's init scheme); call
:func:`randomize_bn_stats` so that BatchNorm folding mistakes become visible.

The BERT encoder follows the HuggingFace ``BertLayer`` op pattern: Q/K/V ``Linear``,
reshape/permute to heads, scaled ``q @ k^T``, softmax, ``probs @ v``, output ``Linear``,
residual ``LayerNorm``, GELU feed-forward, residual ``LayerNorm``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

# --------------------------------------------------------------------------- shared blocks


def conv_bn(
    in_ch: int,
    out_ch: int,
    kernel: int,
    stride: int = 1,
    groups: int = 1,
    activation: type[nn.Module] | None = nn.ReLU,
) -> nn.Sequential:
    """Conv (no bias, 'same'-style padding) → BatchNorm → optional activation."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_ch, out_ch, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
    ]
    if activation is not None:
        layers.append(activation(inplace=True))
    return nn.Sequential(*layers)


def _init_weights(model: nn.Module, linear_std: float = 0.01) -> nn.Module:
    """torchvision's usual init: Kaiming (fan_out) convs, unit BN, N(0, std) Linear."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, linear_std)
            nn.init.zeros_(m.bias)
    return model


def randomize_bn_stats(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm random, non-trivial running stats and affine parameters.

    With the default init (mean 0, var 1, gamma 1, beta 0) a BN layer is almost the identity
    and a wrong fold would go unnoticed. Values are chosen to keep activations in a sane range.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.2)
                m.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(n, generator=gen) * 1.0 + 0.25)
                    m.bias.copy_(torch.randn(n, generator=gen) * 0.2)
    return model


# --------------------------------------------------------------------------- ResNet


def _shortcut(in_ch: int, out_ch: int, stride: int) -> nn.Module | None:
    """ResNet projection shortcut (1x1 conv-BN) when the shape changes, else identity."""
    if stride == 1 and in_ch == out_ch:
        return None
    return conv_bn(in_ch, out_ch, 1, stride, activation=None)


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 conv-BN, identity or 1x1 conv-BN shortcut, add, ReLU."""

    expansion = 1

    def __init__(self, in_ch: int, width: int, stride: int = 1) -> None:
        super().__init__()
        out_ch = width * self.expansion
        self.conv1 = nn.Conv2d(in_ch, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(width, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.downsample = _shortcut(in_ch, out_ch, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """ResNet v1.5 bottleneck: 1x1 reduce, 3x3 (strided), 1x1 expand ×4, add, ReLU."""

    expansion = 4

    def __init__(self, in_ch: int, width: int, stride: int = 1) -> None:
        super().__init__()
        out_ch = width * self.expansion
        self.conv1 = nn.Conv2d(in_ch, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_ch, out_ch, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class ResNet(nn.Module):
    """torchvision ResNet: 7x7/2 stem, max-pool, four stages, global average pool, fc."""

    def __init__(
        self, block: type[BasicBlock | Bottleneck], layers: Sequence[int], num_classes: int
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        in_ch = 64
        stages = []
        for i, (width, blocks) in enumerate(zip((64, 128, 256, 512), layers)):
            stride = 1 if i == 0 else 2
            stage = []
            for j in range(blocks):
                stage.append(block(in_ch, width, stride if j == 0 else 1))
                in_ch = width * block.expansion
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(in_ch, num_classes)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(num_classes: int = 1000) -> nn.Module:
    """ResNet-18 (BasicBlock, [2, 2, 2, 2])."""
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes)


def resnet50(num_classes: int = 1000) -> nn.Module:
    """ResNet-50 (Bottleneck v1.5, [3, 4, 6, 3])."""
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes)


# --------------------------------------------------------------------------- MobileNetV2


def _make_divisible(value: float, divisor: int = 8) -> int:
    """Round channels to a multiple of ``divisor`` without dropping more than 10 %."""
    new_value = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return new_value + divisor if new_value < 0.9 * value else new_value


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand (ReLU6), 3x3 depthwise (ReLU6), 1x1 linear project."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = int(round(in_ch * expand_ratio))
        self.use_res_connect = stride == 1 and in_ch == out_ch
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(conv_bn(in_ch, hidden, 1, activation=nn.ReLU6))
        layers += [
            conv_bn(hidden, hidden, 3, stride, groups=hidden, activation=nn.ReLU6),
            nn.Conv2d(hidden, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    """torchvision MobileNetV2: features → adaptive avg pool → flatten → dropout + Linear."""

    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))  # fmt: skip

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0) -> None:
        super().__init__()
        in_ch = _make_divisible(32 * width_mult)
        self.last_channel = _make_divisible(1280 * max(1.0, width_mult))
        features: list[nn.Module] = [conv_bn(3, in_ch, 3, 2, activation=nn.ReLU6)]
        for t, c, n, s in self.SETTINGS:
            out_ch = _make_divisible(c * width_mult)
            for i in range(n):
                features.append(InvertedResidual(in_ch, out_ch, s if i == 0 else 1, t))
                in_ch = out_ch
        features.append(conv_bn(in_ch, self.last_channel, 1, activation=nn.ReLU6))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(self.last_channel, num_classes))
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(self.features(x), (1, 1))
        return self.classifier(torch.flatten(x, 1))


def mobilenet_v2(num_classes: int = 1000, width_mult: float = 1.0) -> nn.Module:
    """MobileNetV2 with torchvision's channel rounding."""
    return MobileNetV2(num_classes, width_mult)


# --------------------------------------------------------------------------- VGG

VGG_CFGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
              512, 512, 512, "M", 512, 512, 512, "M"],
}  # fmt: skip


class VGG(nn.Module):
    """torchvision VGG (no BN): conv3x3+bias/ReLU stack, 7x7 adaptive pool, 3-layer MLP.

    The ONNX exporters need the last feature map to divide 7x7 evenly (input 224 → 7x7).
    """

    def __init__(self, cfg: Sequence[int | str], num_classes: int, batch_norm: bool) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
                continue
            layers.append(nn.Conv2d(in_ch, int(v), 3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(int(v)))
            layers.append(nn.ReLU(inplace=True))
            in_ch = int(v)
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096), nn.ReLU(True), nn.Dropout(),
            nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(),
            nn.Linear(4096, num_classes),
        )  # fmt: skip
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def vgg11(num_classes: int = 1000, batch_norm: bool = False) -> nn.Module:
    """VGG-11 (configuration A); ``batch_norm=True`` gives vgg11_bn."""
    return VGG(VGG_CFGS["vgg11"], num_classes, batch_norm)


def vgg16(num_classes: int = 1000, batch_norm: bool = False) -> nn.Module:
    """VGG-16 (configuration D); ``batch_norm=True`` gives vgg16_bn."""
    return VGG(VGG_CFGS["vgg16"], num_classes, batch_norm)


# --------------------------------------------------------------------------- DenseNet


def dense_layer(in_ch: int, growth: int, bn_size: int) -> nn.Sequential:
    """Pre-activation bottleneck: BN-ReLU-1x1 conv → BN-ReLU-3x3 conv (torchvision names)."""
    return nn.Sequential(
        OrderedDict(
            norm1=nn.BatchNorm2d(in_ch),
            relu1=nn.ReLU(inplace=True),
            conv1=nn.Conv2d(in_ch, bn_size * growth, 1, bias=False),
            norm2=nn.BatchNorm2d(bn_size * growth),
            relu2=nn.ReLU(inplace=True),
            conv2=nn.Conv2d(bn_size * growth, growth, 3, 1, 1, bias=False),
        )
    )


class DenseBlock(nn.ModuleDict):
    """Each layer sees the concatenation of the block input and all earlier layer outputs."""

    def __init__(self, num_layers: int, in_ch: int, growth: int, bn_size: int) -> None:
        super().__init__()
        for i in range(num_layers):
            self.add_module(f"denselayer{i + 1}", dense_layer(in_ch + i * growth, growth, bn_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.values():
            features.append(layer(torch.cat(features, 1)))
        return torch.cat(features, 1)


class DenseNet(nn.Module):
    """torchvision DenseNet-BC: stem, dense blocks with BN-ReLU-1x1-avgpool transitions."""

    def __init__(
        self,
        growth: int = 32,
        block_config: Sequence[int] = (6, 12, 24, 16),
        init_features: int = 64,
        bn_size: int = 4,
        num_classes: int = 1000,
    ) -> None:
        super().__init__()
        feats = nn.Sequential(
            OrderedDict(
                conv0=nn.Conv2d(3, init_features, 7, 2, 3, bias=False),
                norm0=nn.BatchNorm2d(init_features),
                relu0=nn.ReLU(inplace=True),
                pool0=nn.MaxPool2d(3, 2, 1),
            )
        )
        ch = init_features
        for i, num_layers in enumerate(block_config):
            feats.add_module(f"denseblock{i + 1}", DenseBlock(num_layers, ch, growth, bn_size))
            ch += num_layers * growth
            if i != len(block_config) - 1:
                transition = OrderedDict(
                    norm=nn.BatchNorm2d(ch),
                    relu=nn.ReLU(inplace=True),
                    conv=nn.Conv2d(ch, ch // 2, 1, bias=False),
                    pool=nn.AvgPool2d(2, 2),
                )
                feats.add_module(f"transition{i + 1}", nn.Sequential(transition))
                ch //= 2
        feats.add_module("norm5", nn.BatchNorm2d(ch))
        self.features = feats
        self.classifier = nn.Linear(ch, num_classes)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(F.relu(self.features(x)), (1, 1))
        return self.classifier(torch.flatten(x, 1))


def densenet121(num_classes: int = 1000) -> nn.Module:
    """DenseNet-121 (growth 32, blocks 6/12/24/16)."""
    return DenseNet(32, (6, 12, 24, 16), 64, 4, num_classes)


# --------------------------------------------------------------------------- SqueezeNet


class Fire(nn.Module):
    """SqueezeNet fire module: 1x1 squeeze, then concat of 1x1 and 3x3 expands (all ReLU)."""

    def __init__(self, in_ch: int, squeeze: int, expand1x1: int, expand3x3: int) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(in_ch, squeeze, 1)
        self.squeeze_activation = nn.ReLU(inplace=True)
        self.expand1x1 = nn.Conv2d(squeeze, expand1x1, 1)
        self.expand1x1_activation = nn.ReLU(inplace=True)
        self.expand3x3 = nn.Conv2d(squeeze, expand3x3, 3, padding=1)
        self.expand3x3_activation = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.squeeze_activation(self.squeeze(x))
        return torch.cat(
            [self.expand1x1_activation(self.expand1x1(x)),
             self.expand3x3_activation(self.expand3x3(x))], 1
        )  # fmt: skip


class SqueezeNet(nn.Module):
    """torchvision SqueezeNet 1.0: no BN, ceil-mode max-pools, conv classifier."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        pool = lambda: nn.MaxPool2d(3, 2, ceil_mode=True)  # noqa: E731
        self.features = nn.Sequential(
            nn.Conv2d(3, 96, 7, 2), nn.ReLU(inplace=True), pool(),
            Fire(96, 16, 64, 64), Fire(128, 16, 64, 64), Fire(128, 32, 128, 128), pool(),
            Fire(256, 32, 128, 128), Fire(256, 48, 192, 192), Fire(384, 48, 192, 192),
            Fire(384, 64, 256, 256), pool(), Fire(512, 64, 256, 256),
        )  # fmt: skip
        final_conv = nn.Conv2d(512, num_classes, 1)
        self.classifier = nn.Sequential(
            nn.Dropout(0.5), final_conv, nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d((1, 1))
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                if m is final_conv:
                    nn.init.normal_(m.weight, 0.0, 0.01)
                else:
                    nn.init.kaiming_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.classifier(self.features(x)), 1)


def squeezenet1_0(num_classes: int = 1000) -> nn.Module:
    """SqueezeNet 1.0 (input ≥ 64x64 keeps a non-empty final feature map)."""
    return SqueezeNet(num_classes)


# --------------------------------------------------------------------------- ShuffleNetV2


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """torchvision's channel shuffle: view → transpose(1, 2) → view (Reshape/Transpose in ONNX)."""
    batch, channels, height, width = x.size()
    x = x.view(batch, groups, channels // groups, height, width)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(batch, -1, height, width)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2 unit: split (stride 1) or two branches (stride 2), concat, shuffle."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        branch = out_ch // 2
        if stride > 1:
            self.branch1 = nn.Sequential(
                *conv_bn(in_ch, in_ch, 3, stride, groups=in_ch, activation=None),
                *conv_bn(in_ch, branch, 1),
            )
        else:
            self.branch1 = nn.Sequential()
        self.branch2 = nn.Sequential(
            *conv_bn(in_ch if stride > 1 else branch, branch, 1),
            *conv_bn(branch, branch, 3, stride, groups=branch, activation=None),
            *conv_bn(branch, branch, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    """torchvision ShuffleNetV2: stem, max-pool, three shuffle stages, 1x1 conv, mean, fc."""

    def __init__(
        self, repeats: Sequence[int], channels: Sequence[int], num_classes: int = 1000
    ) -> None:
        super().__init__()
        self.conv1 = conv_bn(3, channels[0], 3, 2)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        in_ch = channels[0]
        stages = []
        for n, out_ch in zip(repeats, channels[1:4]):
            units = [ShuffleUnit(in_ch, out_ch, 2)]
            units += [ShuffleUnit(out_ch, out_ch, 1) for _ in range(n - 1)]
            stages.append(nn.Sequential(*units))
            in_ch = out_ch
        self.stage2, self.stage3, self.stage4 = stages
        self.conv5 = conv_bn(in_ch, channels[-1], 1)
        self.fc = nn.Linear(channels[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.conv1(x))
        x = self.conv5(self.stage4(self.stage3(self.stage2(x))))
        return self.fc(x.mean([2, 3]))


def shufflenet_v2_x1_0(num_classes: int = 1000) -> nn.Module:
    """ShuffleNetV2 1.0x (stages 4/8/4, channels 24/116/232/464/1024)."""
    return ShuffleNetV2((4, 8, 4), (24, 116, 232, 464, 1024), num_classes)


# --------------------------------------------------------------------------- BERT encoder


class BertSelfAttention(nn.Module):
    """Multi-head self-attention with HuggingFace's view/permute/matmul/softmax op pattern."""

    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden={hidden} is not divisible by heads={heads}")
        self.heads, self.head_dim = heads, hidden // heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        x = x.view(x.size()[:-1] + (self.heads, self.head_dim))
        return x.permute(0, 2, 1, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self._split_heads(self.query(x))
        k = self._split_heads(self.key(x))
        v = self._split_heads(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim)
        context = torch.matmul(F.softmax(scores, dim=-1), v).permute(0, 2, 1, 3).contiguous()
        return context.view(context.size()[:-2] + (self.heads * self.head_dim,))


class BertLayer(nn.Module):
    """Post-LN transformer encoder layer: attention + residual LN, GELU FFN + residual LN."""

    def __init__(self, hidden: int = 768, heads: int = 12, ff: int = 3072) -> None:
        super().__init__()
        self.attention = BertSelfAttention(hidden, heads)
        self.attention_output = nn.Linear(hidden, hidden)
        self.attention_norm = nn.LayerNorm(hidden, eps=1e-12)
        self.intermediate = nn.Linear(hidden, ff)
        self.output = nn.Linear(ff, hidden)
        self.output_norm = nn.LayerNorm(hidden, eps=1e-12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attention_norm(self.attention_output(self.attention(x)) + x)
        return self.output_norm(self.output(F.gelu(self.intermediate(x))) + x)


def bert_encoder_layer(hidden: int = 768, heads: int = 12, ff: int = 3072) -> nn.Module:
    """One BERT-base encoder layer (BERT init: Linear N(0, 0.02)); ``[batch, seq, hidden]``."""
    return _init_weights(BertLayer(hidden, heads, ff), linear_std=0.02)


def bert_encoder(layers: int = 12, hidden: int = 768, heads: int = 12, ff: int = 3072) -> nn.Module:
    """A stack of BERT layers (BERT-base with the defaults), no embeddings or pooler."""
    stack = nn.Sequential(*(BertLayer(hidden, heads, ff) for _ in range(layers)))
    return _init_weights(stack, linear_std=0.02)


ARCHS: dict[str, Callable[..., nn.Module]] = {
    "resnet18": resnet18,
    "resnet50": resnet50,
    "mobilenet_v2": mobilenet_v2,
    "vgg11": vgg11,
    "vgg16": vgg16,
    "densenet121": densenet121,
    "squeezenet1_0": squeezenet1_0,
    "shufflenet_v2_x1_0": shufflenet_v2_x1_0,
    "bert_encoder_layer": bert_encoder_layer,
    "bert_encoder": bert_encoder,
}
