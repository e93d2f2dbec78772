"""``register_files``: the registration pipeline, one stage after another.

1. load and validate both images (and label maps);           ``io``
2. affine pre-alignment in world coordinates;                 ``preprocess.affine``
3. resampling onto the model grid + intensity normalisation;  ``preprocess.grid/intensity``
4. the network (any backend) -> forward / inverse fields;     ``runtime``
5. optional instance optimisation (``refine``);               ``refine``
6. composition affine o deformable, outputs in native grids.  ``transform``, ``registration.outputs``

Every output is written into a staging folder and moved into place only when all succeeded,
so a failure leaves no partial outputs; existing outputs are refused unless ``overwrite``.
"""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from dccnn_deploy import __version__
from dccnn_deploy.checkpoint import DEFAULT_GRID, DEFAULT_SPACING_MM
from dccnn_deploy.ops.invert import make_inverse_consistent
from dccnn_deploy.io import InputError, Volume, check_outputs_free, load_volume
from dccnn_deploy.preprocess.affine import centre_of_mass, register_affine
from dccnn_deploy.preprocess.grid import Grid, model_grid, resample_to_grid
from dccnn_deploy.preprocess.intensity import foreground_mask, normalise_intensity
from dccnn_deploy.runtime.loading import Network, open_network
from dccnn_deploy.registration.outputs import LABEL_OUTPUT, OUTPUT_FILES, StagedOutputs, stage_outputs, write_json
from dccnn_deploy.transform import Registration

Progress = Callable[[str], None]


@dataclass
class RegisterOptions:
    """What ``dccnn register`` was asked for."""

    model: str | None = None
    backend: str = "torch"
    device: str = "cpu"
    refine: int | str = 0
    similarity: str = "auto"
    affine: bool = True
    moving_labels: str | None = None
    fixed_labels: str | None = None
    overwrite: bool = False
    qc: bool = True
    grid_shape: tuple[int, int, int] = DEFAULT_GRID
    spacing_mm: float = DEFAULT_SPACING_MM


@dataclass
class Stages:
    """Wall time of each stage (seconds)."""

    seconds: dict[str, float] = field(default_factory=dict)

    def run(self, name: str, fn, *args, **kwargs):
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        self.seconds[name] = round(time.perf_counter() - start, 3)
        return result


@dataclass
class PreparedPair:
    """Both images on the model grid, normalised: what the network sees.

    ``moving_g`` went through the affine ``matrix`` (fixed world -> moving world); ``unaligned_g``
    is the moving image through the headers only (the "before" similarity).
    """

    grid: Grid
    matrix: np.ndarray
    moving_g: np.ndarray
    fixed_g: np.ndarray
    unaligned_g: np.ndarray


def prepare_pair(moving: Volume, fixed: Volume, matrix: np.ndarray, shape, spacing_mm: float) -> PreparedPair:
    """Normalise each image once, place the RAS model grid on the fixed image's foreground centre
    of mass and resample both onto it (the moving image through ``matrix``)."""
    fixed_n, moving_n = normalise_intensity(fixed.data), normalise_intensity(moving.data)
    grid = model_grid(tuple(shape), spacing_mm, centre_of_mass(fixed_n * foreground_mask(fixed_n), fixed.affine))
    return PreparedPair(
        grid=grid,
        matrix=matrix,
        moving_g=resample_to_grid(moving_n, moving.affine, grid, world_transform=matrix),
        fixed_g=resample_to_grid(fixed_n, fixed.affine, grid),
        unaligned_g=resample_to_grid(moving_n, moving.affine, grid),
    )


def _network_fields(network: Network | None, moving_g, fixed_g):
    if network is None:
        return None, None
    fwd, inv = network.backend.run(moving_g, fixed_g)
    return torch.from_numpy(np.ascontiguousarray(fwd))[None], torch.from_numpy(np.ascontiguousarray(inv))[None]


def _refine(settings, moving_g, fixed_g, fwd, inv):
    from dccnn_deploy.refine import refine

    result = refine(torch.from_numpy(moving_g)[None, None], torch.from_numpy(fixed_g)[None, None], settings, fwd, inv)
    info = {"preset": settings.name, "similarity": result.similarity, "iterations": result.iterations}
    return result.forward, result.inverse, info


