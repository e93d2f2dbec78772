"""``dccnn export-raw``: a pair prepared for the engine (raw float32, model grid) for C/C++ users."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from dccnn_deploy.cli.common import console, fail, user_errors
from dccnn_deploy.io import load_volume
from dccnn_deploy.preprocess.affine import register_affine
from dccnn_deploy.registration.pipeline import prepare_pair
from dccnn_deploy.runtime.loading import open_network


def export_raw(
    moving: Path = typer.Argument(..., help="Moving image."),
    fixed: Path = typer.Argument(..., help="Fixed image."),
    model: Path = typer.Option(..., "--model", help="The .onnx the C++ program will run (its grid is used)."),
    out: Path = typer.Option(..., "-o", "--out", help="Folder for moving.raw, fixed.raw, grid.json."),
) -> None:
    """Affine-align, resample and normalise a pair exactly as `dccnn register` does; write raw float32."""
    with user_errors():
        net = open_network(model, "onnxruntime")
        mov, fix = load_volume(moving), load_volume(fixed)
        matrix = register_affine(mov.data, mov.affine, fix.data, fix.affine).matrix
        prepared = prepare_pair(mov, fix, matrix, net.settings)
        out.mkdir(parents=True, exist_ok=True)
        if (out / "grid.json").exists():
            fail(f"{out / 'grid.json'}: already exists")
        prepared.moving_g.tofile(out / "moving.raw")
        prepared.fixed_g.tofile(out / "fixed.raw")
        (out / "grid.json").write_text(json.dumps({
            "shape_dhw": list(prepared.grid.shape), "grid_affine_ras": prepared.grid.affine.tolist(),
            "affine_fixed_to_moving_ras": matrix.tolist(), "dtype": "float32", "order": "C (D, H, W)",
        }, indent=2))
    console.print(f"wrote {out}/moving.raw, fixed.raw, grid.json")
