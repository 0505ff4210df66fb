"""Exceptions with messages meant for the user: they name the file (and line) and what was expected."""

from __future__ import annotations

__all__ = [
    "VisionFMError",
    "CheckpointError",
    "UnsafeCheckpointError",
    "DataFormatError",
    "ConfigError",
    "NonFiniteLossError",
    "NothingToPlotError",
    "UploadError",
]


class VisionFMError(Exception):
    """Base class; the CLI prints these as one line instead of a traceback."""


class CheckpointError(VisionFMError):
    """A weights file is missing, unreadable, or does not fit the requested architecture."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint would need arbitrary code to unpickle; it was refused before anything ran."""


class DataFormatError(VisionFMError, ValueError):
    """Malformed data on disk: the message names the file, the line when there is one, and what was expected."""

    def __init__(self, message: str, path: object | None = None, line: int | None = None) -> None:
        where = ""
        if path is not None:
            where = f"{path}"
            if line is not None:
                where += f":{line}"
            where += ": "
        super().__init__(where + message)
        self.path = path
        self.line = line


class ConfigError(VisionFMError, ValueError):
    """Inconsistent flags or configuration values."""


class NonFiniteLossError(VisionFMError, FloatingPointError):
    """Training diverged (NaN/inf loss or weights); nothing non-finite was saved as a result."""


class NothingToPlotError(VisionFMError, ValueError):
    """A figure was asked for data that cannot draw it (e.g. a curve with a single class present)."""


class UploadError(VisionFMError):
    """A web-app request the server refuses, with the HTTP status and a message meant for the person."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
