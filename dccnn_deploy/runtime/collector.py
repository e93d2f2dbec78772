"""Python's cyclic garbage collector around a registering command's start-up imports.

Importing torch and the pipeline creates ~10^6 long-lived objects; the collector's full passes
over them (three generation-2 collections in one ``dccnn register``, ~0.06 s each, plus the
younger ones) took ~0.25 s of a 1 mm registration, holding the GIL against the reading thread.
The CLI pauses collection before those imports and resumes it after them, with everything alive
then moved into the permanent generation (``gc.freeze``), which later collections never scan.
"""

from __future__ import annotations

import gc

_paused = False


def pause_collection() -> None:
    """Stop cyclic collection until :func:`resume_collection` (reference counting still frees
    everything that is not in a cycle)."""
    global _paused
    gc.disable()
    _paused = True


def resume_collection() -> None:
    """Freeze everything alive now into the permanent generation and collect as usual from here
    on; a no-op unless :func:`pause_collection` paused it."""
    global _paused
    if _paused:
        gc.freeze()
        gc.enable()
        _paused = False
