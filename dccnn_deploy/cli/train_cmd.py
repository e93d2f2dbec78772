"""``dccnn train``: train DCCNN-LSTM-Reg on a folder of images or synthetic pairs from label maps.

Config precedence: defaults < ``--config`` TOML (or the checkpoint's config with ``--resume``
alone) < command-line options. Under ``torchrun`` the same command trains data-parallel.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import typer

from dccnn_deploy.checkpoint import read_checkpoint
from dccnn_deploy.io.errors import InputError, OutputExistsError
from dccnn_deploy.train import loop
from dccnn_deploy.train.config import TrainConfig


def parse_val_subjects(text: str) -> int | list[str]:
    """``"2"`` -> 2 (a count), ``"a,b"`` -> ["a", "b"] (names)."""
    text = text.strip()
    return int(text) if text.isdigit() else [s.strip() for s in text.split(",") if s.strip()]


def apply_setting(d: dict[str, Any], setting: str) -> None:
    """Apply one ``--set section.key=value`` (or ``key=value``; value in TOML syntax) to the
    config dict ``d`` in place (``ValueError`` on a malformed setting)."""
    import tomllib

    key, sep, value = setting.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"--set {setting!r}: expected key=value, e.g. synth.head_prob=0.5")
    try:
        parsed = tomllib.loads(f"v = {value.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value.strip()  # a bare string
    *sections, name = key.strip().split(".")
    target = d
    for section in sections:
        if not isinstance(target.get(section), dict):
            raise ValueError(f"--set {setting!r}: no section [{section}]")
        target = target[section]
    target[name] = parsed


def resolve_config(
    config: Path | None,
    resume: Path | None,
    data_dir: Path | None,
    synth: bool,
    labels_pattern: str | None,
    iterations: int | None,
    val_subjects: str | None,
    settings: list[str] | None = None,
) -> TrainConfig:
    """The run's config: base (TOML, checkpoint or defaults) with the command-line overrides.

    ``DATA_DIR`` holds images (label maps beside them by ``--labels-pattern``); with
    ``--synth`` and no pattern it holds label maps to synthesise from. ``--val-subjects``
    applies to the pool ``DATA_DIR`` fills (else to the real images if any, else the synthesis).
    """
    if config is not None:
        base = TrainConfig.load(config)
    elif resume is not None:
        base = TrainConfig.from_dict(read_checkpoint(resume)["train_config"])
    else:
        base = TrainConfig()
    d: dict[str, Any] = base.to_dict()
    label_maps_only = synth and data_dir is not None and not labels_pattern
    if synth:
        d["synth"]["enabled"] = True
    if labels_pattern:
        d["data"]["labels_pattern"] = labels_pattern
    if data_dir is not None:
        if not data_dir.is_dir():
            raise InputError.at(data_dir, "data folder not found")
        if label_maps_only:
            d["synth"]["label_maps"], d["data"]["images"] = [str(data_dir)], []
        else:
            d["data"]["images"] = [str(data_dir)]
    if iterations is not None:
        d["iterations"] = iterations
    if val_subjects is not None:
        section = "synth" if label_maps_only or not (d["data"]["images"] or d["data"]["labels_csv"]) else "data"
        d[section]["val_subjects"] = parse_val_subjects(val_subjects)
    for setting in settings or []:
        apply_setting(d, setting)
    return TrainConfig.from_dict(d, base=Path.cwd())


def train(
    data_dir: Path | None = typer.Argument(
        None, help="Folder of NIfTI/MGH images (with --synth and no --labels-pattern: label maps)."
    ),
    config: Path | None = typer.Option(None, "--config", "-c", help="TOML training config."),
    out: Path = typer.Option(Path("runs/train"), "--out", "-o", help="Output folder (last.pt, best.pt, log.csv)."),
    resume: Path | None = typer.Option(None, "--resume", help="Continue exactly from this last.pt."),
    synth: bool = typer.Option(False, "--synth", help="SynthMorph-style synthetic pairs from label maps."),
    labels_pattern: str | None = typer.Option(
        None, "--labels-pattern", help="Label map name beside each image, e.g. '{stem}_seg'."
    ),
    iterations: int | None = typer.Option(None, "--iterations", help="Total optimizer steps."),
    device: str = typer.Option("auto", "--device", help="cpu, cuda, cuda:N or auto."),
    val_subjects: str | None = typer.Option(
        None, "--val-subjects", help="Held-out subjects: a count or comma-separated names."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the progress bar."),
    packed: Path | None = typer.Option(None, "--packed", help="Train from a training pack (see --pack-data)."),
    pack_data: Path | None = typer.Option(
        None, "--pack-data", help="Only prepare the data and write it as a training pack (.npz) for another machine."
    ),
    init: Path | None = typer.Option(None, "--init", help="Start a new run from these weights (warm start)."),
    time_limit: float | None = typer.Option(None, "--time-limit", help="Stop after this many minutes (then validate, save)."),
    settings: list[str] = typer.Option(
        [], "--set", help="Override a config value: section.key=value (TOML value), e.g. --set batch_size=4."
    ),
) -> None:
    """Train DCCNN-LSTM-Reg (checkpoints in the package format; --resume continues exactly)."""
    try:
        cfg = resolve_config(config, resume, data_dir, synth, labels_pattern, iterations, val_subjects, settings)
        cfg.packed = str(packed) if packed is not None else cfg.packed
        cfg.init = str(init) if init is not None else cfg.init
        if pack_data is not None:
            from dccnn_deploy.train.data import build_sampler
            from dccnn_deploy.train.pack import save_pack

            path = save_pack(build_sampler(cfg), pack_data)
            typer.echo(f"training pack: {path} ({path.stat().st_size / 1e6:.1f} MB)")
            return
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        limit = None if time_limit is None else 60.0 * time_limit
        result = loop.train(cfg, out, resume=resume, device=device, progress=progress, time_limit_s=limit)
    except (InputError, OutputExistsError, ValueError) as exc:
        typer.echo(f"error: {' '.join(str(exc).split())}", err=True)
        raise typer.Exit(2) from None
    if result.last is not None:
        best = "no validation" if result.best_score is None else f"best {result.best_score:.4f}: {out / 'best.pt'}"
        typer.echo(f"step {result.step}: {result.last} ({best})")


def release(
    checkpoint: Path = typer.Argument(..., help="A training checkpoint (best.pt / last.pt)."),
    out: Path = typer.Option(..., "-o", "--out", help="Output checkpoint for registration and export."),
    name: str = typer.Option("", help="A model name recorded in the metadata."),
    passes: int | None = typer.Option(
        None, "--passes", help="Network passes registration should run for images of one contrast (metadata)."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing file."),
) -> None:
    """Drop the training state (optimizer, RNG) of a checkpoint: weights, configs and metadata stay."""
    from dccnn_deploy.checkpoint import release_checkpoint
    from dccnn_deploy.cli.common import console, user_errors

    with user_errors():
        extra = {"model_name": name} if name else {}
        if passes is not None:
            if passes < 1:
                raise InputError(f"--passes {passes}: must be >= 1")
            extra["inference_passes"] = passes
        path = release_checkpoint(checkpoint, out, overwrite=overwrite, **extra)
    console.print(f"{path}: {path.stat().st_size / 1e6:.2f} MB (from {checkpoint}, {checkpoint.stat().st_size / 1e6:.2f} MB)")
