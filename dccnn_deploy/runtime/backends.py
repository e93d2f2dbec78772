"""Inference backends behind one interface.

Every backend takes ``moving`` and ``fixed`` as ``(D, H, W)`` float32 volumes, already
normalised and resampled onto the model grid, and returns ``(forward, inverse)`` displacements
``(3, D, H, W)`` float32 in voxels of that grid (channel k = array axis k; see
:mod:`dccnn_deploy.ops.warp` for the convention). Optional runtimes (onnxruntime CUDA,
TensorRT) are imported lazily and fail with a one-line :class:`BackendUnavailable`.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any, Callable, Protocol, runtime_checkable

import numpy as np

INPUT_NAMES = ("moving", "fixed")
OUTPUT_NAMES = ("forward_displacement", "inverse_displacement")
#: Python modules of the two TensorRT flavours, as named in an engine's sidecar JSON.
TENSORRT_MODULES: dict[str, str] = {"rtx": "tensorrt_rtx", "tensorrt": "tensorrt"}
TENSORRT_INSTALL_HINT: dict[str, str] = {
    "rtx": "pip install tensorrt-rtx-cu12",
    "tensorrt": "install TensorRT from NVIDIA's index (pip install tensorrt)",
}


#: ``auto``: bfloat16 convolutions where the CPU computes bfloat16 natively (AVX512-BF16 / AMX),
#: else float32; ``fp32``: float32 throughout; ``bf16``: bfloat16 autocast on any device.
PRECISIONS = ("auto", "fp32", "bf16")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bfloat16 instructions (``avx512_bf16`` or ``amx_bf16`` in
    ``/proc/cpuinfo``); False where that cannot be read (other systems)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return False
    return bool({"avx512_bf16", "amx_bf16"} & set(flags.split()))


def uses_bf16(precision: str, device_type: str) -> bool:
    """Whether a torch network runs under bfloat16 autocast for ``precision`` on ``device_type``."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    return precision == "bf16" or (precision == "auto" and device_type == "cpu" and cpu_has_native_bf16())


class BackendUnavailable(RuntimeError):
    """A backend's runtime or device is missing on this machine."""


@runtime_checkable
class Backend(Protocol):
    """``run(moving, fixed)``: ``(D, H, W)`` float32 x 2 -> ``(3, D, H, W)`` float32 x 2 (voxels).
    ``inverse=False`` says the inverse is not needed: a backend that can skip the inverse path
    returns None for it; exported graphs compute both and return both."""

    name: str

    def run(self, moving: np.ndarray, fixed: np.ndarray, inverse: bool = True
            ) -> tuple[np.ndarray, np.ndarray | None]: ...


def as_batch(volume: np.ndarray) -> np.ndarray:
    """``(D, H, W)`` -> contiguous float32 ``(1, 1, D, H, W)``."""
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise ValueError(f"expected a (D, H, W) volume, got shape {volume.shape}")
    return np.ascontiguousarray(volume, dtype=np.float32)[None, None]


