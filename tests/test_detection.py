"""Detectors that run NonMaxSuppression in the graph: scored per image by box F1, not by the
element-wise agreement that a changed box count would zero."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxopt import evaluate
from onnxopt.calibration import Dataset
from onnxopt.detection import DetectionLayout, box_f1, detection_layout

SIDE = 16


def nms_detector(seed: int = 0, noise: float = 0.0) -> ir.Model:
    """x [1, 3, 16, 16] → 1×1 Conv → per-pixel box offsets (4) and a score logit →
    anchors + offsets → NonMaxSuppression → boxes [K, 4], labels [K], scores [K]."""
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((5, 3, 1, 1)).astype(np.float32)
    weight[4] *= 1.5
    weight += noise * np.random.default_rng(seed + 1).standard_normal(weight.shape).astype(np.float32)
    grid = np.stack(np.meshgrid(np.arange(SIDE), np.arange(SIDE), indexing="xy"), -1).reshape(-1, 2).astype(np.float32)
    anchors = np.concatenate([grid, grid + 3.0], axis=1)[None]  # [1, 256, 4] corners
    inits = [
        numpy_helper.from_array(weight, "w"), numpy_helper.from_array(np.zeros(5, np.float32), "b"),
        numpy_helper.from_array(np.array([1, 5, SIDE * SIDE], np.int64), "to_rows"),
        numpy_helper.from_array(anchors, "anchors"),
        numpy_helper.from_array(np.array([50], np.int64), "max_out"),
        numpy_helper.from_array(np.array([0.5], np.float32), "iou"),
        numpy_helper.from_array(np.array([0.95], np.float32), "score_min"),
        numpy_helper.from_array(np.array([0], np.int64), "c0"), numpy_helper.from_array(np.array([4], np.int64), "c4"),
        numpy_helper.from_array(np.array([5], np.int64), "c5"), numpy_helper.from_array(np.array([2], np.int64), "c2"),
        numpy_helper.from_array(np.array(1, np.int64), "one"), numpy_helper.from_array(np.array(2, np.int64), "two"),
        numpy_helper.from_array(np.array([SIDE * SIDE, 4], np.int64), "flat_boxes"),
        numpy_helper.from_array(np.array([-1], np.int64), "flat"),
    ]  # fmt: skip
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["map"]),
        helper.make_node("Reshape", ["map", "to_rows"], ["rows_t"]),
        helper.make_node("Transpose", ["rows_t"], ["rows"], perm=[0, 2, 1]),  # [1, 256, 5]
        helper.make_node("Slice", ["rows", "c0", "c4", "c2"], ["offsets"]),
        helper.make_node("Slice", ["rows", "c4", "c5", "c2"], ["logits"]),
        helper.make_node("Add", ["anchors", "offsets"], ["boxes_all"]),
        helper.make_node("Sigmoid", ["logits"], ["probs"]),
        helper.make_node("Transpose", ["probs"], ["scores_all"], perm=[0, 2, 1]),  # [1, 1, 256]
        helper.make_node("NonMaxSuppression", ["boxes_all", "scores_all", "max_out", "iou", "score_min"], ["selected"]),
        helper.make_node("Gather", ["selected", "two"], ["index"], axis=1),
        helper.make_node("Gather", ["selected", "one"], ["labels"], axis=1),
        helper.make_node("Reshape", ["boxes_all", "flat_boxes"], ["box_rows"]),
        helper.make_node("Gather", ["box_rows", "index"], ["boxes"], axis=0),
        helper.make_node("Reshape", ["scores_all", "flat"], ["score_rows"]),
        helper.make_node("Gather", ["score_rows", "index"], ["scores"], axis=0),
    ]
    graph = helper.make_graph(
        nodes, "nms_detector", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, SIDE, SIDE])],
        [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["K", 4]),
         helper.make_tensor_value_info("labels", TensorProto.INT64, ["K"]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["K"])],
        inits,
    )  # fmt: skip
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(proto, full_check=True)
    return ir.from_proto(proto)


def _images(n: int, seed: int = 0) -> Dataset:
    return Dataset({"x": np.random.default_rng(seed).standard_normal((n, 3, SIDE, SIDE)).astype(np.float32)})


def test_box_f1_matches_boxes_by_iou_and_label():
    layout = DetectionLayout(boxes=0, labels=1)
    ref = [np.array([[0, 0, 10, 10], [20, 20, 30, 30]], np.float32), np.array([1, 2])]
    assert box_f1(ref, ref, layout) == 1.0
    moved = [ref[0] + np.array([1, 1, 1, 1], np.float32), ref[1]]  # IoU 0.68 each
    assert box_f1(ref, moved, layout) == 1.0
    far = [ref[0] + 6, ref[1]]  # IoU 0.08: no match
    assert box_f1(ref, far, layout) == 0.0
    extra = [np.concatenate([ref[0], [[40, 40, 50, 50]]]).astype(np.float32), np.array([1, 2, 1])]
    assert box_f1(ref, extra, layout) == pytest.approx(2 * 2 / 5)
    relabelled = [ref[0], np.array([1, 3])]
    assert box_f1(ref, relabelled, layout) == pytest.approx(0.5)
    padded = [np.concatenate([ref[0], np.zeros((3, 4), np.float32)]), np.array([1, 2, 0, 0, 0])]  # fixed-size output
    assert box_f1(ref, padded, layout) == 1.0
    empty = [np.zeros((0, 4), np.float32), np.zeros(0, np.int64)]
    assert box_f1(empty, empty, layout) == 1.0 and box_f1(ref, empty, layout) == 0.0


def test_an_nms_detector_is_scored_by_box_f1_per_image():
    model = nms_detector()
    assert detection_layout(model) == DetectionLayout(boxes=0, labels=1)
    data = _images(24)
    evaluator = evaluate.Evaluator(model, data)
    assert evaluator.metric_name.startswith("box F1") and evaluator.baseline == 1.0
    counts = {len(evaluate.run(model, data.take(slice(i, i + 1)))[0]) for i in range(len(data))}
    assert len(counts) > 1  # the number of boxes depends on the image
    assert evaluator.score(model) == 1.0
    nudged = nms_detector(noise=0.05)
    score = evaluator.score(nudged)
    # the element-wise agreement sees a changed box count somewhere and gives 0
    assert evaluate.agreement(evaluator.reference, evaluate.run(nudged, data)) == 0.0
    assert 0.5 < score < 1.0 and score.se > 0


def test_optimize_with_data_keeps_a_detectors_boxes_inside_the_budget(tmp_path):
    from onnxopt.model_io import save_model
    from onnxopt.optimize import optimize

    path = tmp_path / "det.onnx"
    save_model(nms_detector(), path)
    data = _images(40, seed=1)
    result = optimize(path, tmp_path / "out.onnx", data=data, max_drop=0.01)
    assert result.metric.startswith("box F1")
    assert result.baseline_score - result.final_score <= 0.01 + 1e-9


def yolo_v8_head(class_shift: float = 0.0, size: float = 4.0, transposed: bool = False) -> ir.Model:
    """An Ultralytics-style head: x [N, 3, 8, 8] → 1×1 Conv → 4 box rows (cx, cy, w, h in
    pixels: grid + offsets, size 4 + |offset|·4) and 2 class rows through a Sigmoid →
    Concat on axis 1: [N, 6, 64]; ``transposed``: then a Transpose to [N, 64, 6]."""
    rng = np.random.default_rng(3)
    weight = rng.standard_normal((6, 3, 1, 1)).astype(np.float32)
    bias = np.array([0, 0, 0, 0, -1.5 + class_shift, -1.5 + class_shift], np.float32)
    centers = (np.stack(np.meshgrid(np.arange(8), np.arange(8), indexing="xy"), 0).reshape(2, 64) * 8 + 4).astype(np.float32)
    inits = [
        numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b"),
        numpy_helper.from_array(np.array([0, 6, 64], np.int64), "rows_shape"),
        numpy_helper.from_array(np.array([0], np.int64), "c0"), numpy_helper.from_array(np.array([2], np.int64), "c2"),
        numpy_helper.from_array(np.array([4], np.int64), "c4"), numpy_helper.from_array(np.array([6], np.int64), "c6"),
        numpy_helper.from_array(np.array([1], np.int64), "ax1"),
        numpy_helper.from_array(centers[None], "centers"), numpy_helper.from_array(np.array(4.0, np.float32), "four"),
        numpy_helper.from_array(np.array(size, np.float32), "size"),
    ]  # fmt: skip
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["map"]),
        helper.make_node("Reshape", ["map", "rows_shape"], ["rows"]),
        helper.make_node("Slice", ["rows", "c0", "c2", "ax1"], ["xy_off"]),
        helper.make_node("Slice", ["rows", "c2", "c4", "ax1"], ["wh_raw"]),
        helper.make_node("Slice", ["rows", "c4", "c6", "ax1"], ["cls_logits"]),
        helper.make_node("Add", ["centers", "xy_off"], ["xy"]),
        helper.make_node("Abs", ["wh_raw"], ["wh_abs"]),
        helper.make_node("Mul", ["wh_abs", "size"], ["wh_scaled"]),
        helper.make_node("Add", ["wh_scaled", "four"], ["wh"]),
        helper.make_node("Concat", ["xy", "wh"], ["box"], axis=1),
        helper.make_node("Sigmoid", ["cls_logits"], ["cls"]),
        helper.make_node("Concat", ["box", "cls"], ["head" if transposed else "output0"], axis=1),
    ]
    if transposed:
        nodes.append(helper.make_node("Transpose", ["head"], ["output0"], perm=[0, 2, 1]))
    graph = helper.make_graph(
        nodes, "yolo_head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["N", 64, 6] if transposed else ["N", 6, 64])], inits,
    )  # fmt: skip
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(proto, full_check=True)
    return ir.from_proto(proto)


@pytest.mark.parametrize("transposed", [False, True], ids=["v8", "v8-transposed"])
def test_a_yolo_head_is_scored_by_the_f1_of_its_decoded_boxes(transposed):
    """Also a head transposed to ``[N, anchors, 4 + classes]`` after its Concat, as some
    deployment exports write it: it got the dense agreement."""
    from onnxopt.detection import YoloHead, yolo_head

    model = yolo_v8_head(transposed=transposed)
    assert yolo_head(model) == YoloHead(0, objectness=False, rows=transposed)
    data = Dataset({"x": np.random.default_rng(0).standard_normal((16, 3, 8, 8)).astype(np.float32)})
    evaluator = evaluate.Evaluator(model, data)
    assert evaluator.metric_name == "box F1 of the decoded YOLO head (≤ its dense agreement)" and evaluator.baseline == 1.0
    shifted = yolo_v8_head(class_shift=0.4, transposed=transposed)  # class probabilities a little higher: more boxes pass 0.25
    outputs = evaluate.run(shifted, data)
    dense = evaluate.agreement(evaluator.reference, outputs, axes=[None])
    score = evaluator.score(shifted)
    assert dense > 0.99 and score < 0.9, (dense, score)  # the pixel coordinates hid the change
    assert evaluator.score(model) == 1.0


def test_a_yolo_head_that_detects_nothing_here_is_held_to_its_dense_agreement():
    """On images where the original finds no object (a nudity detector on street photos),
    every image scores F1 1 whatever the candidate did: YOLOv8n pruned by 73 % of its MACs
    passed that way. The dense agreement bounds the score, and the metric's name warns."""
    model = yolo_v8_head(class_shift=-6.0)  # no class probability reaches 0.25
    data = Dataset({"x": np.random.default_rng(0).standard_normal((8, 3, 8, 8)).astype(np.float32)})
    evaluator = evaluate.Evaluator(model, data)
    assert "only 0 boxes on 8 images" in evaluator.metric_name
    broken = yolo_v8_head(class_shift=-6.0, size=8.0)  # every box twice as large, still no detection
    dense = evaluate.agreement(evaluator.reference, evaluate.run(broken, data), axes=[None])
    assert dense < 0.9 and evaluator.score(broken) == pytest.approx(dense)


