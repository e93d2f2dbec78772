"""Study QC report: one self-contained ``report.html`` over a ``dccnn batch`` output folder.

The page needs no network: inline CSS, an inline SVG histogram and a few lines of vanilla JS
for sorting. Every value that comes from the study (pair names, errors, paths) is HTML-escaped
and the image paths are URL-quoted, so a hostile pair name renders as text.
"""

from __future__ import annotations

import csv
import html
import json
import math
import os
import secrets
import statistics
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from dccnn_deploy.registration.sanity import RESULT_PREFIX

REPORT_NAME = "report.html"


@dataclass
class Thresholds:
    """When a pair is flagged (defaults in brackets; applied by :func:`flags_for`).

    fold_percent: % of voxels with J <= 0 (worse of forward/inverse) above this -> "folding" (0.01).
    min_ncc_gain: final NCC - affine NCC below this -> "low similarity gain" (0.0).
    min_local_ncc_gain: final local NCC - affine local NCC below this -> "low similarity gain" (0.01).
    min_affine_ncc: affine NCC after below this, or not above the NCC before -> "affine failure" (0.5).
    max_inverse_consistency: mean inverse-consistency error (voxels) above this -> "inverse consistency" (0.5).
    A failed pair is always flagged "error".
    """

    fold_percent: float = 0.01
    min_ncc_gain: float = 0.0
    min_local_ncc_gain: float = 0.01
    min_affine_ncc: float = 0.5
    max_inverse_consistency: float = 0.5


# (key, header, decimals) of the numeric columns, in page order.
NUMERIC_COLUMNS: list[tuple[str, str, int]] = [
    ("ncc_before", "NCC before", 3),
    ("ncc_affine", "NCC affine", 3),
    ("ncc_final", "NCC final", 3),
    ("lncc_gain", "local NCC gain", 3),
    ("folding", "%J≤0", 3),
    ("inv_mean", "inv. cons. (vox)", 2),
    ("dice_affine", "Dice affine", 3),
    ("dice_final", "Dice final", 3),
    ("hd95_affine", "HD95 affine (mm)", 2),
    ("hd95_final", "HD95 final (mm)", 2),
    ("seconds", "time (s)", 1),
]
LABEL_KEYS = ("dice_affine", "dice_final", "hd95_affine", "hd95_final")
# Which flag marks which metric cell red.
FLAG_CELLS = {"folding": ("folding",), "low similarity gain": ("ncc_final", "lncc_gain"),
              "affine failure": ("ncc_affine",), "inverse consistency": ("inv_mean",)}


def _num(value) -> float | None:
    """A finite float, or None for '', None, NaN and junk."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _get(d: dict | None, *keys):
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def read_summary(out_dir: Path) -> list[dict]:
    """Rows of ``out_dir/summary.csv`` (empty when there is none)."""
    path = out_dir / "summary.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [dict(r) for r in csv.DictReader(f) if r.get("pair")]


def collect_rows(out_dir: Path, rows: list[dict] | None = None) -> list[dict]:
    """Summary rows (given or from ``summary.csv``) plus finished pair folders not listed there.

    A row may carry ``dir`` (its sub-folder) when it differs from ``pair``.
    """
    rows = [dict(r) for r in (read_summary(out_dir) if rows is None else rows)]
    listed = {r.get("dir") or r.get("pair") for r in rows}
    if out_dir.is_dir():
        for sub in sorted(p for p in out_dir.iterdir() if (p / "report.json").is_file()):
            if sub.name not in listed:
                rows.append({"pair": sub.name, "status": "ok"})
    return rows


def _load_report(folder: Path) -> dict:
    try:
        report = json.loads((folder / "report.json").read_text())
    except (OSError, ValueError):
        return {}
    return report if isinstance(report, dict) else {}


def _input_path(report: dict, row: dict, which: str) -> str:
    """The pair's ``moving``/``fixed`` path: the report's input record, its path, or the summary row."""
    recorded = _get(report, "inputs", which, "path")
    return str(recorded or report.get(which) or row.get(which) or "")


def metrics(row: dict, report: dict) -> dict:
    """The page's values for one pair: from ``report.json``, else from the summary row."""
    sim, fields = report.get("similarity"), report.get("fields") or {}
    folds = [_num(fields.get(k)) for k in ("folding_percent_forward", "folding_percent_inverse")]
    folds = [f for f in folds if f is not None]
    lncc_a, lncc_f = _num(_get(sim, "after_affine", "local_ncc")), _num(_get(sim, "after", "local_ncc"))
    model = report.get("model")
    m = {
        "ncc_before": _num(_get(sim, "before", "ncc")),
        "ncc_affine": _num(_get(sim, "after_affine", "ncc")),
        "ncc_final": _num(_get(sim, "after", "ncc")),
        "lncc_gain": lncc_f - lncc_a if lncc_a is not None and lncc_f is not None else None,
        "folding": max(folds) if folds else None,
        "inv_mean": _num(_get(fields, "inverse_consistency_voxels", "mean")),
        "inv_p95": _num(_get(fields, "inverse_consistency_voxels", "p95")),
        "dice_affine": _num(_get(report, "labels", "after_affine", "dice_mean")),
        "dice_final": _num(_get(report, "labels", "after", "dice_mean")),
        "hd95_affine": _num(_get(report, "labels", "after_affine", "hd95_mean_mm")),
        "hd95_final": _num(_get(report, "labels", "after", "hd95_mean_mm")),
        "seconds": _num(_get(report, "seconds", "total")),
        "aff_before": _num(_get(report, "affine", "ncc_before")),
        "aff_after": _num(_get(report, "affine", "ncc_after")),
        "backend": str(report.get("backend") or ""),
        "model": Path(str(model.get("path") or "")).name if isinstance(model, dict) else "",
        "warnings": [str(w) for w in report.get("warnings") or []] if isinstance(report.get("warnings"), list)
        else [w for w in str(row.get("warnings") or "").split("; ") if w],
        "moving": _input_path(report, row, "moving"),
        "fixed": _input_path(report, row, "fixed"),
    }
    fallback = {"ncc_affine": "ncc_affine", "ncc_final": "ncc_final", "folding": "folding_percent",
                "inv_mean": "inverse_consistency", "dice_affine": "dice_affine", "dice_final": "dice_final",
                "seconds": "seconds"}
    for key, col in fallback.items():
        if m[key] is None:
            m[key] = _num(row.get(col))
    return m