def _check_pair(moving: np.ndarray, fixed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if np.shape(moving) != np.shape(fixed):
        raise ValueError(f"moving {np.shape(moving)} and fixed {np.shape(fixed)} differ in shape")
    return as_batch(moving), as_batch(fixed)


def import_tensorrt(flavor: str) -> Any:
    """The ``tensorrt_rtx`` (``flavor="rtx"``) or ``tensorrt`` module, or BackendUnavailable."""
    if flavor not in TENSORRT_MODULES:
        raise ValueError(f"flavor must be one of {sorted(TENSORRT_MODULES)}, got {flavor!r}")
    try:
        return importlib.import_module(TENSORRT_MODULES[flavor])
    except (ImportError, OSError) as err:  # OSError: module present, shared libraries missing
        raise BackendUnavailable(
            f"{TENSORRT_MODULES[flavor]} is not importable ({err}); {TENSORRT_INSTALL_HINT[flavor]}"
        ) from None


def _transposed_as_conv(module: Any) -> Any:
    """The ``Conv3d`` equal to a stride-1 ``ConvTranspose3d`` (flipped, transposed weights), or
    ``module`` itself when it is anything else (strides, groups, dilation, output padding,
    padding beyond kernel - 1)."""
    from torch import nn

    if not isinstance(module, nn.ConvTranspose3d) or any(
        v != 1 for v in (*module.stride, *module.dilation, module.groups)
    ) or any(module.output_padding) or module.padding_mode != "zeros":
        return module
    kernel = module.kernel_size
    padding = tuple(k - 1 - p for k, p in zip(kernel, module.padding))
    if min(padding) < 0:
        return module
    conv = nn.Conv3d(module.in_channels, module.out_channels, kernel, padding=padding, bias=module.bias is not None)
    conv.weight.data.copy_(module.weight.data.transpose(0, 1).flip(2, 3, 4))
    if module.bias is not None:
        conv.bias.data.copy_(module.bias.data)
    return conv.to(module.weight.device)


def cpu_inference_model(model: Any) -> Any:
    """A copy of ``model`` set up for fast CPU inference, same outputs within float rounding
    (max |Δ| ~1e-6 voxel on the default model; docs/benchmarks.md, issue 12): stride-1 transposed
    convolutions become convolutions and convolution weights are channels-last, so oneDNN runs
    the U-Net in NDHWC (about 2x faster convolutions than NCDHW on a CPU), and the features are
    warped by the mosaic sampler (:func:`~dccnn_deploy.ops.warp.volume_sampler`, the same values
    within ~1e-4). ``model`` is untouched."""
    import copy

    import torch

    tuned = copy.deepcopy(model).eval()
    for parent in list(tuned.modules()):
        for name, child in list(parent.named_children()):
            replacement = _transposed_as_conv(child)
            if replacement is not child:
                setattr(parent, name, replacement)
    if getattr(tuned, "sampler", None) == "gridsample":
        tuned.sampler = "mosaic"  # the feature warps through the vectorised 2-D kernel
    return tuned.to(memory_format=torch.channels_last_3d)


class TorchBackend:
    """The PyTorch model (reference). ``device``: ``"cpu"``, ``"cuda"``, ...; on the CPU the
    backend runs :func:`cpu_inference_model`'s copy (``cpu_tuned=False``: the model as given).
    ``precision`` (:data:`PRECISIONS`): with bfloat16 the convolutions run in bfloat16 under
    autocast (sampling and the field arithmetic stay float32): on a CPU with AMX about 1.5-2x
    faster per pass, fields within ~0.02 voxel of float32 (docs/benchmarks.md)."""

    def __init__(self, model, device: str = "cpu", cpu_tuned: bool = True, precision: str = "auto"):
        import torch

        self._torch = torch
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailable("TorchBackend: CUDA requested but torch.cuda is not available")
        model = model.to(self.device).eval()
        self.model = cpu_inference_model(model) if cpu_tuned and self.device.type == "cpu" else model
        self.bf16 = uses_bf16(precision, self.device.type)
        self.name = f"torch-{self.device.type}" + ("-bf16" if self.bf16 else "")
        self._fixed: tuple[np.ndarray, list] | None = None  # the last fixed image and its features

    def _fixed_features(self, fixed: np.ndarray, f) -> list:
        """The fixed image's feature pyramid, computed once for consecutive runs with an equal
        fixed image (the passes of a cascade, a batch against one template)."""
        cached = self._fixed  # one read: another thread may replace it meanwhile
        if cached is None or not np.array_equal(cached[0], fixed):
            cached = self._fixed = (fixed.copy(), self.model.features(f))
        return cached[1]

    def run(self, moving: np.ndarray, fixed: np.ndarray, inverse: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """``inverse=False``: the forward path alone (half the cascade's work), inverse None."""
        torch = self._torch
        moving, fixed = _check_pair(moving, fixed)
        m, f = (torch.from_numpy(v).to(self.device) for v in (moving, fixed))
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            out = self.model(m, f, fixed_features=self._fixed_features(fixed, f), inverse=inverse)
        return tuple(None if t is None else t[0].float().cpu().numpy() for t in (out.forward, out.inverse))


class OnnxRuntimeBackend:
    """An exported graph in ONNX Runtime; ``device="cuda"`` needs the CUDA execution provider.

    ``low_memory`` turns off ORT's memory-pattern pre-allocation: at 80x96x112 (default
    config, CPU) it roughly halves peak RSS (3.7 -> 2.0 GB) at no measurable speed cost.
    """

    PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}

    def __init__(
        self, onnx_path: str | Path, device: str = "cpu", threads: int | None = None,
        low_memory: bool = True,
    ):
        import onnxruntime as ort

        if device not in self.PROVIDERS:
            raise ValueError(f"device must be one of {sorted(self.PROVIDERS)}, got {device!r}")
        provider = self.PROVIDERS[device]
        if provider not in ort.get_available_providers():
            raise BackendUnavailable(
                f"onnxruntime {ort.__version__} has no {provider} (available: "
                f"{', '.join(ort.get_available_providers())}); install onnxruntime-gpu for CUDA"
            )
        options = ort.SessionOptions()
        options.enable_mem_pattern = not low_memory
        if threads:
            options.intra_op_num_threads = int(threads)
        providers = [provider] + (["CPUExecutionProvider"] if device != "cpu" else [])
        self.session = ort.InferenceSession(str(onnx_path), options, providers=providers)
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)
        self.name = f"onnxruntime-{device}"

    def run(self, moving: np.ndarray, fixed: np.ndarray, inverse: bool = True) -> tuple[np.ndarray, np.ndarray]:
        m, f = _check_pair(moving, fixed)
        fwd, inv = self.session.run(list(OUTPUT_NAMES), {INPUT_NAMES[0]: m, INPUT_NAMES[1]: f})
        return fwd[0], inv[0]


