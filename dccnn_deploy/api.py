"""The Python API: ``dccnn_deploy.register(moving, fixed)`` -> :class:`RegistrationResult`.

>>> import dccnn_deploy as dd
>>> result = dd.register("moving.nii.gz", "fixed.nii.gz")      # doctest: +SKIP
>>> result.moved.to_filename("moved.nii.gz")                    # doctest: +SKIP
>>> result.save("out/")                                         # doctest: +SKIP
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Callable

from dccnn_deploy.io import InputError
from dccnn_deploy.models import resolve_backend, resolve_model
from dccnn_deploy.preprocess.settings import DEFAULT_GRID, DEFAULT_SPACING_MM
from dccnn_deploy.registration.inputs import ImageLike
from dccnn_deploy.registration.pipeline import RegisterOptions, run
from dccnn_deploy.registration.result import RegistrationResult
from dccnn_deploy.runtime.loading import Network, open_network

if TYPE_CHECKING:
    from dccnn_deploy.refine import RefineSettings


def open_model(model: str | os.PathLike | None = None, backend: str | None = None, device: str = "cpu",
               precision: str = "auto") -> Network:
    """Open a model once to register many pairs: ``register(m, f, model=open_model())``.

    ``model`` None: the shipped default; ``backend`` None: from the file's kind; ``precision``
    as in :func:`register`.
    """
    path = resolve_model(model)
    if path is None:
        raise InputError("no model: none ships with this install; pass a .pt, .onnx or .engine path")
    return open_network(path, resolve_backend(path, backend), device, precision)


def register(
    moving: ImageLike,
    fixed: ImageLike,
    *,
    model: str | os.PathLike | Network | bool | None = None,
    refine: int | str | RefineSettings = "auto",
    similarity: str = "auto",
    passes: int | None = None,
    backend: str | None = None,
    device: str = "cpu",
    precision: str = "auto",
    affine: bool = True,
    moving_labels: ImageLike | None = None,
    fixed_labels: ImageLike | None = None,
    grid_shape: tuple[int, int, int] = DEFAULT_GRID,
    spacing_mm: float = DEFAULT_SPACING_MM,
    progress: Callable[[str], None] | None = None,
) -> RegistrationResult:
    """Register ``moving`` to ``fixed`` (symmetric diffeomorphic, affine pre-aligned) in memory.

    Images: a file path (``.nii``, ``.nii.gz``, ``.mgz``), a nibabel image, or ``(array,
    affine)`` with a voxel -> RAS mm affine; any orientation and spacing. Keywords mirror
    ``dccnn register``:

    * ``model``: checkpoint (``.pt``), ``.onnx`` or TensorRT ``.engine``; ``None``: the shipped
      default model; ``False``/``"none"``: no network (needs ``refine``); an open
      :class:`~dccnn_deploy.runtime.loading.Network` (load once, register many);
    * ``refine``: instance optimisation after the network: ``"auto"`` (a short one only when
      one image had to be mapped into the other's contrast), a preset (``"fast"``,
      ``"accurate"``) or an iteration count (0: none); ``similarity``: its cost (``lncc``,
      ``mind``, ``ngf``; ``auto``: ``mind`` when the contrasts differ);
    * ``passes``: network passes (None: at most the model's recommendation, ending at the first
      pass that no longer raises the local NCC; one pass when the contrasts differ);
    * ``backend``: ``torch``/``onnxruntime``/``tensorrt``; ``None``: from the model file's kind;
    * ``device``: ``cpu`` or ``cuda``; ``precision``: the torch network's arithmetic
      (``auto``: bfloat16 convolutions on CPUs with native bfloat16, ``fp32``, ``bf16``);
      ``affine``: False to skip pre-alignment;
    * ``moving_labels``/``fixed_labels``: label maps (both or neither): ``moved_labels`` and
      Dice/HD95 in ``metrics``;
    * ``grid_shape``/``spacing_mm``: the model grid when there is no network;
    * ``progress``: called with the name of each stage.

    Returns a :class:`RegistrationResult`: ``moved``, ``inverse_moved``, ``fwd_warp``,
    ``inv_warp`` (nibabel images, as ``dccnn register`` writes them), ``apply(img,
    labels=False)``, ``metrics`` (``report.json``), ``save(out_dir)``. Bad input raises
    :class:`~dccnn_deploy.io.InputError` with a one-line message.

    Example (the bundled pair)::

        import dccnn_deploy as dd
        moving, fixed = dd.sample_pair()
        result = dd.register(moving, fixed)
        print(result.metrics["similarity"]["after"]["ncc"])
        result.save("out/")
    """
    opts = RegisterOptions(
        model=model if isinstance(model, Network) else resolve_model(model),
        backend=backend, device=device, precision=precision, refine=refine, similarity=similarity, passes=passes, affine=affine,
        moving_labels=moving_labels, fixed_labels=fixed_labels,
        grid_shape=tuple(grid_shape), spacing_mm=float(spacing_mm),
    )
    return run(moving, fixed, opts, progress)

