"""HuggingFace ``transformers`` architectures through onnxopt: the graphs people export.

Run ``python -m benchmarks.hf_archs [--only bert,t5] [--no-optimize]``; writes
``benchmarks/results/hf_archs.{md,json}``.

Every model is built from a small config with random weights (seeded; nothing is
downloaded) and exported three ways: TorchScript with static shapes, TorchScript with a
symbolic batch (and sequence, for token inputs), and dynamo. For each export:

- **lossless**: ``optimize`` without data (clean-up, BN folding), max relative error of
  every output against the export on the example inputs;
- **groups**: the channel groups the analysis finds prunable / unprunable, how many of the
  prunable are attention-head groups (units of several channels made by matrix products:
  heads, or key/value heads), and the most common reason a group is unprunable;
- **exact**: 30 % of every prunable group's units removed at random against the same units
  zeroed in the original (:func:`benchmarks.exactness.zero_then_prune`): max error of the
  first output relative to its largest magnitude;
- **optimize** (the symbolic-batch export only): ``optimize`` with 48 random samples and the
  default 1 % budget, which stages it kept and the agreement on held-out samples. With random
  weights this checks robustness (no crash, budget kept), not what a trained model allows.

An export that fails inside torch is reported as such (the exporters' own limits, e.g.
TorchScript has no ``aten::diff`` for GPT-2's mask nor ``col2im`` for MobileViTV2; dynamo fails
on T5, Swin and BEiT).
"""

from __future__ import annotations

import argparse
import collections
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
import transformers as T

from benchmarks import record
from benchmarks.exactness import zero_then_prune
from benchmarks.export import export_onnx
from onnxopt.calibration import Dataset
from onnxopt.model_io import load_model
from onnxopt.optimize import optimize
from onnxopt.passes.cleanup import CleanupPass

BATCH, SEQ = 2, 16
LAYERS = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
AUDIO = dict(conv_dim=(32, 32, 32), conv_stride=(5, 2, 2), conv_kernel=(10, 3, 3), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)
DECODER = dict(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, max_position_embeddings=64)


def _tokens(batch: int = BATCH, decoder: bool = False) -> dict[str, torch.Tensor]:
    ids = torch.randint(3, 1000, (batch, SEQ))
    mask = torch.ones(batch, SEQ, dtype=torch.long)
    mask[1::3, 12:] = 0  # padded samples: the mask matters
    out = {"input_ids": ids, "attention_mask": mask}
    if decoder:
        out["decoder_input_ids"] = torch.randint(3, 1000, (batch, SEQ))
    return out


def _pixels(size: int = 32) -> Callable[[int], dict[str, torch.Tensor]]:
    return lambda batch: {"pixel_values": torch.randn(batch, 3, size, size)}


def _audio(batch: int) -> dict[str, torch.Tensor]:
    return {"input_values": torch.randn(batch, 4000)}


def _ids_only(batch: int) -> dict[str, torch.Tensor]:
    return {"input_ids": torch.randint(3, 1000, (batch, SEQ))}


def _whisper_encoder(config: Any) -> torch.nn.Module:
    return T.WhisperModel(config).encoder


_WHISPER = dict(d_model=64, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=128, decoder_layers=1, decoder_attention_heads=4,
                decoder_ffn_dim=128, max_source_positions=32, vocab_size=1000, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                decoder_start_token_id=1)  # fmt: skip
_RESNET_BACKBONE = dict(hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1], embedding_size=16)

