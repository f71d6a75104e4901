"""The processes of a running server as /proc shows them: the cores we may use, our children, Serving's workers."""
from __future__ import annotations

import os
from pathlib import Path


def available_cpus() -> int:
    """Cores this process may use: its CPU affinity, capped by a container's CPU quota (cgroup v2).
    os.cpu_count() is the host's count even under a container CPU limit."""
    cpus = len(os.sched_getaffinity(0))
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
    except (OSError, ValueError):
        return cpus
    return cpus if quota == "max" else max(1, min(cpus, int(quota) // int(period)))


def children(pid: int | str = "self") -> "set[int]":
    """Child pids of a process, from /proc/<pid>/task/*/children: the supervisors ask twice a second, and
    psutil's children() reads the stat file of every process on the host."""
    tasks = Path(f"/proc/{pid}/task")
    own = os.getpid() if pid == "self" else pid
    if not (tasks / str(own) / "children").exists():  # a kernel built without CONFIG_PROC_CHILDREN
        import psutil  # a dependency of mindspore_serving

        try:
            return {child.pid for child in psutil.Process(own).children()}
        except psutil.NoSuchProcess:
            return set()
    pids = set()
    try:
        entries = list(tasks.iterdir())
    except OSError:  # the process exited
        return pids
    for task in entries:
        try:
            pids.update(int(child) for child in (task / "children").read_text().split())
        except OSError:  # the thread exited meanwhile
            pass
    return pids


def worker_pids() -> "set[int]":
    """Serving's worker processes: children of this process running its start_worker.py."""
    pids = set()
    for pid in children():
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:  # exited meanwhile
            continue
        if any(part.endswith(b"start_worker.py") for part in command):
            pids.add(pid)
    return pids
