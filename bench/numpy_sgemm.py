#!/usr/bin/env python3
"""numpy's float32 matmul (its BLAS's sgemm) at N×N×N: the yardstick for our CPU GEMM.

Prints one JSON line per size, in the shape of `tiedae bench --gemm N --json`:
  {"workload": "gemm-1024", "device": "numpy-cpu", "gflops": ..., "call_us": ..., "blas": ..., ...}
Timing: one warm-up call, then calls until at least --min-seconds have passed (and at least 3 calls);
the median call counts, FLOPs = 2·N³.

Which BLAS and how many threads come from threadpoolctl when it is installed. Some machines set
OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE for older OpenBLAS builds; they slow a current numpy down, so
bench/run-cpu.sh unsets both for this command only (the `internal_api`/`architecture` fields show the
kernel OpenBLAS then picked).

  python3 bench/numpy_sgemm.py [--sizes 1024] [--min-seconds 1]
"""

import argparse
import json
import os
import platform
import statistics
import time

import numpy as np


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def blas_info():
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return {"blas": "unknown (threadpoolctl not installed)"}
    for pool in threadpool_info():
        if pool.get("user_api") == "blas":
            return {
                "blas": pool.get("internal_api"),
                "blas_version": pool.get("version"),
                "blas_threads": pool.get("num_threads"),
                "architecture": pool.get("architecture"),
            }
    return {"blas": "none found"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1024")
    ap.add_argument("--min-seconds", type=float, default=1.0)
    args = ap.parse_args()
    info = blas_info()
    rng = np.random.default_rng(3)
    for n in [int(s) for s in args.sizes.split(",")]:
        a = rng.random((n, n), dtype=np.float32)
        b = rng.random((n, n), dtype=np.float32)
        c = np.empty((n, n), dtype=np.float32)
        np.matmul(a, b, out=c)  # warm-up
        times = []
        start = time.perf_counter()
        while len(times) < 3 or time.perf_counter() - start < args.min_seconds:
            t0 = time.perf_counter()
            np.matmul(a, b, out=c)
            times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        row = {
            "workload": f"gemm-{n}",
            "device": "numpy-cpu",
            "m": n,
            "n": n,
            "k": n,
            "gflops": 2.0 * n**3 / med / 1e9,
            "call_us": med * 1e6,
            "calls_timed": len(times),
            "numpy": np.__version__,
            "machine": cpu_model(),
            "cores": os.cpu_count(),
            "env_OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
        }
        row.update(info)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
