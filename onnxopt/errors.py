"""The one exception type the CLI turns into a one-line message and a non-zero exit."""

from __future__ import annotations

__all__ = ["OnnxoptError"]


class OnnxoptError(Exception):
    """A user-facing failure: bad input, impossible request, broken result.

    The message is a single line that names the problem and, where there is one, the fix.
    Anything else that escapes is a bug and is shown with a traceback only under ``--debug``.
    """
