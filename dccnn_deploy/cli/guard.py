"""CLI side of output safety: claim the output folder before computing, end cleanly on
SIGTERM/SIGINT, and print geometry warnings (``--strict``: exit code 3)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

from dccnn_deploy.cli.common import err_console, fail
from dccnn_deploy.io.staging import Terminated, claimed_output_dir

EXIT_TERMINATED, EXIT_INTERRUPTED, EXIT_STRICT = 143, 130, 3


@contextlib.contextmanager
def stop_cleanly() -> Iterator[None]:
    """SIGTERM / Ctrl-C -> one line and exit 143 / 130 (the ``with`` blocks inside have cleaned up)."""
    try:
        yield
    except Terminated:
        fail("terminated (SIGTERM); unfinished outputs were removed", code=EXIT_TERMINATED)
    except KeyboardInterrupt:
        fail("interrupted; unfinished outputs were removed", code=EXIT_INTERRUPTED)


@contextlib.contextmanager
def claimed_output(out: Path, overwrite: bool) -> Iterator[Path]:
    """Create, write-probe and lock ``out`` for this run (a bad ``-o`` or a second run on the same
    folder fails here, before any compute); signals end the run cleanly."""
    with stop_cleanly(), claimed_output_dir(out, overwrite) as path:
        yield path


def report_warnings(warnings: list[str], strict: bool, where: str = "") -> None:
    """Print each warning as one line; with ``strict`` any warning ends the run with exit code 3."""
    for w in warnings:
        err_console.print(f"[bold yellow]warning:[/] {where}{w}", highlight=False, soft_wrap=True)
    if strict and warnings:
        fail(f"{len(warnings)} warning(s) and --strict", code=EXIT_STRICT)
