"""``dccnn batch``: register a study; resumable, shardable, one failure does not stop the rest.

Resume is checked, not assumed: a finished pair folder is reused only when its
``report.json`` records the same input files (path, size, mtime) and options; otherwise the
pair is registered again (the whole output set replaced). The model is opened once for the
study, and the next pair's files are read in a background thread while a pair computes.
"""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from dccnn_deploy.cli.common import USER_ERRORS, console, err_console, fail, user_errors
from dccnn_deploy.cli.guard import EXIT_STRICT, report_warnings, stop_cleanly
from dccnn_deploy.cli.register_cmd import options_from_cli
from dccnn_deploy.io.staging import OutputLockedError, claimed_output_dir, probe_output_dir, terminate_like_interrupt
from dccnn_deploy.io import Volume
from dccnn_deploy.registration import RegisterOptions, register_files
from dccnn_deploy.registration.inputs import to_volume
from dccnn_deploy.registration.pipeline import open_model
from dccnn_deploy.registration.batch import (
    FAILED_NAME, Pair, deduplicate, pair_state, pairs_from_csv, pairs_from_folder, parse_shard, rebuild_summary,
    shard, shard_summary_name, summary_row, write_failure, write_rows,
)
from dccnn_deploy.registration.provenance import differences, input_record, options_record
from dccnn_deploy.registration.report_html import build_report

TABLE_COLUMNS = {"pair": "pair", "status": "status", "ncc_final": "NCC", "folding_percent": "%J≤0",
                 "dice_final": "Dice", "seconds": "s", "note": "warnings / error"}


