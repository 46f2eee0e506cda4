"""Train the small digit models that ship with onnxopt and its benchmarks, export them to ONNX.

* **demo model** (``onnxopt/demo/digits_cnn.onnx`` + ``digits.npz``): residual CNN with
  BatchNorm and two fully-connected layers (Flatten → Gemm) on plain 16x16 digits, bundled for
  ``onnxopt demo``.
* **hard-digits model** (``benchmarks/models/hard_digits_cnn.onnx`` + ``hard_digits.npz``):
  a wider residual CNN (32/64 channels, global average pool) on the distorted 32x32 digits of
  :func:`benchmarks.digits.hard_digits`, where pruning mistakes cost visible accuracy.
* **hard-digits transformer** (``benchmarks/models/hard_digits_transformer.onnx``, the same
  test set): a convolutional stem and two ``nn.TransformerEncoderLayer`` blocks, so that
  attention-head and FFN pruning are judged on trained weights.

All are exported with the TorchScript exporter (opset 17, dynamic batch, BatchNormalization
kept unfused), input ``input`` ``[batch, 1, H, W]`` float32, output ``logits`` ``[batch, 10]``.
The accuracy written to ``benchmarks/models/README.md`` is measured with onnxruntime on the
saved ``.npz``. Deterministic (fixed seeds, one thread); each model trains in 1-3 minutes::

    python -m benchmarks.train_demo [demo] [hard] [transformer]   # all three without names
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn
from torch.nn import functional as F

from benchmarks.archs import BasicBlock
from benchmarks.digits import (
    distort,
    hard_digits,
    hard_digits_sources,
    load_digits_split,
    ridge_probe_accuracy,
)
from benchmarks.export import export_onnx

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_DIR = REPO_ROOT / "onnxopt" / "demo"
MODELS_DIR = REPO_ROOT / "benchmarks" / "models"
INPUT_NAME, OUTPUT_NAME, OPSET = "input", "logits", 17
SEED = 0


class DigitsResNet(nn.Module):
    """Conv-BN-ReLU stem, ResNet basic blocks, then a two-layer classifier head.

    ``head="flatten"`` max-pools by 2 and flattens (Flatten → Gemm in ONNX); ``"gap"`` uses
    global average pooling. ``blocks`` lists ``(out_channels, stride)`` per basic block.
    """

    def __init__(
        self,
        image_size: int,
        stem_channels: int,
        blocks: Sequence[tuple[int, int]],
        head: str,
        stem_pool: bool = False,
        hidden: int = 128,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, stem_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(stem_channels),
            nn.ReLU(inplace=True),
            *([nn.MaxPool2d(2)] if stem_pool else []),
        )
        size = image_size // 2 if stem_pool else image_size
        layers, channels = [], stem_channels
        for out_channels, stride in blocks:
            layers.append(BasicBlock(channels, out_channels, stride))
            channels, size = out_channels, size // stride
        self.blocks = nn.Sequential(*layers)
        if head == "flatten":
            self.pool: nn.Module = nn.MaxPool2d(2)
            features = channels * (size // 2) ** 2
        elif head == "gap":
            self.pool = nn.AdaptiveAvgPool2d(1)
            features = channels
        else:
            raise ValueError(f"head must be 'flatten' or 'gap', got {head!r}")
        self.fc1 = nn.Linear(features, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.pool(self.blocks(self.stem(x))), 1)
        return self.fc2(F.relu(self.fc1(x)))


def demo_model() -> DigitsResNet:
    """The bundled demo CNN for 16x16 digits (~8 M MACs, ~0.2 M parameters)."""
    return DigitsResNet(16, 32, [(32, 1), (64, 2)], head="flatten")


def hard_digits_model() -> DigitsResNet:
    """The hard-digits CNN for 32x32 inputs (32/64 channels, ~3.7 M MACs)."""
    return DigitsResNet(32, 32, [(32, 2), (64, 2), (64, 1)], head="gap", stem_pool=True)


class DigitsTransformer(nn.Module):
    """A hybrid vision transformer for 32x32 digits: two Conv-BN-ReLU-MaxPool stages (32 and
    ``dim`` channels) make 8x8 = 64 tokens, a learned position embedding is added, then
    ``layers`` pre-norm ``nn.TransformerEncoderLayer`` blocks (``nn.MultiheadAttention`` with
    ``heads`` heads, GELU FFN of ``ffn`` units), LayerNorm, the mean over tokens, Linear."""

    def __init__(self, dim: int = 64, heads: int = 4, layers: int = 2, ffn: int = 128, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, dim, 3, padding=1, bias=False), nn.BatchNorm2d(dim), nn.ReLU(), nn.MaxPool2d(2),
        )  # fmt: skip
        self.pos = nn.Parameter(torch.randn(1, 64, dim) * 0.02)
        block = nn.TransformerEncoderLayer(dim, heads, ffn, dropout=0.0, activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.stem(x).flatten(2).transpose(1, 2) + self.pos
        return self.head(self.norm(self.encoder(tokens)).mean(1))


def count_macs(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates of Conv2d and Linear layers for one sample."""
    total = 0

    def hook(module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            per_output = module.in_channels // module.groups * module.kernel_size[0] ** 2
            total += output[0].numel() * per_output
        else:
            total += module.in_features * output[0].numel()  # per token for [N, T, features]

    def attention_hook(module: nn.Module, inputs: tuple, _output: tuple) -> None:
        nonlocal total  # q, k, v and output projections (read as weights, no Linear call), Q·Kᵀ, scores·V
        tokens, dim = inputs[0].shape[-2], module.embed_dim  # batch_first
        total += tokens * dim * 4 * dim + 2 * tokens * tokens * dim

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, nn.Conv2d | nn.Linear)
    ] + [m.register_forward_hook(attention_hook) for m in model.modules() if isinstance(m, nn.MultiheadAttention)]
    with torch.no_grad():
        model.eval()(example[:1])
    for handle in handles:
        handle.remove()
    return total


