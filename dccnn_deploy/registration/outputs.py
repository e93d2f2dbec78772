"""The files of a registration, written into a staging folder and moved into place together.

Each output has a short name (``--outputs moved,fwd_warp,...`` / ``save(outputs=[...])``) and
one or more files:

============== ======================= =========================================================
name           file(s)                 content
============== ======================= =========================================================
moved          moved.nii.gz            moving image on the fixed grid
inverse_moved  inverse_moved.nii.gz    fixed image on the moving grid
fwd_warp       fwd_warp.nii.gz         ITK/ANTs displacement field, affine included (fixed grid)
inv_warp       inv_warp.nii.gz         the same for the inverse map (moving grid)
fwd_transform  fwd_transform.h5        ITK composite: affine + deformable field (fixed grid)
inv_transform  inv_transform.h5        ITK composite: inverse deformable field + inverse affine
affine         affine.mat, affine.txt  the affine alone (ITK ``AffineTransform_double_3_3``)
jacobian       jacobian.nii.gz         det of the full forward map on the fixed grid
qc             qc.png                  mid-slices of fixed, moved, checkerboard, grid, Jacobian
report         report.json             the report (:attr:`RegistrationResult.metrics`)
moved_labels   moved_labels.nii.gz     the moving label map on the fixed grid (with labels)
============== ======================= =========================================================

The writers take a :class:`~dccnn_deploy.registration.result.RegistrationResult`, which
computes what they write; this module only names files and moves them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from dccnn_deploy.io import (
    BackgroundWriter,
    InputError,
    OutputExistsError,
    save_image,
    save_itk_affine,
    save_itk_composite,
)
from dccnn_deploy.io.staging import StagedOutputs

if TYPE_CHECKING:  # the result imports this module to save itself
    from dccnn_deploy.registration.result import RegistrationResult

#: output name -> its files, in writing order (the report comes last: it records the timings)
OUTPUTS: dict[str, tuple[str, ...]] = {
    "moved": ("moved.nii.gz",),
    "fwd_warp": ("fwd_warp.nii.gz",),
    "jacobian": ("jacobian.nii.gz",),
    "moved_labels": ("moved_labels.nii.gz",),
    "inverse_moved": ("inverse_moved.nii.gz",),
    "inv_warp": ("inv_warp.nii.gz",),
    "fwd_transform": ("fwd_transform.h5",),
    "inv_transform": ("inv_transform.h5",),
    "affine": ("affine.mat", "affine.txt"),
    "qc": ("qc.png",),
    "report": ("report.json",),
}
LABEL_OUTPUT = "moved_labels.nii.gz"
#: what is written when no selection is given (``moved_labels`` is added with label maps): the
#: moved image, both warps (affine included), the affine, the QC picture and the report. The
#: other outputs repeat what these hold in other forms and cost about as much again at 1 mm
#: (``"all"`` selects them too).
DEFAULT_OUTPUTS: tuple[str, ...] = ("moved", "fwd_warp", "moved_labels", "inv_warp", "affine", "qc", "report")
#: every file of a registration without label maps (``moved_labels.nii.gz`` is added with them)
OUTPUT_FILES: tuple[str, ...] = tuple(f for name, files in OUTPUTS.items() if name != "moved_labels" for f in files)
#: the files written by default without label maps
DEFAULT_FILES: tuple[str, ...] = tuple(f for name in DEFAULT_OUTPUTS if name != "moved_labels" for f in OUTPUTS[name])
_BY_FILE = {f: name for name, files in OUTPUTS.items() for f in files}


def select_outputs(requested: str | Iterable[str] | None, labels: bool) -> tuple[str, ...]:
    """Output names to write, in :data:`OUTPUTS` order: ``None`` = :data:`DEFAULT_OUTPUTS`;
    else a comma list or iterable of names, file names, ``default`` or ``all``
    (``moved_labels`` only with labels). Unknown names raise a one-line :class:`InputError`."""
    items = ["default"] if requested is None else (requested.split(",") if isinstance(requested, str) else list(requested))
    chosen = set()
    for item in (str(i).strip() for i in items):
        if item in ("default", "all"):
            chosen.update(n for n in (DEFAULT_OUTPUTS if item == "default" else OUTPUTS)
                          if labels or n != "moved_labels")
            continue
        if not item:
            continue
        name = item if item in OUTPUTS else _BY_FILE.get(item)
        if name is None:
            raise InputError(f"--outputs: unknown output {item!r}; choose from default, all, {', '.join(OUTPUTS)}")
        if name == "moved_labels" and not labels:
            raise InputError("--outputs: moved_labels needs label maps (--moving-labels and --fixed-labels)")
        chosen.add(name)
    if not chosen:
        raise InputError(f"--outputs: no output chosen; choose from {', '.join(OUTPUTS)}")
    return tuple(n for n in OUTPUTS if n in chosen)


def output_files(names: Iterable[str]) -> list[str]:
    """The file names of the outputs ``names``."""
    return [f for n in names for f in OUTPUTS[n]]




def write_json(path: Path, payload: dict) -> None:
    path.write_text(json.dumps(payload, indent=2, default=float) + "\n")


Writer = Callable[["RegistrationResult", StagedOutputs, BackgroundWriter], None]


def _affine(result: "RegistrationResult", staged: StagedOutputs, writer: BackgroundWriter) -> None:
    for name in OUTPUTS["affine"]:
        save_itk_affine(staged.path(name), result.transform.affine)


def _image(attribute: str) -> Writer:
    """Compute the image here, compress and write it in the background."""
    def write(result: "RegistrationResult", staged: StagedOutputs, writer: BackgroundWriter) -> None:
        writer.call(save_image, staged.path(OUTPUTS[attribute][0]), getattr(result, attribute))

    return write


def _composite(direction: str) -> Writer:
    def write(result: "RegistrationResult", staged: StagedOutputs, writer: BackgroundWriter) -> None:
        writer.call(save_itk_composite, staged.path(f"{direction}_transform.h5"), result.composite_steps(direction))

    return write


WRITERS: dict[str, Writer] = {
    **{name: _image(name) for name in ("moved", "fwd_warp", "jacobian", "moved_labels", "inverse_moved", "inv_warp")},
    "fwd_transform": _composite("fwd"),
    "inv_transform": _composite("inv"),
    "affine": _affine,
    "qc": lambda result, staged, writer: result.save_qc(staged.path("qc.png")),
    "report": lambda result, staged, writer: write_json(staged.path("report.json"), result.metrics),
}


def write_outputs(result: "RegistrationResult", staged: StagedOutputs, names: Iterable[str],
                  before_report: Callable[[], None] | None = None) -> None:
    """Write the outputs ``names`` of ``result`` into ``staged`` (in :data:`OUTPUTS` order): each
    output is computed here while the files before it are compressed and written in background
    threads. The report's figures are computed while the last files are still being written; the
    report itself is written last, after every other file and after ``before_report()`` (e.g. to
    record the time the files took)."""
    wanted = set(names)
    with BackgroundWriter() as writer:
        for name in OUTPUTS:
            if name in wanted and name != "report":
                WRITERS[name](result, staged, writer)
        if "report" in wanted:
            result.metrics  # noqa: B018 - a cached property: computed here, beside the writes
    if before_report is not None:
        before_report()
    if "report" in wanted:
        WRITERS["report"](result, staged, writer)


__all__ = ["OUTPUTS", "OUTPUT_FILES", "DEFAULT_OUTPUTS", "DEFAULT_FILES", "LABEL_OUTPUT", "StagedOutputs", "select_outputs", "output_files",
           "write_outputs", "write_json", "OutputExistsError"]
