"""Same model, data and seed → byte-identical output; a failed save leaves nothing behind.

Determinism is checked in one process (two calls) and across processes (the console script
twice), without and with calibration data. Atomicity is checked by making the save fail at
each step (while writing the protobuf, while writing external data, at the final rename,
and with a KeyboardInterrupt): no output file, no external-data file, no ``.onnxopt-*``
temporary folder, and an earlier output at the same path is left as it was.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

import onnxopt.model_io as model_io
from onnxopt.errors import OnnxoptError
from onnxopt.model_io import load_model, save_model
from onnxopt.optimize import optimize
from tests.builders import conv_bn_relu_gemm
from tests.test_structures import local_function_conv_bn, weights_in_constant_nodes

SCRIPT = Path(sys.executable).parent / "onnxopt"
DEMO = Path(__file__).resolve().parents[1] / "onnxopt" / "demo"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".onnxopt-") or p.name.endswith(".data"))


@pytest.fixture
def model_path(tmp_path) -> Path:
    path = tmp_path / "model.onnx"
    onnx.save(conv_bn_relu_gemm(), str(path))
    return path


# ------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("build", [conv_bn_relu_gemm, local_function_conv_bn, weights_in_constant_nodes])
def test_two_runs_in_one_process_are_byte_identical(tmp_path, build):
    src = tmp_path / "model.onnx"
    onnx.save(build(), str(src))
    first = optimize(src, tmp_path / "a.onnx", seed=0)
    second = optimize(src, tmp_path / "b.onnx", seed=0)
    assert any(r.kept for r in first.stages), "nothing changed: the test would prove nothing"
    assert sha(tmp_path / "a.onnx") == sha(tmp_path / "b.onnx")
    assert first.to_dict()["after"] == second.to_dict()["after"]


def test_two_runs_with_data_are_byte_identical(tmp_path, model_path):
    """With calibration data the lossy stages run too (prune, lowrank, quantize)."""
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", input=rng.standard_normal((16, 3, 8, 8)).astype(np.float32))
    results = [optimize(model_path, tmp_path / f"{name}.onnx", data=tmp_path / "d.npz", seed=3) for name in "ab"]
    assert not results[0].lossless_only
    assert sha(tmp_path / "a.onnx") == sha(tmp_path / "b.onnx")
    assert [r.kept for r in results[0].stages] == [r.kept for r in results[1].stages]


@pytest.mark.slow
def test_two_runs_on_the_trained_demo_with_data_are_byte_identical(tmp_path):
    src = DEMO / "digits_cnn.onnx"
    rng = np.random.default_rng(0)
    with np.load(DEMO / "digits.npz") as npz:
        pick = rng.choice(len(npz["labels"]), 40, replace=False)
        np.savez(tmp_path / "d.npz", input=npz["input"][pick], labels=npz["labels"][pick])
    for name in ("a", "b"):
        optimize(src, tmp_path / f"{name}.onnx", data=tmp_path / "d.npz", seed=3)
    assert sha(tmp_path / "a.onnx") == sha(tmp_path / "b.onnx")


def _cli(*args: str) -> subprocess.CompletedProcess:
    cmd = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "onnxopt"]
    env = {k: v for k, v in os.environ.items() if k != "ONNXOPT_DEBUG"}
    return subprocess.run(cmd + list(args), capture_output=True, text=True, env=env, timeout=300)


def test_two_cli_runs_are_byte_identical(tmp_path, model_path):
    for name in ("a", "b"):
        done = _cli("optimize", str(model_path), "-o", str(tmp_path / f"{name}.onnx"), "--no-bench", "--seed", "7")
        assert done.returncode == 0, done.stderr
    assert sha(tmp_path / "a.onnx") == sha(tmp_path / "b.onnx")


@pytest.mark.slow
def test_two_cli_runs_with_data_are_byte_identical(tmp_path):
    with np.load(DEMO / "digits.npz") as npz:
        np.savez(tmp_path / "d.npz", input=npz["input"][:60], labels=npz["labels"][:60])
    for name in ("a", "b"):
        done = _cli("optimize", str(DEMO / "digits_cnn.onnx"), "-o", str(tmp_path / f"{name}.onnx"),
                    "--data", str(tmp_path / "d.npz"), "--no-bench", "--report", str(tmp_path / f"{name}.json"))
        assert done.returncode == 0, done.stderr
    assert sha(tmp_path / "a.onnx") == sha(tmp_path / "b.onnx")


# ------------------------------------------------------------------------- atomicity


def _partial_write_then(exc: BaseException):
    """A stand-in for onnx.save_model that writes half a file and then fails."""

    def fake_save(proto, path, *args, **kwargs):
        Path(path).write_bytes(proto.SerializeToString()[:100])
        raise exc

    return fake_save


@pytest.mark.parametrize("exc", [OSError(28, "No space left on device"), KeyboardInterrupt(), RuntimeError("bug")])
def test_failure_while_writing_leaves_nothing(tmp_path, model_path, monkeypatch, exc):
    out = tmp_path / "out" / "o.onnx"
    out.parent.mkdir()
    monkeypatch.setattr(model_io.onnx, "save_model", _partial_write_then(exc))
    with pytest.raises((type(exc), OnnxoptError)):
        optimize(model_path, out)
    assert not out.exists()
    assert _leftovers(out.parent) == []


def test_disk_full_is_a_one_line_error(tmp_path, model_path, monkeypatch):
    monkeypatch.setattr(model_io.onnx, "save_model", _partial_write_then(OSError(28, "No space left on device")))
    with pytest.raises(OnnxoptError, match="No space left"):
        save_model(load_model(model_path), tmp_path / "o.onnx", input_path=model_path)


def test_failure_at_final_rename_keeps_the_previous_output(tmp_path, model_path, monkeypatch):
    out = tmp_path / "out" / "o.onnx"
    out.parent.mkdir()
    out.write_bytes(b"previous output")
    real_replace = os.replace

    def failing_replace(src, dst):
        if Path(dst) == out:
            raise OSError(5, "Input/output error")
        return real_replace(src, dst)

    monkeypatch.setattr(model_io.os, "replace", failing_replace)
    with pytest.raises((OSError, OnnxoptError)):
        optimize(model_path, out)
    assert out.read_bytes() == b"previous output"
    assert _leftovers(out.parent) == []


def test_failure_with_external_data_leaves_no_data_file(tmp_path, model_path, monkeypatch):
    """The data file is moved first; if the model's rename then fails it must go too."""
    out = tmp_path / "out" / "o.onnx"
    out.parent.mkdir()
    real_replace = os.replace

    def failing_replace(src, dst):
        if Path(dst) == out:
            raise OSError(5, "Input/output error")
        return real_replace(src, dst)

    monkeypatch.setattr(model_io.os, "replace", failing_replace)
    with pytest.raises((OSError, OnnxoptError)):
        save_model(load_model(model_path), out, input_path=model_path, external_data=True)
    assert not out.exists()
    assert _leftovers(out.parent) == []


def test_interrupt_while_writing_external_data(tmp_path, model_path, monkeypatch):
    out = tmp_path / "out" / "o.onnx"
    out.parent.mkdir()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(model_io.ir, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_model(load_model(model_path), out, input_path=model_path, external_data=True)
    assert list(out.parent.iterdir()) == []


def test_successful_external_data_save_is_complete(tmp_path, model_path):
    out = save_model(load_model(model_path), tmp_path / "o.onnx", input_path=model_path, external_data=True)
    assert (tmp_path / "o.onnx.data").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".onnxopt-")] == []
    onnx.checker.check_model(str(out))
