"""The compiled kernels (``dccnn_deploy/_native/trilinear.c``) of the CPU path: trilinear sampling
(also differentiable in the displacement), the Jacobian determinant, the numerical inverse's
Newton iteration and the written inverse's preimage step.

PyTorch's CPU ``grid_sample`` reads each channel of each corner from its own plane, and its 3-D
kernel is not vectorised. The C kernel keeps a volume channels-last, so one set of corner indices
and weights serves all channels: on the 2-core VM an 8-channel 80 x 96 x 96 feature warp takes
~10 ms instead of ~80 ms (the 2-D mosaic, ``ops.warp``) and a 1 mm image ~0.24 s instead of
~0.87 s (docs/benchmarks.md). Same values as ``grid_sample(mode="bilinear",
align_corners=True)`` within float rounding; the other kernels compute what their PyTorch
versions in ``ops.jacobian``, ``ops.invert`` and ``transform`` compute, which stay as the
reference and the fallback (tests compare both).

The library is an optional extension built with the package (``setup.py``); without it (no
compiler at install, another platform), or with ``DCCNN_NATIVE=0`` in the environment,
:func:`available` is False and ``ops.warp`` samples with PyTorch as before. Calls go through
ctypes, which releases the GIL, so the output points are split between ``torch.get_num_threads()``
Python threads.
"""

from __future__ import annotations

import ctypes
import importlib.machinery
import math
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

#: channel counts the kernel serves (its per-point accumulator)
MAX_CHANNELS = 64
#: channel counts the differentiable sampling serves (``dccnn_trilinear_grad``'s accumulators)
MAX_SLOPE_CHANNELS = 16
#: widest Gaussian the compiled smoothing serves (taps each side; ``dccnn_smooth_axis``)
MAX_SMOOTH_RADIUS = 15
#: fewest output points worth splitting between threads
MIN_POINTS_PER_THREAD = 16_384
_LIBRARY_DIR = Path(__file__).resolve().parent.parent / "_native"
_DISPLACEMENT, _GRID = 0, 1


