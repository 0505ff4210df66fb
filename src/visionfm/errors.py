"""Exceptions with messages meant for the user: they name the file (and line) and what was expected."""

from __future__ import annotations

import contextlib
import contextvars
import functools
import re
from typing import Any, Callable, Iterator, TypeVar

__all__ = [
    "cli_wording",
    "python_wording",
    "speaks_python",
    "VisionFMError",
    "CheckpointError",
    "UnsafeCheckpointError",
    "DataFormatError",
    "ConfigError",
    "NonFiniteLossError",
    "NothingToPlotError",
    "UploadError",
]


# Messages are written once, in the command line's words (``--input_size``: the flag names are the config
# field names). Raised to a caller of the Python API, they are reworded to the argument names (``input_size``).
_CLI_WORDING: contextvars.ContextVar[bool] = contextvars.ContextVar("visionfm_cli_wording", default=False)
_FLAG = re.compile(r"(?<![\w-])--([A-Za-z][A-Za-z0-9_]*)")
_F = TypeVar("_F", bound=Callable[..., Any])


@contextlib.contextmanager
def cli_wording() -> Iterator[None]:
    """Inside, errors keep their ``--flag`` wording (the ``visionfm`` command runs its subcommand in it)."""
    token = _CLI_WORDING.set(True)
    try:
        yield
    finally:
        _CLI_WORDING.reset(token)


def python_wording(message: str) -> str:
    """``message`` with every ``--name`` flag written as the Python argument ``name``."""
    return _FLAG.sub(r"\1", message)


def speaks_python(fn: _F) -> _F:
    """Decorate a public Python entry point: its :class:`VisionFMError` messages name arguments, not flags
    (unless it runs under the command line, see :func:`cli_wording`)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except VisionFMError as exc:
            if not _CLI_WORDING.get() and exc.args and isinstance(exc.args[0], str):
                exc.args = (python_wording(exc.args[0]), *exc.args[1:])
                if isinstance(getattr(exc, "message", None), str):
                    exc.message = python_wording(exc.message)  # type: ignore[attr-defined]
            raise

    return wrapper  # type: ignore[return-value]


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
