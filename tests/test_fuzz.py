"""Bad input never crashes, never writes a partial file, never touches the input.

Valid model files and calibration ``.npz`` files are mutated with a seeded generator (bytes
flipped, files truncated) and handed to the CLI. Every run must end with exit code 2 and
one ``error:`` line on stderr and no output file — or with exit code 0 when the mutated
file still happens to be a valid input, and then the output must reproduce the mutated
model. Never a traceback or an "internal error" (exit 3), never a leftover ``.onnxopt-*``
temp folder, and the input file's hash is unchanged.

The default suite runs a few mutations as real subprocesses (the console script) and a
larger seeded batch in-process through click; ``-m slow`` runs many more of both.
Calibration data that is readable but wrong (shape, dtype, NaN/Inf, too few samples) is
tested at the API level here; the CLI cases live in ``tests/test_cli.py``.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from onnxopt.calibration import Dataset, load_npz
from onnxopt.cli import main
from onnxopt.errors import OnnxoptError
from onnxopt.model_io import load_model
from onnxopt.optimize import optimize, verify_models
from tests.builders import conv_bn_relu_gemm

SCRIPT = Path(sys.executable).parent / "onnxopt"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- mutations


def flip_bytes(data: bytes, rng: np.random.Generator) -> bytes:
    """XOR 1-8 random bytes with random non-zero masks."""
    buf = bytearray(data)
    for pos in rng.choice(len(buf), size=int(rng.integers(1, 9)), replace=False):
        buf[pos] ^= int(rng.integers(1, 256))
    return bytes(buf)


def truncate(data: bytes, rng: np.random.Generator) -> bytes:
    return data[: int(rng.integers(0, len(data)))]


def mutations(data: bytes, count: int, seed: int) -> list[tuple[str, bytes]]:
    """``count`` seeded mutants of ``data`` (two flips for every truncation)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        kind: Callable[[bytes, np.random.Generator], bytes] = truncate if i % 3 == 2 else flip_bytes
        out.append((f"{kind.__name__}-{seed}-{i}", kind(data, rng)))
    return out


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def model_bytes() -> bytes:
    return conv_bn_relu_gemm().SerializeToString()


def _npz_bytes(compressed: bool, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    save = np.savez_compressed if compressed else np.savez
    save(buf, input=rng.standard_normal((6, 3, 8, 8)).astype(np.float32), labels=rng.integers(0, 5, 6))
    return buf.getvalue()


# ----------------------------------------------------------------------------- the checks


def _check_outcome(
    code: int, stderr: str, src: Path, out: Path, before: str, input_model: Path | None, exact: bool = True
) -> None:
    """The contract for one run on bad (or accidentally valid) input."""
    assert "Traceback" not in stderr, stderr
    assert code in (0, 2), (code, stderr)
    assert sha(src) == before, "the input file changed"
    leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(".onnxopt-")]
    assert not leftovers, leftovers
    if code == 2:
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:"), stderr
        assert not out.exists(), "an output file was left behind after an error"
    elif input_model is not None:
        # still valid: the output must load and run; without data (lossless only) it must
        # also reproduce the (mutated) input model
        fid, _ = verify_models(input_model, out)
        assert not exact or fid.within(1e-4, 1e-5), fid


def _run_in_process(args: list[str]) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if k != "ONNXOPT_DEBUG"}
    result = CliRunner().invoke(main, args, env=env, catch_exceptions=True)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        return 3, f"Traceback: uncaught {type(result.exception).__name__}: {result.exception}"
    return result.exit_code, result.stderr


def _run_subprocess(args: list[str]) -> tuple[int, str]:
    cmd = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "onnxopt"]
    env = {k: v for k, v in os.environ.items() if k != "ONNXOPT_DEBUG"}
    done = subprocess.run(cmd + args, capture_output=True, text=True, env=env, timeout=300)
    return done.returncode, done.stderr


