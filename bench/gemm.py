"""The machine's single-precision GEMM rate: numpy 2048x2048 float32 matmul, the roofline's denominator.

Run in a subprocess whose environment fixes the BLAS thread count (OMP_NUM_THREADS,
OPENBLAS_NUM_THREADS) and drops OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE, which can pin
OpenBLAS to a slower kernel. Prints one JSON line: rates and the kernel that ran.
"""
from __future__ import annotations

import ctypes
import json
import platform
import sys
import time

import numpy as np

SIZE = 2048
RUNS = 10


def _openblas_from_maps() -> str:
    """Ask the OpenBLAS that numpy loaded for its kernel, without threadpoolctl."""
    paths = {line.split()[-1] for line in open("/proc/self/maps") if "openblas" in line.lower()}
    for path in sorted(paths):
        lib = ctypes.CDLL(path)
        for suffix in ("", "64_"):
            corename = getattr(lib, "openblas_get_corename" + suffix, None)
            config = getattr(lib, "openblas_get_config" + suffix, None)
            if corename and config:
                corename.restype = config.restype = ctypes.c_char_p
                return f"{config().decode()} kernel {corename().decode()}"
    return "unknown (no OpenBLAS found in this process)"


def kernel() -> str:
    """The BLAS library and the CPU kernel it picked."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return _openblas_from_maps()
    blas = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    return "; ".join(f"{i.get('internal_api')} {i.get('version')} {i.get('architecture')} "
                     f"threads={i.get('num_threads')}" for i in blas) or "no BLAS found by threadpoolctl"


def main() -> int:
    rng = np.random.RandomState(0)
    a = rng.standard_normal((SIZE, SIZE)).astype(np.float32)
    b = rng.standard_normal((SIZE, SIZE)).astype(np.float32)
    a @ b
    a @ b
    times = []
    for _ in range(RUNS):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    flops = 2.0 * SIZE ** 3
    times.sort()
    print(json.dumps({"python": platform.python_version(), "numpy": np.__version__, "kernel": kernel(),
                      "gflops_best": flops / times[0] / 1e9, "gflops_median": flops / times[len(times) // 2] / 1e9}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