def _refine_settings(opts: RegisterOptions):
    from dccnn_deploy.refine import refine_settings

    try:
        return refine_settings(opts.refine, opts.similarity)
    except ValueError as err:
        raise InputError(str(err)) from None


def register_files(
    moving_path: str | Path,
    fixed_path: str | Path,
    out_dir: str | Path,
    opts: RegisterOptions | None = None,
    progress: Progress | None = None,
) -> dict:
    """Register ``moving`` to ``fixed`` and write the outputs into ``out_dir``; returns the report."""
    opts = opts or RegisterOptions()
    say = progress or (lambda _msg: None)
    out_dir = Path(out_dir)
    settings = _refine_settings(opts)
    if opts.model is None and settings.total_iterations == 0:
        raise InputError("no model: pass --model CHECKPOINT (or train one) or --refine N")
    if (opts.moving_labels is None) != (opts.fixed_labels is None):
        raise InputError("label maps: give both --moving-labels and --fixed-labels, or neither")
    names = OUTPUT_FILES + ((LABEL_OUTPUT,) if opts.moving_labels else ())
    check_outputs_free([out_dir / name for name in names], overwrite=opts.overwrite)
    stages = Stages()
    total_start = time.perf_counter()

    say("loading images")
    moving = stages.run("load", load_volume, moving_path)
    fixed = load_volume(fixed_path)
    labels = None
    if opts.moving_labels:
        labels = (load_volume(opts.moving_labels, kind="labels"), load_volume(opts.fixed_labels, kind="labels"))
        for lab, img in ((labels[0], moving), (labels[1], fixed)):
            if lab.shape != img.shape:
                raise InputError.at(lab.path, f"label map shape {lab.shape} differs from its image {img.shape}")
    network = stages.run("load_model", open_network, opts.model, opts.backend, opts.device) if opts.model else None
    shape = network.grid_shape if network else tuple(opts.grid_shape)
    spacing = network.spacing_mm if network else opts.spacing_mm

    say("affine pre-alignment")
    if opts.affine:
        aff = stages.run("affine", register_affine, moving.data, moving.affine, fixed.data, fixed.affine)
        matrix, affine_info = aff.matrix, {
            "ncc_before": aff.similarity_before,
            "ncc_after": aff.similarity_after,
            "iterations": aff.iterations,
        }
    else:
        matrix, affine_info = np.eye(4), {"skipped": True}

    say("resampling to the model grid")
    prepared = stages.run("resample", prepare_pair, moving, fixed, matrix, shape, spacing)
    moving_g, fixed_g = prepared.moving_g, prepared.fixed_g

    say(f"network ({network.backend.name})" if network else "no network: refinement from the identity")
    fwd, inv = stages.run("network", _network_fields, network, moving_g, fixed_g)
    refine_info = None
    if settings.total_iterations > 0:
        say(f"refining ({settings.name})")
        fwd, inv, refine_info = stages.run("refine", _refine, settings, moving_g, fixed_g, fwd, inv)
    if fwd is not None:  # the written inverse is the numerical inverse of the forward map
        fwd, inv = stages.run("invert", make_inverse_consistent, fwd, inv)

    registration = Registration(affine=matrix, grid=prepared.grid, forward=fwd, inverse=inv)
    say("writing outputs")
    report = {
        "version": __version__,
        "torch": torch.__version__,
        "moving": str(moving_path),
        "fixed": str(fixed_path),
        "model": {"path": network.path, "sha256": network.sha256} if network else None,
        "backend": network.backend.name if network else None,
        "device": opts.device,
        "refine_iterations": settings.total_iterations,
        "refine": refine_info,
        "grid": {"shape": list(shape), "spacing_mm": spacing},
        "affine": affine_info,
    }
    with StagedOutputs(out_dir, opts.overwrite) as staged:
        stages.run(
            "outputs", stage_outputs, staged, registration, moving, fixed, prepared, labels, report, opts.qc
        )
        report["seconds"] = {**stages.seconds, "total": round(time.perf_counter() - total_start, 3)}
        report["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        write_json(staged.path("report.json"), report)
        staged.commit()
    return report
