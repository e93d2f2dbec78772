"""Atomic, no-clobber output: write to a hidden temp file next to the target, then rename.

The temp file is ``.tmp-<random>-<name>`` in the target's directory, so it keeps the target's
suffix (``.nii.gz`` stays gzip-compressed for nibabel) and ``os.replace`` stays on one
filesystem. A failing writer leaves neither the temp file nor a partial target behind.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterable
from pathlib import Path

from dccnn_deploy.io.errors import OutputExistsError

__all__ = ["OutputExistsError", "atomic_write", "check_outputs_free"]


def check_outputs_free(paths: Iterable[str | os.PathLike], overwrite: bool = False) -> None:
    """Raise :class:`OutputExistsError` for the first path that cannot be written.

    Call it on every output before doing any work. A directory is never replaceable; an
    existing file is refused unless ``overwrite``.
    """
    for p in map(Path, paths):
        if p.is_dir():
            raise OutputExistsError.at(p, "is a directory")
        if p.exists() and not overwrite:
            raise OutputExistsError.at(p)


def atomic_write(path: str | os.PathLike, writer: Callable[[Path], None], overwrite: bool = False) -> Path:
    """Call ``writer(tmp)`` on a temp path beside ``path``, then rename it onto ``path``.

    Missing parent directories are created. Returns ``path`` as a :class:`Path`.
    """
    target = Path(path)
    check_outputs_free([target], overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".tmp-{secrets.token_hex(4)}-{target.name}")
    try:
        writer(tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target
