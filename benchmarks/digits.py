"""Small image-classification data for the demo and benchmarks, from scikit-learn's digits.

``sklearn.datasets.load_digits`` (1797 8x8 grey images, bundled, no download) is easy: a ridge
classifier on raw pixels gets ~95 %, so it cannot tell a good pruning method from a bad one.
:func:`hard_digits` makes it hard: train and test images come from disjoint source digits, are
upsampled to 16x16 or 32x32 and heavily distorted (random rotation, scale, shear, translation,
contrast, occlusion, Gaussian noise, 8-bit quantization). The test set is distorted once with
a fixed seed, so it is reproducible. All arrays are float32 NCHW ``[N, 1, H, W]`` in 0..1 with
int64 labels. Run ``python -m benchmarks.digits`` to print the ridge linear-probe accuracies.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy import ndimage
from sklearn.datasets import load_digits
from sklearn.linear_model import RidgeClassifier
from sklearn.model_selection import train_test_split

SOURCE_SIZE = 8
SOURCE_MAX = 16.0  # load_digits pixel values are 0..16


class DigitsSplit(NamedTuple):
    """Train/test images (float32 ``[N, 1, H, W]``, 0..1) and labels (int64 ``[N]``)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def _source_split(seed: int, test_fraction: float) -> tuple[np.ndarray, ...]:
    """Stratified split of the 8x8 source images (0..1, ``[N, 8, 8]``) into train/test."""
    digits = load_digits()
    images = (digits.images / SOURCE_MAX).astype(np.float32)
    labels = digits.target.astype(np.int64)
    return tuple(
        train_test_split(
            images, labels, test_size=test_fraction, random_state=seed, stratify=labels
        )
    )


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of ``[N, 8, 8]`` images to ``[N, 1, size, size]``, clipped to 0..1."""
    if size == SOURCE_SIZE:
        out = images
    else:
        out = ndimage.zoom(images, (1, size / SOURCE_SIZE, size / SOURCE_SIZE), order=1)
    return np.clip(out, 0.0, 1.0)[:, None].astype(np.float32)


def load_digits_split(seed: int = 0, size: int = 8, test_fraction: float = 1 / 3) -> DigitsSplit:
    """The plain digits set, stratified split; ``size=16`` (or 32) upsamples bilinearly."""
    x_train, x_test, y_train, y_test = _source_split(seed, test_fraction)
    return DigitsSplit(_resize(x_train, size), y_train, _resize(x_test, size), y_test)


def _random_affine(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Matrix and offset for ``ndimage.affine_transform`` from an 8x8 source to size x size.

    Forward map (source → output, centred coordinates): rotate ±25°, shear ±0.3, scale
    0.75–1.15 with ±10 % aspect change, then translate by up to ±12 % of the image.
    """
    angle = np.deg2rad(rng.uniform(-25, 25))
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    shear = np.array([[1.0, rng.uniform(-0.3, 0.3)], [0.0, 1.0]])
    scale = rng.uniform(0.75, 1.15)
    aspect = rng.uniform(0.9, 1.1)
    forward = rotation @ shear @ np.diag([scale * aspect, scale / aspect])
    shift = rng.uniform(-0.12, 0.12, size=2) * size
    matrix = (SOURCE_SIZE / size) * np.linalg.inv(forward)
    centre_out = np.full(2, (size - 1) / 2)
    centre_in = np.full(2, (SOURCE_SIZE - 1) / 2)
    return matrix, centre_in - matrix @ (centre_out + shift)


