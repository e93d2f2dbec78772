"""GPU check (issue 12): one command, a CSV of figures.

1. environment: torch / CUDA / device, ONNX Runtime providers, nibabel present or not;
2. parity: the network on torch-CUDA against torch-CPU on the same pair (max |Δ| voxel), and on
   ONNX Runtime CUDA where ``onnxruntime-gpu`` is installed;
3. latency: the network pass at 80x96x112 and 160x192x224, fp32 and fp16 (autocast), median of
   ``--repeats`` (20) after warm-up;
4. ``dccnn register`` end to end on a 1 mm pair and ``dccnn batch`` of ``--pairs`` (10) pairs on
   ``--device``, when nibabel and the pair are available (else a row says why not).

Inputs (``--data DIR``): ``moving_g.npy``/``fixed_g.npy`` (a pair already on the model grid,
what the network sees: needs neither nibabel nor the 1 mm files) and ``moving.nii.gz`` /
``fixed.nii.gz`` (the 1 mm pair). ``--prepare DIR`` writes both from a 1 mm pair on a machine
with nibabel. Without ``--data`` the parity and latency rows use a synthetic smooth pair.

``--dry-run``: CPU only, a tiny untrained model, small grids and 2 repeats (CI runs it in
seconds; every step runs). TensorRT(-RTX) engines are not attempted: RTX engines cannot run on
Hopper (H100/H200) and are benchmarked by ``dccnn benchmark --engine`` where they can.

usage: python scripts/gpu_check.py --out DIR [--data DIR] [--model CKPT] [--device cuda]
                                   [--repeats 20] [--pairs 10] [--dry-run] [--prepare DIR]
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FULL_GRIDS = ((80, 96, 112), (160, 192, 224))
DRY_GRIDS = ((16, 16, 16), (24, 24, 24))
COLUMNS = ("check", "setting", "value", "unit", "note")


class Rows:
    """The CSV rows, also printed as they come."""

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def add(self, check: str, setting: str, value, unit: str = "", note: str = "") -> None:
        value = f"{value:.6g}" if isinstance(value, float) else str(value)
        row = dict(zip(COLUMNS, (check, setting, value, unit, note)))
        self.rows.append(row)
        print(" | ".join(row.values()), flush=True)

    def write(self, path: Path) -> None:
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(self.rows)


def has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def synthetic_pair(shape, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two smooth blob images in [0, 1] (NumPy only), the second a shifted copy of the first."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, n, dtype=np.float32) for n in shape], indexing="ij")
    vol = np.zeros(shape, np.float32)
    for _ in range(12):
        c, w = rng.uniform(-0.6, 0.6, 3), rng.uniform(0.1, 0.3)
        vol += np.exp(-sum((g - ci) ** 2 for g, ci in zip(grids, c)) / (2 * w * w)).astype(np.float32)
    vol /= vol.max()
    return np.roll(vol, (2, -1, 1), axis=(0, 1, 2)), vol


def network_inputs(data: Path | None, shape) -> tuple[np.ndarray, np.ndarray, str]:
    if data is not None and (data / "moving_g.npy").is_file() and np.load(data / "moving_g.npy").shape == tuple(shape):
        return np.load(data / "moving_g.npy"), np.load(data / "fixed_g.npy"), "real pair"
    return (*synthetic_pair(shape), "synthetic pair")


def load_network(model_path: Path | None, dry_run: bool, workdir: Path):
    """(model, checkpoint path, grid shape); dry run: a tiny untrained model."""
    import torch

    from dccnn_deploy.checkpoint import default_metadata, load_model, save_checkpoint

    if dry_run:
        from dccnn_deploy.config import ModelConfig
        from dccnn_deploy.model import DCCNNLSTMReg

        torch.manual_seed(0)
        cfg = ModelConfig(scales=3, steps=2, pyramid_channels=(16, 8, 4), encoder_channels=(4, 4, 8))
        model_path = save_checkpoint(workdir / "tiny.pt", DCCNNLSTMReg(cfg), default_metadata(DRY_GRIDS[0], 6.0))
    bundle = load_model(model_path)
    return bundle.model, Path(model_path), tuple(bundle.grid_shape)


def run_model(model, moving: np.ndarray, fixed: np.ndarray, device: str, half: bool = False, inverse: bool = True):
    """One network pass; ``inverse=False``: the forward path alone, as ``dccnn register`` runs it
    (the inverse returned is then the forward field, for parity only)."""
    import torch

    m = torch.from_numpy(np.ascontiguousarray(moving, np.float32))[None, None].to(device)
    f = torch.from_numpy(np.ascontiguousarray(fixed, np.float32))[None, None].to(device)
    with torch.inference_mode(), torch.autocast(device_type=torch.device(device).type, dtype=torch.float16 if device.startswith("cuda") else torch.bfloat16, enabled=half):
        out = model(m, f, inverse=inverse)
    return out.forward.float(), (out.inverse if inverse else out.forward).float()


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def check_parity(rows: Rows, model, moving, fixed, device: str, source: str, workdir: Path, grid) -> None:
    """Max |Δ| (voxels) of the displacements on ``device`` against CPU."""
    ref = [t.cpu().numpy() for t in run_model(model.to("cpu"), moving, fixed, "cpu")]
    got = [t.cpu().numpy() for t in run_model(model.to(device), moving, fixed, device)]
    diff = max(float(np.abs(a - b).max()) for a, b in zip(ref, got))
    rows.add("parity", f"torch-{device} vs torch-cpu, {'x'.join(map(str, grid))}", diff, "voxel", source)
    try:
        import onnxruntime as ort
    except ImportError:
        rows.add("parity", "onnxruntime-cuda vs torch-cpu", "skipped", "", "onnxruntime not installed")
        return
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        rows.add("parity", "onnxruntime-cuda vs torch-cpu", "skipped", "", "no CUDAExecutionProvider (CPU build of onnxruntime)")
        return
    from dccnn_deploy.export import export_onnx
    from dccnn_deploy.runtime.backends import OnnxRuntimeBackend

    path = workdir / "model.onnx"
    export_onnx(model.to("cpu"), tuple(grid), path)
    fwd, inv = OnnxRuntimeBackend(path, device="cuda").run(moving, fixed)
    diff = max(float(np.abs(a[0] - b).max()) for a, b in zip(ref, (fwd, inv)))
    rows.add("parity", "onnxruntime-cuda vs torch-cpu", diff, "voxel", source)


def check_latency(rows: Rows, model, device: str, grids, repeats: int) -> None:
    """Median network pass (s) per grid and precision, after two warm-up passes."""
    import torch

    model = model.to(device)
    for grid in grids:
        moving, fixed = synthetic_pair(grid)
        for half, inverse in ((False, True), (True, True), (False, False), (True, False)):
            paths = "both paths" if inverse else "forward path (dccnn register)"
            label = f"{'x'.join(map(str, grid))} {'fp16' if half else 'fp32'} {device}, {paths}"
            try:
                for _ in range(2):
                    run_model(model, moving, fixed, device, half, inverse)
                sync(device)
                if device.startswith("cuda"):
                    torch.cuda.reset_peak_memory_stats()
                times = []
                for _ in range(repeats):
                    start = time.perf_counter()
                    run_model(model, moving, fixed, device, half, inverse)
                    sync(device)
                    times.append(time.perf_counter() - start)
            except Exception as exc:  # noqa: BLE001 - e.g. out of memory: recorded, the rest goes on
                rows.add("latency", label, "failed", "", f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
                continue
            note = f"min {min(times):.4f} s, {repeats} runs"
            if device.startswith("cuda"):
                note += f", peak GPU {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB"
            rows.add("latency", label, float(np.median(times)), "s", note)


def _timed(cmd: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    return time.perf_counter() - start, res


def check_register(rows: Rows, data: Path | None, model_path: Path, device: str, pairs: int, workdir: Path, dry_run: bool) -> None:
    """``dccnn register`` (whole process) and ``dccnn batch`` of ``pairs`` pairs."""
    if not has("nibabel"):
        for check in ("register", "batch"):
            rows.add(check, device, "skipped", "", "nibabel not installed (gpu_check.sh WHEELS=DIR installs it)")
        return
    moving, fixed = (data / "moving.nii.gz", data / "fixed.nii.gz") if data else (None, None)
    if dry_run:
        moving, fixed = write_tiny_pair(workdir)
    if moving is None or not moving.is_file() or not fixed.is_file():
        for check in ("register", "batch"):
            rows.add(check, device, "skipped", "", "no --data DIR with moving.nii.gz / fixed.nii.gz")
        return
    cli = [sys.executable, "-m", "dccnn_deploy.cli.app"]
    out = workdir / "register"
    seconds, res = _timed([*cli, "register", str(moving), str(fixed), "-o", str(out), "--model", str(model_path), "--device", device])
    if res.returncode != 0:
        rows.add("register", device, "failed", "", (res.stderr.strip().splitlines() or ["?"])[-1][:200])
        return
    report = json.loads((out / "report.json").read_text())
    stages = ", ".join(f"{k} {v:.2f}" for k, v in report["seconds"].items())
    rows.add("register", f"1 mm pair, {device}", seconds, "s", f"whole process; stages: {stages}; peak RSS {report['peak_rss_mb']} MB")
    rows.add("register", "NCC after", float(report["similarity"]["after"]["ncc"]), "", "")
    csv_path = workdir / "pairs.csv"
    csv_path.write_text("moving,fixed\n" + "".join(f"{moving},{fixed}\n" for _ in range(pairs)))
    seconds, res = _timed([*cli, "batch", "--pairs", str(csv_path), "-o", str(workdir / "batch"),
                           "--model", str(model_path), "--device", device])
    if res.returncode != 0:
        rows.add("batch", device, "failed", "", (res.stderr.strip().splitlines() or ["?"])[-1][:200])
        return
    rows.add("batch", f"{pairs} pairs, {device}", seconds, "s", f"{3600.0 * pairs / seconds:.0f} pairs per hour")


def write_tiny_pair(workdir: Path) -> tuple[Path, Path]:
    """A small synthetic NIfTI pair (dry run)."""
    from dccnn_deploy.io import save_volume

    moving, fixed = synthetic_pair((40, 44, 36))
    affine = np.diag([1.5, 1.5, 1.5, 1.0])
    return (save_volume(workdir / "moving.nii.gz", moving, affine, overwrite=True),
            save_volume(workdir / "fixed.nii.gz", fixed, affine, overwrite=True))


def prepare(out: Path, moving: Path, fixed: Path, model_path: Path) -> None:
    """Write ``moving_g.npy``/``fixed_g.npy`` (as ``dccnn register`` prepares them) and the pair."""
    import shutil

    from dccnn_deploy.checkpoint import load_model
    from dccnn_deploy.io import load_volume
    from dccnn_deploy.preprocess.affine import register_affine
    from dccnn_deploy.registration.pipeline import prepare_pair

    bundle = load_model(model_path)
    mov, fix = load_volume(moving), load_volume(fixed)
    matrix = register_affine(mov.data, mov.affine, fix.data, fix.affine).matrix
    pair = prepare_pair(mov, fix, matrix, bundle.settings)  # the model's whole grid, as an engine sees it
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "moving_g.npy", pair.moving_g)
    np.save(out / "fixed_g.npy", pair.fixed_g)
    for src, name in ((moving, "moving.nii.gz"), (fixed, "fixed.nii.gz")):
        if str(src).endswith(".gz"):
            shutil.copyfile(src, out / name)
        else:
            from dccnn_deploy.io import save_volume

            vol = load_volume(src)
            save_volume(out / name, vol.data, vol.affine, overwrite=True)
    print(f"prepared {out}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="folder for gpu_check.csv")
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--model", type=Path, default=ROOT / "models" / "dccnn-default.pt")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--pairs", type=int, default=10)
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny model and grids (CI)")
    ap.add_argument("--prepare", type=Path, default=None, help="write --data files from --moving/--fixed")
    ap.add_argument("--moving", type=Path, default=None)
    ap.add_argument("--fixed", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.prepare is not None:
        prepare(args.prepare, args.moving, args.fixed, args.model)
        return 0
    if args.out is None:
        ap.error("--out DIR is required")
    import torch

    device = "cpu" if args.dry_run else args.device
    repeats = 2 if args.dry_run else args.repeats
    pairs = 1 if args.dry_run else args.pairs
    grids = DRY_GRIDS if args.dry_run else FULL_GRIDS
    rows = Rows()
    rows.add("env", "python", platform.python_version())
    rows.add("env", "torch", torch.__version__, "", f"CUDA {torch.version.cuda}")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            rows.add("env", "cuda", "unavailable", "", "torch.cuda.is_available() is False")
            args.out.mkdir(parents=True, exist_ok=True)
            rows.write(args.out / "gpu_check.csv")
            return 1
        rows.add("env", "gpu", torch.cuda.get_device_name(0), "", f"capability {torch.cuda.get_device_capability(0)}")
    ort = "not installed"
    if has("onnxruntime"):
        import onnxruntime

        ort = f"{onnxruntime.__version__}: {', '.join(onnxruntime.get_available_providers())}"
    rows.add("env", "onnxruntime", ort)
    rows.add("env", "nibabel", "present" if has("nibabel") else "absent")
    rows.add("env", "tensorrt-rtx", "not attempted", "", "RTX engines do not run on Hopper (H100/H200)")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        model, model_path, grid = load_network(args.model, args.dry_run, workdir)
        moving, fixed, source = network_inputs(args.data, grid)
        check_parity(rows, model, moving, fixed, device, source, workdir, grid)
        check_latency(rows, model, device, grids, repeats)
        check_register(rows, args.data, model_path, device, pairs, workdir, args.dry_run)
        args.out.mkdir(parents=True, exist_ok=True)
        rows.write(args.out / "gpu_check.csv")
    print(f"wrote {args.out / 'gpu_check.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
