"""What a registration was made from: input files (path, size, mtime) and the options.

Recorded in ``report.json`` (``inputs``, ``options``) so that ``dccnn batch`` can tell, on a
resumed run, whether a finished pair folder still matches its CSV row; any difference means
the pair is registered again, never silently reused.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any


def file_record(path: str | os.PathLike | None) -> dict | None:
    """``{"path": absolute, "size": bytes, "mtime_ns": ...}`` of a file (None for no file)."""
    if path is None:
        return None
    p = Path(path)
    try:
        st = p.stat()
        size, mtime = st.st_size, st.st_mtime_ns
    except OSError:
        size = mtime = None
    return {"path": str(p.resolve()), "size": size, "mtime_ns": mtime}


def input_record(moving, fixed, moving_labels=None, fixed_labels=None) -> dict:
    """The four inputs of a registration as :func:`file_record` entries."""
    return {"moving": file_record(moving), "fixed": file_record(fixed),
            "moving_labels": file_record(moving_labels), "fixed_labels": file_record(fixed_labels)}


def options_record(opts: Any) -> dict:
    """The options that change a registration's result (``RegisterOptions`` fields, not
    ``overwrite`` or the label paths, which are inputs); the model as a :func:`file_record`."""
    record = {
        "model": file_record(getattr(opts.model, "path", opts.model)), "backend": opts.backend,
        "device": opts.device, "refine": _refine_record(opts.refine), "affine": opts.affine,
        "grid_shape": list(opts.grid_shape), "spacing_mm": float(opts.spacing_mm),
    }
    if opts.precision != "auto":  # recorded only when chosen, so earlier studies still match
        record["precision"] = opts.precision
    return _plain(record)


def _refine_record(refine: Any) -> Any:
    """``--refine`` as given: a preset name or iteration count, or the fields of a settings object."""
    return dataclasses.asdict(refine) if dataclasses.is_dataclass(refine) else refine


def _plain(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples -> lists)."""
    return json.loads(json.dumps(value))


def _describe(what: str, old: Any, new: Any) -> str:
    if isinstance(old, dict) and isinstance(new, dict) and "path" in new:
        if old.get("path") != new.get("path"):
            return f"{what} is another file"
        return f"{what} changed on disk (size/mtime)"
    if old is None or new is None:
        return f"{what} {'added' if old is None else 'removed'}"
    return f"{what} {old} -> {new}"


def differences(report: dict, inputs: dict, options: dict) -> list[str]:
    """Why ``report`` (a finished pair's ``report.json``) does not match ``inputs``/``options``;
    empty when it matches. A report without a record (an older version) never matches."""
    if not isinstance(report.get("inputs"), dict) or not isinstance(report.get("options"), dict):
        return ["no input/option record in report.json (older version)"]
    out = []
    for section, now in (("inputs", inputs), ("options", options)):
        before = report[section]
        for key, value in _plain(now).items():
            if before.get(key) != value:
                out.append(_describe(key if section == "inputs" else f"option {key}", before.get(key), value))
    return out