def random_shift(images: np.ndarray, rng: np.random.Generator, max_shift: int) -> np.ndarray:
    """Translate each image by up to ``max_shift`` pixels (zero fill): light augmentation."""
    size = images.shape[-1]
    padded = np.pad(images, ((0, 0), (0, 0), (max_shift,) * 2, (max_shift,) * 2))
    out = np.empty_like(images)
    for i, (dy, dx) in enumerate(rng.integers(0, 2 * max_shift + 1, size=(len(images), 2))):
        out[i] = padded[i, :, dy : dy + size, dx : dx + size]
    return out


@dataclass
class TrainResult:
    """What the README records about one trained model."""

    torch_accuracy: float
    onnx_accuracy: float
    macs: int
    params: int
    seconds: float


def train(
    model: nn.Module,
    batches_per_epoch: Callable[[np.random.Generator], tuple[np.ndarray, np.ndarray]],
    epochs: int,
    lr: float,
    batch_size: int = 64,
) -> None:
    """AdamW with a one-cycle schedule; ``batches_per_epoch(rng)`` gives each epoch's data."""
    rng = np.random.default_rng(SEED)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = None
    for _ in range(epochs):
        x, y = batches_per_epoch(rng)
        if schedule is None:
            steps = -(-len(x) // batch_size)
            schedule = torch.optim.lr_scheduler.OneCycleLR(
                optimizer, max_lr=lr, epochs=epochs, steps_per_epoch=steps
            )
        order = torch.from_numpy(rng.permutation(len(x)))
        x, y = torch.from_numpy(x)[order], torch.from_numpy(y)[order]
        model.train()
        for start in range(0, len(x), batch_size):
            batch = slice(start, start + batch_size)
            loss = F.cross_entropy(model(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of the torch model in eval mode."""
    with torch.no_grad():
        logits = model.eval()(torch.from_numpy(x))
    return float((logits.argmax(1).numpy() == y).mean())


def onnx_accuracy(onnx_path: Path, npz_path: Path) -> float:
    """Top-1 accuracy of the exported model on the saved ``.npz``, run by onnxruntime."""
    data = np.load(npz_path)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (logits,) = session.run([OUTPUT_NAME], {INPUT_NAME: data[INPUT_NAME]})
    return float((logits.argmax(1) == data["labels"]).mean())


def train_and_export(
    model: nn.Module,
    batches_per_epoch: Callable[[np.random.Generator], tuple[np.ndarray, np.ndarray]],
    x_test: np.ndarray,
    y_test: np.ndarray,
    onnx_path: Path,
    npz_path: Path,
    epochs: int,
    lr: float,
    save_test: bool = True,
) -> TrainResult:
    """Train, export (TorchScript, opset 17, dynamic batch, BN unfused), save the test set
    (``save_test=False``: it is another model's, already saved)."""
    start = time.perf_counter()
    train(model, batches_per_epoch, epochs, lr)
    seconds = time.perf_counter() - start
    export_onnx(
        model,
        (torch.from_numpy(x_test[:2]),),
        onnx_path,
        dynamo=False,
        opset=OPSET,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_batch=True,
    )
    if save_test:
        np.savez_compressed(npz_path, **{INPUT_NAME: x_test, "labels": y_test.astype(np.int64)})
    return TrainResult(
        torch_accuracy=accuracy(model, x_test, y_test),
        onnx_accuracy=onnx_accuracy(onnx_path, npz_path),
        macs=count_macs(model, torch.from_numpy(x_test)),
        params=sum(p.numel() for p in model.parameters()),
        seconds=seconds,
    )


def train_demo_model(epochs: int = 30) -> TrainResult:
    """Train the bundled demo model on plain 16x16 digits (random ±1 px shifts)."""
    torch.manual_seed(SEED)
    split = load_digits_split(SEED, size=16)

    def batches(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        return random_shift(split.x_train, rng, 1), split.y_train

    return train_and_export(
        demo_model(), batches, split.x_test, split.y_test,
        DEMO_DIR / "digits_cnn.onnx", DEMO_DIR / "digits.npz", epochs, lr=3e-3,
    )  # fmt: skip


def _train_on_hard_digits(build: Callable[[], nn.Module], file: str, epochs: int, save_test: bool) -> TrainResult:
    """Train ``build()`` on freshly distorted 32x32 images every epoch, test on the fixed set."""
    torch.manual_seed(SEED)
    sources, labels = hard_digits_sources(SEED)
    test = hard_digits(SEED, size=32, train_copies=1)

    def batches(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        return distort(sources, rng, 32), labels

    return train_and_export(
        build(), batches, test.x_test, test.y_test,
        MODELS_DIR / file, MODELS_DIR / "hard_digits.npz", epochs, lr=3e-3, save_test=save_test,
    )  # fmt: skip


def train_hard_digits_model(epochs: int = 40) -> TrainResult:
    """Train the hard-digits CNN (and save the test set)."""
    return _train_on_hard_digits(hard_digits_model, "hard_digits_cnn.onnx", epochs, save_test=True)


def train_hard_digits_transformer(epochs: int = 60) -> TrainResult:
    """Train the hard-digits transformer like the CNN, scored on the CNN's test set."""
    return _train_on_hard_digits(DigitsTransformer, "hard_digits_transformer.onnx", epochs, save_test=False)


# command-line name → (README row, file, test data, ridge probe's image size, trainer)
MODELS: dict[str, tuple[str, str, str, int, Callable[[], TrainResult]]] = {
    "demo": ("demo", "onnxopt/demo/digits_cnn.onnx", "plain digits 16x16, 599 images", 16, train_demo_model),
    "hard": ("hard digits", "benchmarks/models/hard_digits_cnn.onnx", "hard digits 32x32, 599 images", 32,
             train_hard_digits_model),
    "transformer": ("hard digits transformer", "benchmarks/models/hard_digits_transformer.onnx",
                    "hard digits 32x32, 599 images", 32, train_hard_digits_transformer),
}  # fmt: skip


def write_readme(results: dict[str, TrainResult], ridge: dict[int, float]) -> Path:
    """Record what was trained and the accuracies onnxruntime measured; the rows of models
    not trained this time are kept from the README as it was."""
    path = MODELS_DIR / "README.md"
    old = path.read_text().splitlines() if path.exists() else []

    def row(name: str) -> str:
        label, file, data, size, _ = MODELS[name]
        if name not in results:
            return next((line for line in old if line.startswith(f"| {label} |")), f"| {label} | `{file}` | {data} | not trained |")
        result = results[name]
        return (
            f"| {label} | `{file}` | {data} | {result.onnx_accuracy:.2%} | "
            f"{result.torch_accuracy:.2%} | {ridge[size]:.2%} | {result.macs / 1e6:.2f} M | "
            f"{result.params / 1e3:.0f} k | {result.seconds:.0f} s |"
        )

    lines = [
        "# Trained digit models",
        "",
        "Written by `python -m benchmarks.train_demo` (seed 0, one CPU thread). The models are",
        "exported by the TorchScript exporter (opset 17, BatchNormalization kept unfused) with a",
        f"dynamic batch: input `{INPUT_NAME}` float32 `[batch, 1, H, W]` in 0..1, output",
        f"`{OUTPUT_NAME}` float32 `[batch, 10]`. Each `.npz` holds the held-out test set:",
        f"`{INPUT_NAME}` (float32 `[N, 1, H, W]`) and `labels` (int64 `[N]`); the transformer",
        "shares `hard_digits.npz` with the hard-digits CNN. MACs count convolutions, linear",
        "layers and attention (projections and both products).",
        "",
        "| model | file | test data | accuracy (onnxruntime) | accuracy (torch) "
        "| ridge linear probe | MACs | params | train time |",
        "|---|---|---|---|---|---|---|---|---|",
        *(row(name) for name in MODELS),
        "",
        "The ridge linear probe is `RidgeClassifier` on raw pixels (train → test of the same",
        "split; for hard digits trained on 4 distorted copies of each train image). It shows how",
        "far from linearly separable the task is: the hard variant leaves room for pruning",
        "mistakes to show up as accuracy loss.",
        "",
        "Data: `benchmarks/digits.py` (scikit-learn's bundled digits; the hard variant uses",
        "disjoint train/test source images, random affine warps, contrast, occlusion, noise).",
        "",
    ]  # fmt: skip
    path.write_text("\n".join(lines))
    return path


def main(argv: Sequence[str] | None = None) -> None:
    """Train and export the named models (all without names: ``demo``, ``hard``,
    ``transformer``), check them with onnxruntime, write the README."""
    names = list(sys.argv[1:] if argv is None else argv) or list(MODELS)
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        raise SystemExit(f"unknown model {unknown[0]!r}; choose from {', '.join(MODELS)}")
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    DEMO_DIR.mkdir(parents=True, exist_ok=True)
    MODELS_DIR.mkdir(parents=True, exist_ok=True)
    ridge = {16: ridge_probe_accuracy(load_digits_split(SEED, size=16)), 32: ridge_probe_accuracy(hard_digits(SEED, size=32))}
    results = {}
    for name in names:
        results[name] = MODELS[name][4]()
        print(f"{name}: {results[name]}")
    print(f"ridge linear probe: plain {ridge[16]:.3f}, hard {ridge[32]:.3f}")
    print(f"wrote {write_readme(results, ridge)}")


if __name__ == "__main__":
    main()
