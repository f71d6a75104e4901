"""Keep Serving's master (and its workers) running in a child process; start it again when it dies.

Issue #7 saw Serving's master segfault under mixed gRPC + REST load; inside the serve process it took the
whole server down. Here the master runs in `python -m bert_squad.serving.master` (master.py). When it dies
(a signal, or an exit nobody asked for) the cause is logged and counted
(bert_squad_master_restarts_total), its orphaned workers are killed by pid (this process is their child
subreaper, so they become our children), and a new master starts on the same ports. A crash loop,
CRASH_LOOP_RESTARTS restarts within CRASH_LOOP_WINDOW_S, gives up so that an outer supervisor (systemd, a
container restart policy) takes over. During a version switch (versions_live.py) two supervisors run side by side,
one master each: the masters they run are registered here, so that neither takes the other's master for an orphan.
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import threading
import time
from collections import deque
from typing import Callable, List, Optional

from bert_squad import settings
from bert_squad.front import metrics
from bert_squad.contract import PARENT_PID_ENV, READY_FD_ENV, STAGE_LOAD
from bert_squad.contract.processes import children

PR_SET_CHILD_SUBREAPER = 36  # prctl(2)
_MASTERS: "set[int]" = set()  # the running masters of every supervisor of this process
_MASTERS_LOCK = threading.Lock()  # held from a master's start to its registration, and while orphans are killed


def become_subreaper() -> None:
    """Orphaned descendants (the workers of a dead master) are re-parented to this process, not to init."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")


def describe_exit(returncode: int) -> str:
    """How a process ended, in words: 'killed by SIGKILL', 'exit code 3'."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


class StartFailed(Exception):
    """The first master did not come up; the message is its reason, `stage` the one that failed (contract.py)."""

    def __init__(self, message: str, stage: str = STAGE_LOAD):
        super().__init__(message)
        self.stage = stage


class Supervisor:
    """Runs `command` (the master) until stop(); `on_ready(seconds_warm_up)` / `on_down(cause)` report changes.

    `fatal` is set (with the reason) when it gives up: the first start failed, or a crash loop.
    """

    def __init__(self, command: List[str], env: dict, on_ready: Callable[[str], None],
                 on_down: Callable[[str], None], restarts: int = settings.CRASH_LOOP_RESTARTS,
                 window_s: float = settings.CRASH_LOOP_WINDOW_S):
        self._command, self._env = command, env
        self._on_ready, self._on_down = on_ready, on_down
        self._restarts, self._window = restarts, window_s
        self._stopping = threading.Event()
        self._first_outcome = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bert-squad-supervisor", daemon=True)
        self.process: Optional[subprocess.Popen] = None
        self.fatal: Optional[str] = None
        self.failed_stage = STAGE_LOAD  # of the first start, when it failed
        self.up = False
        self.warm_up = ""
        self.finished = threading.Event()

    def start(self) -> None:
        become_subreaper()
        self._thread.start()

    def wait_first_start(self) -> str:
        """Block until the first master is ready (returns its warm-up time) or failed (raises StartFailed)."""
        self._first_outcome.wait()
        if not self.up:
            raise StartFailed(self.fatal or "Serving's master exited during start-up", self.failed_stage)
        return self.warm_up

    def stop(self, grace_s: float = 30.0) -> None:
        """SIGTERM the master (Serving stops its workers), wait, then SIGKILL what is left."""
        self._stopping.set()
        process = self.process
        if process and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(grace_s)
            except subprocess.TimeoutExpired:
                process.kill()
        self._thread.join(grace_s + 5)
        self._kill_orphans()

    def _run(self) -> None:
        recent: deque = deque()
        first = True
        try:
            while not self._stopping.is_set():
                ready, error = self._run_one()
                if self._stopping.is_set():
                    return
                cause = describe_exit(self.process.returncode)
                if first and not ready:
                    self.fatal = error or f"Serving's master exited during start-up ({cause})"
                    return
                first = False
                now = time.monotonic()
                recent.append(now)
                while recent and now - recent[0] > self._window:
                    recent.popleft()
                metrics.MASTER_RESTARTS.labels(cause).inc()
                if len(recent) >= self._restarts:
                    self.fatal = (f"Serving's master died {len(recent)} times within {self._window:g} s (last: "
                                  f"{cause}); a crash loop, so the serve command gives up")
                    self._on_down(self.fatal)
                    return
                self._on_down(f"Serving's master died ({cause}); starting it again (restart {len(recent)} within "
                              f"{self._window:g} s)")
        finally:
            self.up = False
            self._first_outcome.set()
            self.finished.set()

    def _run_one(self):
        """Run one master to its end; (whether it became ready, its start-up error)."""
        read_end, write_end = os.pipe()
        env = {**self._env, READY_FD_ENV: str(write_end), PARENT_PID_ENV: str(os.getpid())}
        try:
            with _MASTERS_LOCK:
                self.process = subprocess.Popen(self._command, env=env, pass_fds=(write_end,))
                _MASTERS.add(self.process.pid)
        finally:
            os.close(write_end)
        ready, error = False, None
        with os.fdopen(read_end) as pipe:
            for line in pipe:  # until the master exits (its end of the pipe closes)
                kind, _, text = line.rstrip("\n").partition(" ")
                if kind == "ready":
                    ready, self.warm_up, self.up = True, text, True
                    self._on_ready(text)
                    self._first_outcome.set()
                elif kind == "error":
                    self.failed_stage, _, error = text.partition(" ")
        self.process.wait()
        with _MASTERS_LOCK:
            _MASTERS.discard(self.process.pid)
        self.up = False
        self._kill_orphans()
        return ready, error

    @staticmethod
    def _kill_orphans() -> None:
        """SIGKILL and reap our children other than the running masters: the workers of a master that died."""
        with _MASTERS_LOCK:
            for pid in children() - _MASTERS:
                try:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                except (ProcessLookupError, ChildProcessError):
                    pass
