"""Study QC report: rows, flags, escaping of hostile pair names, CLI, and a headless-browser render."""

from __future__ import annotations

import csv
import json
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from dccnn_deploy.cli.report_cmd import report as report_command
from dccnn_deploy.registration.report_html import Thresholds, build_report

SCRIPT_NAME = "<script>alert(1)</script>"
ONERROR_NAME = "<img src=x onerror=document.body.dataset.pwned=1>"  # a legal directory name on Linux
COLUMNS = ["pair", "status", "ncc_affine", "ncc_final", "folding_percent", "inverse_consistency",
           "dice_affine", "dice_final", "seconds", "error", "dir"]


def tiny_png(width: int = 96, height: int = 48) -> bytes:
    """A grey-gradient PNG written by hand (no image library)."""
    raw = b"".join(b"\x00" + bytes((x * 255 // width + y) % 256 for x in range(width)) for y in range(height))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def fake_report(ncc=(0.3, 0.8, 0.92), lncc=(0.2, 0.4, 0.6), folding=0.0, inv=0.1, dice=(0.7, 0.85)) -> dict:
    sim = {k: {"ncc": n, "local_ncc": l, "ssim": 0.5} for k, n, l in zip(("before", "after_affine", "after"), ncc, lncc)}
    return {
        "similarity": sim,
        "fields": {"folding_percent_forward": folding, "folding_percent_inverse": folding / 2,
                   "inverse_consistency_voxels": {"mean": inv, "p95": inv * 3}},
        "labels": {"after_affine": {"dice_mean": dice[0], "hd95_mean_mm": 4.0},
                   "after": {"dice_mean": dice[1], "hd95_mean_mm": 2.0}},
        "seconds": {"total": 12.5}, "backend": "onnxruntime",
        "model": {"path": "/models/dccnn_v1.pt", "sha256": "ab"}, "affine": {"ncc_before": ncc[0], "ncc_after": ncc[1]},
    }


def write_pair(out: Path, folder: str, report: dict) -> None:
    (out / folder).mkdir(parents=True)
    (out / folder / "report.json").write_text(json.dumps(report))
    (out / folder / "qc.png").write_bytes(tiny_png())


def write_study(out: Path, extra: int = 0) -> Path:
    """A fake ``dccnn batch`` output: good, folded, failed and two hostile-named pairs (+ ``extra`` good ones)."""
    rows = []
    pairs = [("good_pair", "good_pair", fake_report()),
             ("folded_pair", "folded_pair", fake_report(folding=0.5)),
             (SCRIPT_NAME, "evil", fake_report()),
             (ONERROR_NAME, ONERROR_NAME, fake_report())]
    pairs += [(f"sub{i:03d}", f"sub{i:03d}", fake_report(ncc=(0.3, 0.8, 0.85 + i % 10 / 100))) for i in range(extra)]
    for name, folder, rep in pairs:
        write_pair(out, folder, rep)
        rows.append({"pair": name, "status": "ok", "dir": folder})
    rows.insert(2, {"pair": "broken_pair", "status": "failed", "error": "InputError: moving.nii.gz: not a NIfTI file <&>"})
    with open(out / "summary.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, restval="")
        w.writeheader()
        w.writerows(rows)
    return out


@pytest.fixture
def study(tmp_path) -> Path:
    return write_study(tmp_path / "out")


def _row(page: str, marker: str) -> str:
    """The ``<tr>`` of the page that contains ``marker``."""
    for tr in page.split("<tr")[1:]:
        if marker in tr:
            return tr
    raise AssertionError(f"no row with {marker!r}")


def test_rows_flags_and_escaping(study):
    path = build_report(study)
    assert path == study / "report.html"
    page = path.read_text()
    assert not [p for p in study.iterdir() if p.name.startswith(".tmp")]
    for name in ("good_pair", "folded_pair", "broken_pair"):
        assert f">{name}<" in page
    assert '<span class="b">folding</span>' in _row(page, "folded_pair")
    assert "flag" in _row(page, "folded_pair").split(">")[0]
    assert '<span class="b">' not in _row(page, ">good_pair<")
    broken = _row(page, "broken_pair")
    assert '<span class="b">error</span>' in broken and "not a NIfTI file &lt;&amp;&gt;" in broken
    # Hostile names are text, never markup; their paths are URL-quoted.
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<img src=x" not in page and "&lt;img src=x onerror" in page
    assert 'href="evil/qc.png"' in page
    assert 'src="%3Cimg%20src%3Dx%20onerror%3Ddocument.body.dataset.pwned%3D1%3E/qc.png"' in page
    assert page.count("<script>") == 1  # our sorter only
    assert "http://" not in page and "https://" not in page  # self-contained
    assert "<svg" in page and "Dice final" in page  # histogram of Dice: labels exist


def test_failed_pair_and_bad_metrics_flagged(tmp_path):
    out = tmp_path / "s"
    write_pair(out, "noaff", fake_report(ncc=(0.6, 0.4, 0.7)))
    write_pair(out, "nogain", fake_report(ncc=(0.3, 0.8, 0.79)))
    write_pair(out, "inv", fake_report(inv=0.9))
    write_pair(out, "worse", {**fake_report(), "warnings": [
        "result: registration made the images less similar than no registration (MI 0.045 < 0.054): check the inputs"]})
    write_pair(out, "shear", {**fake_report(), "warnings": ["affine: shears [0.4, 0.0, 0.0] beyond +-0.3"]})
    page = build_report(out).read_text()  # no summary.csv: the pair folders are found
    assert '<span class="b">result check</span>' in _row(page, ">worse<") and "geometry" not in _row(page, ">worse<")
    assert '<span class="b">geometry</span>' in _row(page, ">shear<") and "result check" not in _row(page, ">shear<")
    assert '<span class="b">affine failure</span>' in _row(page, ">noaff<")
    assert '<span class="b">low similarity gain</span>' in _row(page, ">nogain<")
    assert '<span class="b">inverse consistency</span>' in _row(page, ">inv<")


def test_thresholds_and_rows_argument(study):
    page = build_report(study, thresholds=Thresholds(fold_percent=1.0)).read_text()
    assert '<span class="b">' not in _row(page, "folded_pair")
    page = build_report(study, rows=[{"pair": "good_pair", "status": "ok"}]).read_text()
    assert ">good_pair<" in page and "broken_pair" not in page


def test_cli_rebuilds_and_prints_path(study):
    app = typer.Typer()
    app.command()(report_command)
    app.command("other")(lambda: None)  # two commands: `report` is addressed by name
    result = CliRunner().invoke(app, ["report", str(study), "--fold-threshold", "1"])
    assert result.exit_code == 0, result.output
    assert "report.html" in result.output.replace("\n", "")
    assert '<span class="b">folding</span>' not in (study / "report.html").read_text()
    assert CliRunner().invoke(app, ["report", str(study / "missing")]).exit_code == 2


def test_size_for_100_pairs(tmp_path):
    out = write_study(tmp_path / "big", extra=96)
    size = build_report(out).stat().st_size
    print(f"report.html for 101 pairs: {size} bytes")
    assert size < 150_000


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'chrome-profile'}"]
    return subprocess.run([CHROMIUM, *flags, *args], check=False, capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary")
def test_browser_renders_page(study, tmp_path):
    url = build_report(study).resolve().as_uri()
    dom = _chromium(tmp_path, "--dump-dom", url).stdout
    table = dom.split('<table class="t">')[1].split("</table>")[0]
    assert table.split("<tbody>")[1].count("<tr") == 5  # five pairs
    assert '<span class="b">folding</span>' in dom and '<span class="b">error</span>' in dom
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom  # shown as text
    assert dom.count("<script") == 1 and "<img src=\"x\"" not in dom and "data-pwned" not in dom  # nothing injected ran
    shot = tmp_path / "report.png"
    _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1400,1000", url)
    assert shot.is_file() and shot.stat().st_size > 20_000
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary")
def test_browser_sorts_by_column(study, tmp_path):
    page = build_report(study)
    clicked = page.with_name("sorted.html")  # the page plus two clicks on the "NCC before" header
    clicks = '<script>const h=document.querySelectorAll("table.t th")[2];h.click();h.click()</script></body>'
    clicked.write_text(page.read_text().replace("</body>", clicks))
    dom = _chromium(tmp_path, "--dump-dom", clicked.resolve().as_uri()).stdout
    names = [cell.split("</td>")[0] for cell in dom.split('<td class="s p">')[1:]]
    assert names[-1] == "broken_pair"  # descending; the failed pair has no value and sorts last
