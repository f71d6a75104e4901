"""No orphans: every process the serve command starts (Serving's master, its workers, the export on first start)
ends itself when the process that started it is gone (processes.exit_with_parent), so that a serve command killed
without a chance to clean up (SIGKILL: the OOM killer) leaves nothing holding the model's memory or its socket."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from harness import Server, wait_for

CHILD = """
import os, sys, time
from bert_squad.contract.processes import exit_with_parent
exit_with_parent(os.getppid())
print(os.getpid(), flush=True)
time.sleep(60)
"""
PARENT = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", sys.argv[1]], stdout=sys.stdout)
time.sleep(60)
"""


def alive(pid: int) -> bool:
    """Running, not a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.pure
def test_a_child_dies_within_a_second_of_its_parent_being_killed(tmp_path):
    parent = subprocess.Popen([sys.executable, "-c", PARENT, CHILD], stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())
        time.sleep(1.0)
        assert alive(child), "the child ended while its parent was alive"
        parent.kill()
        parent.wait()
        t0 = time.monotonic()
        wait_for(lambda: not alive(child), 3, f"child {child} to end after its parent was killed")
        assert time.monotonic() - t0 < 2
    finally:
        parent.kill()
        parent.wait()


def test_a_sigkilled_serve_command_under_load_leaves_no_process_and_starts_again_on_the_same_ports(
        oracle_servable_dir, tmp_path):
    from wire import rest_predict

    server = Server(tmp_path / "run", oracle_servable_dir).start()
    stop, answered = threading.Event(), []

    def load():
        while not stop.is_set():
            try:
                answered.append(rest_predict(server.rest_address, "predict", {"instances": [
                    {"question": "Where?", "context": "The tower stands in paris in france today."}]}, timeout=10))
            except OSError:  # refused once the server is gone
                time.sleep(0.05)

    clients = [threading.Thread(target=load, daemon=True) for _ in range(2)]
    try:
        master, workers = server.master_pid(), server.worker_pids()
        assert master and workers
        for client in clients:
            client.start()
        wait_for(lambda: len(answered) >= 4, 60, "the load to be answered")
        os.kill(server.process.pid, signal.SIGKILL)
        server.process.wait()
        t0 = time.monotonic()
        wait_for(lambda: not any(alive(pid) for pid in (master, *workers)), 5,
                 f"the master {master} and workers {workers} to end after the serve command was killed")
        gone_s = time.monotonic() - t0
        stop.set()
        for client in clients:
            client.join(15)
        server.start()  # at once, on the same ports and work directory
        [answer] = rest_predict(server.rest_address, "predict", {"instances": [
            {"question": "Where?", "context": "The tower stands in paris in france today."}]})
        assert answer["answer"] == "paris in france", answer
        print(f"master and {len(workers)} worker(s) gone {gone_s:.1f} s after the SIGKILL; restarted and answered")
    finally:
        stop.set()
        server.stop()