# name → (family, config class, model class or builder, inputs(batch), config keywords)
ARCHS: dict[str, tuple[str, Any, Any, Callable[[int], dict], dict]] = {
    "bert": ("text encoder", T.BertConfig, T.BertModel, _tokens, dict(vocab_size=1000, **LAYERS)),
    "distilbert": ("text encoder", T.DistilBertConfig, T.DistilBertModel, _tokens, dict(vocab_size=1000, dim=64, n_layers=2, n_heads=4, hidden_dim=128)),
    "roberta": ("text encoder", T.RobertaConfig, T.RobertaModel, _tokens, dict(vocab_size=1010, **LAYERS)),
    "albert": ("text encoder", T.AlbertConfig, T.AlbertModel, _tokens, dict(vocab_size=1000, embedding_size=32, **LAYERS)),
    "electra": ("text encoder", T.ElectraConfig, T.ElectraModel, _tokens, dict(vocab_size=1000, embedding_size=32, **LAYERS)),
    "mpnet": ("text encoder", T.MPNetConfig, T.MPNetModel, _tokens, dict(vocab_size=1010, **LAYERS)),
    "deberta-v2": ("text encoder", T.DebertaV2Config, T.DebertaV2Model, _tokens, dict(vocab_size=1000, max_position_embeddings=64, **LAYERS)),
    "t5-encoder": ("text encoder", T.T5Config, T.T5EncoderModel, _tokens, dict(vocab_size=1000, d_model=64, d_ff=128, num_layers=2, num_heads=4, d_kv=16)),
    "bart": ("encoder-decoder", T.BartConfig, T.BartModel, lambda b: _tokens(b, decoder=True),
             dict(vocab_size=1000, d_model=64, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4, decoder_attention_heads=4,
                  encoder_ffn_dim=128, decoder_ffn_dim=128, max_position_embeddings=64)),
    "gpt2": ("decoder", T.GPT2Config, T.GPT2Model, _ids_only, dict(vocab_size=1000, n_embd=64, n_layer=2, n_head=4, use_cache=False, bos_token_id=1, eos_token_id=2)),
    "llama (GQA)": ("decoder", T.LlamaConfig, T.LlamaModel, _tokens, dict(DECODER, num_key_value_heads=2)),
    "qwen2 (GQA)": ("decoder", T.Qwen2Config, T.Qwen2Model, _tokens, dict(DECODER, num_key_value_heads=2)),
    "gemma (MQA)": ("decoder", T.GemmaConfig, T.GemmaModel, _tokens, dict(DECODER, num_key_value_heads=1, head_dim=16)),
    "phi": ("decoder", T.PhiConfig, T.PhiModel, _tokens, DECODER),
    "gpt-neox": ("decoder", T.GPTNeoXConfig, T.GPTNeoXModel, _tokens, DECODER),
    "vit": ("vision", T.ViTConfig, T.ViTModel, _pixels(), dict(image_size=32, patch_size=8, **LAYERS)),
    "deit": ("vision", T.DeiTConfig, T.DeiTModel, _pixels(), dict(image_size=32, patch_size=8, **LAYERS)),
    "dinov2": ("vision", T.Dinov2Config, T.Dinov2Model, _pixels(), dict(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2, num_attention_heads=4)),
    "beit": ("vision", T.BeitConfig, T.BeitModel, _pixels(), dict(image_size=32, patch_size=8, use_relative_position_bias=True, **LAYERS)),
    "clip-vision": ("vision", T.CLIPVisionConfig, T.CLIPVisionModel, _pixels(), dict(image_size=32, patch_size=8, **LAYERS)),
    "swin": ("vision", T.SwinConfig, T.SwinModel, _pixels(64), dict(image_size=64, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 4], window_size=4)),
    "convnext": ("vision", T.ConvNextConfig, T.ConvNextModel, _pixels(64), dict(hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 2, 1])),
    "convnextv2": ("vision", T.ConvNextV2Config, T.ConvNextV2Model, _pixels(64), dict(hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1])),
    "resnet": ("vision", T.ResNetConfig, T.ResNetModel, _pixels(64), _RESNET_BACKBONE),
    "regnet": ("vision", T.RegNetConfig, T.RegNetModel, _pixels(64), dict(hidden_sizes=[16, 32, 48, 64], depths=[1, 1, 1, 1], embedding_size=16, groups_width=8)),
    "mobilenet-v2": ("vision", T.MobileNetV2Config, T.MobileNetV2Model, _pixels(64), dict(depth_multiplier=0.35, image_size=64)),
    "mobilevit": ("vision", T.MobileViTConfig, T.MobileViTModel, _pixels(64), dict(hidden_sizes=[32, 48, 64], neck_hidden_sizes=[8, 16, 24, 24, 32, 40, 80], image_size=64)),
    "mobilevit-v2": ("vision", T.MobileViTV2Config, T.MobileViTV2Model, _pixels(64), dict(image_size=64, width_multiplier=0.5)),
    "levit": ("vision", T.LevitConfig, T.LevitModel, _pixels(64), dict(image_size=64, hidden_sizes=[32, 48, 64], num_attention_heads=[2, 3, 4], depths=[1, 1, 1], key_dim=[8, 8, 8])),
    "poolformer": ("vision", T.PoolFormerConfig, T.PoolFormerModel, _pixels(64), dict(hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1])),
    "pvt": ("vision", T.PvtConfig, T.PvtModel, _pixels(64), dict(image_size=64, hidden_sizes=[16, 32, 48, 64], depths=[1, 1, 1, 1], num_attention_heads=[1, 2, 4, 4])),
    "segformer": ("segmentation", T.SegformerConfig, T.SegformerModel, _pixels(64), dict(hidden_sizes=[16, 32, 48, 64], depths=[1, 1, 1, 1], decoder_hidden_size=64)),
    "dpt": ("depth", T.DPTConfig, T.DPTForDepthEstimation, _pixels(64),
            dict(image_size=64, patch_size=16, hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128,
                 backbone_out_indices=[0, 1, 2, 3], neck_hidden_sizes=[16, 32, 64, 64], fusion_hidden_size=32)),
    "detr": ("detector", T.DetrConfig, T.DetrForObjectDetection, _pixels(64),
             dict(use_timm_backbone=False, use_pretrained_backbone=False, backbone_config=T.ResNetConfig(**_RESNET_BACKBONE, out_features=["stage4"]),
                  d_model=64, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128,
                  decoder_ffn_dim=128, num_queries=10)),
    "yolos": ("detector", T.YolosConfig, T.YolosForObjectDetection, _pixels(64), dict(image_size=[64, 64], patch_size=16, num_detection_tokens=10, **LAYERS)),
    "wav2vec2": ("speech", T.Wav2Vec2Config, T.Wav2Vec2Model, _audio, dict(**AUDIO, **LAYERS)),
    "hubert": ("speech", T.HubertConfig, T.HubertModel, _audio, dict(**AUDIO, **LAYERS)),
    "wavlm": ("speech", T.WavLMConfig, T.WavLMModel, _audio, dict(**AUDIO, num_buckets=32, max_bucket_distance=64, **LAYERS)),
    "whisper-encoder": ("speech", T.WhisperConfig, _whisper_encoder, lambda b: {"input_features": torch.randn(b, 80, 64)}, _WHISPER),
    "whisper": ("speech", T.WhisperConfig, T.WhisperModel,
                lambda b: {"input_features": torch.randn(b, 80, 64), "decoder_input_ids": torch.randint(3, 1000, (b, SEQ))},
                dict(_WHISPER, encoder_layers=1, max_target_positions=32)),
}  # fmt: skip
MODES = ("static", "dynamic", "dynamo")


