"""Start and stop real MindSpore Serving servers for tests.

(Written by the lead for the end-to-end tests; helpers: extend this module, do not replace it.)

Every server runs in its own process group and its own working directory (Serving
writes serving_logs/ and unix_socket_files/ into its cwd), on loopback ports picked
free at run time, and is stopped by its pid: SIGTERM, then SIGKILL of the group.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import List, Optional, Sequence

REPO = Path(__file__).resolve().parent.parent
PY39 = Path(os.environ.get("BERT_SQUAD_PY39", REPO / ".stack" / "py39" / "bin" / "python"))
READY = "bert-squad-serve: ready"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python -m bert_squad.serve` (or any command printing READY) as a managed child process."""

    def __init__(self, workdir: Path, servable_dir: Optional[Path] = None, extra_args: Sequence[str] = (),
                 command: Optional[List[str]] = None, grpc_port: Optional[int] = None,
                 rest_port: Optional[int] = None, env: Optional[dict] = None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.grpc_address = f"127.0.0.1:{grpc_port or free_port()}"
        self.rest_address = f"127.0.0.1:{rest_port or free_port()}"
        self.command = command or [
            str(PY39), "-m", "bert_squad.serve", "--servable-dir", str(servable_dir),
            "--grpc-address", self.grpc_address, "--rest-address", self.rest_address,
            "--workdir", str(self.workdir), "--threads", "1", *extra_args]
        self.env = {**os.environ, **(env or {})}
        self.log_path = self.workdir / "server.out"
        self.process: Optional[subprocess.Popen] = None
        self.ready_line = ""

    def start(self, timeout: float = 180.0) -> "Server":
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(self.command, cwd=self.workdir, env=self.env, stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.log_path.read_text(errors="replace").splitlines():
                if line.startswith(READY):
                    self.ready_line = line
                    return self
            if self.process.poll() is not None:
                break
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server did not become ready; its output:\n{self.output()}")

    def output(self) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        logs = sorted((self.workdir / "serving_logs").glob("*.log"))
        for log in logs:
            text += f"\n--- {log.name} (tail)\n" + "\n".join(log.read_text(errors="replace").splitlines()[-40:])
        return text

    def worker_pids(self) -> List[int]:
        """Worker processes of this server (its process group, minus the server itself)."""
        if not self.process:
            return []
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != self.process.pid:
                try:
                    if os.getpgid(int(entry.name)) == self.process.pid:
                        pids.append(int(entry.name))
                except ProcessLookupError:
                    pass
        return pids

    def stop(self, grace: float = 20.0) -> Optional[int]:
        """SIGTERM the server, wait, then SIGKILL whatever is left of its process group."""
        if not self.process:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()
        return self.process.returncode

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
