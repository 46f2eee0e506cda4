"""The default task scores of detectors: boxes after NonMaxSuppression inside the graph,
and the raw head of Ultralytics YOLO (v8 and later).

Such a model returns a data-dependent number of boxes (torchvision's ``boxes [K, 4]``,
``labels [K]``, ``scores [K]``; mmdeploy's ``dets [1, K, 5]``, ``labels [1, K]``). Any
lossy change that adds or drops one box on one image changes the output shape, so the
generic agreement (which compares outputs element by element) scores it 0 and every lossy
stage is refused. Instead, per image, the boxes of the candidate are matched to the
original's — greedily by IoU, at IoU ≥ 0.5 and, when the model returns labels, the same
label — and the image scores the F1 of that matching (1 when both return nothing); the
set scores the mean over images, whose per-image values give the standard error of the
drop like any per-sample metric.

Rules: the graph (or a subgraph) holds a ``NonMaxSuppression``, and a float output has
rank 2 or 3 with a last axis of 4 to 7 (corners first: ``x1, y1, x2, y2``, as torchvision
and mmdeploy write them; a score or label may follow). An integer output of rank 1 or 2
holds the labels when its length is that of the boxes. Rows whose box has no area
(padding of a fixed-size output) are ignored.

An Ultralytics YOLO head (``[N, 4 + classes, anchors]``: ``cx, cy, w, h`` in pixels, then
class probabilities, written by a ``Concat`` on axis 1 whose last input is a ``Sigmoid``;
or ``[N, anchors, 4 + classes]``, the same transposed)
is decoded as Ultralytics predicts — confidence = the best class probability ≥ 0.25,
class-aware NMS at IoU 0.45, at most 300 boxes — and each image scores the same box F1.
A 1 − relative-L2 agreement, the dense default, is dominated by the box coordinates (in
pixels) and lets class scores move enough to drop or add detections.

A YOLOv5 / v7 head (``[N, anchors, 5 + classes]``: ``cx, cy, w, h``, objectness, class
probabilities; a ``Concat`` on axis 1 of the scales' rows, each traced back through the
decoding's element-wise, slicing and layout ops to a ``Sigmoid``, with more anchors than
attributes) is decoded as YOLOv5 predicts: confidence = objectness × class probability,
the same threshold, NMS and limit.
"""

from __future__ import annotations

__all__ = [
    "DetectionLayout", "detection_layout", "box_f1", "box_count", "IOU_THRESHOLD", "yolo_head", "yolo_box_f1",
    "yolo_box_count", "few_boxes", "YoloHead",
]  # fmt: skip

import dataclasses
from collections.abc import Sequence

import numpy as np
import onnx_ir as ir

from onnxopt.graph import attr, subgraphs

IOU_THRESHOLD = 0.5


@dataclasses.dataclass(frozen=True)
class DetectionLayout:
    boxes: int  # index of the boxes output
    labels: int | None  # index of the labels output, if any

    @property
    def name(self) -> str:
        return f"box F1 (IoU ≥ {IOU_THRESHOLD:g}{', same label' if self.labels is not None else ''})"


def _has_nms(graph: ir.Graph) -> bool:
    return any(node.op_type == "NonMaxSuppression" or any(_has_nms(sub) for sub in subgraphs(node)) for node in graph)


def _dtype_kind(value: ir.Value) -> str | None:
    try:
        return np.dtype(value.dtype.numpy()).kind if value.dtype is not None else None
    except Exception:  # a type numpy cannot hold
        return None


def detection_layout(model: ir.Model) -> DetectionLayout | None:
    """Where a NonMaxSuppression detector's boxes (and labels) are among its outputs, or
    None for any other model (module docstring)."""
    if not _has_nms(model.graph):
        return None
    outputs = list(model.graph.outputs)
    boxes = next((
        i for i, v in enumerate(outputs)
        if _dtype_kind(v) == "f" and v.shape is not None and len(v.shape) in (2, 3)
        and isinstance(v.shape[-1], int) and 4 <= v.shape[-1] <= 7
    ), None)  # fmt: skip
    if boxes is None:
        return None
    labels = next((
        i for i, v in enumerate(outputs)
        if i != boxes and _dtype_kind(v) in ("i", "u") and v.shape is not None and len(v.shape) in (1, 2)
    ), None)  # fmt: skip
    return DetectionLayout(boxes, labels)


