"""Recipe files: a TOML file that pins the settings of ``optimize`` and of each stage.

Format (every key optional)::

    [optimize]
    max_accuracy_drop = 0.01      # budget shared by the lossy stages
    stages = ["prune", "lowrank", "quantize"]
    metric = "accuracy"
    seed = 0
    budget_se = 1.0               # standard errors added to a measured drop (0: the bare drop)

    [prune]                        # keyword arguments of the stage, by stage name
    criterion = "obs"
    round_to = 8

Unknown sections or keys are an error (a typo must not silently change nothing).
"""

from __future__ import annotations

__all__ = ["Recipe", "load_recipe"]

import dataclasses
import tomllib
from pathlib import Path
from typing import Any

from onnxopt.errors import OnnxoptError

_OPTIMIZE_KEYS = {"max_accuracy_drop", "stages", "metric", "seed", "budget_se"}


@dataclasses.dataclass
class Recipe:
    optimize: dict[str, Any]
    stages: dict[str, dict[str, Any]]


def load_recipe(path: str | Path, known_stages: set[str]) -> Recipe:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise OnnxoptError(f"{path}: no such recipe file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise OnnxoptError(f"{path}: not valid TOML ({exc})") from None
    opt = data.pop("optimize", {})
    unknown = set(opt) - _OPTIMIZE_KEYS
    if unknown:
        raise OnnxoptError(f"{path}: unknown key(s) in [optimize]: {sorted(unknown)}; known: {sorted(_OPTIMIZE_KEYS)}")
    unknown_sections = set(data) - known_stages
    if unknown_sections:
        raise OnnxoptError(f"{path}: unknown section(s) {sorted(unknown_sections)}; stages: {sorted(known_stages)}")
    for name, section in data.items():
        if not isinstance(section, dict):
            raise OnnxoptError(f"{path}: [{name}] must be a table of settings")
    return Recipe(opt, data)
