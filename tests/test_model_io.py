"""model_io: friendly errors, atomic saves, external data, the input is never touched."""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
import pytest

from onnxopt.errors import OnnxoptError
from onnxopt.evaluate import run
from onnxopt.model_io import check_output_path, file_size, load_model, save_model
from tests.builders import conv_bn_relu_gemm, save


def _hash(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def model_path(tmp_path):
    return save(conv_bn_relu_gemm(), tmp_path / "m.onnx")


def test_roundtrip_preserves_outputs(model_path, tmp_path):
    model = load_model(model_path)
    out = save_model(model, tmp_path / "copy.onnx", input_path=model_path)
    x = {"input": np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)}
    np.testing.assert_array_equal(run(load_model(model_path), x)[0], run(load_model(out), x)[0])


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "not a valid ONNX model"),
        (b"hello, I am not a model", "not a valid ONNX model"),
    ],
)
def test_bad_bytes(tmp_path, content, message):
    p = tmp_path / "bad.onnx"
    p.write_bytes(content)
    with pytest.raises(OnnxoptError, match=message):
        load_model(p)


def test_truncated(model_path):
    data = model_path.read_bytes()
    model_path.write_bytes(data[: len(data) // 2])
    with pytest.raises(OnnxoptError, match="not a valid ONNX model"):
        load_model(model_path)


def test_missing_and_directory(tmp_path):
    with pytest.raises(OnnxoptError, match="no such file"):
        load_model(tmp_path / "nope.onnx")
    with pytest.raises(OnnxoptError, match="is a directory"):
        load_model(tmp_path)


def test_checker_rejects(tmp_path):
    m = conv_bn_relu_gemm()
    m.graph.node[1].input[0] = "does_not_exist"
    p = save(m, tmp_path / "invalid.onnx")
    with pytest.raises(OnnxoptError, match="checker rejects"):
        load_model(p)


def test_unsupported_opset(tmp_path):
    m = conv_bn_relu_gemm()
    m.opset_import[0].version = 5
    p = save(m, tmp_path / "old.onnx")
    with pytest.raises(OnnxoptError, match="opset 5 is not supported"):
        load_model(p)
    m.opset_import[0].version = onnx.defs.onnx_opset_version() + 5
    p = save(m, tmp_path / "new.onnx")
    with pytest.raises(OnnxoptError, match="not supported"):
        load_model(p)


def test_refuses_output_equal_to_input(model_path):
    before = _hash(model_path)
    model = load_model(model_path)
    with pytest.raises(OnnxoptError, match="equals the input"):
        save_model(model, model_path, input_path=model_path)
    assert _hash(model_path) == before


def test_save_failure_leaves_nothing(model_path, tmp_path, monkeypatch):
    model = load_model(model_path)
    out_dir = tmp_path / "out"
    out_dir.mkdir()

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(onnx, "save_model", boom)
    with pytest.raises(RuntimeError):
        save_model(model, out_dir / "x.onnx")
    assert list(out_dir.iterdir()) == []


def test_external_data_roundtrip(model_path, tmp_path):
    model = load_model(model_path)
    ext = tmp_path / "ext"
    ext.mkdir()
    out = save_model(model, ext / "big.onnx", external_data=True)
    assert (ext / "big.onnx.data").is_file()
    assert file_size(out) > out.stat().st_size
    reloaded = load_model(out)
    # Saving an external-data model as a self-contained file embeds the tensors.
    embedded = save_model(reloaded, tmp_path / "embedded.onnx", input_path=out)
    x = {"input": np.ones((1, 3, 8, 8), np.float32)}
    np.testing.assert_array_equal(run(load_model(model_path), x)[0], run(load_model(embedded), x)[0])
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in onnx.load(str(embedded), load_external_data=False).graph.initializer)


def test_external_data_missing(model_path, tmp_path):
    out = save_model(load_model(model_path), tmp_path / "e.onnx", external_data=True)
    (tmp_path / "e.onnx.data").unlink()
    with pytest.raises(OnnxoptError, match="external data file"):
        load_model(out)


def test_output_in_missing_folder(model_path, tmp_path):
    with pytest.raises(OnnxoptError, match="does not exist"):
        check_output_path(tmp_path / "no" / "x.onnx", model_path)


def test_value_with_shape_but_no_type_does_not_break_the_checker():
    """A pass that sets only a shape on a new value must not produce a model the checker rejects."""
    import onnx_ir as ir

    from onnxopt.model_io import _embedded_proto

    model = ir.from_proto(conv_bn_relu_gemm())
    inner = next(n for n in model.graph if n.op_type == "Relu").outputs[0]
    inner.type = None
    inner.shape = ir.Shape(["N", 8, 6, 6])
    assert any(vi.name == inner.name for vi in ir.to_proto(model).graph.value_info)  # the raw serializer writes it
    onnx.checker.check_model(_embedded_proto(model), full_check=True)


def test_unnamed_nodes_get_unique_names(tmp_path):
    """The passes find layers by name (the re-fit's consumers, the quantizer's float-kept
    layers); a hand-built graph may name no node."""
    proto = conv_bn_relu_gemm()
    for node in proto.graph.node[:2]:
        node.name = ""
    proto.graph.node[2].name = "Conv_0"  # a taken name is not given twice
    names = [n.name for n in load_model(save(proto, tmp_path / "u.onnx")).graph]
    assert all(names) and len(set(names)) == len(names)


def test_a_size_of_minus_one_reads_as_dynamic(tmp_path):
    """paddle2onnx writes a dynamic batch as dim_value -1 (PP-OCR's direction classifier):
    `inspect` and `prune` stopped with "internal error: negative dimensions are not allowed"."""
    from onnxopt.cost import model_cost

    proto = conv_bn_relu_gemm()
    proto.graph.input[0].type.tensor_type.shape.dim[0].ClearField("dim_param")
    proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value = -1
    model = load_model(save(proto, tmp_path / "paddle.onnx"))
    assert model.graph.inputs[0].shape[0] is None or not isinstance(model.graph.inputs[0].shape[0], int)
    assert model_cost(model).macs > 0
    x = {"input": np.ones((2, 3, 8, 8), np.float32)}
    assert run(model, x)[0].shape[0] == 2


def test_a_map_output_is_refused_with_its_name_and_the_way_out(tmp_path):
    """onnx_ir reads no map types; skl2onnx's ZipMap writes one. The error names the output
    and the converter option, not the IR function that failed."""
    from onnx import TensorProto, helper

    node = helper.make_node("ZipMap", ["p"], ["probabilities"], domain="ai.onnx.ml", classlabels_int64s=[0, 1])
    map_type = helper.make_sequence_type_proto(helper.make_map_type_proto(TensorProto.INT64, helper.make_tensor_type_proto(TensorProto.FLOAT, [])))
    graph = helper.make_graph([node], "zipmap", [helper.make_tensor_value_info("p", TensorProto.FLOAT, [1, 2])],
                              [helper.make_value_info("probabilities", map_type)])  # fmt: skip
    path = tmp_path / "zipmap.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 1)]), path)
    with pytest.raises(OnnxoptError, match=r"output 'probabilities' is a map.*'zipmap': False"):
        load_model(path)


def test_nodes_out_of_order_are_sorted_on_load(model_path, tmp_path):
    # onnxruntime's float16 converter (keep_io_types=True) writes input Casts after their
    # readers; onnxruntime sorts them itself, so loading must too (and still check the rest)
    proto = onnx.load(model_path)
    nodes = list(proto.graph.node)
    del proto.graph.node[:]
    proto.graph.node.extend(nodes[::-1])
    unsorted = tmp_path / "unsorted.onnx"
    onnx.save(proto, unsorted)
    with pytest.raises(onnx.checker.ValidationError, match="topologically sorted"):
        onnx.checker.check_model(proto)
    x = {"input": np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)}
    np.testing.assert_array_equal(run(load_model(unsorted), x)[0], run(load_model(model_path), x)[0])
    proto.graph.node[0].op_type = "NoSuchOp"  # an error the order hid is still reported
    onnx.save(proto, unsorted)
    with pytest.raises(OnnxoptError, match="ONNX checker rejects"):
        load_model(unsorted)
