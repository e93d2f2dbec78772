"""Training configuration: one :class:`TrainConfig`, read from TOML, saved in every checkpoint.

TOML layout (every key optional; defaults = the paper's model and losses on the default grid)::

    iterations = 100000        # top-level keys first (TOML puts them before any table)
    grid_shape = [80, 96, 112]
    [model]    # ModelConfig fields
    [loss]     # LossWeights fields
    [data]     # real images: DataConfig
    [augment]  # real-image augmentation and the synth corruption: AugmentConfig
    [synth]    # SynthMorph-style synthesis from label maps: SynthConfig

Relative paths in a TOML file are resolved against the file's folder; ``~`` and ``$VARS``
are expanded, so the resolved config names absolute paths.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Union

import tomllib

from dccnn_deploy.checkpoint import DEFAULT_GRID, DEFAULT_SPACING_MM
from dccnn_deploy.config import LossWeights, ModelConfig

ValSubjects = Union[int, list[str]]


def _known(cls, d: dict[str, Any] | None, section: str) -> dict[str, Any]:
    """``d`` as a dict; ``ValueError`` naming the section if it has keys ``cls`` lacks."""
    d = dict(d or {})
    unknown = set(d) - {f.name for f in fields(cls)}
    if unknown:
        raise ValueError(f"unknown key(s) {sorted(unknown)} in [{section}]")
    return d


def _check_val_subjects(value: ValSubjects, section: str) -> ValSubjects:
    if isinstance(value, bool) or not isinstance(value, (int, list)):
        raise ValueError(f"[{section}] val_subjects must be a count or a list of names, got {value!r}")
    if isinstance(value, int) and value < 0:
        raise ValueError(f"[{section}] val_subjects must be >= 0, got {value}")
    return [str(v) for v in value] if isinstance(value, list) else value


def expand_path(path: str, base: Path | None = None) -> str:
    """``~`` and ``$VAR`` expanded; a relative path is joined to ``base`` (when given)."""
    p = Path(os.path.expandvars(os.path.expanduser(path)))
    if base is not None and not p.is_absolute():
        p = base / p
    return str(p)


@dataclass
class DataConfig:
    """Real images. ``images``: files, folders or glob patterns. Label maps (optional) by
    ``labels_pattern`` (``"{stem}_seg"``: ``<dir>/<stem>_seg.nii.gz`` beside each image) or by
    ``labels_csv`` (columns ``image,labels``). ``masks_pattern`` (e.g. ``"{stem}_mask"``): brain
    masks beside the images, used to skull-strip both images of a real pair at times
    (``[augment] strip_prob``). ``template``: the reference of the affine
    pre-alignment (default: the first image). ``align``: ``"affine"``, ``"rigid"`` or ``"none"``.
    ``centre``: the model grid is centred on the reference's foreground centre of ``"mass"`` or
    on its ``"grid"`` centre. ``val_subjects``: held-out count or names.
    """

    images: list[str] = field(default_factory=list)
    labels_pattern: str = ""
    labels_csv: str = ""
    masks_pattern: str = ""
    template: str = ""
    align: str = "affine"
    centre: str = "mass"
    val_subjects: ValSubjects = 1
    max_val_pairs: int = 8

    def __post_init__(self) -> None:
        self.images = [str(p) for p in self.images]
        self.val_subjects = _check_val_subjects(self.val_subjects, "data")
        if self.align not in ("affine", "rigid", "none"):
            raise ValueError(f"[data] align must be 'affine', 'rigid' or 'none', got {self.align!r}")
        if self.centre not in ("mass", "grid"):
            raise ValueError(f"[data] centre must be 'mass' or 'grid', got {self.centre!r}")
        for name in ("labels_pattern", "masks_pattern"):
            if getattr(self, name) and "{stem}" not in getattr(self, name):
                raise ValueError(f"[data] {name} must contain '{{stem}}', got {getattr(self, name)!r}")
        if self.max_val_pairs < 1:
            raise ValueError("[data] max_val_pairs must be >= 1")


@dataclass
class AugmentConfig:
    """Random changes of real training images (``*_prob``: per image) and the intensity
    corruption of synthetic images (always applied there). Amplitudes in voxels of the grid.

    ``deform_prob``: smooth diffeomorphic deformation (stationary velocity of std
    ``velocity_std`` at control points every ``velocity_spacing`` voxels, scaling and squaring);
    ``intensity_prob``: gamma ``exp(N(0, gamma_std))``, bias field ``exp(N(0, bias_std))`` on a
    ``bias_spacing`` lattice, Gaussian blur sigma ~ U(0, ``blur_max``), noise std ~
    U(0, ``noise_max``); ``flip_prob``: both images of a pair flipped left-right;
    ``strip_prob``: both images of a real pair skull-stripped by their masks (when both have one).
    """

    deform_prob: float = 0.5
    velocity_std: float = 1.5
    velocity_spacing: int = 8
    intensity_prob: float = 0.8
    gamma_std: float = 0.25
    bias_std: float = 0.3
    bias_spacing: int = 16
    blur_max: float = 0.0
    noise_max: float = 0.03
    flip_prob: float = 0.0
    strip_prob: float = 0.0

    def __post_init__(self) -> None:
        for name in ("deform_prob", "intensity_prob", "flip_prob", "strip_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"[augment] {name} must lie in [0, 1]")
        if self.velocity_spacing < 1 or self.bias_spacing < 1:
            raise ValueError("[augment] velocity_spacing and bias_spacing must be >= 1 voxel")


@dataclass
class SynthConfig:
    """SynthMorph-style pairs: two label maps (a new random smooth deformation each draw), one
    random intensity per label shared by the pair, per-image texture, blur and the
    [augment] corruption. ``label_maps``: files, folders or globs; empty = the label maps of
    the real images (same held-out split). ``fraction``: share of synthetic pairs when real
    images are used too. ``blur_max`` / ``texture_std`` / ``velocity_*`` in voxels.
    ``interior_label`` (0: off): unlabelled voxels inside the brain hull get this label, for
    maps that label only grey matter (Desikan-Killiany); it is left out of validation Dice.
    ``independent_contrast``: probability that the two images of a pair get independent random
    contrasts (their NCC term is then left out; the label loss trains them). ``head_prob``:
    probability per image of extra-cerebral shells (CSF, skull, scalp) around the brain.
    ``shapes_fraction``: share of synthetic pairs painted from random-shape label maps
    (``shapes_count`` shapes on a ``shapes_spacing`` lattice) inside a training brain's outline.
    ``coarse_velocity_std`` / ``_spacing``: a second, coarser deformation component (voxels).
    """

    enabled: bool = False
    label_maps: list[str] = field(default_factory=list)
    val_subjects: ValSubjects = 1
    val_pairs: int = 4
    fraction: float = 0.5
    velocity_std: float = 3.0
    velocity_spacing: int = 8
    blur_max: float = 1.0
    texture_std: float = 0.05
    interior_label: int = 0
    independent_contrast: float = 0.0
    head_prob: float = 0.0
    shapes_fraction: float = 0.0
    shapes_count: int = 24
    shapes_spacing: int = 6
    coarse_velocity_std: float = 0.0
    coarse_velocity_spacing: int = 24

    def __post_init__(self) -> None:
        for name in ("independent_contrast", "head_prob", "shapes_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"[synth] {name} must lie in [0, 1]")
        if self.shapes_count < 2 or self.shapes_spacing < 1 or self.coarse_velocity_spacing < 1:
            raise ValueError("[synth] shapes_count must be >= 2, shapes_spacing and coarse_velocity_spacing >= 1")
        if not 0 <= self.interior_label < 2**24:
            raise ValueError("[synth] interior_label must lie in [0, 2**24)")
        self.label_maps = [str(p) for p in self.label_maps]
        self.val_subjects = _check_val_subjects(self.val_subjects, "synth")
        if not 0.0 <= self.fraction <= 1.0:
            raise ValueError("[synth] fraction must lie in [0, 1]")
        if self.val_pairs < 1 or self.velocity_spacing < 1:
            raise ValueError("[synth] val_pairs and velocity_spacing must be >= 1")


@dataclass
class TrainConfig:
    """Everything a training run needs. ``amp``: autocast dtype on CUDA (``"bf16"``,
    ``"fp16"`` with a grad scaler, ``"off"``); CPU runs are always float32. ``threads``:
    torch intra-op threads (0 leaves the default). ``crop_shape`` (empty: off): each training
    pair is cut to one random window of this size (the same for both images), at the grid's
    spacing: cheaper steps with the deployment's voxel size; validation uses the whole grid.
    ``init``: a checkpoint whose weights start a new run (warm start; ignored on resume).
    ``packed``: a training pack (:mod:`~dccnn_deploy.train.pack`) read instead of the data files.
    ``cascade_prob``: share of steps trained on the second pass of a test-time cascade (the
    moving image, and its labels, first pulled through the current network's own forward field
    without gradients), so that the network also learns the small residual motions that the
    inference passes after the first one see (0: every step on the raw pair, as the paper).
    ``lr_anneal_start`` / ``lr_anneal_steps`` / ``lr_final``: the learning-rate schedule
    (:meth:`learning_rate`; 0 steps: a constant ``lr``). Steps are counted from 1; validation runs
    every ``val_every`` steps and ``last.pt`` is written every ``checkpoint_every`` steps (and
    both at the last step)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossWeights = field(default_factory=LossWeights)
    grid_shape: tuple[int, int, int] = DEFAULT_GRID
    spacing_mm: float = DEFAULT_SPACING_MM
    crop_shape: tuple[int, ...] = ()
    lr: float = 1e-4
    lr_anneal_start: int = 0
    lr_anneal_steps: int = 0
    lr_final: float = 0.0
    batch_size: int = 1
    iterations: int = 100_000
    val_every: int = 1000
    checkpoint_every: int = 1000
    seed: int = 0
    amp: str = "bf16"
    threads: int = 0
    init: str = ""
    packed: str = ""
    cascade_prob: float = 0.0
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)

    def __post_init__(self) -> None:
        self.grid_shape = tuple(int(n) for n in self.grid_shape)
        if len(self.grid_shape) != 3 or min(self.grid_shape) < 2:
            raise ValueError(f"grid_shape must be three sizes >= 2, got {self.grid_shape}")
        self.crop_shape = tuple(int(n) for n in self.crop_shape)
        if self.crop_shape and (
            len(self.crop_shape) != 3 or any(not 2 <= c <= g for c, g in zip(self.crop_shape, self.grid_shape))
        ):
            raise ValueError(f"crop_shape must be three sizes in [2, grid_shape], got {self.crop_shape}")
        if self.spacing_mm <= 0 or self.lr <= 0:
            raise ValueError("spacing_mm and lr must be > 0")
        if self.batch_size < 1 or self.iterations < 0 or self.val_every < 1 or self.checkpoint_every < 1:
            raise ValueError("batch_size, val_every, checkpoint_every must be >= 1 and iterations >= 0")
        if self.amp not in ("bf16", "fp16", "off"):
            raise ValueError(f"amp must be 'bf16', 'fp16' or 'off', got {self.amp!r}")
        if not 0.0 <= self.cascade_prob <= 1.0:
            raise ValueError(f"cascade_prob must be in [0, 1], got {self.cascade_prob}")
        if min(self.lr_anneal_start, self.lr_anneal_steps) < 0 or not 0.0 <= self.lr_final <= self.lr:
            raise ValueError("lr_anneal_start and lr_anneal_steps must be >= 0 and lr_final in [0, lr]")

    def learning_rate(self, step: int) -> float:
        """The learning rate of optimizer step ``step`` (from 1): ``lr`` up to step
        ``lr_anneal_start``, then a half cosine from ``lr`` down to ``lr_final`` over
        ``lr_anneal_steps`` steps, then ``lr_final`` (0 steps: ``lr`` throughout). A function of the
        step alone: a resumed run continues the same schedule."""
        start = self.lr_anneal_start
        if self.lr_anneal_steps == 0 or step <= start:
            return self.lr
        t = min(1.0, (step - start) / self.lr_anneal_steps)
        return self.lr_final + 0.5 * (self.lr - self.lr_final) * (1.0 + math.cos(math.pi * t))

    @property
    def uses_real(self) -> bool:
        return bool(self.data.images or self.data.labels_csv)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (TOML/JSON/checkpoint safe): nested sections as dicts, tuples as lists."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["model"] = self.model.to_dict()
        d["loss"] = self.loss.to_dict()
        d["grid_shape"] = list(self.grid_shape)
        d["crop_shape"] = list(self.crop_shape)
        for name in ("data", "augment", "synth"):
            d[name] = asdict(getattr(self, name))
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], base: Path | None = None) -> "TrainConfig":
        """Inverse of :meth:`to_dict`; ``ValueError`` on unknown keys or bad values. Paths are
        expanded (and relative ones joined to ``base`` when given)."""
        d = dict(d)
        top = {f.name for f in fields(cls)}
        unknown = set(d) - top
        if unknown:
            raise ValueError(f"unknown top-level key(s) {sorted(unknown)}")
        try:
            d["model"] = ModelConfig.from_dict(_known(ModelConfig, d.get("model"), "model"))
            d["loss"] = LossWeights.from_dict(_known(LossWeights, d.get("loss"), "loss"))
            for name, section in (("data", DataConfig), ("augment", AugmentConfig), ("synth", SynthConfig)):
                d[name] = section(**_known(section, d.get(name), name))
            config = cls(**d)
        except TypeError as exc:  # wrong value types reach the dataclasses as TypeErrors
            raise ValueError(str(exc)) from None
        config.resolve_paths(base)
        return config

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TrainConfig":
        """Read a TOML file (``ValueError`` naming the file on any problem)."""
        p = Path(path)
        try:
            with open(p, "rb") as f:
                raw = tomllib.load(f)
            return cls.from_dict(raw, base=p.resolve().parent)
        except (OSError, ValueError) as exc:
            raise ValueError(f"{p}: {' '.join(str(exc).split())}") from None

    def resolve_paths(self, base: Path | None = None) -> None:
        """Expand every data path in place (see :func:`expand_path`)."""
        data, synth = self.data, self.synth
        data.images = [expand_path(p, base) for p in data.images]
        synth.label_maps = [expand_path(p, base) for p in synth.label_maps]
        for name in ("labels_csv", "template"):
            if getattr(data, name):
                setattr(data, name, expand_path(getattr(data, name), base))
        for name in ("init", "packed"):
            if getattr(self, name):
                setattr(self, name, expand_path(getattr(self, name), base))
