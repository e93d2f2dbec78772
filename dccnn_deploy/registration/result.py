"""A computed registration, in memory: images, warps and metrics on demand; :meth:`save` writes them.

:func:`dccnn_deploy.register` returns a :class:`RegistrationResult`. Every output is computed
the first time it is asked for and kept, so ``save`` after reading ``result.moved`` does not
compute it twice. The images are the ones ``dccnn register`` writes (same arrays, same headers).
"""

from __future__ import annotations

import resource
import time
from functools import cached_property
from pathlib import Path
from typing import Iterable

import nibabel as nib
import numpy as np
import torch

from dccnn_deploy.io import Volume, check_outputs_free, itk_displacement_image, volume_image
from dccnn_deploy.preprocess.grid import Grid
from dccnn_deploy.registration.inputs import ImageLike, to_volume
from dccnn_deploy.registration.outputs import OUTPUTS, StagedOutputs, output_files, select_outputs, write_outputs
from dccnn_deploy.registration.prepare import PreparedPair
from dccnn_deploy.registration.quality import field_metrics, image_metrics, label_metrics
from dccnn_deploy.transform import Registration, apply_matrix, map_jacobian, sample_at, unfold_map, world_displacement


class RegistrationResult:
    """Moving -> fixed registration: ``transform`` (affine o deformable) and the inputs it came from.

    Images (nibabel, as ``dccnn register`` writes them): :attr:`moved`, :attr:`inverse_moved`,
    :attr:`fwd_warp`, :attr:`inv_warp` (ITK/ANTs displacement fields, affine included),
    :attr:`jacobian`, :attr:`moved_labels`. :attr:`metrics` is the ``report.json`` content;
    :meth:`apply` resamples any other image; :meth:`save` writes the files.
    """

    def __init__(
        self,
        transform: Registration,
        moving: Volume,
        fixed: Volume,
        prepared: PreparedPair,
        info: dict,
        labels: tuple[Volume, Volume] | None = None,
        seconds: dict[str, float] | None = None,
        moved_g: np.ndarray | None = None,
    ):
        self.transform = transform
        self.moving, self.fixed = moving, fixed
        self.prepared = prepared
        self.labels = labels
        self._info = info
        self.seconds = dict(seconds or {})
        self._written_folds: dict[str, dict[str, int]] = {}  # per written map, once it is built
        self.fixed_grid = Grid(fixed.shape, fixed.affine)
        self.moving_grid = Grid(moving.shape, moving.affine)
        if moved_g is not None:  # already warped (``prepared.warped(transform.forward)``): filled into the cache
            self.__dict__["_moved_g"] = moved_g

    # ------------------------------------------------------------------ maps, sampled once
    @cached_property
    def _fwd_points(self) -> torch.Tensor:
        """Moving-world positions of the fixed grid's voxels ``(1, 3, *fixed.shape)``: the written
        forward map (:meth:`_unfolded`)."""
        return self._unfolded("written_forward", self.transform.forward_points(self.fixed_grid), self.fixed_grid)

    @cached_property
    def _inv_points(self) -> torch.Tensor:
        """Fixed-world positions of the moving grid's voxels ``(1, 3, *moving.shape)``: the written
        inverse map (:meth:`_unfolded`)."""
        return self._unfolded("written_inverse", self.transform.inverse_points(self.moving_grid), self.moving_grid)

    def _unfolded(self, name: str, points: torch.Tensor, grid: Grid) -> torch.Tensor:
        """A written map where its Jacobian folds anywhere smoothed there (:func:`unfold_map`; the
        counts land in the report's ``fields[name]``). Affine-only maps, and an
        orientation-reversing affine (a flip, which the affine checks report), are left as they are."""
        if self.transform.forward is None or np.linalg.det(self.transform.affine[:3, :3]) <= 0:
            return points
        points, folded, remaining = unfold_map(points, grid)
        self._written_folds[name] = {"folded_voxels_repaired": folded - remaining, "folded_voxels_left": remaining}
        return points

    @cached_property
    def _moved_g(self) -> np.ndarray:
        """The moving image on the model grid after the whole registration (similarity, QC)."""
        return self.prepared.warped(self.transform.forward)

    # ------------------------------------------------------------------ images
    @cached_property
    def moved(self) -> nib.Nifti1Image:
        """The moving image resampled onto the fixed grid (trilinear, zero outside)."""
        return volume_image(sample_at(self.moving.data, self.moving.affine, self._fwd_points), self.fixed.affine)

    @cached_property
    def inverse_moved(self) -> nib.Nifti1Image:
        """The fixed image resampled onto the moving grid through the inverse map."""
        return volume_image(sample_at(self.fixed.data, self.fixed.affine, self._inv_points), self.moving.affine)

    @cached_property
    def fwd_warp(self) -> nib.Nifti1Image:
        """Forward displacement field on the fixed grid, affine included (ITK/ANTs: LPS mm, X×Y×Z×1×3)."""
        return itk_displacement_image(world_displacement(self._fwd_points, self.fixed_grid, lps=True), self.fixed.affine, lps=True)

    @cached_property
    def inv_warp(self) -> nib.Nifti1Image:
        """Inverse displacement field on the moving grid, affine included (ITK/ANTs convention)."""
        return itk_displacement_image(world_displacement(self._inv_points, self.moving_grid, lps=True), self.moving.affine, lps=True)

    @cached_property
    def jacobian(self) -> nib.Nifti1Image:
        """Jacobian determinant of the full forward map on the fixed grid."""
        return volume_image(map_jacobian(self._fwd_points, self.fixed_grid), self.fixed.affine)

    @cached_property
    def moved_labels(self) -> nib.Nifti1Image | None:
        """The moving label map on the fixed grid (nearest neighbour); None without label maps."""
        if self.labels is None:
            return None
        return volume_image(self._moved_label_array, self.fixed.affine)

    @cached_property
    def _moved_label_array(self) -> np.ndarray:
        return sample_at(self.labels[0].data, self.moving.affine, self._fwd_points, labels=True)

    def apply(self, image: ImageLike, labels: bool = False, inverse: bool = False) -> nib.Nifti1Image:
        """Resample an image of the moving space onto the fixed grid (``inverse``: an image of the
        fixed space onto the moving grid); ``labels``: nearest neighbour, integer output.

        ``image``: a path, a nibabel image, ``(array, affine)`` or a Volume, in any grid of its
        space (world coordinates are used, as ``dccnn apply`` does).
        """
        vol = to_volume(image, "labels" if labels else "image", name="image")
        points, target = (self._inv_points, self.moving) if inverse else (self._fwd_points, self.fixed)
        return volume_image(sample_at(vol.data, vol.affine, points, labels=labels), target.affine)

    # ------------------------------------------------------------------ composite transforms
    def composite_steps(self, direction: str) -> list:
        """ITK composite steps (see :func:`dccnn_deploy.io.save_itk_composite`) of ``"fwd"``/``"inv"``.

        Both fields are sampled on the fixed grid, as ANTs' ``Composite.h5`` /
        ``InverseComposite.h5``: forward = affine o deformable (the field is applied first),
        inverse = deformable^-1 o affine^-1. The fields exclude the affine (no double counting).
        """
        matrix = self.transform.affine
        if direction == "fwd":
            deformable = apply_matrix(np.linalg.inv(matrix), self._fwd_points)  # M^-1 o T
            return [matrix, (world_displacement(deformable, self.fixed_grid), self.fixed.affine)]
        if direction == "inv":
            t = self.transform
            inverse_only = Registration(np.eye(4), t.grid, t.forward, t.inverse, exact_inverse=t.exact_inverse)
            field = world_displacement(inverse_only.inverse_points(self.fixed_grid), self.fixed_grid)
            return [(field, self.fixed.affine), np.linalg.inv(matrix)]
        raise ValueError(f"direction must be 'fwd' or 'inv', got {direction!r}")

    # ------------------------------------------------------------------ report
    @cached_property
    def metrics(self) -> dict:
        """The report (``report.json``): inputs, model, timings, similarity, field and label figures."""
        prepared = self.prepared
        report = dict(self._info)
        if self.labels is not None:
            affine_only = Registration(affine=self.transform.affine, grid=self.transform.grid)
            affine_labels = sample_at(
                self.labels[0].data, self.moving.affine, affine_only.forward_points(self.fixed_grid), labels=True
            )
            report["labels"] = {
                "after_affine": label_metrics(affine_labels, self.labels[1].data, self.fixed.spacing),
                "after": label_metrics(self._moved_label_array, self.labels[1].data, self.fixed.spacing),
            }
        report["similarity"] = {
            "before": image_metrics(prepared.unaligned_g, prepared.fixed_g),
            "after_affine": image_metrics(prepared.moving_g, prepared.fixed_g),
            "after": image_metrics(self._moved_g, prepared.fixed_g),
        }
        report["fields"] = field_metrics(self.transform.forward, self.transform.inverse)
        report["fields"].update(self._written_folds)  # the written maps built so far (and checked)
        report["seconds"] = self.seconds
        self._update_rss(report)
        return report

    @staticmethod
    def _update_rss(report: dict) -> None:
        report["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)

    def save_qc(self, path: str | Path) -> Path:
        """Write the QC figure (model grid mid-slices) to ``path``."""
        from dccnn_deploy.metrics import jacobian_map
        from dccnn_deploy.registration.qc import save_qc_png

        fixed_g = self.prepared.fixed_g
        forward = self.transform.forward
        fwd = forward[0].numpy() if forward is not None else np.zeros((3, *fixed_g.shape), np.float32)
        title = f"{Path(str(self.moving.path)).name} -> {Path(str(self.fixed.path)).name}"
        save_qc_png(path, fixed_g, self._moved_g, fwd, jacobian_map(fwd), title=title)
        return Path(path)

    # ------------------------------------------------------------------ writing
    def save(self, out_dir: str | Path, overwrite: bool = False, outputs: str | Iterable[str] | None = None) -> list[Path]:
        """Write the outputs (default: those of ``dccnn register``) into ``out_dir``.

        ``outputs``: names or file names (see :mod:`dccnn_deploy.registration.outputs`), e.g.
        ``["moved", "fwd_warp", "report"]``, ``"default"`` or ``"all"``. Files are written to a staging folder and moved into
        place only when all succeeded; existing files are refused unless ``overwrite``
        (:class:`~dccnn_deploy.io.OutputExistsError`, raised before anything is written).
        Returns the written paths.
        """
        out_dir = Path(out_dir)
        names = select_outputs(outputs, labels=self.labels is not None)
        check_outputs_free([out_dir / f for f in output_files(names)], overwrite=overwrite)
        start = time.perf_counter()

        def record_time() -> None:  # the report (written last) includes the time of the other files
            self.seconds["outputs"] = round(time.perf_counter() - start, 3)
            self.seconds["total"] = round(self.seconds.get("compute", 0.0) + self.seconds["outputs"], 3)
            if "report" in names:
                self._update_rss(self.metrics)

        with StagedOutputs(out_dir, overwrite, managed=output_files(OUTPUTS)) as staged:
            write_outputs(self, staged, names, before_report=record_time)
            return staged.commit()
