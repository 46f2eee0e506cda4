"""Shared fixtures. The repository root is put on sys.path so tests can import
``benchmarks.archs`` / ``benchmarks.export`` (torch model builders)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def torch_or_skip():
    """Import torch or skip: torch is an optional extra, the core must work without it."""
    return pytest.importorskip("torch")
