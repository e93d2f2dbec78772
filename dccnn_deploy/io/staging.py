"""Output folders that are safe under crashes, signals and concurrent runs.

* :func:`probe_output_dir` creates the output folder and writes a probe file in it, so a bad
  ``-o`` (an existing file, a read-only folder) fails before any compute.
* :class:`OutputLock` is a lock file ``.dccnn.lock`` in the folder holding the owner's pid,
  locked with ``flock`` (released by the kernel when the owner dies, even on ``kill -9``): a
  second run on the same folder fails at once with :class:`OutputLockedError`.
* :class:`StagedOutputs` computes outputs into ``.staging-<pid>-<random>`` and moves them into
  place in one short step with SIGINT/SIGTERM blocked; ``report.json`` goes last (and, on
  overwrite, the old one goes first), so a folder with a ``report.json`` always holds one
  complete output set. With ``overwrite`` the whole ``managed`` set is replaced: files of an
  earlier run that this run does not write (e.g. ``moved_labels.nii.gz``) are removed.
* :func:`clean_stale` removes ``.staging-*`` folders and ``.probe-*`` files whose owner process
  is gone (never a live run's), and :func:`terminate_like_interrupt` makes SIGTERM unwind like
  SIGINT so every ``with`` block cleans up.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import secrets
import shutil
import signal
import socket
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

from dccnn_deploy.io.atomic import check_outputs_free
from dccnn_deploy.io.errors import InputError

LOCK_NAME = ".dccnn.lock"
STAGING_PREFIX = ".staging-"
COMMIT_LAST = "report.json"  # the marker of a complete output set
_STALE_NAME = re.compile(r"^\.(?:staging|probe)-(\d+)-")


class OutputLockedError(InputError):
    """The output folder is in use by another live run (one-line message)."""


class Terminated(BaseException):
    """Raised in the main thread when SIGTERM arrives (see :func:`terminate_like_interrupt`)."""


def pid_alive(pid: int) -> bool:
    """Whether a process with ``pid`` exists on this machine."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def probe_output_dir(out_dir: str | os.PathLike, overwrite: bool = False) -> bool:
    """Create ``out_dir`` (and parents) and check that a file can be written in it.

    Raises :class:`InputError` (one line) for an ``out_dir`` that is an existing file, cannot
    be created, or is not writable. Returns True when this call created the folder.
    ``overwrite`` is accepted for symmetry with the other output checks (an existing folder
    is fine either way; existing output files are checked by ``check_outputs_free``).
    """
    del overwrite
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError.at(out, "output folder is an existing file (give a folder for -o)")
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError.at(out, f"cannot create the output folder ({exc.strerror or exc})") from None
    probe = out / f".probe-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        with open(probe, "wb") as f:
            f.write(b"probe")
    except OSError as exc:
        if created:
            _rmdir_quiet(out)
        raise InputError.at(out, f"output folder is not writable ({exc.strerror or exc})") from None
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    return created


