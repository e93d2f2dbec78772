"""Batch registration: pairs from a CSV or a folder + template, sharding, resumable runs."""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

from dccnn_deploy.io import InputError

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".mgz")


@dataclass(frozen=True)
class Pair:
    """One registration job; ``name`` is its output sub-folder."""

    name: str
    moving: Path
    fixed: Path
    moving_labels: Path | None = None
    fixed_labels: Path | None = None


def image_stem(path: Path) -> str:
    name = path.name
    for suffix in IMAGE_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", name).strip("._") or "pair"


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}_{seen[n]}")
    return out


def pairs_from_csv(path: Path) -> list[Pair]:
    """Rows ``moving,fixed[,moving_labels,fixed_labels]`` (header optional); paths relative to the CSV."""
    if not path.is_file():
        raise InputError.at(path, "pairs CSV not found")
    base = path.parent
    rows = [r for r in csv.reader(path.read_text().splitlines()) if r and not r[0].startswith("#")]
    if rows and rows[0][0].strip().lower() == "moving":
        rows = rows[1:]
    if not rows:
        raise InputError.at(path, "no pairs in the CSV")
    pairs = []
    for i, row in enumerate(rows, start=1):
        cells = [c.strip() for c in row]
        if len(cells) not in (2, 4):
            raise InputError.at(path, f"row {i}: expected moving,fixed[,moving_labels,fixed_labels], got {len(cells)} columns")
        p = [(base / c) if c else None for c in cells]
        pairs.append((p[0], p[1], p[2] if len(p) == 4 else None, p[3] if len(p) == 4 else None))
    names = _unique([_safe(f"{image_stem(m)}_to_{image_stem(f)}") for m, f, _, _ in pairs])
    return [Pair(n, *p) for n, p in zip(names, pairs)]


def pairs_from_folder(folder: Path, template: Path) -> list[Pair]:
    """Every image in ``folder`` registered to one ``template``."""
    if not folder.is_dir():
        raise InputError.at(folder, "not a folder")
    images = sorted(p for p in folder.iterdir() if p.name.endswith(IMAGE_SUFFIXES) and p.resolve() != template.resolve())
    if not images:
        raise InputError.at(folder, "no .nii/.nii.gz/.mgz images in the folder")
    names = _unique([_safe(image_stem(p)) for p in images])
    return [Pair(n, p, template) for n, p in zip(names, images)]


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"i/n"`` (1-based) -> ``(i, n)``; None -> ``(1, 1)``."""
    if not text:
        return 1, 1
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m or not (1 <= int(m.group(1)) <= int(m.group(2))):
        raise InputError(f"--shard {text!r}: expected i/n with 1 <= i <= n")
    return int(m.group(1)), int(m.group(2))


def shard(pairs: list[Pair], index: int, count: int) -> list[Pair]:
    """Every ``count``-th pair starting at ``index`` (1-based): job arrays split the study."""
    return pairs[index - 1 :: count]