def _error_text(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if isinstance(exc, USER_ERRORS) else f"{type(exc).__name__}: {text}"


def _finished(pair: Pair, folder: Path, opts: RegisterOptions) -> tuple[str, dict | None, list[str]]:
    """The pair folder's state and record, and why a finished result does not match the pair's
    inputs and options (empty: reusable)."""
    state, record = pair_state(folder)
    inputs = input_record(pair.moving, pair.fixed, pair.moving_labels, pair.fixed_labels)
    return state, record, differences(record, inputs, options_record(opts)) if state == "ok" else []


def read_ahead(pair: Pair, out: Path, opts: RegisterOptions, overwrite: bool) -> dict[str, Volume] | None:
    """The pair's images and label maps read before their turn (a background thread does it while
    the previous pair computes), keyed like :func:`register_files`' arguments; None when the pair
    looks finished and reusable or a file does not read: :func:`run_pair` then decides (under the
    folder's lock) and reads or reports as it would without reading ahead."""
    try:
        state, _, why = _finished(pair, out / pair.name, opts)
        if state == "ok" and not why and not overwrite:
            return None
        files = {"moving": (pair.moving, "image"), "fixed": (pair.fixed, "image"),
                 "moving_labels": (pair.moving_labels, "labels"), "fixed_labels": (pair.fixed_labels, "labels")}
        return {key: to_volume(path, kind, key) for key, (path, kind) in files.items() if path is not None}
    except Exception:  # noqa: BLE001 - the registration reads again and reports the error
        return None


def run_pair(pair: Pair, out: Path, opts: RegisterOptions, overwrite: bool, read: dict[str, Volume] | None = None) -> dict:
    """Register one pair into ``out/<pair id>`` unless a matching finished result is there.

    ``read``: the pair's volumes from :func:`read_ahead` (None: read the files here).
    Returns its summary row: ``done before``, ``ok``, ``redone (why)``, ``failed`` or ``busy``.
    """
    folder = out / pair.name
    paths = {"moving": str(pair.moving), "fixed": str(pair.fixed)}
    read = read or {}
    try:
        with claimed_output_dir(folder, overwrite):
            state, record, why = _finished(pair, folder, opts)
            if state == "ok" and not why and not overwrite:
                return summary_row(pair.name, record, status="done before")
            replace = overwrite or (folder / "report.json").exists()
            labels = {key: read[key] for key in ("moving_labels", "fixed_labels") if key in read}
            try:
                report = register_files(read.get("moving", pair.moving), read.get("fixed", pair.fixed), folder,
                                        dataclasses.replace(opts, overwrite=replace, **labels))
            except Exception as exc:  # noqa: BLE001 - one bad pair must not stop the study
                write_failure(folder, pair, _error_text(exc))
                return summary_row(pair.name, None, "failed", _error_text(exc), **paths)
            (folder / FAILED_NAME).unlink(missing_ok=True)
            status = f"redone ({'; '.join(why)})" if why else "ok"
            return summary_row(pair.name, report, status=status)
    except OutputLockedError as exc:
        return summary_row(pair.name, None, "busy", str(exc), **paths)


def _print_table(rows: list[dict], title: str) -> None:
    table = Table(title=title)
    for header in TABLE_COLUMNS.values():
        table.add_column(header, overflow="fold")
    for row in rows:
        style = "red" if row["status"] == "failed" else "yellow" if row["warnings"] or row["status"] == "busy" else None
        note = row["error"] or row["warnings"]
        table.add_row(*(note if c == "note" else row[c] for c in TABLE_COLUMNS), style=style)
    console.print(table)


def batch(
    out: Path = typer.Option(..., "-o", "--out", help="Study output folder (one sub-folder per pair)."),
    pairs: Optional[Path] = typer.Option(None, help="CSV: moving,fixed[,moving_labels,fixed_labels]."),
    moving_dir: Optional[Path] = typer.Option(None, help="Folder of moving images (with --template)."),
    template: Optional[Path] = typer.Option(None, help="Fixed image for every moving image of --moving-dir."),
    model: Optional[Path] = typer.Option(None, "--model", help="Checkpoint; default: the shipped model."),
    backend: Optional[str] = typer.Option(None, help="torch | onnxruntime | tensorrt (default: from the model file)."),
    device: str = typer.Option("cpu", help="cpu | cuda."),
    precision: str = typer.Option(
        "auto", help="Torch network arithmetic: auto (bfloat16 convolutions on CPUs with native bfloat16), fp32, bf16."
    ),
    refine: str = typer.Option(
        "auto", help="Instance optimisation per pair: auto (only pairs whose contrasts differ), a preset (fast, accurate) or an iteration count (0: none)."
    ),
    no_affine: bool = typer.Option(False, "--no-affine", help="Skip affine pre-alignment (already aligned)."),
    shard_spec: Optional[str] = typer.Option(None, "--shard", help="i/n: this job's share of the pairs."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Redo pairs that already finished."),
    strict: bool = typer.Option(False, "--strict", help="Exit with code 3 when a pair has geometry warnings."),
) -> None:
    """Register every pair of a study; finished pairs whose inputs and options are unchanged are
    skipped, failures reported at the end. Writes summary.csv (rebuilt from every pair folder),
    summary-shard-i-of-n.csv with --shard, and report.html."""
    with user_errors():
        if (pairs is None) == (moving_dir is None) or (moving_dir is not None and template is None):
            fail("give either --pairs CSV, or --moving-dir DIR with --template FIXED")
        jobs, repeats = deduplicate(pairs_from_csv(pairs) if pairs else pairs_from_folder(moving_dir, template))
        index, count = parse_shard(shard_spec)
        jobs = shard(jobs, index, count)
        probe_output_dir(out, overwrite)
        base = open_model(options_from_cli(model, backend, device, refine, no_affine, overwrite,
                                           precision=precision))  # opened once
    report_warnings([f"{pairs}: {r}" for r in repeats], strict=False)
    rows: list[dict] = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with stop_cleanly(), terminate_like_interrupt(), Progress(*columns, console=console) as progress, \
            ThreadPoolExecutor(1, thread_name_prefix="dccnn-read-ahead") as reader:
        task = progress.add_task("registering", total=len(jobs))
        options = [dataclasses.replace(base, moving_labels=str(p.moving_labels) if p.moving_labels else None,
                                       fixed_labels=str(p.fixed_labels) if p.fixed_labels else None) for p in jobs]
        ahead = reader.submit(read_ahead, jobs[0], out, options[0], overwrite) if jobs else None
        for i, pair in enumerate(jobs):
            progress.update(task, description=pair.name)
            read = ahead.result()
            if i + 1 < len(jobs):  # the next pair's files are read while this one computes
                ahead = reader.submit(read_ahead, jobs[i + 1], out, options[i + 1], overwrite)
            rows.append(run_pair(pair, out, options[i], overwrite, read))
            progress.advance(task)
    if count > 1:
        write_rows(out / shard_summary_name(index, count), rows)
    study_rows = rebuild_summary(out, rows)
    report_page = build_report(out, study_rows)
    _print_table(rows, f"batch {index}/{count}: {len(rows)} pairs (study summary: {out / 'summary.csv'})")
    console.print(f"study report: [bold]{report_page}[/]")
    for row in rows:
        if row["status"].startswith("redone"):
            err_console.print(f"[bold yellow]warning:[/] {row['pair']}: {row['status']}", highlight=False, soft_wrap=True)
    failed = sum(r["status"] == "failed" for r in rows)
    if failed:
        fail(f"{failed} of {len(rows)} pairs failed (see {out / 'summary.csv'})", code=1)
    flagged = [r for r in rows if r["warnings"]]
    if flagged:
        report_warnings([f"{r['pair']}: {r['warnings']}" for r in flagged], strict=False)
        if strict:
            fail(f"{len(flagged)} of {len(rows)} pairs have geometry warnings and --strict", code=EXIT_STRICT)
