"""``dccnn evaluate``: Dice / HD95 tables of label maps (per label and mean), screen and CSV."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Optional

import numpy as np
import typer
from rich.table import Table

from dccnn_deploy.cli.common import console, fail, user_errors
from dccnn_deploy.io import atomic_write, load_volume
from dccnn_deploy.metrics import dice, hd95, mean_of


def evaluate(
    moved_labels: Path = typer.Argument(..., help="Warped (moved) label map."),
    fixed_labels: Path = typer.Argument(..., help="Reference label map on the same grid."),
    out: Optional[Path] = typer.Option(None, "-o", "--out", help="CSV with one row per label and the mean."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing CSV."),
) -> None:
    """Dice and HD95 (mm) of MOVED_LABELS against FIXED_LABELS."""
    with user_errors():
        moved = load_volume(moved_labels, kind="labels")
        fixed = load_volume(fixed_labels, kind="labels")
        if moved.shape != fixed.shape or not np.allclose(moved.affine, fixed.affine, atol=1e-3):
            fail(f"{moved_labels}: grid differs from {fixed_labels} (resample with `dccnn apply` first)")
        labels = sorted(int(l) for l in np.union1d(np.unique(moved.data), np.unique(fixed.data)) if l != 0)
        d = dice(moved.data, fixed.data, labels)
        h = hd95(moved.data, fixed.data, fixed.spacing, labels)
        rows = [(str(l), d[l], h[l]) for l in labels] + [("mean", mean_of(d), mean_of(h))]
        if out is not None:
            def write(tmp: Path) -> None:
                with open(tmp, "w", newline="") as f:
                    w = csv.writer(f)
                    w.writerow(["label", "dice", "hd95_mm"])
                    w.writerows(rows)

            atomic_write(out, write, overwrite=overwrite)
    table = Table(title=f"{moved_labels.name} vs {fixed_labels.name}")
    for col in ("label", "Dice", "HD95 (mm)"):
        table.add_column(col, justify="right")
    for label, dv, hv in rows:
        table.add_row(label, f"{dv:.4f}", f"{hv:.2f}")
    console.print(table)