def fuzz_model_files(tmp_path: Path, data: bytes, count: int, seed: int, runner, commands=("optimize", "inspect")) -> int:
    """Mutate the model ``count`` times; returns how many mutants were still valid."""
    valid = 0
    for name, mutant in mutations(data, count, seed):
        src = tmp_path / f"{name}.onnx"
        src.write_bytes(mutant)
        before = sha(src)
        for command in commands:
            out = tmp_path / f"{name}.{command}.onnx"
            args = [command, str(src)] + (["-o", str(out), "--no-bench"] if command == "optimize" else [])
            code, stderr = runner(args)
            _check_outcome(code, stderr, src, out, before, src if command == "optimize" else None)
            valid += command == "optimize" and code == 0
            out.unlink(missing_ok=True)
        src.unlink()
    return valid


def fuzz_npz_files(tmp_path: Path, model_data: bytes, count: int, seed: int, runner) -> int:
    model = tmp_path / "model.onnx"
    model.write_bytes(model_data)
    model_hash = sha(model)
    valid = 0
    for compressed in (False, True):
        for name, mutant in mutations(_npz_bytes(compressed), count, seed + compressed):
            data = tmp_path / f"{name}.npz"
            data.write_bytes(mutant)
            before = sha(data)
            out = tmp_path / f"{name}.out.onnx"
            code, stderr = runner(["optimize", str(model), "-o", str(out), "--data", str(data), "--no-bench"])
            _check_outcome(code, stderr, data, out, before, model, exact=False)
            valid += code == 0
            out.unlink(missing_ok=True)
            data.unlink()
    assert sha(model) == model_hash
    return valid


# ----------------------------------------------------------------------------- tests


def test_mutations_are_seeded_and_really_mutate(model_bytes):
    first, again = mutations(model_bytes, 6, seed=3), mutations(model_bytes, 6, seed=3)
    assert first == again
    assert all(m != model_bytes for _, m in first)


def test_fuzzed_model_files_in_process(tmp_path, model_bytes):
    fuzz_model_files(tmp_path, model_bytes, count=30, seed=0, runner=_run_in_process)


def test_fuzzed_npz_files_in_process(tmp_path, model_bytes):
    fuzz_npz_files(tmp_path, model_bytes, count=12, seed=0, runner=_run_in_process)


def test_fuzzed_files_through_the_console_script(tmp_path, model_bytes):
    fuzz_model_files(tmp_path, model_bytes, count=2, seed=100, runner=_run_subprocess, commands=("optimize",))
    fuzz_model_files(tmp_path, model_bytes, count=1, seed=101, runner=_run_subprocess, commands=("inspect",))
    fuzz_npz_files(tmp_path, model_bytes, count=1, seed=102, runner=_run_subprocess)


@pytest.mark.slow
def test_many_fuzzed_model_files_in_process(tmp_path, model_bytes):
    fuzz_model_files(tmp_path, model_bytes, count=400, seed=1000, runner=_run_in_process)


@pytest.mark.slow
def test_many_fuzzed_npz_files_in_process(tmp_path, model_bytes):
    fuzz_npz_files(tmp_path, model_bytes, count=150, seed=1000, runner=_run_in_process)


@pytest.mark.slow
def test_many_fuzzed_files_through_the_console_script(tmp_path, model_bytes):
    fuzz_model_files(tmp_path, model_bytes, count=30, seed=2000, runner=_run_subprocess)
    fuzz_npz_files(tmp_path, model_bytes, count=15, seed=2000, runner=_run_subprocess)


# ----------------------------------------------------------------- bad data, API level


@pytest.fixture
def model(tmp_path):
    path = tmp_path / "model.onnx"
    onnx.save(conv_bn_relu_gemm(), str(path))
    return path


def _good(n: int = 6) -> dict[str, np.ndarray]:
    return {"input": np.random.default_rng(0).standard_normal((n, 3, 8, 8)).astype(np.float32)}


