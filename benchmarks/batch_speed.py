"""`dccnn batch` throughput (pairs per hour) of two code trees, interleaved (issue 12).

usage: python benchmarks/batch_speed.py --code OLD_TREE --code NEW_TREE [--pairs 3] [--repeats 2]
       [--model CKPT] [--work DIR]

Builds a study of ``--pairs`` rows from the bundled 2 mm sample pair (the moving image copied
under a new name per row, so every row is its own pair) and runs ``dccnn batch`` on it once per
code tree and repeat, alternating the trees (A, B, A, B, ...) so both see the same machine load;
each run starts from an empty output folder. A tree is a checkout of this repository (e.g.
``git archive COMMIT | tar -x -C DIR``), put first on PYTHONPATH; give a tree twice for an
A, B, B, A order (a load that drifts during the runs then favours neither). Prints a Markdown table:
median wall seconds of the whole ``dccnn batch`` process, pairs per hour, and the load average.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def make_study(work: Path, pairs: int) -> Path:
    """``work/pairs.csv`` with ``pairs`` rows: copies of the sample moving image -> the sample fixed image."""
    from dccnn_deploy.sample import SAMPLE_FIXED, SAMPLE_MOVING

    rows = []
    for i in range(pairs):
        folder = work / f"sub{i:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SAMPLE_MOVING, folder / "T1.nii.gz")
        rows.append(f"{folder / 'T1.nii.gz'},{SAMPLE_FIXED}\n")
    csv_path = work / "pairs.csv"
    csv_path.write_text("moving,fixed\n" + "".join(rows))
    return csv_path


def run_batch(code: Path, pairs_csv: Path, out: Path, model: Path | None) -> float:
    """Wall seconds of one ``dccnn batch`` process running ``code``'s package."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "dccnn_deploy.cli.app", "batch", "--pairs", str(pairs_csv), "-o", str(out)]
    if model is not None:
        cmd += ["--model", str(model)]
    env = {**os.environ, "PYTHONPATH": str(code)}
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, cwd=code)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--code", type=Path, action="append", required=True, help="a code tree (give two or more)")
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--model", type=Path, default=None, help="default: each tree's shipped model")
    ap.add_argument("--work", type=Path, default=Path("/tmp/dccnn-batch-speed"))
    args = ap.parse_args()
    pairs_csv = make_study(args.work, args.pairs)
    seconds: dict[Path, list[float]] = {code: [] for code in args.code}
    for r in range(args.repeats):
        for k, code in enumerate(args.code):
            seconds[code].append(run_batch(code.resolve(), pairs_csv, args.work / f"out{k}", args.model))
    load = os.getloadavg()
    print(f"\n{args.pairs} pairs (bundled 2 mm sample pair), {args.repeats} interleaved run(s) per tree; "
          f"load average at the end {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}\n")
    print("| code | median s per batch | all runs (s) | pairs per hour |")
    print("|---|---:|---|---:|")
    for code, times in seconds.items():
        med = float(np.median(times))
        print(f"| {code} | {med:.1f} | {', '.join(f'{t:.1f}' for t in times)} | {args.pairs * 3600 / med:.0f} |")


if __name__ == "__main__":
    main()
