"""Batch registration: pairs from a CSV or a folder + template, stable pair ids, sharding,
and a study summary rebuilt from the pair folders.

Pair ids are ``<readable moving stem>_to_<fixed stem>-<hash>``: the readable part is an ASCII
transliteration of the file names (NFKD), the hash (10 hex digits) is taken over the absolute
input paths, so a pair keeps its folder whatever the CSV order or the other rows, and two
pairs with the same file names in different folders never share one.

Each pair folder is the record of its pair: ``report.json`` (finished, with the inputs and
options it was made from, see :mod:`dccnn_deploy.registration.provenance`) or ``failed.json``
(the error of the latest try). ``summary.csv`` is rebuilt from those (:func:`rebuild_summary`)
under a short study lock, so shards running at once never lose each other's rows; each shard
also writes its own ``summary-shard-i-of-n.csv``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from dccnn_deploy.io import InputError, atomic_write
from dccnn_deploy.io.staging import OutputLock

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".mgz")
SUMMARY_NAME = "summary.csv"
FAILED_NAME = "failed.json"
SUMMARY_COLUMNS = ["pair", "status", "moving", "fixed", "ncc_affine", "ncc_final", "folding_percent",
                   "inverse_consistency", "dice_affine", "dice_final", "seconds", "warnings", "error", "dir"]
_SUMMARY_LOCK = ".summary.lock"
# Letters NFKD does not decompose into ASCII.
_EXTRA_ASCII = str.maketrans({"ø": "o", "Ø": "O", "æ": "ae", "Æ": "AE", "œ": "oe", "Œ": "OE", "ß": "ss",
                              "đ": "d", "Đ": "D", "ł": "l", "Ł": "L", "þ": "th", "Þ": "Th", "ð": "d", "ı": "i"})


@dataclass(frozen=True)
class Pair:
    """One registration job; ``name`` is its output sub-folder, ``line`` its CSV line (0: none)."""

    name: str
    moving: Path
    fixed: Path
    moving_labels: Path | None = None
    fixed_labels: Path | None = None
    line: int = 0

    @property
    def key(self) -> tuple[str, ...]:
        """The absolute input paths: what makes two rows the same pair."""
        return tuple(_absolute(p) for p in (self.moving, self.fixed, self.moving_labels, self.fixed_labels))


def image_stem(path: Path) -> str:
    name = path.name
    for suffix in IMAGE_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def readable(name: str, limit: int = 60) -> str:
    """``name`` as a safe ASCII folder name: accents dropped (NFKD), other characters ``_``."""
    ascii_text = unicodedata.normalize("NFKD", name.translate(_EXTRA_ASCII)).encode("ascii", "ignore").decode()
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", ascii_text).strip("._")[:limit].rstrip("._") or "pair"


def _absolute(path: Path | None) -> str:
    return "" if path is None else os.path.abspath(os.fspath(path))


def pair_id(stem: str, paths: tuple[Path | None, ...]) -> str:
    """``<readable stem>-<10 hex digits of sha256 over the absolute paths>``."""
    digest = hashlib.sha256("\0".join(_absolute(p) for p in paths).encode("utf-8", "surrogateescape")).hexdigest()
    return f"{readable(stem)}-{digest[:10]}"


def make_pair(moving: Path, fixed: Path, moving_labels: Path | None = None, fixed_labels: Path | None = None,
              line: int = 0, stem: str | None = None) -> Pair:
    """A :class:`Pair` with its stable id."""
    stem = stem or f"{image_stem(moving)}_to_{image_stem(fixed)}"
    return Pair(pair_id(stem, (moving, fixed, moving_labels, fixed_labels)), moving, fixed, moving_labels, fixed_labels, line)


def pairs_from_csv(path: Path) -> list[Pair]:
    """Rows ``moving,fixed[,moving_labels,fixed_labels]`` (header optional); paths relative to the CSV."""
    if not path.is_file():
        raise InputError.at(path, "pairs CSV not found")
    base = path.parent
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError.at(path, f"cannot read the pairs CSV ({exc})") from None
    reader = csv.reader(text.splitlines())
    pairs = []
    for row in reader:
        cells = [c.strip() for c in row]
        if not cells or not any(cells) or cells[0].startswith("#"):
            continue
        if not pairs and cells[0].lower() == "moving":
            continue
        if len(cells) not in (2, 4):
            raise InputError.at(path, f"line {reader.line_num}: expected moving,fixed[,moving_labels,fixed_labels], got {len(cells)} columns")
        p = [(base / c) if c else None for c in cells] + [None, None]
        if p[0] is None or p[1] is None:
            raise InputError.at(path, f"line {reader.line_num}: moving and fixed are required")
        pairs.append(make_pair(p[0], p[1], p[2], p[3], line=reader.line_num))
    if not pairs:
        raise InputError.at(path, "no pairs in the CSV")
    return pairs


def pairs_from_folder(folder: Path, template: Path) -> list[Pair]:
    """Every image in ``folder`` registered to one ``template``."""
    if not folder.is_dir():
        raise InputError.at(folder, "not a folder")
    images = sorted(p for p in folder.iterdir() if p.name.endswith(IMAGE_SUFFIXES) and p.resolve() != template.resolve())
    if not images:
        raise InputError.at(folder, "no .nii/.nii.gz/.mgz images in the folder")
    return [make_pair(p, template, stem=image_stem(p)) for p in images]


def deduplicate(pairs: list[Pair]) -> tuple[list[Pair], list[str]]:
    """Pairs with the same inputs once (first occurrence kept), and one warning per repeat."""
    first: dict[tuple[str, ...], Pair] = {}
    by_name: dict[str, Pair] = {}
    unique, warnings = [], []
    for pair in pairs:
        if pair.key in first:
            warnings.append(f"line {pair.line} repeats line {first[pair.key].line} (same inputs): registered once")
            continue
        if pair.name in by_name:  # a 40-bit hash collision: refuse rather than mix two pairs
            raise InputError(f"pairs on lines {by_name[pair.name].line} and {pair.line} map to one folder {pair.name}")
        first[pair.key] = by_name[pair.name] = pair
        unique.append(pair)
    return unique, warnings


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


def shard_summary_name(index: int, count: int) -> str:
    return f"summary-shard-{index}-of-{count}.csv"


# ---------------------------------------------------------------- summary rows


def summary_row(name: str, report: dict | None = None, status: str = "ok", error: str = "",
                moving: str = "", fixed: str = "") -> dict:
    """One ``summary.csv`` row; metrics, input paths and warnings from ``report`` when given."""
    row = {c: "" for c in SUMMARY_COLUMNS}
    row.update(pair=name, dir=name, status=status, error=" ".join(str(error).split()), moving=moving, fixed=fixed)
    if not report:
        return row
    inputs = report.get("inputs") if isinstance(report.get("inputs"), dict) else {}
    row["moving"] = (inputs.get("moving") or {}).get("path") or str(report.get("moving") or moving)
    row["fixed"] = (inputs.get("fixed") or {}).get("path") or str(report.get("fixed") or fixed)
    row["warnings"] = "; ".join(str(w) for w in report.get("warnings") or [])
    try:
        sim, fields = report["similarity"], report["fields"]
        row.update(
            ncc_affine=f"{sim['after_affine']['ncc']:.4f}", ncc_final=f"{sim['after']['ncc']:.4f}",
            folding_percent=f"{max(fields['folding_percent_forward'], fields['folding_percent_inverse']):.4f}",
            inverse_consistency=f"{fields.get('inverse_consistency_voxels', {}).get('mean', 0.0):.4f}",
            seconds=f"{report['seconds']['total']:.1f}",
        )
        if "labels" in report:
            row.update(dice_affine=f"{report['labels']['after_affine']['dice_mean']:.4f}",
                       dice_final=f"{report['labels']['after']['dice_mean']:.4f}")
    except (KeyError, TypeError, ValueError):
        pass  # an incomplete report still lists the pair
    return row


def read_rows(path: Path) -> list[dict]:
    """Rows of a summary CSV (empty when missing or unreadable)."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return [dict(r) for r in csv.DictReader(f) if r.get("pair") or r.get("dir")]
    except (OSError, UnicodeDecodeError, csv.Error):
        return []


