"""Forward-pass time and peak memory of the default network on the CPU.

usage: python benchmarks/forward_pass.py [--grid 80,96,112] [--repeats 3] [--threads 2]
Prints one Markdown table row per sampler (each in a fresh process, so peak RSS is its own).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def _measure(grid: tuple[int, int, int], sampler: str, repeats: int, threads: int) -> dict:
    import torch

    from dccnn_deploy import DCCNNLSTMReg

    torch.set_num_threads(threads)
    model = DCCNNLSTMReg(sampler=sampler).eval()
    x, y = torch.rand(1, 1, *grid), torch.rand(1, 1, *grid)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    times = []
    with torch.inference_mode():
        model(x, y)
        for _ in range(repeats):
            start = time.perf_counter()
            model(x, y)
            times.append(time.perf_counter() - start)
    return {"sampler": sampler, "params": model.parameter_count(), "median_s": sorted(times)[len(times) // 2],
            "min_s": min(times), "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rss_before_mb": base}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--grid", default="80,96,112")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", default=None)
    args = ap.parse_args()
    grid = tuple(int(n) for n in args.grid.split(","))
    if args.child:
        print(json.dumps(_measure(grid, args.child, args.repeats, args.threads)))
        return
    print("| sampler | parameters | median (s) | min (s) | peak RSS (MB) | grid |")
    print("|---|---:|---:|---:|---:|---|")
    for sampler in ("gridsample", "gather"):
        out = subprocess.run([sys.executable, __file__, "--grid", args.grid, "--repeats", str(args.repeats),
                              "--threads", str(args.threads), "--child", sampler], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"| {r['sampler']} | {r['params']:,} | {r['median_s']:.2f} | {r['min_s']:.2f} | {r['peak_rss_mb']:.0f} | {args.grid} |")


if __name__ == "__main__":
    main()
