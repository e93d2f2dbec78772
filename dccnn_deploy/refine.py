"""Instance optimisation (``--refine``): Adam on a residual stationary velocity field.

The refined maps are ``phi = phi_net o exp(v)`` and ``phi^-1 = exp(-v) o phi_net^-1``: both are
diffeomorphic when the network's maps are (exp of a velocity is, by scaling and squaring). With
no network the maps start at the identity. The objective: a similarity (``lncc``, or ``mind`` /
``ngf`` across contrasts, :mod:`dccnn_deploy.similarity`), symmetric by default (both maps),
smoothness of v and the Jacobian folding penalty on both maps.

Coarse to fine: at image resolution ``1 / f`` (``shrink_factors``) the velocity lives on a grid
``max(f, velocity_factor)`` times coarser than the model grid, so coarse levels are cheap; it is
upsampled when the images get finer. Each level stops early when the loss stops improving.
Settings come from :func:`refine_settings` (named presets or an iteration count).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

import torch
import torch.nn.functional as F

from dccnn_deploy.ops.integrate import exp_velocity
from dccnn_deploy.ops.jacobian import jacobian_determinant, spatial_gradient
from dccnn_deploy.ops.warp import compose, warp_gridsample
from dccnn_deploy.similarity import choose_similarity, make_similarity

#: smoothness weight of the refinement (lambda_3 = 1 is the paper's for training the network);
#: chosen on a known synthetic deformation of ICBM 2009c: CerebrA Dice 0.875 / 0.900 / 0.904 for
#: 1 / 0.3 / 0.1 with no folding (docs/benchmarks.md); 0.25 keeps a margin for real anatomy.
REFINE_SMOOTH = 0.25
#: weight of the similarity (lambda_1 of the paper) and of the folding penalty (lambda_2)
SIMILARITY_WEIGHT = 0.8
FOLD_WEIGHT = 1e5
#: loss scale per similarity, so that one smoothness weight suits all (a MIND / NGF loss moves
#: less than -LNCC for the same alignment gain)
SIMILARITY_SCALE = {"lncc": 1.0, "mind": 4.0, "ngf": 1.0}


@dataclass(frozen=True)
class RefineSettings:
    """How to refine: Adam ``iterations`` per level (at most; early stop), coarse to fine.

    ``shrink_factors``: image resolution of each level (1/f of the model grid);
    ``velocity_factor``: the velocity grid is at most this fine (1/velocity_factor);
    ``patience`` / ``tolerance``: a level stops when the loss improved by less than
    ``tolerance`` (relative) over the last ``patience`` iterations (0: never);
    ``similarity``: a :data:`dccnn_deploy.similarity.SIMILARITIES` name or ``auto``;
    ``symmetric``: the similarity of both maps (else the forward one only);
    ``passes``: the network passes to run before refining (None: the model's own count);
    ``contrast_only``: refine only a pair whose contrasts differ (:meth:`for_pair`).
    """

    iterations: tuple[int, ...]
    shrink_factors: tuple[int, ...] = (4, 2, 1)
    lr: float = 0.1
    smooth: float = REFINE_SMOOTH
    similarity: str = "lncc"
    symmetric: bool = True
    velocity_factor: int = 2
    window: int = 9
    patience: int = 0
    tolerance: float = 1e-3
    passes: int | None = None
    contrast_only: bool = False
    name: str = "custom"

    def __post_init__(self) -> None:
        if len(self.iterations) != len(self.shrink_factors):
            raise ValueError(f"{len(self.iterations)} iteration counts for {len(self.shrink_factors)} levels")
        if min(self.iterations, default=0) < 0 or min(self.shrink_factors, default=1) < 1:
            raise ValueError("iterations must be >= 0 and shrink factors >= 1")

    @property
    def total_iterations(self) -> int:
        return sum(self.iterations)

    def for_pair(self, contrasts_differ: bool) -> "RefineSettings":
        """The settings for one pair: nothing (no iterations, the model's own passes) when
        :attr:`contrast_only` and the two images share a contrast, else these."""
        if self.contrast_only and not contrasts_differ:
            return replace(self, iterations=(0,) * len(self.iterations), passes=None)
        return self


def _even_split(n: int, levels: int = 3) -> tuple[int, ...]:
    return tuple(n // levels + (1 if i < n % levels else 0) for i in range(levels))


_FAST = RefineSettings(iterations=(0, 30, 10), symmetric=False, patience=10, passes=1, name="fast")
#: named presets (``--refine fast``); the measurements behind them are in docs/benchmarks.md
PRESETS: dict[str, RefineSettings] = {
    # one network pass + refine: DK Dice 0.554 / 0.551 vs SyN 0.512 / 0.515 in 0.48 / 0.47 of SyN's
    # time on the held-out donor pairs (benchmarks/refine_presets.py); (0, 40, 12) after five
    # passes reached 0.562 in 0.80x
    "fast": _FAST,
    "accurate": RefineSettings(iterations=(0, 80, 40), patience=15, name="accurate"),
    # the default: `fast`, only where one image had to be mapped into the other's contrast
    # (the network learnt pairs of one contrast): T2 brain -> T1 brain CerebrA Dice 0.800 / 0.797 ->
    # 0.854 / 0.858 (same content, no refine: 0.816 / 0.815); after the model's 5 passes 0.833 / 0.832
    "auto": replace(_FAST, contrast_only=True, name="auto"),
}


def refine_settings(spec: str | int | RefineSettings, similarity: str | None = None) -> RefineSettings:
    """Parse ``--refine``: a preset name (:data:`PRESETS`; ``auto``: refine only across contrasts), an iteration count (``"200"`` or 200:
    split evenly over the 1/4, 1/2 and 1 levels, no early stop; 0 = no refinement) or settings.
    ``similarity`` (``--similarity``) overrides the preset's. Raises ``ValueError`` otherwise."""
    if isinstance(spec, RefineSettings):
        settings = spec
    elif isinstance(spec, int) or (isinstance(spec, str) and spec.strip().lstrip("-").isdigit()):
        n = int(spec)
        if n < 0:
            raise ValueError(f"--refine {spec}: iterations must be >= 0")
        settings = RefineSettings(iterations=_even_split(n), name=str(n))
    elif isinstance(spec, str) and spec.strip().lower() in PRESETS:
        settings = PRESETS[spec.strip().lower()]
    else:
        raise ValueError(f"--refine {spec!r}: expected an iteration count or one of {', '.join(PRESETS)}")
    if similarity is not None:
        if similarity != "auto":
            make_similarity(similarity)  # validates the name
        settings = replace(settings, similarity=similarity)
    return settings


@dataclass
class RefineResult:
    """Refined ``forward`` / ``inverse`` voxel displacements ``(1, 3, D, H, W)``, the loss
    history, the similarity used and the iterations run per level."""

    forward: torch.Tensor
    inverse: torch.Tensor
    history: list[float] = field(default_factory=list)
    similarity: str = "lncc"
    iterations: list[int] = field(default_factory=list)


def _resize_field(disp: torch.Tensor, size) -> torch.Tensor:
    """Trilinear resize of a voxel displacement to ``size`` (``align_corners=True`` geometry)."""
    if tuple(disp.shape[2:]) == tuple(size):
        return disp
    scale = torch.tensor(
        [(n_out - 1) / max(n_in - 1, 1) for n_in, n_out in zip(disp.shape[2:], size)], dtype=disp.dtype
    ).view(1, 3, 1, 1, 1)
    return F.interpolate(disp, size=tuple(size), mode="trilinear", align_corners=True) * scale


def _resize_image(img: torch.Tensor, size) -> torch.Tensor:
    if tuple(img.shape[2:]) == tuple(size):
        return img
    return F.interpolate(img, size=tuple(size), mode="trilinear", align_corners=True)


def _level_size(size, factor: int) -> list[int]:
    return [max(n // factor, 4) for n in size]


def _to_grid(velocity: torch.Tensor, model_size) -> torch.Tensor:
    """``(1, 3, 1, 1, 1)`` factors: model-grid voxels -> the velocity grid's voxels, per axis."""
    return torch.tensor(
        [(n_v - 1) / max(n_m - 1, 1) for n_v, n_m in zip(velocity.shape[2:], model_size)], dtype=velocity.dtype
    ).view(1, 3, 1, 1, 1)


def _smoothness(velocity: torch.Tensor, model_size) -> torch.Tensor:
    """Mean squared gradient of the velocity (model-grid voxels per model-grid voxel: the same
    weight means the same smoothness whatever the velocity grid)."""
    return spatial_gradient(velocity * _to_grid(velocity, model_size)).pow(2).sum(dim=(1, 2)).mean()


def refine(
    moving: torch.Tensor,
    fixed: torch.Tensor,
    settings: RefineSettings | int | str,
    forward: torch.Tensor | None = None,
    inverse: torch.Tensor | None = None,
    progress: Callable[[int, float], None] | None = None,
) -> RefineResult:
    """Refine a registration of ``moving`` to ``fixed`` (``(1, 1, D, H, W)``, same grid).

    ``settings``: :class:`RefineSettings`, a preset name or an iteration count
    (:func:`refine_settings`). ``progress(i, loss)`` after each step.
    """
    s = refine_settings(settings)
    size = list(moving.shape[2:])
    sim_name = choose_similarity(s.similarity, moving, fixed)
    sim = make_similarity(sim_name, s.window)
    scale = SIMILARITY_SCALE[sim_name] * SIMILARITY_WEIGHT * (1.0 if s.symmetric else 2.0)
    fwd0 = None if forward is None else forward.detach()
    inv0 = None if inverse is None else inverse.detach()
    velocity: torch.Tensor | None = None  # model-grid voxel units, on the current velocity grid
    history: list[float] = []
    ran: list[int] = []
    for factor, n_iter in zip(s.shrink_factors, s.iterations):
        if n_iter == 0:
            ran.append(0)
            continue
        lsize = _level_size(size, factor)
        vsize = _level_size(size, max(factor, s.velocity_factor))
        velocity = _new_velocity(velocity, vsize)
        opt = torch.optim.Adam([velocity], lr=s.lr)
        mov_f = sim.features(_resize_image(moving, lsize))
        fix_f = sim.features(_resize_image(fixed, lsize))
        f0 = None if fwd0 is None else _resize_field(fwd0, lsize)
        i0 = None if inv0 is None else _resize_field(inv0, lsize)
        level_start = len(history)
        for _ in range(n_iter):
            opt.zero_grad()
            phi, phi_inv = _maps(velocity, f0, i0, size, lsize, s.symmetric)
            loss_sim = sim.loss(warp_gridsample(mov_f, phi), fix_f)
            maps = phi
            if s.symmetric:
                loss_sim = loss_sim + sim.loss(warp_gridsample(fix_f, phi_inv), mov_f)
                maps = torch.cat([phi, phi_inv])
            fold = F.relu(-jacobian_determinant(maps)).mean()
            loss = scale * loss_sim + s.smooth * _smoothness(velocity, size) + FOLD_WEIGHT * fold
            loss.backward()
            opt.step()
            history.append(float(loss.detach()))
            if progress:
                progress(len(history), history[-1])
            if _converged(history[level_start:], s.patience, s.tolerance):
                break
        ran.append(len(history) - level_start)
    with torch.no_grad():
        if velocity is None:
            zeros = moving.new_zeros((1, 3, *size))
            phi = zeros if fwd0 is None else fwd0
            phi_inv = zeros if inv0 is None else inv0
        else:
            phi, phi_inv = _maps(velocity, fwd0, inv0, size, size, True)
    return RefineResult(forward=phi, inverse=phi_inv, history=history, similarity=sim_name, iterations=ran)


def _new_velocity(previous: torch.Tensor | None, vsize) -> torch.Tensor:
    """A leaf velocity on ``vsize``: zeros, or ``previous`` resampled (values stay in model voxels)."""
    if previous is None:
        return torch.zeros((1, 3, *vsize), requires_grad=True)
    with torch.no_grad():
        v = _resize_image(previous.detach(), vsize)
    return v.requires_grad_(True)


def _converged(losses: list[float], patience: int, tolerance: float) -> bool:
    """Relative improvement over the last ``patience`` steps below ``tolerance`` (means of 3)."""
    if patience <= 0 or len(losses) < patience + 3:
        return False
    now = sum(losses[-3:]) / 3
    before = sum(losses[-patience - 3 : -patience]) / 3
    return (before - now) < tolerance * max(abs(before), 1e-8)


def _maps(velocity: torch.Tensor, fwd0, inv0, model_size, size, both: bool):
    """phi_net o exp(v) and exp(-v) o phi_net^-1 on a grid of ``size`` (no network: exp(+-v)).

    ``velocity`` is in model-grid voxels; exp(+-v) is integrated on the velocity's own grid
    (in its voxels), then resized. ``both=False`` skips the inverse (returns None).
    """
    v = velocity * _to_grid(velocity, model_size)
    ex = _resize_field(exp_velocity(torch.cat([v, -v]) if both else v, steps=6), size)
    phi = ex[:1] if fwd0 is None else compose(fwd0, ex[:1], sampler=warp_gridsample)
    if not both:
        return phi, None
    phi_inv = ex[1:] if inv0 is None else compose(ex[1:], inv0, sampler=warp_gridsample)
    return phi, phi_inv