def _rmdir_quiet(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.rmdir()


def clean_stale(out_dir: str | os.PathLike) -> list[Path]:
    """Remove ``.staging-<pid>-*`` folders and ``.probe-<pid>-*`` files of dead processes (and
    the owner-less ``.staging-*`` folders older versions left) in ``out_dir``.

    Call it only while holding the folder's :class:`OutputLock`: then no other live run can
    be writing there; a name whose pid is alive (other than ours) is still left alone.
    """
    removed = []
    out = Path(out_dir)
    if not out.is_dir():
        return removed
    for entry in out.iterdir():
        name = entry.name
        m = _STALE_NAME.match(name)
        if m:
            pid = int(m.group(1))
            if pid == os.getpid() or pid_alive(pid):
                continue
        elif not name.startswith(STAGING_PREFIX):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                entry.unlink()
        removed.append(entry)
    return removed


class OutputLock:
    """An exclusive lock on an output folder: ``.dccnn.lock`` holding the owner's pid.

    Re-entrant within one process (a nested lock on a folder this process holds is a no-op).
    Acquiring also cleans the folder's stale staging leftovers (:func:`clean_stale`).
    Raises :class:`OutputLockedError` at once when another live process holds the folder
    (``blocking=True``, for short critical sections under another ``name``: waits instead).
    """

    _held: dict[str, int] = {}  # resolved lock file -> nesting depth, in this process

    def __init__(self, out_dir: str | os.PathLike, name: str = LOCK_NAME, blocking: bool = False):
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / name
        self.blocking = blocking
        self._fd: int | None = None
        self._key = ""

    def acquire(self) -> "OutputLock":
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._key = str(self.out_dir.resolve() / self.path.name)
        if self._key in OutputLock._held:
            OutputLock._held[self._key] += 1
            return self
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise InputError.at(self.out_dir, f"cannot create the lock file ({exc.strerror or exc})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if self.blocking else fcntl.LOCK_NB))
            except OSError as exc:
                owner = _read_owner(fd)
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise OutputLockedError.at(
                        self.out_dir, f"in use by another dccnn run ({owner}); wait for it or choose another -o"
                    ) from None
                raise InputError.at(self.out_dir, f"cannot lock the output folder ({exc.strerror or exc})") from None
            try:  # the previous owner may have unlinked the file between our open and flock
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        self._fd = fd
        OutputLock._held[self._key] = 1
        if self.path.name == LOCK_NAME:
            clean_stale(self.out_dir)
        return self

    def release(self) -> None:
        depth = OutputLock._held.get(self._key, 0)
        if depth > 1:
            OutputLock._held[self._key] = depth - 1
            return
        OutputLock._held.pop(self._key, None)
        if self._fd is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_owner(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode(errors="replace").split()
    except OSError:
        text = []
    if text and text[0].isdigit():
        return f"pid {text[0]}" + (f" on {text[1]}" if len(text) > 1 else "")
    return "pid unknown"


@contextlib.contextmanager
def _signals_blocked() -> Iterator[None]:
    """Hold SIGINT/SIGTERM back (delivered after the block) while files are moved into place."""
    sigs = {signal.SIGINT, signal.SIGTERM}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


class StagedOutputs:
    """A hidden staging folder in ``out_dir``; :meth:`commit` moves its files into ``out_dir``.

    Leaving the ``with`` block without a commit (an error, SIGINT, SIGTERM) removes the staging
    folder. ``managed``: every file name this kind of run may write; with ``overwrite`` the
    managed files of an earlier run that this run did not stage are removed at commit, so the
    folder never mixes two runs' outputs. The folder is locked (:class:`OutputLock`) from
    ``__enter__`` to ``__exit__`` unless this process already holds it.
    """

    def __init__(self, out_dir: Path, overwrite: bool, managed: Iterable[str] = ()):
        self.out_dir = Path(out_dir)
        self.overwrite = overwrite
        self.managed = tuple(managed)
        self.dir: Path | None = None
        self._lock: OutputLock | None = None

    def __enter__(self) -> "StagedOutputs":
        probe_output_dir(self.out_dir, self.overwrite)
        self._lock = OutputLock(self.out_dir).acquire()
        try:
            self.dir = self.out_dir / f"{STAGING_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
            self.dir.mkdir()
        except BaseException:
            self._lock.release()
            raise
        return self

    def path(self, name: str) -> Path:
        return self.dir / name

    def commit(self) -> list[Path]:
        names = sorted(os.listdir(self.dir), key=lambda n: (n == COMMIT_LAST, n))
        check_outputs_free([self.out_dir / n for n in names], overwrite=self.overwrite)
        stale = [n for n in self.managed if n not in names and (self.out_dir / n).is_file()]
        if stale and not self.overwrite:
            check_outputs_free([self.out_dir / stale[0]], overwrite=False)
        with _signals_blocked():
            old = self.out_dir / COMMIT_LAST
            if self.overwrite and COMMIT_LAST in names and old.is_file():
                old.unlink()  # first: an interrupted commit never leaves a report over a mixed set
            for name in stale:
                (self.out_dir / name).unlink()
            for name in names:
                os.replace(self.dir / name, self.out_dir / name)
        return [self.out_dir / n for n in names]

    def __exit__(self, *exc) -> None:
        try:
            if self.dir is not None:
                shutil.rmtree(self.dir, ignore_errors=True)
        finally:
            if self._lock is not None:
                self._lock.release()


def _raise_terminated(signum, frame) -> None:
    raise Terminated(f"signal {signum}")


@contextlib.contextmanager
def terminate_like_interrupt() -> Iterator[None]:
    """Within the block SIGTERM raises :class:`Terminated` in the main thread, so ``with``
    blocks clean up as on Ctrl-C; the previous handler is restored afterwards. A no-op
    outside the main thread (Python delivers signals there only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def claimed_output_dir(out_dir: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Probe, create and lock ``out_dir`` for one run, with SIGTERM handled like SIGINT.

    On leaving (success or not) the lock is released, and a folder this call created is removed
    again when the run left it empty. A second run on the same folder fails at once
    (:class:`OutputLockedError`).
    """
    out = Path(out_dir)
    with terminate_like_interrupt():
        created = probe_output_dir(out, overwrite)
        try:
            with OutputLock(out):
                yield out
        finally:
            if created:
                _rmdir_quiet(out)


__all__ = [
    "OutputLock", "OutputLockedError", "StagedOutputs", "Terminated", "claimed_output_dir", "clean_stale",
    "pid_alive", "probe_output_dir", "terminate_like_interrupt",
]