def distort(images: np.ndarray, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """Randomly distort 8x8 source images (0..1, ``[N, 8, 8]``) to ``[N, 1, size, size]``.

    Per image: random affine warp (cubic), contrast/brightness change, a random occluding
    rectangle (half of the images), Gaussian noise, clip to 0..1 and quantize to 8 bits.
    """
    out = np.empty((len(images), 1, size, size), np.float32)
    for i, image in enumerate(images):
        matrix, offset = _random_affine(rng, size)
        warped = ndimage.affine_transform(
            image, matrix, offset, output_shape=(size, size), order=3, mode="constant"
        )
        warped = warped * rng.uniform(0.45, 1.0) + rng.uniform(0.0, 0.3)
        if rng.random() < 0.5:
            h, w = rng.integers(size // 5, size * 2 // 5, size=2, endpoint=True)
            top, left = rng.integers(0, size - h + 1), rng.integers(0, size - w + 1)
            warped[top : top + h, left : left + w] = rng.uniform(0.0, 0.8)
        warped += rng.normal(0.0, rng.uniform(0.05, 0.2), size=warped.shape)
        out[i, 0] = np.clip(warped, 0.0, 1.0)
    return np.round(out * 255.0) / 255.0


def hard_digits(
    seed: int = 0, size: int = 32, train_copies: int = 4, test_fraction: float = 1 / 3
) -> DigitsSplit:
    """Hard digits: disjoint train/test source images, each heavily distorted.

    Every train source image appears ``train_copies`` times with different distortions; every
    test source image once, distorted with a generator seeded by ``(seed, 1)`` only.
    """
    src_train, src_test, y_train, y_test = _source_split(seed, test_fraction)
    train_rng = np.random.default_rng([seed, 0])
    x_train = np.concatenate([distort(src_train, train_rng, size) for _ in range(train_copies)])
    x_test = distort(src_test, np.random.default_rng([seed, 1]), size)
    return DigitsSplit(x_train, np.tile(y_train, train_copies), x_test, y_test)


def hard_digits_test(
    seed: int = 0, size: int = 32, copies: int = 1, test_fraction: float = 1 / 3
) -> tuple[np.ndarray, np.ndarray]:
    """``copies`` distortions of every test source image of :func:`hard_digits`, copy-major
    (rows ``c·N … (c+1)·N − 1`` are copy ``c`` of the ``N`` sources in order), and the labels.
    Copy 0 is :func:`hard_digits`'s ``x_test`` (the committed ``hard_digits.npz``); copy
    ``c ≥ 1`` is drawn by a generator seeded with ``(seed, 1, c)``. More copies make a larger
    evaluation set from the same held-out source digits: 343 images resolve a 1 % budget
    only to 3.4 images, and one standard error of a candidate's drop there is 0.5–1 %."""
    _, src_test, _, y_test = _source_split(seed, test_fraction)
    rngs = [np.random.default_rng([seed, 1])] + [np.random.default_rng([seed, 1, c]) for c in range(1, copies)]
    return np.concatenate([distort(src_test, rng, size) for rng in rngs]), np.tile(y_test, copies)


def hard_digits_sources(
    seed: int = 0, test_fraction: float = 1 / 3
) -> tuple[np.ndarray, np.ndarray]:
    """The 8x8 train source images and labels behind :func:`hard_digits` (same split), for
    drawing fresh distortions every epoch with :func:`distort`."""
    src_train, _, y_train, _ = _source_split(seed, test_fraction)
    return src_train, y_train


def ridge_probe_accuracy(split: DigitsSplit, alpha: float = 1.0) -> float:
    """Test accuracy of a ridge classifier on raw pixels: how linear (easy) the task is."""
    probe = RidgeClassifier(alpha=alpha)
    probe.fit(split.x_train.reshape(len(split.x_train), -1), split.y_train)
    return float(probe.score(split.x_test.reshape(len(split.x_test), -1), split.y_test))


if __name__ == "__main__":
    plain = load_digits_split(0)
    print(f"plain digits 8x8: train {plain.x_train.shape} test {plain.x_test.shape}")
    print(f"  ridge linear probe: {ridge_probe_accuracy(plain):.3f}")
    for size in (16, 32):
        hard = hard_digits(0, size=size)
        print(f"hard digits {size}x{size}: train {hard.x_train.shape} test {hard.x_test.shape}")
        print(f"  ridge linear probe: {ridge_probe_accuracy(hard):.3f}")