def flags_for(status: str, m: dict, t: Thresholds) -> list[str]:
    """The QC flags of one pair (empty when it looks fine); missing metrics raise no flag."""
    if status == "failed":
        return ["error"]
    flags = []
    if m["folding"] is not None and m["folding"] > t.fold_percent:
        flags.append("folding")
    gain = m["ncc_final"] - m["ncc_affine"] if m["ncc_final"] is not None and m["ncc_affine"] is not None else None
    if (gain is not None and gain < t.min_ncc_gain) or (m["lncc_gain"] is not None and m["lncc_gain"] < t.min_local_ncc_gain):
        flags.append("low similarity gain")
    aff = m["aff_after"] if m["aff_after"] is not None else m["ncc_affine"]
    if (aff is not None and aff < t.min_affine_ncc) or (
        m["aff_after"] is not None and m["aff_before"] is not None and m["aff_after"] <= m["aff_before"]
    ):
        flags.append("affine failure")
    if m["inv_mean"] is not None and m["inv_mean"] > t.max_inverse_consistency:
        flags.append("inverse consistency")
    warnings = m.get("warnings") or []
    if any(w.startswith(RESULT_PREFIX) for w in warnings):
        flags.append("result check")
    if any(not w.startswith(RESULT_PREFIX) for w in warnings):
        flags.append("geometry")
    return flags


def build_entries(out_dir: Path, rows: list[dict] | None, t: Thresholds) -> list[dict]:
    """One dict per pair: name, folder, status, error, metrics, flags, thumbnail presence."""
    entries = []
    for row in collect_rows(out_dir, rows):
        folder = str(row.get("dir") or row.get("pair") or "")
        status = str(row.get("status") or "ok")
        report = _load_report(out_dir / folder) if folder and status != "failed" else {}
        m = metrics(row, report)
        entries.append({
            "pair": str(row.get("pair") or folder), "dir": folder, "status": status,
            "error": " ".join(str(row.get("error") or "").split()), "m": m, "flags": flags_for(status, m, t),
            "qc": bool(folder) and (out_dir / folder / "qc.png").is_file(),
        })
    # Bad registrations first (failed, then flagged), otherwise the study's order.
    return sorted(entries, key=lambda e: (e["status"] != "failed", not e["flags"]))


# ---------------------------------------------------------------- rendering

E = html.escape