def _rows(outputs: Sequence[np.ndarray], layout: DetectionLayout) -> tuple[np.ndarray, np.ndarray | None]:
    """(corners ``[K, 4]``, labels ``[K]`` or None) of one image, padding rows dropped."""
    boxes = np.asarray(outputs[layout.boxes], dtype=np.float64)
    boxes = boxes.reshape(-1, boxes.shape[-1])[:, :4]
    labels = None
    if layout.labels is not None:
        candidate = np.asarray(outputs[layout.labels]).reshape(-1)
        labels = candidate if len(candidate) == len(boxes) else None
    real = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return boxes[real], None if labels is None else labels[real]


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``[len(a), len(b)]`` IoU of corner boxes."""
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=2)
    area = lambda x: np.prod(x[:, 2:] - x[:, :2], axis=1)  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-12)


def box_f1(reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray], layout: DetectionLayout) -> float:
    """F1 of one image's candidate boxes matched to the original's (module docstring)."""
    ref_boxes, ref_labels = _rows(reference, layout)
    cand_boxes, cand_labels = _rows(candidate, layout)
    if not len(ref_boxes) and not len(cand_boxes):
        return 1.0
    if not len(ref_boxes) or not len(cand_boxes):
        return 0.0
    iou = _iou(ref_boxes, cand_boxes)
    if ref_labels is not None and cand_labels is not None:
        iou = np.where(ref_labels[:, None] == cand_labels[None, :], iou, 0.0)
    matched = 0
    while True:  # greedy: the best remaining pair first
        r, c = np.unravel_index(int(np.argmax(iou)), iou.shape)
        if iou[r, c] < IOU_THRESHOLD:
            break
        matched += 1
        iou[r, :], iou[:, c] = -1.0, -1.0
    return 2.0 * matched / (len(ref_boxes) + len(cand_boxes))


YOLO_CONFIDENCE, YOLO_NMS_IOU, YOLO_MAX_BOXES = 0.25, 0.45, 300
_LAYOUT = ("Reshape", "Transpose", "Identity", "Squeeze", "Unsqueeze", "Cast")
# what YOLOv5's decoding does between the Sigmoid and its rows: split, scale, add the grid
_DECODING = frozenset({*_LAYOUT, "Concat", "Slice", "Split", "SplitToSequence", "SequenceAt", "Mul", "Add", "Sub", "Pow", "ScatterND", "Gather"})


@dataclasses.dataclass(frozen=True)
class YoloHead:
    index: int  # of the head among the outputs
    objectness: bool  # YOLOv5 / v7: [N, anchors, 5 + classes]; else v8: [N, 4 + classes, anchors]
    rows: bool = False  # one row per anchor, [N, anchors, ...] (v5, or v8 transposed after its Concat)


def yolo_head(model: ir.Model) -> YoloHead | None:
    """The Ultralytics YOLO head among the outputs (module docstring), or None."""
    for i, value in enumerate(model.graph.outputs):
        node = value.producer()
        if node is not None and node.op_type == "Transpose" and list(attr(node, "perm", None) or []) == [0, 2, 1]:
            inner = node.inputs[0]
            if inner is not None and inner.producer() is not None and _v8_concat(inner.producer(), value):  # same rank
                return YoloHead(i, objectness=False, rows=True)
            continue
        if node is None or not _axis1_concat(node, value):
            continue
        if _v8_concat(node, value):
            return YoloHead(i, objectness=False)
        anchors, attributes = value.shape[1], value.shape[2]
        if not isinstance(attributes, int) or attributes < 6 or (isinstance(anchors, int) and anchors <= attributes):
            continue
        if all(_from_sigmoid(v) for v in node.inputs):
            return YoloHead(i, objectness=True, rows=True)
    return None


def _axis1_concat(node: ir.Node, value: ir.Value) -> bool:
    """``node`` concatenates on axis 1 and ``value`` (its output, or one of the same rank) is 3-D."""
    axis = node.attributes.get("axis") if node.op_type == "Concat" else None
    return axis is not None and axis.value in (1, -2) and value.shape is not None and len(value.shape) == 3


def _v8_concat(node: ir.Node, value: ir.Value) -> bool:
    """A v8 head's ``Concat`` on axis 1 of the boxes and the ``Sigmoid`` class probabilities."""
    if not _axis1_concat(node, value) or len(node.inputs) != 2:
        return False
    source = node.inputs[1].producer() if node.inputs[1] is not None else None
    while source is not None and source.op_type in _LAYOUT:
        source = source.inputs[0].producer() if source.inputs and source.inputs[0] is not None else None
    return source is not None and source.op_type == "Sigmoid"


