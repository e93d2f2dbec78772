"""``dccnn params``: parameter counts of the cascade depths against the paper's Table V."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from dccnn_deploy.config import ModelConfig
from dccnn_deploy.model import DCCNNLSTMReg

PAPER_TABLE_V = {1: 767_224, 2: 870_640, 3: 974_056, 4: 1_077_472, 5: 1_180_888, 6: 1_284_304}


def params(
    channels: str = typer.Option("64,32,16,16,8", help="Pyramid channels, coarse -> fine."),
    encoder: str = typer.Option("32,16,128,128,128", help="U-Net encoder widths."),
) -> None:
    """Print parameter counts of 5 x 1 ... 5 x 6 cascades next to the paper's Table V."""
    pyr = tuple(int(c) for c in channels.split(","))
    enc = tuple(int(c) for c in encoder.split(","))
    table = Table(title=f"DCCNN-LSTM-Reg parameters (pyramid {pyr}, encoder {enc})")
    for col in ("cascade", "ours", "paper (Table V)", "difference"):
        table.add_column(col, justify="right")
    for steps, paper in PAPER_TABLE_V.items():
        cfg = ModelConfig(scales=len(pyr), steps=steps, pyramid_channels=pyr, encoder_channels=enc)
        ours = DCCNNLSTMReg(cfg).parameter_count()
        table.add_row(f"{len(pyr)} x {steps}", f"{ours:,}", f"{paper:,}", f"{ours - paper:+,}")
    Console().print(table)