class TupleOutputs(torch.nn.Module):
    """The model's tensor outputs as a tuple, its inputs by position (what the exporters take)."""

    def __init__(self, model: torch.nn.Module, names: list[str]) -> None:
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *args):
        out = self.model(**dict(zip(self.names, args)), return_dict=False)
        return tuple(o for o in out if isinstance(o, torch.Tensor))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160] if text else ''}"


def _feeds(model, inputs: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {v.name: x.numpy() for v, x in zip(model.graph.inputs, inputs.values())}


def _lossless(path: Path, out: Path, feeds: dict[str, np.ndarray]) -> float:
    optimize(path, out, speed_check=False)
    before = ort.InferenceSession(str(path)).run(None, feeds)
    after = ort.InferenceSession(str(out)).run(None, feeds)
    return max(float(np.abs(a - b).max() / max(1.0, float(np.abs(a).max()))) for a, b in zip(before, after))


def _is_heads(group) -> bool:
    """Attention heads: units of several channels made by matrix products (a grouped
    convolution's groups are units of several channels too, made by a Conv)."""
    return group.unit_width > 1 and all(m.node.op_type in ("MatMul", "Gemm") for m in group.sources)


def _groups(model, feeds: dict[str, np.ndarray]) -> dict:
    zeroed, pruned, analysis, removals, _ = zero_then_prune(model, Dataset(feeds), 0.3)
    reasons = collections.Counter(g.reasons[0].split(": ", 1)[-1] for g in analysis.unprunable if g.reasons)
    return {
        "prunable": len(analysis.prunable),
        "unprunable": len(analysis.unprunable),
        "head_groups": sum(1 for g in analysis.prunable if _is_heads(g)),
        "units_removed": int(sum(len(u) for u in removals.values())),
        "exact_error": float(np.abs(zeroed - pruned).max() / max(1.0, float(np.abs(zeroed).max()))),
        "top_reason": f"{reasons.most_common(1)[0][0]} ({reasons.most_common(1)[0][1]})" if reasons else "",
    }


def _optimized(path: Path, out: Path, inputs: dict[str, torch.Tensor]) -> dict:
    data = Dataset({name: x.numpy() for name, x in inputs.items()})
    result = optimize(path, out, data=data, seed=0)
    return {
        "kept": [r.name for r in result.stages if r.kept and not r.lossless] or ["none"],
        "score": result.final_score,
        "speedup": result.speedup,
        "failed_stages": [f"{r.name}: {r.reason}" for r in result.stages if r.reason.startswith("stage failed")],
    }


def example_inputs(name: str, batch: int) -> dict[str, torch.Tensor]:
    """``batch`` samples for ``ARCHS[name]``, by input name (token ids with some samples
    padded, pixels or audio), drawn from torch's generator."""
    return ARCHS[name][3](batch)


def export(name: str, mode: str, path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """Build ``ARCHS[name]`` (seeded) and export it to ``path`` in ``mode`` (one of
    :data:`MODES`); returns the path and the example inputs, batch :data:`BATCH`."""
    _, config_cls, model_cls, _, kwargs = ARCHS[name]
    torch.manual_seed(0)
    net = model_cls(config_cls(**kwargs)).eval()
    inputs = example_inputs(name, BATCH)
    dynamic = mode == "dynamic"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = export_onnx(TupleOutputs(net, list(inputs)), tuple(inputs.values()), path, dynamo=mode == "dynamo", input_names=list(inputs),
                           dynamic_batch=dynamic, sequence_axis=1 if dynamic and "input_ids" in inputs else None)  # fmt: skip
    return path, inputs


def run_one(name: str, mode: str, tmp: Path, with_optimize: bool) -> dict:
    family = ARCHS[name][0]
    row: dict[str, Any] = {"model": name, "family": family, "mode": mode}
    try:
        path, inputs = export(name, mode, tmp / f"{name.split()[0]}_{mode}.onnx")
    except Exception as exc:  # noqa: BLE001 - the exporter's own limits are reported
        return {**row, "export": f"torch export failed: {_first_line(exc)}"}
    model = load_model(path)
    row["nodes"] = len(model.graph)
    feeds = _feeds(model, inputs)
    for key, step in (
        ("lossless_error", lambda: _lossless(path, tmp / "lossless.onnx", feeds)),
        ("groups", lambda: (CleanupPass()(model), _groups(model, feeds))[1]),
    ):
        try:
            row[key] = step()
        except Exception as exc:  # noqa: BLE001 - a crash is a result here
            row[key] = f"crashed: {_first_line(exc)}"
    if with_optimize and mode == "dynamic":
        torch.manual_seed(1)
        try:
            row["optimize"] = _optimized(path, tmp / "optimized.onnx", example_inputs(name, 48))
        except Exception as exc:  # noqa: BLE001
            row["optimize"] = f"crashed: {_first_line(exc)}"
    return row


def _cell(row: dict) -> list[str]:
    if "export" in row:
        return [row["export"], "", "", "", ""]
    g = row.get("groups")
    loss = row.get("lossless_error")
    loss_cell = f"{loss:.1e}" if isinstance(loss, float) else str(loss)
    if not isinstance(g, dict):
        return [loss_cell, str(g), "", "", ""]
    o = row.get("optimize")
    if isinstance(o, dict):
        speed = f", {o['speedup']:.2f}×" if o.get("speedup") else ""
        o_cell = f"{' + '.join(o['kept'])} / {o['score']:.4f}{speed}" + (f" **failed: {o['failed_stages']}**" if o["failed_stages"] else "")
    else:
        o_cell = "" if o is None else str(o)
    return [loss_cell, f"{g['prunable']} / {g['unprunable']} ({g['head_groups']} head groups)", f"{g['exact_error']:.1e}", g["top_reason"], o_cell]


def markdown(results: dict) -> str:
    lines = [
        "# HuggingFace transformers architectures through onnxopt",
        "",
        f"`python -m benchmarks.hf_archs` — transformers {results.get('transformers', '?')}, torch {results.get('torch', '?')}, "
        f"onnxruntime {results['onnxruntime']}, {results['date']}, {results['seconds']:.0f} s. Random weights from small configs "
        "(2 layers, hidden 64, 4 heads unless named); what each column means: the module docstring.",
        "",
        "Exports: **static** TorchScript, **dynamic** TorchScript with a symbolic batch (and sequence for token inputs), **dynamo**. "
        "*lossless*: max rel. error of `optimize` without data. *groups*: prunable / unprunable. *exact*: 30 % of every "
        "prunable group's units removed vs zeroed, max rel. error. *optimize* (dynamic export, 48 random samples, 1 % budget): "
        "lossy stages kept / held-out agreement, final speed check.",
        "",
        "| model | family | export | lossless | groups | exact | most common reason a group is unprunable | optimize |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in results["rows"]:
        lines.append("| " + " | ".join([row["model"], row["family"], row["mode"], *_cell(row)]) + " |")
    exact = [r["groups"]["exact_error"] for r in results["rows"] if isinstance(r.get("groups"), dict)]
    crashed = [f"{r['model']} {r['mode']}" for r in results["rows"] if any(isinstance(v, str) and v.startswith("crashed") for v in r.values())]
    failed = [f"{r['model']}" for r in results["rows"] if isinstance(r.get("optimize"), dict) and r["optimize"]["failed_stages"]]
    lines += [
        "",
        f"{len(results['rows'])} exports attempted, {len(exact)} analysed; largest prune-vs-zero error {max(exact, default=0):.1e}; "
        f"crashed: {', '.join(crashed) or 'none'}; optimize stages that failed: {', '.join(failed) or 'none'}.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated model names (default: all)")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--no-optimize", action="store_true", help="skip optimize with data")
    args = parser.parse_args()
    names = args.only.split(",") if args.only else list(ARCHS)
    start = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="onnxopt-hf-") as tmp:
        for name in names:
            for mode in args.modes.split(","):
                t0 = time.perf_counter()
                row = run_one(name, mode, Path(tmp), not args.no_optimize)
                row["seconds"] = time.perf_counter() - t0
                print(f"{name:18s} {mode:8s} {' | '.join(_cell(row))}", flush=True)
                rows.append(row)
    record.write("hf_archs", rows, start, markdown, transformers=T.__version__, torch=torch.__version__.split("+")[0])


if __name__ == "__main__":
    main()