class TensorRTBackend:
    """A serialized TensorRT / TensorRT-RTX engine on a CUDA GPU (buffers via torch.cuda).

    The flavour comes from the engine's sidecar ``<engine>.json`` (written by
    :func:`dccnn_deploy.export.tensorrt_build.build_engine`), ``rtx`` when it is absent.
    ``device``: ``"cuda"`` or ``"cuda:N"``.
    """

    def __init__(self, engine_path: str | Path, device: str = "cuda", flavor: str | None = None):
        if not str(device).startswith("cuda"):
            raise BackendUnavailable(f"TensorRT engines run on a CUDA GPU only (device={device!r}); use cuda")
        engine_path = Path(engine_path)
        sidecar = engine_path.with_name(engine_path.name + ".json")
        self.info: dict[str, Any] = json.loads(sidecar.read_text()) if sidecar.exists() else {}
        flavor = flavor or self.info.get("flavor", "rtx")
        trt = import_tensorrt(flavor)
        import torch

        if not torch.cuda.is_available():
            raise BackendUnavailable("TensorRTBackend needs a CUDA GPU (torch.cuda is not available)")
        self._torch = torch
        self.device = torch.device(device)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        with torch.cuda.device(self.device):
            self.engine = self._runtime.deserialize_cuda_engine(engine_path.read_bytes())
            if self.engine is None:
                raise RuntimeError(f"{engine_path}: TensorRT could not deserialize it (GPU/version?)")
            self.context = self.engine.create_execution_context()
        self.name = f"tensorrt-{flavor}"

    def run(self, moving: np.ndarray, fixed: np.ndarray, inverse: bool = True) -> tuple[np.ndarray, np.ndarray]:
        torch = self._torch
        with torch.cuda.device(self.device):
            arrays = zip(INPUT_NAMES, _check_pair(moving, fixed))
            buffers = {name: torch.from_numpy(a).to(self.device) for name, a in arrays}
            for name in OUTPUT_NAMES:
                shape = tuple(self.context.get_tensor_shape(name))
                buffers[name] = torch.empty(shape, dtype=torch.float32, device=self.device)
            for name, tensor in buffers.items():
                self.context.set_tensor_address(name, tensor.data_ptr())
            stream = torch.cuda.current_stream(self.device)
            if not self.context.execute_async_v3(stream.cuda_stream):
                raise RuntimeError("TensorRT execution failed")
            stream.synchronize()
            return tuple(buffers[name][0].cpu().numpy() for name in OUTPUT_NAMES)


#: The one table of backends: name -> constructor.
BACKENDS: dict[str, Callable[..., Backend]] = {
    "torch": TorchBackend,
    "onnxruntime": OnnxRuntimeBackend,
    "tensorrt": TensorRTBackend,
}


def make_backend(name: str, *args: Any, **kwargs: Any) -> Backend:
    """``BACKENDS[name](*args, **kwargs)``, e.g. ``make_backend("onnxruntime", path, device="cpu")``."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {sorted(BACKENDS)}")
    return BACKENDS[name](*args, **kwargs)