@lru_cache(maxsize=1)
def _library():
    """The loaded library (its functions typed), or None when it is not built or ``DCCNN_NATIVE=0``."""
    if os.environ.get("DCCNN_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = _LIBRARY_DIR / f"_trilinear{suffix}"
        if path.is_file():
            try:
                lib = ctypes.CDLL(str(path))
                trilinear, jacobian, newton = lib.dccnn_trilinear, lib.dccnn_jacobian_det, lib.dccnn_newton_inverse
                preimage, trilinear_grad = lib.dccnn_preimage, lib.dccnn_trilinear_grad
                lstm, smooth, upsample = lib.dccnn_lstm_euler, lib.dccnn_smooth_axis, lib.dccnn_upsample2x
                joint, joint_grad = lib.dccnn_parzen_joint, lib.dccnn_parzen_grad
            except (OSError, AttributeError):
                return None
            p, i, n, f = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_float
            trilinear.argtypes = [p, i, i, i, i, p, i, i, i, n, i, p, n, n, i, n, n]
            jacobian.argtypes = [p, i, i, i, f, i, p, n, n]
            smooth.argtypes = [p, p, i, i, i, i, p, i, n, n]
            newton.argtypes = [p, i, i, i, p, p, f, f, n, n]
            preimage.argtypes = [p, i, i, i, p, p, i, i, i, p, f, p, n, n, n, n]
            trilinear_grad.argtypes = [p, i, i, i, i, p, i, i, n, p, p, n, n]
            lstm.argtypes = [p, n, i, p, p, p, f, p, p, p, n, i, n, n, n]
            upsample.argtypes = [p, i, i, i, i, i, i, f, p, n, n, p, i, n, n]
            joint.argtypes = [p, n, p, p, i, p, n, n]
            joint_grad.argtypes = [p, n, i, p, p, i, p, p, n, n]
            for fn in (trilinear, jacobian, preimage, trilinear_grad, lstm, smooth, upsample, joint, joint_grad):
                fn.restype = ctypes.c_int
            newton.restype = ctypes.c_double
            return lib
    return None


def available() -> bool:
    """Whether the compiled sampler is loaded (and not disabled by ``DCCNN_NATIVE=0``)."""
    return _library() is not None


@lru_cache(maxsize=8)
def _pool(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dccnn-sample")


if hasattr(os, "register_at_fork"):  # a forked child has the pool objects but not their threads
    os.register_at_fork(after_in_child=_pool.cache_clear)


def _split(call, n: int, points: int) -> list[int]:
    """``call(start, stop)`` over ``range(n)`` in consecutive parts, one a thread
    (``torch.get_num_threads()``, fewer for small jobs: ``points`` output points in all);
    the return values."""
    threads = max(1, min(torch.get_num_threads(), points // MIN_POINTS_PER_THREAD, n))
    if threads == 1:
        return [call(0, n)]
    bounds = [n * k // threads for k in range(threads + 1)]
    return list(_pool(threads).map(lambda k: call(bounds[k], bounds[k + 1]), range(threads)))


def serves(volume: torch.Tensor) -> bool:
    """Whether :class:`NativeSource` can sample ``volume`` ``(B, C, D, H, W)``: the library is
    loaded, the volume is on the CPU, has 1..:data:`MAX_CHANNELS` channels and needs no gradient,
    and no graph is being recorded (ONNX export, tracing, compiling: the kernel is opaque to them)."""
    return (available() and volume.dim() == 5 and volume.device.type == "cpu"
            and 1 <= volume.shape[1] <= MAX_CHANNELS
            and not (torch.is_grad_enabled() and volume.requires_grad)
            and not _recording_graph())


def serves_displacement(displacement: torch.Tensor) -> bool:
    """Whether the compiled determinant serves a displacement ``(B, 3, D, H, W)``: float32 (it
    computes in float32; other dtypes keep their precision in PyTorch) and :func:`serves`."""
    return displacement.dim() == 5 and displacement.shape[1] == 3 and displacement.dtype == torch.float32 and serves(
        displacement)


def _recording_graph() -> bool:
    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        return True
    exporter = sys.modules.get("torch.onnx")  # not imported: no export under way (importing it costs ~30 ms)
    return bool(exporter is not None and exporter.is_in_onnx_export())


def _batch(items: list[torch.Tensor]) -> torch.Tensor:
    return items[0].unsqueeze(0) if len(items) == 1 else torch.stack(items)


class NativeSource:
    """A ``(B, C, D, H, W)`` volume copied once channels-last (float32), sampled trilinearly by the C
    kernel at voxel displacements on its own grid (:meth:`displaced`) or at a ``grid_sample`` grid
    (:meth:`at_grid`). ``padding``: ``"zeros"`` or ``"border"``, as in ``grid_sample``."""

    def __init__(self, volume: torch.Tensor, padding: str):
        if padding not in ("zeros", "border"):
            raise ValueError(f"padding must be 'zeros' or 'border', got {padding!r}")
        self.shape = tuple(volume.shape)
        self.zeros = int(padding == "zeros")
        self.data = volume.detach().float().permute(0, 2, 3, 4, 1).contiguous()  # (B, D, H, W, C)

    def _run(self, b: int, where: torch.Tensor, mode: int, out_shape: tuple[int, ...],
             into: tuple[torch.Tensor, int] | None = None) -> torch.Tensor:
        """Sample volume ``b`` at ``where``: a new planar ``(C, *out_shape)`` float32 tensor, or
        written channels-last into ``into = (buffer, channel)``: ``buffer`` one channels-last
        ``(C_buffer, *out_shape)`` volume (float32 or bfloat16), channels ``channel ..
        channel + C - 1`` of it."""
        kernel = _library().dccnn_trilinear
        _, c, d, h, w = self.shape
        n = math.prod(out_shape)
        if into is None:
            out = torch.empty((c, *out_shape), dtype=torch.float32)
            target, point_stride, channel_stride, bf16 = out.data_ptr(), 1, n, 0
        else:
            out, channel = into
            target = out.data_ptr() + channel * out.element_size()
            point_stride, channel_stride, bf16 = out.shape[0], 1, int(out.dtype == torch.bfloat16)
        oh, ow = (out_shape[1], out_shape[2]) if mode == _DISPLACEMENT else (0, 0)
        args = (self.data[b].data_ptr(), d, h, w, c, where.data_ptr(), mode, oh, ow, n, self.zeros, target,
                point_stride, channel_stride, bf16)
        status = _split(lambda start, stop: kernel(*args, start, stop), n, n)
        if any(status):
            raise RuntimeError(f"native sampler refused {c} channels")
        return out

    def displaced(self, disp: torch.Tensor) -> torch.Tensor:
        """``volume o (id + disp)`` (``warp_gridsample``): ``disp`` ``(B, 3, *S_out)`` in voxels of this
        volume's grid (channel k displaces array axis k; output voxel ``p`` reads the volume at
        ``p + disp(p)``). Returns ``(B, C, *S_out)`` float32."""
        if disp.dim() != 5 or disp.shape[1] != 3 or disp.shape[0] != self.shape[0]:
            raise ValueError(f"displacement {tuple(disp.shape)} does not match the volume {self.shape}")
        disp = disp.detach().float().contiguous()
        return _batch([self._run(b, disp[b], _DISPLACEMENT, tuple(disp.shape[2:])) for b in range(self.shape[0])])

    def displaced_into(self, disp: torch.Tensor, buffer: torch.Tensor, channel: int) -> None:
        """:meth:`displaced`, written into channels ``channel .. channel + C - 1`` of ``buffer``
        ``(B, C_buffer, *S_out)``, channels-last, float32 or bfloat16 (rounded to nearest even, as
        ``Tensor.to``): a convolution's input assembled without a concatenation."""
        if (disp.dim() != 5 or disp.shape[:2] != (self.shape[0], 3) or buffer.shape[0] != self.shape[0]
                or buffer.shape[2:] != disp.shape[2:] or not 0 <= channel <= buffer.shape[1] - self.shape[1]
                or buffer.dtype not in (torch.float32, torch.bfloat16)
                or not buffer.is_contiguous(memory_format=torch.channels_last_3d)):
            raise ValueError(f"displaced_into: volume {self.shape}, displacement {tuple(disp.shape)}, buffer "
                             f"{tuple(buffer.shape)} {buffer.dtype} at channel {channel}")
        disp = disp.detach().float().contiguous()
        for b in range(self.shape[0]):
            self._run(b, disp[b], _DISPLACEMENT, tuple(disp.shape[2:]), (buffer[b], channel))

    def displaced_with_slopes(self, disp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`displaced` (zeros padding, at most :data:`MAX_SLOPE_CHANNELS` channels) and the
        derivatives of every value along the three array axes ``(B, C, 3, *S_out)``: the gradient
        with respect to ``disp``."""
        if (not self.zeros or self.shape[1] > MAX_SLOPE_CHANNELS or disp.dim() != 5
                or disp.shape[:2] != (self.shape[0], 3)):
            raise ValueError(f"displaced_with_slopes: volume {self.shape} (zeros padding, <= {MAX_SLOPE_CHANNELS} "
                             f"channels), displacement {tuple(disp.shape)}")
        kernel = _library().dccnn_trilinear_grad
        disp = disp.detach().float().contiguous()
        b, c, d, h, w = self.shape
        out_shape = tuple(disp.shape[2:])
        n = math.prod(out_shape)
        values = torch.empty((b, c, *out_shape), dtype=torch.float32)
        slopes = torch.empty((b, c, 3, *out_shape), dtype=torch.float32)
        for k in range(b):
            args = (self.data[k].data_ptr(), d, h, w, c, disp[k].data_ptr(), out_shape[1], out_shape[2], n,
                    values[k].data_ptr(), slopes[k].data_ptr())
            _split(lambda start, stop: kernel(*args, start, stop), n, n)
        return values, slopes

    def at_grid(self, grid: torch.Tensor) -> torch.Tensor:
        """``grid_sample(volume, grid, align_corners=True)``: ``grid`` ``(B, *S, 3)`` normalised
        (x, y, z) coordinates; returns ``(B, C, *S)`` float32."""
        if grid.shape[0] != self.shape[0] or grid.shape[-1] != 3:
            raise ValueError(f"grid {tuple(grid.shape)} does not match the volume {self.shape}")
        grid = grid.detach().float().contiguous()
        return _batch([self._run(b, grid[b], _GRID, tuple(grid.shape[1:-1])) for b in range(self.shape[0])])


class _DisplacedSample(torch.autograd.Function):
    """Zero-padded trilinear sampling differentiable in the displacement (the affine stage's cost)."""

    @staticmethod
    def forward(ctx, disp: torch.Tensor, source: NativeSource) -> torch.Tensor:  # noqa: D102
        values, slopes = source.displaced_with_slopes(disp)
        ctx.save_for_backward(slopes)
        return values

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # noqa: D102
        (slopes,) = ctx.saved_tensors
        return (grad_out.unsqueeze(2) * slopes).sum(1), None


def displaced_differentiable(volume: torch.Tensor, disp: torch.Tensor) -> torch.Tensor:
    """``warp_gridsample(volume, disp, "zeros")`` whose gradient flows to ``disp`` (not to
    ``volume``): values and slopes in one pass of the compiled kernel; the backward is one product."""
    return _DisplacedSample.apply(disp, NativeSource(volume, "zeros"))


def lstm_euler(gates: torch.Tensor, memory: torch.Tensor, disp: torch.Tensor, h: torch.Tensor, dt: float,
               pack: tuple[torch.Tensor, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The CNN-LSTM update and Euler step of one cascade step in one pass
    (:class:`~dccnn_deploy.model.cnn_lstm.CNNLSTMBlock` and the Euler step of
    :meth:`~dccnn_deploy.model.dccnn.DCCNNLSTMReg.forward`): ``gates`` ``(B, 12, D, H, W)``
    channels-last (float32 or bfloat16) as the gate convolution gives them, ``memory`` and ``disp``
    ``(B, 3, D, H, W)``, ``h`` ``(B, 1, D, H, W)`` float32. Returns ``(disp', memory')`` with
    ``memory' = sigmoid(f) memory + sigmoid(i) tanh(g)``, ``disp' = disp + dt sigmoid(o)
    tanh(memory') / h``; ``pack = (buffer, channel)`` also writes ``disp'`` into channels
    ``channel .. channel + 2`` of a channels-last ``buffer`` (the next step's convolution input)."""
    b, k = gates.shape[:2]
    if (k != 12 or gates.dtype not in (torch.float32, torch.bfloat16)
            or not gates.is_contiguous(memory_format=torch.channels_last_3d)
            or memory.shape != disp.shape or disp.shape != (b, 3, *gates.shape[2:])
            or h.shape != (b, 1, *gates.shape[2:])):
        raise ValueError(f"lstm_euler: gates {tuple(gates.shape)} {gates.dtype}, memory {tuple(memory.shape)}, "
                         f"displacement {tuple(disp.shape)}, h {tuple(h.shape)}")
    lib = _library()
    memory, disp, h = (t.detach().float().contiguous() for t in (memory, disp, h))
    memory_out, disp_out = torch.empty_like(memory), torch.empty_like(disp)
    n = math.prod(gates.shape[2:])
    for r in range(b):
        target, stride, bf16 = None, 0, 0
        if pack is not None:
            buffer, channel = pack
            target = buffer[r].data_ptr() + channel * buffer.element_size()
            stride, bf16 = buffer.shape[1], int(buffer.dtype == torch.bfloat16)
        args = (gates[r].data_ptr(), 12, int(gates.dtype == torch.bfloat16), memory[r].data_ptr(), disp[r].data_ptr(),
                h[r].data_ptr(), dt, memory_out[r].data_ptr(), disp_out[r].data_ptr(), target, stride, bf16, n)
        _split(lambda start, stop: lib.dccnn_lstm_euler(*args, start, stop), n, n)
    return disp_out, memory_out


def jacobian_determinant(displacement: torch.Tensor, floor: float = 0.0, identity: bool = True) -> torch.Tensor:
    """det(I + grad u) of a voxel-unit displacement ``(B, 3, D, H, W)`` -> ``(B, 1, D, H, W)``
    float32, with the finite differences of :func:`dccnn_deploy.ops.jacobian.jacobian_determinant`
    (which calls this where :func:`serves` the field); ``floor > 0``: ``1 / max(det, floor)``
    instead, in the same pass (the homotopy's argument); ``identity=False``: det(grad u) of a map
    given by its positions (any units), e.g. world points (:func:`~dccnn_deploy.transform.map_jacobian`)."""
    lib = _library()
    b, _, d, h, w = displacement.shape
    disp = displacement.detach().float().contiguous()
    out = torch.empty((b, 1, d, h, w), dtype=torch.float32)
    for k in range(b):
        src, dst = disp[k].data_ptr(), out[k].data_ptr()
        _split(lambda z0, z1: lib.dccnn_jacobian_det(src, d, h, w, floor, int(identity), dst, z0, z1), d, d * h * w)
    return out


def smooth(volume: torch.Tensor, taps: list[float]) -> torch.Tensor:
    """:func:`dccnn_deploy.ops.smoothing.gaussian_smooth` of a float32 ``(B, C, D, H, W)`` volume:
    the 1-D ``taps`` (odd count, at most ``2 MAX_SMOOTH_RADIUS + 1``) along each axis in turn,
    borders replicated."""
    lib = _library()
    radius = len(taps) // 2
    if len(taps) % 2 != 1 or radius > MAX_SMOOTH_RADIUS or volume.dim() != 5:
        raise ValueError(f"smooth: {len(taps)} taps (odd, at most {2 * MAX_SMOOTH_RADIUS + 1}), "
                         f"volume {tuple(volume.shape)}")
    kernel = (ctypes.c_float * len(taps))(*taps)
    b, c, d, h, w = volume.shape
    source = volume.detach().float().contiguous()  # may be the caller's tensor: only read
    first, second = torch.empty_like(source), torch.empty_like(source)
    for axis, (src_t, dst_t) in enumerate(((source, first), (first, second), (second, first))):
        outer = h if axis == 0 else d  # each thread its own y-rows (along z) or z-planes
        for v in range(b * c):
            src, dst = src_t.view(-1, d, h, w)[v].data_ptr(), dst_t.view(-1, d, h, w)[v].data_ptr()
            _split(lambda s0, s1: lib.dccnn_smooth_axis(src, dst, d, h, w, axis, kernel, radius, s0, s1),
                   outer, d * h * w)
    return first


def upsamples(volume: torch.Tensor, skip: torch.Tensor | None = None) -> bool:
    """Whether :func:`upsample2x` serves ``volume`` (and ``skip``): :func:`serves`, float32 or
    bfloat16, contiguous or channels-last; ``skip`` channels-last, of the volume's dtype and batch,
    on the doubled grid."""
    if not (volume.dim() == 5 and volume.dtype in (torch.float32, torch.bfloat16) and serves(volume)
            and (volume.is_contiguous() or volume.is_contiguous(memory_format=torch.channels_last_3d))):
        return False
    return skip is None or (
        skip.dim() == 5 and skip.dtype == volume.dtype and skip.shape[0] == volume.shape[0]
        and tuple(skip.shape[2:]) == tuple(2 * n for n in volume.shape[2:]) and skip.device.type == "cpu"
        and skip.is_contiguous(memory_format=torch.channels_last_3d)
        and not (torch.is_grad_enabled() and skip.requires_grad))


def upsample2x(volume: torch.Tensor, scale: float = 1.0, skip: torch.Tensor | None = None) -> torch.Tensor:
    """x2 trilinear upsampling of ``(B, C, D, H, W)`` as :func:`~dccnn_deploy.ops.resize.upsample_features`
    computes it (``F.interpolate(scale_factor=2, mode="trilinear", align_corners=False)``), times
    ``scale``, in the volume's dtype and layout (see :func:`upsamples`). With ``skip``
    ``(B, Cs, 2D, 2H, 2W)``: ``torch.cat([upsampled, skip], 1)`` as one channels-last tensor, written
    in the same pass (the U-Net decoder's convolution input)."""
    if not upsamples(volume, skip):
        raise ValueError(f"upsample2x: volume {tuple(volume.shape)} {volume.dtype}"
                         + ("" if skip is None else f", skip {tuple(skip.shape)} {skip.dtype}"))
    lib = _library()
    b, c, d, h, w = volume.shape
    n = d * h * w
    planar = volume.is_contiguous()
    size = (2 * d, 2 * h, 2 * w)
    if skip is None:
        layout = torch.contiguous_format if planar else torch.channels_last_3d
        out = torch.empty((b, c, *size), dtype=volume.dtype, memory_format=layout)
        (out_point, out_channel), extra = ((1, 8 * n) if planar else (c, 1)), 0
    else:
        extra = skip.shape[1]
        out = torch.empty((b, c + extra, *size), dtype=volume.dtype, memory_format=torch.channels_last_3d)
        out_point, out_channel = c + extra, 1
    bf16 = int(volume.dtype == torch.bfloat16)
    for r in range(b):
        args = (volume[r].data_ptr(), bf16, int(not planar), d, h, w, c, float(scale), out[r].data_ptr(),
                out_point, out_channel, None if skip is None else skip[r].data_ptr(), extra)
        _split(lambda start, stop: lib.dccnn_upsample2x(*args, start, stop), 8 * n, 8 * n)
    return out


def newton_inverse_step(source: NativeSource, w: torch.Tensor, singular: float, max_step: float
                        ) -> tuple[torch.Tensor, float]:
    """One Newton iteration of :func:`dccnn_deploy.ops.invert.invert_displacement` in one pass over
    the grid: ``source`` holds :func:`~dccnn_deploy.ops.invert.field_and_gradient` of the forward
    field (12 channels, border padding), ``w`` ``(B, 3, D, H, W)`` the current inverse. Returns
    ``w`` minus the capped Newton step (:func:`~dccnn_deploy.ops.invert.newton_step`, fallback to
    the fixed-point step) and the mean residual ``|w + u(y + w)|`` at ``w`` (before the step)."""
    b, c, d, h, wd = source.shape
    if c != 12 or source.zeros or tuple(w.shape) != (b, 3, d, h, wd):
        raise ValueError(f"newton_inverse_step: sources {source.shape} (border) and inverse {tuple(w.shape)}")
    lib = _library()
    w = w.detach().float().contiguous()
    out = torch.empty_like(w)
    n = d * h * wd
    total = 0.0
    for k in range(b):
        args = (source.data[k].data_ptr(), d, h, wd, w[k].data_ptr(), out[k].data_ptr(), singular, max_step)
        total += sum(_split(lambda start, stop: lib.dccnn_newton_inverse(*args, start, stop), n, n))
    return out, total / (b * n)


def preimage_step(inverse: torch.Tensor, planes: tuple[int, int], to_norm, forward: NativeSource, per_grid_voxel,
                  max_step: float) -> torch.Tensor:
    """:func:`dccnn_deploy.transform._preimage` for the file-order planes ``planes`` of a target
    volume in one pass: ``inverse`` ``(3, K, J, I)`` the interpolated inverse displacement at every
    target voxel (float32, contiguous), ``to_norm`` (4 x 4) target voxel -> normalised model-grid
    point, ``forward`` the forward field ``(1, 3, D, H, W)`` (border padding), ``per_grid_voxel``
    (3 x 3) target voxels per model voxel. Returns the refined displacement ``(3, b - a, J, I)``."""
    lib = _library()
    _, k_total, j, i = inverse.shape
    _, _, d, h, w = forward.shape
    a, b = planes
    norm = np.ascontiguousarray(np.asarray(to_norm, dtype=np.float64)[:3])
    per_voxel = np.ascontiguousarray(per_grid_voxel, dtype=np.float64)
    out = torch.empty((3, b - a, j, i), dtype=torch.float32)
    args = (inverse.data_ptr(), k_total, j, i, norm.ctypes.data, forward.data[0].data_ptr(), d, h, w,
            per_voxel.ctypes.data, max_step, out.data_ptr(), a, b - a)
    _split(lambda start, stop: lib.dccnn_preimage(*args, a + start, a + stop), b - a, (b - a) * j * i)
    return out


def serves_parzen(values: torch.Tensor) -> bool:
    """Whether :func:`parzen_joint` serves moving ``values``: the library is loaded, they are on
    the CPU, and no graph is being recorded."""
    return available() and values.device.type == "cpu" and not _recording_graph()


def parzen_joint(moving: torch.Tensor, fixed_first: torch.Tensor, fixed_taps: torch.Tensor, bins: int) -> torch.Tensor:
    """Mattes joint histograms ``(K, bins, bins)`` float64 (row: fixed bin) of ``K`` sets of moving
    values ``(K, N)`` float32 in [0, 1] against one fixed set given by its Parzen taps: first bin
    ``(N,)`` int32 and four weights ``(N, 4)`` float32 (:mod:`dccnn_deploy.preprocess.mutual_information`)."""
    k, n = moving.shape
    joint = torch.empty((k, bins, bins), dtype=torch.float64)
    args = (moving.data_ptr(), n, fixed_first.data_ptr(), fixed_taps.data_ptr(), bins, joint.data_ptr())
    _split(lambda start, stop: _library().dccnn_parzen_joint(*args, start, stop), k, k * n)
    return joint


def parzen_joint_gradient(moving: torch.Tensor, fixed_first: torch.Tensor, fixed_taps: torch.Tensor,
                          joint_gradient: torch.Tensor) -> torch.Tensor:
    """The gradient ``(K, N)`` with respect to the moving values of a function of
    :func:`parzen_joint`'s histograms whose gradient with respect to them is ``joint_gradient``
    ``(K, bins, bins)`` float32."""
    k, n = moving.shape
    grad = torch.empty((k, n), dtype=torch.float32)
    args = (moving.data_ptr(), n, k, fixed_first.data_ptr(), fixed_taps.data_ptr(), joint_gradient.shape[-1],
            joint_gradient.data_ptr(), grad.data_ptr())
    _split(lambda start, stop: _library().dccnn_parzen_grad(*args, start, stop), n, k * n)
    return grad


__all__ = ["available", "serves", "NativeSource", "serves_parzen", "parzen_joint", "parzen_joint_gradient", "displaced_differentiable", "jacobian_determinant", "lstm_euler", "smooth",
           "serves_displacement", "upsamples", "upsample2x", "MAX_SMOOTH_RADIUS",
           "newton_inverse_step", "preimage_step", "MAX_CHANNELS", "MAX_SLOPE_CHANNELS"]
