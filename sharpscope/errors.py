"""User-facing errors.

Every problem a user can fix (a malformed manifest row, a missing audio file, a checkpoint that does not match
the architecture, NaN scores) is raised as a :class:`SharpscopeError` whose message is one line naming the
file, row or key and what to do.  The CLI prints that line and exits non-zero; it never shows a traceback for
these.
"""

from __future__ import annotations


class SharpscopeError(Exception):
    """An error caused by the user's input, with a one-line actionable message."""

    exit_code: int = 2


class ManifestError(SharpscopeError):
    """A manifest is malformed (bad columns, unknown labels, duplicate ids...)."""


class AudioError(SharpscopeError):
    """An audio file is missing, empty or cannot be decoded."""


class CheckpointError(SharpscopeError):
    """A checkpoint cannot be loaded or does not match the requested architecture."""


class ScoreError(SharpscopeError):
    """Scores are invalid (NaN/inf, one class missing, ids not matching a manifest)."""


class SpecError(SharpscopeError):
    """A study / figure / training spec is invalid."""


class OutputError(SharpscopeError):
    """An output cannot be written (a file where a folder is needed, read-only, full disk, locked)."""
