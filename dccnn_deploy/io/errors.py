"""Errors raised by the I/O layer: one line, naming the file and the problem."""

from __future__ import annotations

import os


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


class InputError(Exception):
    """A user-supplied file is missing, unreadable or unsuitable (one-line message)."""

    @classmethod
    def at(cls, path: str | os.PathLike, problem: object) -> "InputError":
        """``InputError("<path>: <problem>")`` with the problem collapsed to one line."""
        return cls(f"{os.fspath(path)}: {_one_line(str(problem))}")


class OutputExistsError(Exception):
    """An output path already exists and overwriting was not requested (one-line message)."""

    @classmethod
    def at(cls, path: str | os.PathLike, problem: str = "already exists, refusing to overwrite it"
           ) -> "OutputExistsError":
        """``OutputExistsError("<path>: <problem>")``."""
        return cls(f"{os.fspath(path)}: {_one_line(problem)}")