@pytest.mark.parametrize(
    "inputs, message",
    [
        ({"input": np.zeros((4, 3, 9, 8), np.float32)}, "dimension 2 is 9, expected 8"),
        ({"input": np.zeros((4, 3, 8), np.float32)}, "expects rank 4"),
        ({"input": np.zeros((4, 3, 8, 8), np.complex64)}, "dtype"),
        ({"input": np.array([["a"] * 8] * 8 * 3 * 4).reshape(4, 3, 8, 8)}, "dtype"),
        ({"input": np.full((4, 3, 8, 8), np.inf, np.float32)}, "NaN or Inf"),
        ({"input": np.where(np.eye(8, dtype=bool), np.nan, 1).astype(np.float32) * np.ones((4, 3, 8, 8), np.float32)}, "NaN or Inf"),
        ({"other": np.zeros((4, 3, 8, 8), np.float32), "more": np.zeros(2)}, "input"),
    ],
)
def test_bad_npz_names_the_input(tmp_path, model, inputs, message):
    np.savez(tmp_path / "d.npz", **inputs)
    with pytest.raises(OnnxoptError, match=message) as info:
        load_npz(tmp_path / "d.npz", load_model(model))
    assert "input" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    "inputs, message",
    [
        ({"input": np.zeros((4, 3, 9, 8), np.float32)}, "'input'.*dimension 2 is 9"),
        ({"input": np.full((4, 3, 8, 8), np.nan, np.float32)}, "'input'.*NaN or Inf"),
        ({"input": np.zeros((4, 3, 8, 8), np.complex64)}, "'input'.*dtype"),
        ({"wrong_name": np.zeros((4, 3, 8, 8), np.float32)}, "'input'"),
    ],
)
def test_bad_dataset_object_names_the_input(tmp_path, model, inputs, message):
    """A Dataset built in Python is validated like an .npz, before anything runs."""
    with pytest.raises(OnnxoptError, match=message):
        optimize(model, tmp_path / "o.onnx", data=Dataset(inputs))
    assert not (tmp_path / "o.onnx").exists()


def test_too_few_samples(tmp_path, model):
    np.savez(tmp_path / "one.npz", input=_good(1)["input"])
    with pytest.raises(OnnxoptError, match="at least 2 samples"):
        optimize(model, tmp_path / "o.onnx", data=tmp_path / "one.npz")
    with pytest.raises(OnnxoptError, match="at least 3"):
        load_npz(tmp_path / "one.npz", load_model(model), min_samples=3)
    assert not (tmp_path / "o.onnx").exists()


def test_mismatched_sample_counts(tmp_path, model):
    np.savez(tmp_path / "d.npz", input=_good(4)["input"], labels=np.zeros(5, np.int64))
    with pytest.raises(OnnxoptError, match="disagree on the number of samples"):
        load_npz(tmp_path / "d.npz", load_model(model))


def test_integer_data_for_float_input_is_refused(tmp_path, model):
    """uint8 pixels for a float input are refused (the model's normalisation is unknown)."""
    np.savez(tmp_path / "d.npz", input=np.ones((4, 3, 8, 8), np.uint8))
    with pytest.raises(OnnxoptError, match="dtype"):
        load_npz(tmp_path / "d.npz", load_model(model))


def test_model_failing_at_run_time_gives_one_line(tmp_path):
    """onnxruntime's own error log must not add lines: Mod by a random zero fails at run time."""
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Mod", ["a", "b"], ["c"])],
        "mod",
        [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.INT64, [64]) for n in "ab"],
        [onnx.helper.make_tensor_value_info("c", onnx.TensorProto.INT64, [64])],
    )
    src = tmp_path / "mod.onnx"
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]), str(src))
    code, stderr = _run_subprocess(["optimize", str(src), "-o", str(tmp_path / "o.onnx"), "--no-bench"])
    assert code == 2 and "modulo by zero" in stderr
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert not (tmp_path / "o.onnx").exists()


def test_names_that_look_like_terminal_markup(tmp_path):
    """Node and value names are data: printed verbatim, never parsed as rich markup."""
    model = conv_bn_relu_gemm()
    model.graph.node[0].name = "Sequential[features]/Conv2d[0]"
    model.graph.node[1].name = "Sequential[features]/BatchNorm2d[/1]"
    model.graph.node[0].output[0] = model.graph.node[1].input[0] = "[red]x[/]"
    src = tmp_path / "brackets.onnx"
    onnx.save(model, str(src))
    result = CliRunner().invoke(main, ["inspect", str(src)])
    assert result.exit_code == 0, result.output
    assert "Sequential[features]/BatchNorm2d[/1]" in result.output
    code, stderr = _run_in_process(["optimize", str(src), "-o", str(tmp_path / "o.onnx"), "--no-bench"])
    assert code == 0, stderr
    code, stderr = _run_in_process(["fold-bn", str(src), "-o", str(tmp_path / "f.onnx")])
    assert code == 0, stderr
