"""Common base of onnxopt's own passes: an in-place pass that keeps a log.

Each pass records what it changed (``applied``) and what it declined and why
(``skipped``), e.g. ``("Conv_12", "weight is not constant")``. The pipeline copies both into
the report, so "why did nothing happen" is answered by data, not by a debug log.
The log is reset at the start of every call.
"""

from __future__ import annotations

__all__ = ["LoggedPass"]

import onnx_ir as ir


class LoggedPass(ir.passes.InPlacePass):
    """An ``InPlacePass`` with ``applied`` and ``skipped`` logs of (node name, message)."""

    def __init__(self) -> None:
        super().__init__()
        self.applied: list[tuple[str, str]] = []
        self.skipped: list[tuple[str, str]] = []

    def requires(self, model: ir.Model) -> None:
        self.applied = []
        self.skipped = []

    def did(self, node: ir.Node | str, message: str) -> None:
        self.applied.append((_name(node), message))

    def skip(self, node: ir.Node | str, reason: str) -> None:
        self.skipped.append((_name(node), reason))


def _name(node: ir.Node | str) -> str:
    if isinstance(node, str):
        return node
    return node.name or f"{node.op_type}@{id(node):x}"
