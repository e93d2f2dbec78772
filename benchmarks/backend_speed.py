"""One network pass on the CPU: torch settings and ONNX Runtime options, interleaved (issue 12).

usage: python benchmarks/backend_speed.py [--model models/dccnn-default.pt] [--repeats 5]
       [--onnx-dir DIR] [--variants torch-t2,torch-t1,...] [--list]

Every variant runs one pass of the network on the bundled real pair prepared as ``dccnn register``
prepares it (80 x 96 x 112 for the default model). All variants live in one process; after one
warm-up run each, the repeats go round-robin (variant A, B, C, A, B, C, ...) so that every variant
sees the same machine load. Prints a Markdown table: median and min wall seconds, median process CPU seconds, and the parity
max |Δ| (voxels, forward and inverse fields) against the plain torch pass (``torch-t2``, which is
what ``TorchBackend`` ran before issue 12; ``-tuned``: :func:`~dccnn_deploy.runtime.backends.cpu_inference_model`,
what it runs in float32; ``-tuned-bf16``: the same under bfloat16 autocast, ``--precision auto`` on
a CPU with native bfloat16). ONNX variants need ``DIR/gridsample.onnx`` and / or
``DIR/gather.onnx`` (``dccnn export CKPT -o DIR/gather.onnx [--sampler gridsample]``); missing
files are skipped. ``torch.set_num_interop_threads(1)`` is set once at start-up.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

RunFn = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def _torch_run(model: torch.nn.Module, threads: int, channels_last: bool = False, bf16: bool = False) -> RunFn:
    """Eager torch in inference mode at ``threads`` intra-op threads (``bf16``: bfloat16 autocast)."""
    fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
    if channels_last:
        model = model.to(memory_format=fmt)

    def run(m: np.ndarray, f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        torch.set_num_threads(threads)
        x, y = (torch.from_numpy(v)[None, None].contiguous(memory_format=fmt) for v in (m, f))
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(x, y)
        return out.forward[0].float().contiguous().numpy(), out.inverse[0].float().contiguous().numpy()
    return run


def _jit_run(model: torch.nn.Module, grid: tuple[int, int, int], threads: int, optimize: bool) -> RunFn:
    """A traced, frozen graph (``torch.jit.freeze``; ``optimize``: + ``optimize_for_inference``)."""
    from dccnn_deploy.export.onnx_export import DisplacementGraph

    example = (torch.zeros(1, 1, *grid), torch.zeros(1, 1, *grid))
    with torch.inference_mode(False), torch.no_grad():
        traced = torch.jit.trace(DisplacementGraph(model, grid).eval(), example, check_trace=False)
        graph = torch.jit.freeze(traced)
        if optimize:
            graph = torch.jit.optimize_for_inference(graph)

    def run(m: np.ndarray, f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        torch.set_num_threads(threads)
        with torch.no_grad():
            fwd, inv = graph(torch.from_numpy(m)[None, None], torch.from_numpy(f)[None, None])
        return fwd[0].contiguous().numpy(), inv[0].contiguous().numpy()
    return run


def _ort_run(path: Path, threads: int, level: str) -> RunFn:
    """ONNX Runtime CPU, sequential execution, ``threads`` intra-op threads, optimisation ``level``."""
    import onnxruntime as ort

    from dccnn_deploy.runtime.backends import INPUT_NAMES, OUTPUT_NAMES

    options = ort.SessionOptions()
    options.enable_mem_pattern = False  # as OnnxRuntimeBackend(low_memory=True)
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, f"ORT_ENABLE_{level.upper()}")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(m: np.ndarray, f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        feeds = {INPUT_NAMES[0]: m[None, None], INPUT_NAMES[1]: f[None, None]}
        fwd, inv = session.run(list(OUTPUT_NAMES), feeds)
        return fwd[0], inv[0]
    return run


def variants(model_path: Path, onnx_dir: Path | None, grid: tuple[int, int, int]) -> dict[str, Callable[[], RunFn]]:
    """name -> factory of the run function (built lazily, only for the variants asked for)."""
    from dccnn_deploy.checkpoint import load_model

    def fresh() -> torch.nn.Module:
        return load_model(model_path).model

    from dccnn_deploy.runtime.backends import cpu_inference_model

    table: dict[str, Callable[[], RunFn]] = {
        "torch-t2": lambda: _torch_run(fresh(), 2),
        "torch-t1": lambda: _torch_run(fresh(), 1),
        "torch-t2-tuned": lambda: _torch_run(cpu_inference_model(fresh()), 2),
        "torch-t1-tuned": lambda: _torch_run(cpu_inference_model(fresh()), 1),
        "torch-t2-tuned-bf16": lambda: _torch_run(cpu_inference_model(fresh()), 2, bf16=True),
        "torch-t1-tuned-bf16": lambda: _torch_run(cpu_inference_model(fresh()), 1, bf16=True),
        "torch-t2-channels-last": lambda: _torch_run(fresh(), 2, channels_last=True),
        "torch-t2-jit-freeze": lambda: _jit_run(fresh(), grid, 2, optimize=False),
        "torch-t2-jit-freeze-opt": lambda: _jit_run(fresh(), grid, 2, optimize=True),
    }
    if onnx_dir is not None:
        for graph in ("gridsample", "gather"):
            path = onnx_dir / f"{graph}.onnx"
            if not path.is_file():
                continue
            for threads in (2, 1):
                for level in ("all", "extended", "basic"):
                    table[f"ort-{graph}-t{threads}-{level}"] = (lambda p=path, t=threads, lv=level: _ort_run(p, t, lv))
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=Path("models/dccnn-default.pt"))
    ap.add_argument("--onnx-dir", type=Path, default=None)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--variants", default="torch-t2,torch-t1,torch-t2-tuned,torch-t1-tuned,torch-t2-channels-last,"
                                          "torch-t2-jit-freeze,ort-gridsample-t2-all,ort-gather-t2-all")
    ap.add_argument("--list", action="store_true", help="list the variant names and exit")
    args = ap.parse_args()
    torch.set_num_interop_threads(1)

    from dccnn_deploy.checkpoint import load_model
    from dccnn_deploy.cli.export_cmd import bundled_pair_on_grid

    settings = load_model(args.model).settings
    table = variants(args.model, args.onnx_dir, tuple(settings.grid_shape))
    if args.list:
        print("\n".join(table))
        return
    names = ["torch-t2"] + [n for n in args.variants.split(",") if n and n != "torch-t2"]
    unknown = [n for n in names if n not in table]
    if unknown:
        raise SystemExit(f"unknown or unavailable variants {unknown}; --list shows them")
    moving, fixed = bundled_pair_on_grid(settings)
    runs = {name: table[name]() for name in names}
    outputs = {name: run(moving, fixed) for name, run in runs.items()}  # warm-up + parity outputs
    times: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(args.repeats):
        for name, run in runs.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            run(moving, fixed)
            times[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    reference = outputs["torch-t2"]
    base = float(np.median(times["torch-t2"]))
    load = os.getloadavg()
    print(f"\n{args.model.name}, grid {tuple(settings.grid_shape)}, {args.repeats} interleaved repeats after "
          f"a warm-up; load average at the end {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1 / 5 / 15 min)\n")
    print("| variant | median s | min s | CPU s (median) | speed-up vs torch-t2 | max \\|Δ\\| vs torch-t2 (voxel) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in names:
        med = float(np.median(times[name]))
        diff = max(float(np.abs(a - b).max()) for a, b in zip(outputs[name], reference))
        print(f"| {name} | {med:.2f} | {min(times[name]):.2f} | {np.median(cpu[name]):.2f} | {base / med:.2f}x | {diff:.1e} |")


if __name__ == "__main__":
    main()
