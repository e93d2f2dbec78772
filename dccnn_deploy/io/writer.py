"""Write output files in the background while the caller computes the next ones.

Compressing a 1 mm warp costs about as much as computing it; ISA-L's gzip, NumPy copies and
file writes release the GIL, so a small thread pool overlaps them with the torch work of the
next output::

    with BackgroundWriter() as writer:
        writer.submit(out / "moved.nii.gz", moved, affine)
        writer.submit(out / "fwd_warp.nii.gz", disp_ras_mm, affine, kind="displacement")
        writer.call(save_qc_png, out / "qc.png", ...)   # any other writing job
    # leaving the block waits for every write and re-raises the first error

Arrays handed to :meth:`BackgroundWriter.submit` must not be modified afterwards.
"""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np

from dccnn_deploy.io.itk_transforms import save_itk_displacement
from dccnn_deploy.io.nifti import save_volume

#: what ``submit(..., kind=...)`` writes: a 3-D volume or an ITK displacement field (D, H, W, 3)
WRITERS: dict[str, Callable[..., Path]] = {"volume": save_volume, "displacement": save_itk_displacement}


def default_workers() -> int:
    """Two writer threads, or one on a single-core machine."""
    return max(1, min(2, os.cpu_count() or 1))


class BackgroundWriter:
    """A thread pool of file writes; :meth:`wait` returns the written paths or raises the
    first error. As a context manager it waits on exit (pending writes are cancelled when the
    block raised; the block's own error is the one that propagates)."""

    def __init__(self, workers: int | None = None):
        self._pool = ThreadPoolExecutor(max_workers=workers or default_workers(), thread_name_prefix="dccnn-writer")
        self._futures: list[Future] = []

    def submit(
        self, path: str | os.PathLike, array: np.ndarray, affine: np.ndarray, *, kind: str = "volume", **kwargs: Any
    ) -> Future:
        """Queue ``WRITERS[kind](path, array, affine, **kwargs)`` (e.g. ``overwrite``, ``dtype``)."""
        if kind not in WRITERS:
            raise ValueError(f"kind must be one of {sorted(WRITERS)}, got {kind!r}")
        return self.call(WRITERS[kind], path, array, affine, **kwargs)

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Future:
        """Queue any writing job ``fn(*args, **kwargs)``."""
        future = self._pool.submit(fn, *args, **kwargs)
        self._futures.append(future)
        return future

    def wait(self) -> list[Any]:
        """Wait for every queued job; their results in order, or the first job's error."""
        futures, self._futures = self._futures, []
        errors = [f.exception() for f in futures]
        for err in errors:
            if err is not None:
                raise err
        return [f.result() for f in futures]

    def close(self, cancel: bool = False) -> None:
        """Stop the pool (after the running jobs; queued ones are dropped with ``cancel``)."""
        self._pool.shutdown(wait=True, cancel_futures=cancel)

    def __enter__(self) -> "BackgroundWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self.wait()
        finally:
            self.close(cancel=exc_type is not None)
