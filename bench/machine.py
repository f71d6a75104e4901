"""What the machine is and how busy others kept it while we measured.

A 2-core machine shared with other work gives noisy numbers; each phase records the CPU
that processes outside the benchmark's own process tree used, so a reader can tell a slow
stack from a busy machine.
"""
from __future__ import annotations

import os
import platform
import time
from typing import Dict

import psutil

_TICK = os.sysconf("SC_CLK_TCK")


def describe() -> Dict[str, object]:
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                 platform.processor())
    flags = next((line.split(":", 1)[1].split() for line in open("/proc/cpuinfo") if line.startswith("flags")), [])
    return {"cpu": model, "cores": os.cpu_count(), "memory_gb": psutil.virtual_memory().total / 1e9,
            "avx512": "avx512f" in flags, "amx": "amx_tile" in flags, "kernel": platform.release()}


def _machine_busy_s() -> float:
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in open("/proc/stat").readline().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / _TICK


def _our_cpu_s() -> float:
    """CPU seconds of this process and its descendants, counting reaped children once."""
    total = 0.0
    me = psutil.Process()
    for p in [me] + me.children(recursive=True):
        try:
            t = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


class CpuMonitor:
    """Start before a phase, `stop()` after: average cores used by us and by everyone else."""

    def __init__(self):
        self.t0, self.busy0, self.ours0 = time.perf_counter(), _machine_busy_s(), _our_cpu_s()

    def stop(self) -> Dict[str, float]:
        elapsed = time.perf_counter() - self.t0
        busy, ours = _machine_busy_s() - self.busy0, _our_cpu_s() - self.ours0
        return {"seconds": elapsed, "our_cores": ours / elapsed, "foreign_cores": max(0.0, busy - ours) / elapsed,
                "load_avg_1m": os.getloadavg()[0]}
