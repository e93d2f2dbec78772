"""Shared CLI behaviour: user errors become one line on stderr and exit code 2."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import typer
from rich.console import Console

from dccnn_deploy.io import InputError, OutputExistsError

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