def write_rows(path: Path, rows: list[dict]) -> Path:
    """Write ``rows`` as a summary CSV, atomically."""
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=SUMMARY_COLUMNS, restval="", extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)

    return atomic_write(path, write, overwrite=True)


def _json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def write_failure(folder: Path, pair: Pair, error: str) -> None:
    """Record a pair's failure as ``folder/failed.json`` (the folder's latest try)."""
    record = {"status": "failed", "error": " ".join(str(error).split()),
              "moving": _absolute(pair.moving), "fixed": _absolute(pair.fixed)}
    atomic_write(folder / FAILED_NAME, lambda tmp: tmp.write_text(json.dumps(record, indent=1)), overwrite=True)


def pair_state(folder: Path) -> tuple[str, dict | None]:
    """``("ok", report)``, ``("failed", failure record)`` or ``("none", None)``: a failure newer
    than the report (a redo that failed) wins over the older report."""
    report_path, failed_path = folder / "report.json", folder / FAILED_NAME
    report = _json(report_path) if report_path.is_file() else None
    failed = _json(failed_path) if failed_path.is_file() else None
    if failed is not None and (report is None or failed_path.stat().st_mtime_ns >= report_path.stat().st_mtime_ns):
        return "failed", failed
    if report is not None:
        return "ok", report
    return "none", None