CSS = """body{font:13px system-ui,sans-serif;margin:16px;color:#222}
h1{font-size:20px;margin:0 0 8px}.sum{display:flex;gap:24px;align-items:flex-start;flex-wrap:wrap}
.k td{padding:1px 8px}.k td:first-child{color:#555}.big{font-size:18px;font-weight:600}
table.t{border-collapse:collapse;margin-top:12px}.t th,.t td{border:1px solid #ccc;padding:2px 5px;text-align:right}
.t th{background:#eee;cursor:pointer;position:sticky;top:0;font-size:12px;text-align:center}.t td.s{text-align:left}
.t td.p{max-width:220px;overflow-wrap:anywhere;font-weight:600}
tr.flag{background:#fff0c2}tr.fail{background:#ffd6d6}td.x{color:#b00000;font-weight:700}
.b{display:inline-block;background:#c00;color:#fff;border-radius:3px;padding:0 4px;margin:1px;white-space:nowrap}
.err{color:#900;max-width:380px;overflow-wrap:anywhere}.in{font-weight:400;font-size:11px;color:#555}img.q{height:44px;max-width:150px;object-fit:contain;display:block}.bad{color:#b00000}
"""

JS = """document.querySelectorAll('table.t th').forEach((h,i)=>h.onclick=()=>{
const b=h.closest('table').tBodies[0],r=[...b.rows],d=h.dataset.d=h.dataset.d==='1'?'-1':'1';
const v=x=>{const c=x.cells[i],s=c.dataset.v??c.textContent;const n=parseFloat(s);return isNaN(n)?s:n};
r.sort((a,c)=>{const p=v(a),q=v(c);return typeof p===typeof q?((p>q)-(p<q))*d:typeof p==='number'?-1:1});r.forEach(x=>b.appendChild(x))});"""


def _fmt(value: float | None, decimals: int) -> str:
    return "" if value is None else f"{value:.{decimals}f}"


def _median(entries: list[dict], key: str) -> float | None:
    vals = [e["m"][key] for e in entries if e["m"][key] is not None and e["status"] != "failed"]
    return statistics.median(vals) if vals else None


def histogram_svg(values: list[float], label: str, bins: int = 12, width: int = 300, height: int = 110) -> str:
    """A small inline SVG histogram of ``values`` (empty string when there are none)."""
    if not values:
        return ""
    lo, hi = min(values), max(values)
    if hi - lo < 1e-9:
        lo, hi = lo - 0.05, hi + 0.05
    counts = [0] * bins
    for v in values:
        counts[min(int((v - lo) / (hi - lo) * bins), bins - 1)] += 1
    top, plot_h, bw = max(counts), height - 30, (width - 20) / bins
    bars = "".join(
        f'<rect x="{10 + i * bw:.1f}" y="{10 + plot_h - c / top * plot_h:.1f}" width="{bw - 1:.1f}" '
        f'height="{c / top * plot_h:.1f}" fill="#4a78b5"><title>{c}</title></rect>'
        for i, c in enumerate(counts) if c
    )
    axis = (f'<line x1="10" y1="{10 + plot_h}" x2="{width - 10}" y2="{10 + plot_h}" stroke="#333"/>'
            f'<text x="10" y="{height - 5}" font-size="11">{lo:.3f}</text>'
            f'<text x="{width - 10}" y="{height - 5}" font-size="11" text-anchor="end">{hi:.3f}</text>'
            f'<text x="{width / 2}" y="{height - 5}" font-size="11" text-anchor="middle">{E(label)} (n={len(values)}, max bin {top})</text>')
    return f'<svg width="{width}" height="{height}" role="img" aria-label="{E(label)} histogram">{bars}{axis}</svg>'


def _summary(entries: list[dict], has_labels: bool, t: Thresholds) -> str:
    n_fail = sum(e["status"] == "failed" for e in entries)
    n_flag = sum(bool(e["flags"]) and e["status"] != "failed" for e in entries)
    counts = [("pairs", len(entries)), ("ok", len(entries) - n_fail), ("failed", n_fail), ("flagged (not failed)", n_flag)]
    by_flag: dict[str, int] = {}
    for e in entries:
        for f in e["flags"]:
            by_flag[f] = by_flag.get(f, 0) + 1
    count_rows = "".join(
        f'<tr><td>{E(k)}</td><td class="big{" bad" if k != "pairs" and k != "ok" and v else ""}">{v}</td></tr>' for k, v in counts
    ) + "".join(f'<tr><td>· {E(f)}</td><td class="bad">{v}</td></tr>' for f, v in sorted(by_flag.items()))
    keys = ["ncc_affine", "ncc_final", "lncc_gain", "folding", "inv_mean", "seconds"]
    keys[2:2] = ["dice_final", "hd95_final"] if has_labels else []
    names = {k: (h, d) for k, h, d in NUMERIC_COLUMNS}
    med_rows = "".join(f"<tr><td>median {E(names[k][0])}</td><td>{_fmt(_median(entries, k), names[k][1] + 1)}</td></tr>" for k in keys)
    hist_key = "dice_final" if has_labels else "ncc_final"
    values = [e["m"][hist_key] for e in entries if e["m"][hist_key] is not None and e["status"] != "failed"]
    rules = (f"folding: %J≤0 &gt; {t.fold_percent:g}; low similarity gain: NCC gain &lt; {t.min_ncc_gain:g} or local NCC gain "
             f"&lt; {t.min_local_ncc_gain:g}; affine failure: affine NCC &lt; {t.min_affine_ncc:g} or not improved; "
             f"inverse consistency: mean &gt; {t.max_inverse_consistency:g} voxel; geometry: implausible affine "
             f"scale/shear/volume change, affine similarity or field-of-view overlap; result check: the final result "
             f"less similar than no registration or the affine stage, or no shared structure (details under the "
             f"badge); error: the pair failed.")
    return (f'<div class="sum"><table class="k">{count_rows}</table><table class="k">{med_rows}</table>'
            f'<div>{histogram_svg(values, "Dice final" if has_labels else "NCC final")}</div></div>'
            f'<p style="color:#555;font-size:12px">Flags — {rules} Click a column header to sort.</p>')


