"""Recipe files pin optimize's settings; typos are errors, not silently ignored."""

from __future__ import annotations

import numpy as np
import pytest

from onnxopt.errors import OnnxoptError
from onnxopt.optimize import optimize
from tests.builders import conv_bn_relu_gemm, save


@pytest.fixture
def model_and_data(tmp_path):
    model = save(conv_bn_relu_gemm(), tmp_path / "m.onnx")
    x = np.random.default_rng(0).standard_normal((40, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "d.npz", input=x)
    return model, tmp_path / "d.npz"


def test_recipe_pins_stages_and_their_settings(model_and_data, tmp_path):
    model, data = model_and_data
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        '[optimize]\nmax_accuracy_drop = 1.0\nstages = ["prune"]\nmetric = "cosine"\n'
        "[prune]\ncriterion = \"l1\"\nratio = 0.5\nreconstruct = false\nround_to = 1\n"
    )
    result = optimize(model, data=data, recipe=recipe, speed_check=False)
    names = [s.name for s in result.stages]
    assert names == ["cleanup", "fold_bn", "pad_channels", "prune"]  # only the pinned lossy stage ran
    prune = result.stages[-1]
    assert prune.kept, prune.reason
    assert result.after.macs < result.before.macs  # ratio 0.5 was applied
    assert result.metric == "cosine"


@pytest.mark.parametrize(
    "text, message",
    [
        ("[optimize]\nmax_acuracy_drop = 0.01\n", "unknown key"),
        ("[prnue]\nratio = 0.5\n", "unknown section"),
        ("this is = = not toml", "not valid TOML"),
        ('[optimize]\nbudget_se = "one"\n', "budget_se must be a non-negative number"),
        ("[optimize]\nbudget_se = -1\n", "budget_se must be a non-negative number"),
    ],
)
def test_bad_recipe_is_a_one_line_error(model_and_data, tmp_path, text, message):
    model, data = model_and_data
    recipe = tmp_path / "r.toml"
    recipe.write_text(text)
    with pytest.raises(OnnxoptError, match=message):
        optimize(model, data=data, recipe=recipe)


def test_unknown_target(model_and_data):
    model, _ = model_and_data
    with pytest.raises(OnnxoptError, match="unknown target"):
        optimize(model, target="tpu")


def test_a_target_whose_provider_is_missing_is_refused(model_and_data, tmp_path):
    """Speed checks measured on the CPU would not say what is faster on a GPU: without
    onnxruntime-gpu, --target cuda stops with one line and writes nothing."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime build has CUDA")
    model, _ = model_and_data
    out = tmp_path / "o.onnx"
    with pytest.raises(OnnxoptError, match=r"target cuda: CUDAExecutionProvider is not available .* onnxruntime-gpu"):
        optimize(model, out, target="cuda")
    assert not out.exists()
    optimize(model, out, target="cuda", speed_check=False)  # nothing timed: nothing to mislead
    assert out.exists()