def rebuild_summary(out_dir: Path, run_rows: list[dict] | None = None) -> list[dict]:
    """Rewrite ``out_dir/summary.csv`` from every pair folder's state, and return its rows.

    Rows of the previous ``summary.csv`` and of ``summary-shard-*.csv`` keep their order and
    pair names (then ``run_rows``, this run's rows, and other folders by name); each pair folder's ``report.json``/``failed.json`` decides its status and
    metrics; failed rows without a folder are kept; rows claiming success without a
    ``report.json`` are dropped. Runs under a short lock, so concurrent shards never lose rows.
    """
    out_dir = Path(out_dir)
    with OutputLock(out_dir, name=_SUMMARY_LOCK, blocking=True):
        rows: dict[str, dict] = {}
        shards = sorted(out_dir.glob("summary-shard-*-of-*.csv"), key=lambda p: p.stat().st_mtime_ns)
        for source in [read_rows(out_dir / SUMMARY_NAME), *map(read_rows, shards), run_rows or []]:
            for row in source:
                key = row.get("dir") or row.get("pair")
                rows[key] = {**rows.get(key, {}), **row}
        folders = sorted(p.name for p in out_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
        for name in list(rows) + [f for f in folders if f not in rows]:
            state, record = pair_state(out_dir / name) if name in folders else ("none", None)
            old = rows.get(name, {})
            label = old.get("pair") or name
            if state == "ok":
                rows[name] = {**summary_row(label, record), "dir": name}
            elif state == "failed":
                rows[name] = {**summary_row(label, None, "failed", record.get("error", ""),
                                            str(record.get("moving", "")), str(record.get("fixed", ""))), "dir": name}
            elif old and old.get("status") == "failed":
                rows[name] = {**summary_row(label, None, "failed", old.get("error", ""), old.get("moving", ""),
                                            old.get("fixed", "")), "dir": old.get("dir", "")}
            else:
                rows.pop(name, None)
        result = list(rows.values())
        write_rows(out_dir / SUMMARY_NAME, result)
    return result