def _row_html(e: dict, cols: list[tuple[str, str, int]]) -> str:
    m, flags = e["m"], e["flags"]
    red = {c for f in flags for c in FLAG_CELLS.get(f, ())}
    cls = "fail" if e["status"] == "failed" else "flag" if flags else ""
    inputs = f'<div class="in">{E(m["moving"])} → {E(m["fixed"])}</div>' if m["moving"] or m["fixed"] else ""
    cells = [f'<td class="s p">{E(e["pair"])}{inputs}</td>', f'<td class="s">{E(e["status"])}</td>']
    for key, _, dec in cols:
        title = f' title="p95 {_fmt(m["inv_p95"], 2)}"' if key == "inv_mean" and m["inv_p95"] is not None else ""
        x = ' class="x"' if key in red else ""
        cells.append(f'<td{x}{title} data-v="{"" if m[key] is None else repr(m[key])}">{_fmt(m[key], dec)}</td>')
    cells.append(f'<td class="s">{E(m["backend"])}</td><td class="s">{E(m["model"])}</td>')
    badges = "".join(f'<span class="b">{E(f)}</span>' for f in flags)
    err = f'<div class="err">{E(e["error"])}</div>' if e["error"] else ""
    err += f'<div class="err">{E("; ".join(m["warnings"]))}</div>' if m["warnings"] else ""
    cells.append(f'<td class="s" data-v="{len(flags)}">{badges}{err}</td>')
    if e["qc"]:
        url = E(quote(e["dir"], safe="") + "/qc.png")
        cells.append(f'<td class="s"><a href="{url}" target="_blank"><img class="q" src="{url}" loading="lazy" alt="qc"></a></td>')
    else:
        cells.append('<td class="s"></td>')
    return (f'<tr class="{cls}">' if cls else "<tr>") + "".join(cells) + "</tr>"


def render(entries: list[dict], title: str, t: Thresholds) -> str:
    """The whole page as a string."""
    has_labels = any(e["m"]["dice_final"] is not None for e in entries)
    cols = [c for c in NUMERIC_COLUMNS if has_labels or c[0] not in LABEL_KEYS]
    head = "".join(f"<th>{E(h)}</th>" for h in ["pair", "status"] + [c[1] for c in cols] + ["backend", "model", "flags", "QC"])
    body = "\n".join(_row_html(e, cols) for e in entries)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{E(title)}</title>'
            f'<meta name="viewport" content="width=device-width"><style>{CSS}</style></head><body>'
            f"<h1>Registration QC — {E(title)}</h1>{_summary(entries, has_labels, t)}"
            f'<table class="t"><thead><tr>{head}</tr></thead><tbody>\n{body}\n</tbody></table>'
            f"<script>{JS}</script></body></html>\n")


def build_report(out_dir: Path, rows: list[dict] | None = None, thresholds: Thresholds | None = None) -> Path:
    """Write ``out_dir/report.html`` (atomically) from ``rows`` or ``summary.csv`` plus each pair's ``report.json``."""
    out_dir = Path(out_dir)
    t = thresholds or Thresholds()
    page = render(build_entries(out_dir, rows, t), out_dir.resolve().name or str(out_dir), t)
    target = out_dir / REPORT_NAME
    tmp = out_dir / f".tmp-{secrets.token_hex(4)}-{REPORT_NAME}"
    try:
        tmp.write_text(page, encoding="utf-8")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


__all__ = ["Thresholds", "build_report", "collect_rows", "flags_for", "histogram_svg", "metrics", "render"]
