"""The registration pipeline, one stage after another, then the outputs.

1. load and validate both images (and label maps);           ``io``, ``registration.inputs``
   an image with a bright background (inverted) is worked on inverted back; ``preprocess.background``
2. affine pre-alignment in world coordinates;                 ``preprocess.affine``
3. resampling onto the model grid + intensity normalisation;  ``registration.prepare``
4. the network (any backend) -> forward / inverse fields;     ``runtime``
   on a pair of two contrasts, one image mapped into the other's first; ``registration.contrast``
5. instance optimisation (``refine``; by default only when the contrasts differ); ``refine``
6. composition affine o deformable: a :class:`RegistrationResult`, which computes the native-grid
   outputs on demand and writes them (``registration.result``, ``registration.outputs``).

:func:`run` computes (nothing is written); :func:`register_files` checks the output folder
first, runs, and saves: every output goes to a staging folder and is moved into place only
when all succeeded, so a failure leaves no partial outputs; existing outputs are refused
unless ``overwrite``.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

import numpy as np
import torch

from dccnn_deploy import __version__
from dccnn_deploy.io import InputError, Volume, check_outputs_free
from dccnn_deploy.models import resolve_backend
from dccnn_deploy.preprocess.affine import register_affine
from dccnn_deploy.preprocess.background import with_dark_background
from dccnn_deploy.preprocess.settings import DEFAULT_GRID, DEFAULT_SPACING_MM, PreprocessSettings
from dccnn_deploy.registration.inputs import ImageLike, to_volume
from dccnn_deploy.registration.outputs import output_files, select_outputs
from dccnn_deploy.registration.prepare import (
    PreparedPair,
    moving_on_grid,
    native_brain_mask,
    prepare_pair,
    realigned,
    strip_for_network,
)
from dccnn_deploy.registration.contrast import NetworkInput, network_input
from dccnn_deploy.registration.field_of_view import common_field_of_view
from dccnn_deploy.registration.result import RegistrationResult
from dccnn_deploy.registration.sanity_affine import overlap_warnings, similarity_warnings
from dccnn_deploy.ops.native import available as compiled_sampler
from dccnn_deploy.ops.invert import make_inverse_consistent
from dccnn_deploy.runtime.passes import MIN_PASS_GAIN, PassResult, settle_passes
from dccnn_deploy.runtime.loading import Network, check_precision, open_network
from dccnn_deploy.registration.provenance import input_record, options_record
from dccnn_deploy.registration.sanity import affine_sanity
from dccnn_deploy.registration.sanity_final import final_similarity, final_warnings
from dccnn_deploy.transform import Registration

if TYPE_CHECKING:
    from dccnn_deploy.refine import RefineSettings

Progress = Callable[[str], None]
#: after contrast mapping, the pair gets the model's passes only when its contrasts agree this
#: well: same-contrast pairs measure 0.79-0.82, ICBM T2 mapped onto Colin27 T1 0.74 (5 passes:
#: brain-mask Dice 0.976 vs 0.970 with 1); a donor pair painted with independent random
#: contrasts 0.49 under one global conditional mean (5 passes: DK Dice 0.407, 1 pass 0.406, at 5x
#: the network time), 0.87-0.89 under the local one (5 passes: 0.458 / 0.440, 1 pass 0.436 / 0.416)
MAPPED_MIN_AGREEMENT = 0.6

__all__ = ["RegisterOptions", "Stages", "run", "register_files", "open_model", "prepare_pair", "PreparedPair", "Progress"]


@dataclass
class RegisterOptions:
    """What a registration was asked for (``dccnn register``'s options; the API's keywords).

    ``model``: a resolved model file (see :func:`dccnn_deploy.models.resolve_model`), an open
    :class:`~dccnn_deploy.runtime.loading.Network`, or None for no network (``refine`` from the
    identity). ``backend`` None: chosen from the model file's kind. ``precision``: the torch
    network's arithmetic (``auto``: bfloat16 convolutions on CPUs with native bfloat16, see
    :data:`~dccnn_deploy.runtime.backends.PRECISIONS`). ``outputs``: what
    :func:`register_files` writes (None: the default outputs).
    """

    model: str | Network | None = None
    backend: str | None = None
    device: str = "cpu"
    precision: str = "auto"
    refine: int | str | RefineSettings = "auto"
    similarity: str = "auto"
    passes: int | None = None
    affine: bool = True
    moving_labels: ImageLike | None = None
    fixed_labels: ImageLike | None = None
    overwrite: bool = False
    outputs: str | Iterable[str] | None = None
    grid_shape: tuple[int, int, int] = DEFAULT_GRID
    spacing_mm: float = DEFAULT_SPACING_MM

    def check(self) -> None:
        """One-line :class:`InputError` for contradictory options (before any work)."""
        refine = _refine_settings(self)
        if self.model is None and (refine.total_iterations == 0 or refine.contrast_only):
            raise InputError("no model: none ships with this install; pass --model CHECKPOINT (model= in Python) or --refine N")
        if self.passes is not None and self.passes < 1:
            raise InputError(f"--passes {self.passes}: must be >= 1")
        if (self.moving_labels is None) != (self.fixed_labels is None):
            raise InputError("label maps: give both --moving-labels and --fixed-labels, or neither")
        if self.model is not None and not isinstance(self.model, Network):
            check_precision(self.precision, resolve_backend(self.model, self.backend), self.model)
        else:  # no model file to open: only the name is checked
            check_precision(self.precision, "torch")
        select_outputs(self.outputs, labels=self.moving_labels is not None)


@dataclass
class Stages:
    """Wall time of each stage (seconds)."""

    seconds: dict[str, float] = field(default_factory=dict)

    def run(self, name: str, fn, *args, **kwargs):
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        self.seconds[name] = round(time.perf_counter() - start, 3)
        return result


#: network passes registering the template head to a head whose brain mask it carries (head vs
#: brain): Colin27 head -> ICBM brain, brain-mask Dice 0.967 with the affine mask, 0.970 with one
#: pass, 0.971 with two (same content: 0.978)
HEAD_MASK_PASSES = 1


def _network_fields(network: Network | None, moving_g, fixed_g, passes: int = 1, inverse: bool = True,
                    settle: bool = False) -> PassResult | None:
    """The network's fields after ``passes`` (None without a network); ``inverse=False``: the forward
    path alone (the written inverse is the forward map's numerical inverse anyway), inverse None;
    ``settle``: at most ``passes``, ending at the first that no longer improves the alignment
    (:func:`~dccnn_deploy.runtime.passes.settle_passes`)."""
    if network is None:
        return None
    return settle_passes(network.backend.run, moving_g, fixed_g, passes, inverse, MIN_PASS_GAIN if settle else None)


def _affine_record(aff) -> dict:
    """What report.json says of an affine stage (:class:`~dccnn_deploy.preprocess.affine.AffineResult`)."""
    return {
        "ncc_before": aff.similarity_before,
        "ncc_after": aff.similarity_after,
        "iterations": aff.iterations,
        "cost": aff.cost, "mi_before": aff.mi_before, "mi_after": aff.mi_after, "overlap": aff.overlap,
        "content": list(aff.content), "stripped": list(aff.stripped),
    }


def _refit_affine(moving: Volume, fixed: Volume, prepared: PreparedPair, given: NetworkInput):
    """The affine stage run again with the mapped image of ``given`` (a rank map: the pair then has
    one contrast) in place of its original, the pair realigned by it: ``(AffineResult,
    PreparedPair, NetworkInput)``. MI aligns an inverted or T2 image less well than the same
    anatomy in one contrast (donor pairs: 3.8-4.0 mm from the same-content affine at the corners
    of a brain box, 1.4-2.5 mm after the refit; docs/benchmarks.md). The mapped image is the one
    mapped on its own voxels for the network (``given.mapped_native``: a rank map of an unstripped
    pair always is), not mapped again."""
    mapped = given.mapped_native
    if given.side == "moving":
        aff = register_affine(mapped, moving.affine, fixed.data, fixed.affine)
        prepared = realigned(prepared, moving.affine, aff.matrix)
        moving_in = moving_on_grid(mapped, moving.affine, prepared)
    else:
        aff = register_affine(moving.data, moving.affine, mapped, fixed.affine)
        prepared = realigned(prepared, moving.affine, aff.matrix)  # the grid and the fixed image stay
        moving_in = prepared.moving_g
    return aff, prepared, dataclasses.replace(given, moving=moving_in, mapped_native=None)


def _refit_affine_on_brain(moving: Volume, fixed: Volume, prepared: PreparedPair, stripped: PreparedPair, side: str,
                           settings: PreprocessSettings):
    """The affine stage run again, a brain against a brain: the ``side`` head (``"moving"`` /
    ``"fixed"``) times the brain mask it was stripped with for the network (carried by the
    head-to-head registration and refined at the head's own brain edge,
    :func:`~dccnn_deploy.registration.prepare.strip_for_network`), not the affinely fitted template
    mask the first affine stripped it with; the pair realigned by it and stripped again with that
    mask: ``(AffineResult, PreparedPair, network pair)``. Colin27 head moved by a known deformation
    -> Colin27 brain, AAL Dice: affine 0.794 -> 0.816, final 0.854 -> 0.865 (same content
    0.868; docs/benchmarks.md)."""
    head = moving if side == "moving" else fixed
    mask = native_brain_mask(stripped, side, head)
    brain = np.asarray(head.data, dtype=np.float32) * mask
    pair = (brain, fixed.data) if side == "moving" else (moving.data, brain)
    aff = register_affine(pair[0], moving.affine, pair[1], fixed.affine, skull="never")
    prepared = realigned(prepared, moving.affine, aff.matrix)
    return aff, prepared, strip_for_network(prepared, side, (mask, head.affine), settings)


def _passes(opts: RegisterOptions, network: Network | None, contrast: dict, preset: int | None = None) -> int:
    """Network passes: ``opts.passes``, else the refine preset's (``preset``), else the model's recommendation (metadata
    ``inference_passes``, 1 when absent) when the network's input pair agrees in contrast (after
    :func:`~dccnn_deploy.registration.contrast.network_input`) or was mapped by a monotone (rank) map, one pass when it still does
    not (more passes do not help there: docs/benchmarks.md)."""
    if opts.passes is not None or network is None:
        return opts.passes or 1
    if preset is not None:
        return preset
    from dccnn_deploy.similarity import SAME_CONTRAST_MIN_CORRELATION

    monotone = str(contrast.get("map", "")).startswith("rank")  # a rank map keeps every tissue apart
    if not monotone and contrast.get("agreement_after", contrast["agreement"]) < (
            MAPPED_MIN_AGREEMENT if contrast["mapped"] else SAME_CONTRAST_MIN_CORRELATION):
        return 1
    return network.settings.inference_passes


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


def _open(opts: RegisterOptions) -> Network | None:
    if opts.model is None or isinstance(opts.model, Network):
        return opts.model
    return open_network(opts.model, resolve_backend(opts.model, opts.backend), opts.device, opts.precision)


def open_model(opts: RegisterOptions) -> RegisterOptions:
    """``opts`` with its model file opened (an open :class:`Network`), to run many registrations
    on one network (``dccnn batch``); the same ``opts`` when the model is already open or None."""
    opts.check()
    if opts.model is None or isinstance(opts.model, Network):
        return opts
    return dataclasses.replace(opts, model=_open(opts))


def _source_file(image: ImageLike | None) -> str | Path | None:
    """The file an input comes from, for the report's record: a path, or a :class:`Volume` read
    from a file (``dccnn batch`` reads the next pair ahead); None for data in memory."""
    if isinstance(image, (str, Path)):
        return image
    path = getattr(image, "path", None) if isinstance(image, Volume) else None
    return path if path is not None and Path(path).is_file() else None


def _labels(opts: RegisterOptions, moving, fixed):
    if opts.moving_labels is None:
        return None
    labels = (to_volume(opts.moving_labels, "labels", "moving labels"), to_volume(opts.fixed_labels, "labels", "fixed labels"))
    for lab, img in zip(labels, (moving, fixed)):
        if lab.shape != img.shape:
            raise InputError.at(lab.path, f"label map shape {lab.shape} differs from its image {img.shape}")
    return labels


def run(moving: ImageLike, fixed: ImageLike, opts: RegisterOptions | None = None, progress: Progress | None = None) -> RegistrationResult:
    """Register ``moving`` to ``fixed`` in memory (nothing is written)."""
    opts = opts or RegisterOptions()
    opts.check()
    say = progress or (lambda _msg: None)
    refine_cfg = _refine_settings(opts)
    stages = Stages()
    start = time.perf_counter()
    inputs = input_record(*map(_source_file, (moving, fixed, opts.moving_labels, opts.fixed_labels)))  # before reading

    say("loading images")
    moving_v, fixed_v = stages.run("load", lambda: (to_volume(moving, "image", "moving"), to_volume(fixed, "image", "fixed")))
    labels = _labels(opts, moving_v, fixed_v)
    (moving_w, moving_flipped), (fixed_w, fixed_flipped) = stages.run(
        "background", lambda: (with_dark_background(moving_v), with_dark_background(fixed_v)))
    flipped = [side for side, f in (("moving", moving_flipped), ("fixed", fixed_flipped)) if f]
    if flipped:
        say(f"bright background ({' and '.join(flipped)}): registering the inverted image")
    if opts.model is not None:
        say("loading the model")
    network = stages.run("load_model", _open, opts) if opts.model is not None else None
    settings = network.settings if network else PreprocessSettings(tuple(opts.grid_shape), float(opts.spacing_mm))

    say("affine pre-alignment")
    if opts.affine:
        aff = stages.run("affine", register_affine, moving_w.data, moving_w.affine, fixed_w.data, fixed_w.affine)
        matrix, affine_info = aff.matrix, _affine_record(aff)
    else:
        matrix, affine_info = np.eye(4), {"skipped": True}

    say("resampling to the model grid")
    prepared = stages.run("resample", prepare_pair, moving_w, fixed_w, matrix, settings,
                          network.fit_divisor if network else None)
    say(f"network ({network.backend.name})" if network else "no network: refinement from the identity")
    network_pair, strip_warnings = prepared, []
    if opts.affine and aff.stripped and aff.brain_mask is not None:  # a head against a brain: two brains
        head_to_head = None if network is None else (
            lambda m, f: _network_fields(network, m, f, HEAD_MASK_PASSES, inverse=False).forward)
        network_pair = stages.run("strip", strip_for_network, prepared, aff.stripped[0], aff.brain_mask, settings,
                                  aff.template_head, head_to_head)
        strip_warnings = list(network_pair.warnings)
        if network is not None:
            say("affine pre-alignment again, on the head stripped with its own brain mask")
            refit, prepared, network_pair = stages.run("affine_brain", _refit_affine_on_brain, moving_w, fixed_w,
                                                       prepared, network_pair, aff.stripped[0], settings)
            matrix = refit.matrix
            affine_info = {**_affine_record(refit), "content": list(aff.content), "stripped": list(aff.stripped),
                           "refit_on_brain_mask": True}
    given = stages.run(  # a stripped head's network image exists on the grid only: mapped there
        "contrast", network_input, network_pair, moving_v.affine if network_pair.moving_g is prepared.moving_g else None,
        fixed_v.affine if network_pair.fixed_g is prepared.fixed_g else None)
    contrast = given.info
    if opts.affine and network_pair is prepared and given.side and given.contrast_map.kind.startswith("rank"):
        say(f"affine pre-alignment again, on the contrast-mapped {given.side} image")
        aff, prepared, given = stages.run("affine_refit", _refit_affine, moving_w, fixed_w, prepared, given)
        network_pair, matrix = prepared, aff.matrix
        affine_info = {**_affine_record(aff), "refit_on_mapped_contrast": True}
    moving_in, fixed_in = given.moving, given.fixed
    common, view = stages.run("field_of_view", common_field_of_view, moving_in, fixed_in, prepared.grid, moving_w, fixed_w,
                              prepared.matrix)
    if common is not None:  # one image lacks part of the other's tissue: both cut to what both show
        moving_in, fixed_in = moving_in * common, fixed_in * common
    del given  # its image mapped at full resolution is no longer needed
    refine_cfg = refine_cfg.for_pair(contrasts_differ=contrast["mapped"])
    passes = _passes(opts, network, contrast, refine_cfg.passes)
    settle = opts.passes is None and refine_cfg.passes is None and passes > 1  # the model's passes, one contrast
    refining = refine_cfg.total_iterations > 0  # refine starts from both of the network's fields
    ran = stages.run("network", _network_fields, network, moving_in, fixed_in, passes, refining, settle)
    fwd, inv = (ran.forward, ran.inverse) if ran else (None, None)
    kept = ran.kept if ran else 0
    refine_info = None
    if refining:
        say(f"refining ({refine_cfg.name})")
        fwd, inv, refine_info = stages.run("refine", _refine, refine_cfg, moving_in, fixed_in, fwd, inv)
    if fwd is not None:  # the written inverse is the numerical inverse of the forward map
        network_inverse = lambda: (_network_fields(network, moving_in, fixed_in, kept).inverse if kept  # noqa: E731
                                   else torch.zeros_like(fwd))
        fwd, inv = stages.run("invert", make_inverse_consistent, fwd, inv, fallback=network_inverse)

    moved_g = prepared.warped(fwd)
    mi = stages.run("sanity", final_similarity, prepared, moved_g)  # no registration / affine / final
    info = {
        "version": __version__,
        "torch": torch.__version__,
        "compiled_sampler": compiled_sampler(),  # dccnn_deploy/_native built and on (else PyTorch sampling)
        "moving": str(moving_v.path),
        "fixed": str(fixed_v.path),
        "model": {"path": network.path, "sha256": network.sha256} if network else None,
        "backend": network.backend.name if network else None,
        "device": opts.device,
        "passes": kept,
        "passes_scored": {"max": passes, "local_ncc": [round(v, 5) for v in ran.scores]} if ran and ran.scores else None,
        "contrast": contrast,
        "bright_background_inverted": flipped,
        "network_input_stripped": [] if network_pair is prepared else list(aff.stripped),
        "field_of_view": view,
        "refine_iterations": refine_cfg.total_iterations,
        "refine": refine_info,
        "grid": {"shape": list(prepared.grid.shape), "model_shape": list(settings.grid_shape), "spacing_mm": settings.spacing_mm},
        "affine": affine_info,
        "inputs": inputs,
        "options": options_record(opts),
        "warnings": affine_sanity(matrix, moving_w, fixed_w) + (similarity_warnings(aff.mi_before, aff.mi_after)
                                                              + overlap_warnings(aff.overlap) if opts.affine else [])
                    + strip_warnings + final_warnings(mi),
        "sanity": {"mutual_information": mi},
    }
    seconds = {**stages.seconds, "compute": round(time.perf_counter() - start, 3)}
    seconds["total"] = seconds["compute"]
    registration = Registration(affine=matrix, grid=prepared.grid, forward=fwd, inverse=inv, exact_inverse=True)
    prepared = dataclasses.replace(prepared, moving_n=None, fixed_n=None)  # the outputs read the volumes themselves
    return RegistrationResult(registration, moving_v, fixed_v, prepared, info, labels, seconds, moved_g)


def register_files(
    moving_path: ImageLike,
    fixed_path: ImageLike,
    out_dir: str | Path,
    opts: RegisterOptions | None = None,
    progress: Progress | None = None,
) -> dict:
    """Register ``moving`` to ``fixed`` and write the outputs into ``out_dir``; returns the report.

    The options and the output folder are checked before any computing (fail fast).
    """
    opts = opts or RegisterOptions()
    opts.check()
    names = select_outputs(opts.outputs, labels=opts.moving_labels is not None)
    check_outputs_free([Path(out_dir) / f for f in output_files(names)], overwrite=opts.overwrite)
    result = run(moving_path, fixed_path, opts, progress)
    (progress or (lambda _m: None))("writing outputs")
    result.save(out_dir, overwrite=opts.overwrite, outputs=names)
    return result.metrics
