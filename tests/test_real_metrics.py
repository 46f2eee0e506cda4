"""The benchmarks' decision metrics for text detectors: ddddocr's YOLOX boxes, PaddleOCR's DB map (synthetic outputs, no model needed)."""

import numpy as np
import pytest

from benchmarks.real_data import _yolox_boxes, detection_f1, unmatched_scores

ANCHORS = 52 * 52 + 26 * 26 + 13 * 13  # strides 8, 16, 32 at 416 × 416


def _prediction(cells: list[tuple[int, float]]) -> np.ndarray:
    """One image's [anchors, 6] output: anchor ``i`` scores ``s`` (objectness × class)."""
    pred = np.zeros((ANCHORS, 6), np.float32)
    pred[:, 2:4] = np.log(2.0)  # boxes 2 strides wide
    for i, score in cells:
        pred[i, 4], pred[i, 5] = score, 1.0
    return pred


def test_boxes_are_decoded_on_the_grid_and_suppressed():
    # anchors 0 and 1 are neighbours at stride 8 (boxes overlap by half: IoU 1/3, both kept),
    # anchor 2704 is the first of stride 16; score 0.05 is below the 0.1 threshold.
    boxes = _yolox_boxes(_prediction([(0, 0.9), (1, 0.8), (2704, 0.7), (600, 0.05)]))
    assert len(boxes) == 3
    np.testing.assert_allclose(boxes[0], [-8, -8, 8, 8])
    np.testing.assert_allclose(boxes[2], [-16, -16, 16, 16])
    # a box inside a stronger one (IoU ≥ 0.45) is suppressed
    pred = _prediction([(2704, 0.9), (0, 0.8)])
    pred[0, 2:4] = np.log(4.0)  # the stride-8 box grows to 32 × 32 around (0, 0): IoU 1
    assert len(_yolox_boxes(pred)) == 1


def test_detection_f1_counts_matched_boxes():
    a = _prediction([(100, 0.9), (1000, 0.9)])
    assert detection_f1([a[None]], [a[None]]) == 1.0
    one_lost = _prediction([(100, 0.9)])
    assert detection_f1([a[None]], [one_lost[None]]) == 2 * 1 / 3
    moved = _prediction([(100, 0.9), (1003, 0.9)])  # 3 cells away: no overlap
    assert detection_f1([a[None]], [moved[None]]) == 0.5
    empty = _prediction([])
    assert detection_f1([empty[None]], [empty[None]]) == 1.0
    assert detection_f1([a[None]], [empty[None]]) == 0.0
    # mean over images
    both = np.stack([a, a])
    assert detection_f1([both], [np.stack([a, empty])]) == 0.5


def test_unmatched_scores_are_those_of_the_boxes_one_model_lacks():
    ref = _prediction([(100, 0.9), (1000, 0.105)])
    cand = _prediction([(100, 0.88), (1000, 0.095), (2000, 0.12)])  # one falls under 0.1, one appears
    np.testing.assert_allclose(np.sort(unmatched_scores([ref[None]], [cand[None]])), [0.105, 0.12], rtol=1e-6)
    assert unmatched_scores([ref[None]], [ref[None]]).size == 0
    empty = _prediction([])
    np.testing.assert_allclose(np.sort(unmatched_scores([ref[None]], [empty[None]])), [0.105, 0.9], rtol=1e-6)


def test_db_map_iou_scores_the_binarised_text_regions():
    from benchmarks.wheel_models import db_map_iou

    ref = np.zeros((3, 1, 8, 8), np.float32)
    ref[0, 0, :4] = 0.9  # image 0: text in the top half
    ref[1, 0] = 0.2  # image 1: background below the threshold everywhere
    ref[2, 0, :, :4] = 0.8  # image 2: text in the left half
    cand = ref.copy()
    assert db_map_iou([ref], [cand]) == 1.0
    cand[1, 0] = 0.29  # background moves, stays below 0.3: no decision changes
    cand[0, 0, :2] = 0.1  # half of image 0's text region is lost
    cand[2, 0, :, 4:6] = 0.5  # image 2's region grows by half
    assert db_map_iou([ref], [cand]) == pytest.approx(np.mean([0.5, 1.0, 2 / 3]))
