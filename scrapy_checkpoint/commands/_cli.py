"""What the package's commands share: one-line failures, tables for people, the store."""

from __future__ import annotations

import logging
import re
import sys
from contextlib import contextmanager
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from scrapy.commands import ScrapyCommand

from .._redact import scrub, secrets_of
from ..exceptions import CheckpointError
from ..settings import CheckpointSettings
from ..stores import SQLiteCheckpointStore, store_class

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Sequence
    from contextlib import ExitStack

    from ..stores import CheckpointStore

#: Exit statuses: a command line that cannot be right, and everything else that fails.
USAGE_ERROR, ERROR = 2, 1
_DURATION = re.compile(r"(\d+(?:\.\d*)?)([dhms])")
_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def one_line(text: str, limit: int = 400) -> str:
    """*text* on one line (pydantic and pymongo errors span several), cut at *limit*."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


class OneLineFormatter(logging.Formatter):
    """The stores' warnings (a record left out of a list, a store down) on stderr, one line
    each; stdout stays the command's."""

    def format(self, record: logging.LogRecord) -> str:
        return one_line(f"{record.levelname}: {record.getMessage()}")


class Failure(Exception):
    """Ends the command: the message is its one line on stderr."""

    def __init__(self, message: str, exitcode: int = ERROR) -> None:
        super().__init__(message)
        self.exitcode = exitcode


def parse_duration(value: str) -> timedelta:
    """``30d``, ``12h``, ``90m`` or ``45s`` as a timedelta; ValueError otherwise."""
    match = _DURATION.fullmatch(value.strip())
    if match is None:
        raise ValueError(value)
    return timedelta(seconds=float(match.group(1)) * _SECONDS[match.group(2)])


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], right: Iterable[int] = ()) -> str:
    """Aligned columns two spaces apart; the columns in *right* aligned right (numbers)."""
    cells = [list(map(str, headers)), *([str(cell) for cell in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    right = set(right)
    return "\n".join(
        "  ".join(cell.rjust(width) if i in right else cell.ljust(width)
                  for i, (cell, width) in enumerate(zip(row, widths))).rstrip()
        for row in cells
    )


def count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def log_warnings_to_stderr() -> None:
    """The package's warnings (a record left out of a list, a store down) on stderr, one
    line each; stdout stays the command's."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLineFormatter())
    package = logging.getLogger("scrapy_checkpoint")
    package.addHandler(handler)
    package.setLevel(logging.WARNING)
    package.propagate = False


class StoreCommand(ScrapyCommand):
    """A command on the checkpoint store the settings select."""

    #: CHECKPOINT_LEASE_TIMEOUT: a worker sharing a checkpoint not seen for longer is gone.
    _lease_timeout = 0.0
    #: The settings, read (and checked) as the store opened.
    checkpoint_settings: CheckpointSettings

    def _open_store(self, stack: ExitStack, create: bool = False) -> CheckpointStore | None:
        """The store the settings select, open; None for an SQLite file that does not exist
        yet (no checkpoint to show, and nothing created by looking), unless *create*."""
        assert self.settings is not None
        settings = self.settings.copy()
        # The command is about checkpoints: it reads their store whether crawls use it or not.
        settings.set("CHECKPOINT_ENABLED", True, priority="cmdline")
        self._secrets = secrets_of(settings.get("CHECKPOINT_REDIS_URL")) | secrets_of(
            settings.get("CHECKPOINT_MONGO_URI"))
        self._where = "the checkpoint store"
        with self._store_errors():
            self.checkpoint_settings = checkpoint_settings = CheckpointSettings.from_settings(settings)
            self._lease_timeout = checkpoint_settings.lease_timeout
            store = store_class(checkpoint_settings).from_checkpoint_settings(checkpoint_settings)
            self._where = store.describe()
            if not create and isinstance(store, SQLiteCheckpointStore) and not store.path.exists():
                return None
            store.open()
        stack.callback(self._close, store)
        return store

    def _close(self, store: CheckpointStore) -> None:
        with self._store_errors():
            store.close()

    @contextmanager
    def _store_errors(self) -> Iterator[None]:
        """Whatever a store call raises, as the command's one-line failure."""
        try:
            yield
        except Failure:
            raise
        except Exception as exc:
            raise Failure(self._error_line(exc)) from None

    def _error_line(self, exc: BaseException) -> str:
        """One line for a failed store call: the store's own message when it has one (they
        name the store, redacted), else the store and the exception; never a secret."""
        if isinstance(exc, (CheckpointError, ValueError, ImportError)):
            text = str(exc)
        else:
            text = f"{self._where} failed: {type(exc).__name__}: {exc}"
        return one_line(scrub(text, self._secrets))

    def _guarded(self, iterable: Iterable[Any]) -> Iterator[Any]:
        """*iterable*, a store's, with its errors turned into the command's failure (and not
        those of the code that consumes it)."""
        iterator = iter(iterable)
        while True:
            with self._store_errors():
                try:
                    value = next(iterator)
                except StopIteration:
                    return
            yield value
