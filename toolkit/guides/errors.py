"""Exceptions that the CLI turns into one-line messages and exit codes.

Every error a user can cause (a bad file, a missing checkpoint, a wrong option) is one of these;
anything else reaching the CLI is a bug and is reported as such.
"""

from __future__ import annotations

from pathlib import Path


class GuidesError(Exception):
    """Base class: ``str(error)`` is the whole one-line message shown to the user."""

    exit_code: int = 1


class InputError(GuidesError):
    """One input file cannot be used (corrupt, truncated, not an image, too large, unreadable).

    A batch reports it and goes on with the other files.
    """

    def __init__(self, path: str | Path | None, reason: str) -> None:
        self.path = None if path is None else str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}" if self.path else reason)


class OutputError(GuidesError):
    """An output cannot be written (unwritable folder, name clash, would overwrite an input)."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class UsageError(GuidesError):
    """The command line or the API call itself is wrong; nothing was processed."""

    exit_code = 2


class WeightsError(GuidesError):
    """A checkpoint is missing, corrupt, unsafe or does not fit its network."""

    exit_code = 2


class DeviceError(GuidesError):
    """The requested device or precision is not available here."""

    exit_code = 2


class InternalError(Exception):
    """A bug (not bad input) met while processing one file: the run stops, the CLI prints one
    ``internal error`` line naming the file and exits with code 3 (the traceback with ``-vv``).

    Deliberately not a ``GuidesError``: batches report ``GuidesError``s per file and go on, but a bug
    would fail every file the same way. The original exception is ``__cause__``.
    """

    exit_code: int = 3

    def __init__(self, path: str | Path | None, stage: str | None, error: BaseException) -> None:
        self.path = None if path is None else str(path)
        self.stage = stage
        self.error = error
        where = " ".join(part for part in (f"{stage}" if stage else "", f"on {self.path}" if self.path else "") if part)
        super().__init__(f"{where + ': ' if where else ''}{type(error).__name__}: {error}")