def _yolo_v5(obj_shift: float = 0.0):
    """A two-scale YOLOv5 Detect head as Ultralytics writes it: per scale Conv → view
    ``[N, 3, 5 + classes, H, W]`` → permute → Sigmoid → split (xy, wh, conf) → xy·2 + grid
    times the stride, (wh·2)² times the anchor → cat → ``[N, 3·H·W, 5 + classes]``; the
    scales concatenated on axis 1. Objectness and class biases start at 0, so about half of
    the rows pass the 0.25 confidence; ``obj_shift`` moves the objectness logits."""
    torch = pytest.importorskip("torch")
    nn = torch.nn
    nc, na, no = 2, 3, 7

    class Detect(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.stem = nn.Conv2d(3, 8, 3, 2, 1)
            self.down = nn.Conv2d(8, 8, 3, 2, 1)
            self.heads = nn.ModuleList([nn.Conv2d(8, na * no, 1) for _ in range(2)])
            with torch.no_grad():
                for head in self.heads:
                    head.weight.mul_(0.3)
                    head.bias.zero_()
                    head.bias[4::no] += obj_shift
            self.strides = (4, 8)
            self.anchors = torch.tensor([[[4.0, 6.0], [8.0, 8.0], [12.0, 10.0]], [[10.0, 14.0], [16.0, 16.0], [24.0, 20.0]]])

        def forward(self, x):
            f1 = torch.relu(self.stem(x))
            features = (f1, torch.relu(self.down(f1)))
            rows = []
            for i, (f, head) in enumerate(zip(features, self.heads)):
                p = head(f)
                bs, _, ny, nx = p.shape
                p = p.view(bs, na, no, ny, nx).permute(0, 1, 3, 4, 2).contiguous()
                yv, xv = torch.meshgrid(torch.arange(ny), torch.arange(nx), indexing="ij")
                grid = torch.stack((xv, yv), 2).view(1, 1, ny, nx, 2).float() - 0.5
                xy, wh, conf = p.sigmoid().split((2, 2, nc + 1), 4)
                xy = (xy * 2 + grid) * self.strides[i]
                wh = (wh * 2) ** 2 * self.anchors[i].view(1, na, 1, 1, 2)
                rows.append(torch.cat((xy, wh, conf), 4).view(bs, -1, no))
            return torch.cat(rows, 1)

    return Detect().eval()


@pytest.mark.parametrize("dynamo", [pytest.param(True, id="dynamo"), pytest.param(False, id="torchscript")])
def test_a_yolov5_head_is_scored_by_the_f1_of_its_decoded_boxes(tmp_path, dynamo):
    """YOLOv5's rows ``[N, anchors, 5 + classes]`` were scored by the dense agreement, which
    the pixel coordinates dominate: objectness logits lowered by 0.3 drop most detections
    (box F1 0.04) and still agreed to 0.999."""
    torch = pytest.importorskip("torch")
    from benchmarks.export import export_onnx
    from onnxopt.detection import YoloHead, yolo_head
    from onnxopt.model_io import load_model

    example = (torch.randn(1, 3, 32, 32),)
    model = load_model(str(export_onnx(_yolo_v5(), example, tmp_path / "a.onnx", dynamo=dynamo)))
    assert yolo_head(model) == YoloHead(0, objectness=True, rows=True)
    data = Dataset({next(iter(v.name for v in model.graph.inputs)): np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32)})
    evaluator = evaluate.Evaluator(model, data)
    assert evaluator.metric_name.startswith("box F1 of the decoded YOLO head") and "only" not in evaluator.metric_name
    lowered = load_model(str(export_onnx(_yolo_v5(obj_shift=-0.3), example, tmp_path / "b.onnx", dynamo=dynamo)))
    dense = evaluate.agreement(evaluator.reference, evaluate.run(lowered, data), axes=[None])
    score = evaluator.score(lowered)
    assert dense > 0.99 and score < 0.8, (dense, score)
    assert evaluator.score(model) == 1.0
