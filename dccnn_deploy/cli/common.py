"""Shared CLI behaviour: one-line user errors (exit code 2) and stage progress."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Iterator

import typer
from rich.console import Console

from dccnn_deploy.io.errors import InputError, OutputExistsError

console = Console()
err_console = Console(stderr=True)

USER_ERRORS: tuple[type[BaseException], ...] = (InputError, OutputExistsError, FileNotFoundError)


def fail(message: str, code: int = 2) -> None:
    """Print ``error: message`` (one line) to stderr and exit with ``code``."""
    err_console.print(f"[bold red]error:[/] {' '.join(str(message).split())}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def refuse_existing(path: Path, overwrite: bool) -> None:
    """``fail`` (exit 2) when the output ``path`` exists and ``--overwrite`` was not given."""
    if path.exists() and not overwrite:
        fail(f"{path}: already exists (use --overwrite)")


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn the package's input/output errors into a one-line message and exit code 2."""
    try:
        yield
    except USER_ERRORS as exc:
        fail(str(exc))
    except Exception as exc:  # noqa: BLE001 - still one line, but a distinct exit code
        try:
            from dccnn_deploy.runtime.backends import BackendUnavailable
        except ImportError:  # pragma: no cover
            raise exc
        if isinstance(exc, BackendUnavailable):
            fail(str(exc))
        raise


class StageProgress:
    """Stage messages of a long command.

    On a terminal: a Rich spinner showing the current stage. Otherwise (logs of batch jobs):
    one plain line per stage, ``[  12.3s] affine pre-alignment`` (elapsed since the start).
    ``quiet``: nothing. ``to_stderr``: lines go to stderr (``--json`` keeps stdout for the report).
    """

    def __init__(self, quiet: bool = False, to_stderr: bool = False, title: str = "registering"):
        self.quiet = quiet
        self.out = err_console if to_stderr else console
        self.title = title
        self._status = None
        self._start = time.perf_counter()

    def __enter__(self) -> "StageProgress":
        self._start = time.perf_counter()
        if not self.quiet and self.out.is_terminal:
            self._status = self.out.status(self.title)
            self._status.__enter__()
        return self

    def __call__(self, stage: str) -> None:
        if self.quiet:
            return
        if self._status is not None:
            self._status.update(stage)
        else:
            line = f"[{time.perf_counter() - self._start:7.1f}s] {stage}"
            self.out.print(line, markup=False, highlight=False, soft_wrap=True)

    def __exit__(self, *exc) -> None:
        if self._status is not None:
            self._status.__exit__(*exc)
            self._status = None
