"""The processes of a running server as /proc shows them: the cores we may use, our children, Serving's workers."""
from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

PARENT_POLL_S = 0.5  # how often a child started by the serve command checks that its parent is alive


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


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of a process and all its descendants (a version's master and its workers), in bytes; what has
    exited meanwhile counts 0."""
    total, pending, seen = 0, [pid], set()
    page = os.sysconf("SC_PAGE_SIZE")
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        seen.add(current)
        try:
            total += int(Path(f"/proc/{current}/statm").read_text().split()[1]) * page
        except (OSError, IndexError, ValueError):
            continue
        pending.extend(children(current))
    return total


def available_memory_bytes() -> int:
    """Memory a new process tree may take without the kernel's OOM killer stepping in: the host's MemAvailable,
    capped by what a container's memory limit (cgroup v2 memory.max) leaves above its current use."""
    available = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            available = int(line.split()[1]) * 1024
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
    except (OSError, ValueError):
        return available
    return available if limit == "max" else min(available, max(0, int(limit) - used))


def exit_with_parent(parent: int, poll_s: float = PARENT_POLL_S) -> None:
    """SIGKILL this process as soon as `parent` is no longer its parent (it died and we were re-parented), checked now
    and every `poll_s` seconds in a daemon thread. Polled rather than prctl(PR_SET_PDEATHSIG): that fires when the
    *thread* that started us ends, and Serving starts its workers from threads that come and go."""

    def orphaned() -> bool:
        return os.getppid() != parent

    def watch() -> None:
        while not orphaned():
            time.sleep(poll_s)
        os.kill(os.getpid(), signal.SIGKILL)

    if orphaned():
        os.kill(os.getpid(), signal.SIGKILL)
    threading.Thread(target=watch, name="bert-squad-parent-watch", daemon=True).start()