def _from_sigmoid(value: ir.Value | None, depth: int = 0) -> bool:
    """Whether ``value`` is computed from a ``Sigmoid`` by decoding ops alone (a few steps)."""
    node = value.producer() if value is not None else None
    if node is None or depth > 8:
        return False
    if node.op_type == "Sigmoid":
        return True
    return node.op_type in _DECODING and any(_from_sigmoid(v, depth + 1) for v in node.inputs)


def _nms(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Indices kept by class-aware greedy NMS, best first."""
    keep: list[int] = []
    order = np.argsort(-scores, kind="stable")
    suppressed = np.zeros(len(boxes), dtype=bool)
    for i in order:
        if suppressed[i]:
            continue
        keep.append(int(i))
        if len(keep) == YOLO_MAX_BOXES:
            break
        overlap = _iou(boxes[i : i + 1], boxes)[0]
        suppressed |= (overlap > YOLO_NMS_IOU) & (labels == labels[i])
    return np.asarray(keep, dtype=np.int64)


def _yolo_detections(image: np.ndarray, head: YoloHead) -> tuple[np.ndarray, np.ndarray]:
    """(corner boxes, labels) of one image's head: ``[4 + classes, anchors]``, or with
    ``head.rows`` one row per anchor (``[anchors, 5 + classes]`` with ``head.objectness``)."""
    array = np.asarray(image, dtype=np.float64)
    rows = array.reshape(-1, array.shape[-1]) if head.rows else array.reshape(array.shape[-2], -1).T
    probs = rows[:, 4:5] * rows[:, 5:] if head.objectness else rows[:, 4:]
    labels, scores = probs.argmax(1), probs.max(1)
    pick = scores >= YOLO_CONFIDENCE
    xywh, labels, scores = rows[pick, :4], labels[pick], scores[pick]
    boxes = np.concatenate([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], axis=1)
    keep = _nms(boxes, scores, labels)
    return boxes[keep], labels[keep]


def yolo_box_f1(reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray], head: YoloHead) -> float:
    """Mean over images of the box F1 between the decoded detections of two YOLO heads, and
    never more than the head's dense agreement (1 − relative L2 error): on images where the
    original finds nothing, F1 is 1 whatever the candidate's scores did below the threshold,
    so without the dense bound a model that had stopped detecting would pass there."""
    ref, cand = np.asarray(reference[head.index]), np.asarray(candidate[head.index])
    if ref.shape != cand.shape:
        return 0.0
    layout = DetectionLayout(boxes=0, labels=1)
    from onnxopt.evaluate import _agreement_output  # evaluate imports this module

    scores = [box_f1(_yolo_detections(r, head), _yolo_detections(c, head), layout) for r, c in zip(ref, cand)]
    return min(float(np.mean(scores)) if scores else 1.0, _agreement_output(ref, cand, axis=None))


def yolo_box_count(outputs: Sequence[np.ndarray], head: YoloHead) -> int:
    """Detections the decoded head holds over all images (how much the F1 can see)."""
    return sum(len(_yolo_detections(image, head)[0]) for image in np.asarray(outputs[head.index]))


def box_count(images: Sequence[Sequence[np.ndarray]], layout: DetectionLayout) -> int:
    """Boxes an NMS detector returned over all images."""
    return sum(len(_rows(outputs, layout)[0]) for outputs in images)


def few_boxes(boxes: int, images: int) -> str:
    """A warning for the metric's name when the evaluation images hold fewer boxes than
    images: a box F1 cannot see what it is not shown."""
    return f"; only {boxes} boxes on {images} images: give images with objects" if boxes < images else ""
