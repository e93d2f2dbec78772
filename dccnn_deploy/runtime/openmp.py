"""OpenMP wait setting for a registration process (set before torch loads its OpenMP runtime).

PyTorch's CPU operators run on an OpenMP thread team. Between parallel regions, GNU OpenMP's
idle workers spin before they sleep: ``GOMP_SPINCOUNT`` iterations, 300 000 by default, several
milliseconds on the 2-core VM. The compiled kernels of the CPU path (:mod:`dccnn_deploy.ops.native`)
and the output writers run on the package's own threads, mostly right after a torch operator, so
on a small machine a spinning worker takes a core from them. With a spin count of 10 000 one
network pass took 0.40-0.50 s instead of 0.51-0.57 s, and a 1 mm ``dccnn register`` 7.2-8.4 s
instead of 7.8-9.6 s (2.5 s less CPU time; docs/benchmarks.md, issue 12).

The ``dccnn`` commands that register images call :func:`tune_openmp` before torch is imported; a
Python program using the API may set ``GOMP_SPINCOUNT`` itself before importing torch. A value
already in the environment (``GOMP_SPINCOUNT`` or ``OMP_WAIT_POLICY``) is left as it is. Other
OpenMP runtimes (LLVM's, Intel's) ignore the variable.
"""

from __future__ import annotations

import os
import sys

#: spin iterations of an idle OpenMP worker before it sleeps (GNU OpenMP's default: 300 000)
SPIN_COUNT = 10_000


def tune_openmp() -> bool:
    """Set ``GOMP_SPINCOUNT`` to :data:`SPIN_COUNT` for this process (and its children); False
    when torch is already imported (its OpenMP runtime has read its settings) or the user set
    the wait policy or spin count."""
    if "torch" in sys.modules or any(name in os.environ for name in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")):
        return False
    os.environ["GOMP_SPINCOUNT"] = str(SPIN_COUNT)
    return True


__all__ = ["SPIN_COUNT", "tune_openmp"]
