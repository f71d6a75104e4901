"""Start and stop real MindSpore Serving servers for tests.

(Written by the lead for the end-to-end tests; helpers: extend this module, do not replace it.)

Every server runs in its own process group and its own working directory (Serving
writes serving_logs/ and unix_socket_files/ into its cwd), on loopback ports picked
free at run time, and is stopped by its pid: SIGTERM, then SIGKILL of the group.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from bert_squad.front.health import find_ready_line
from bert_squad.runtimes.lite_lib import with_lite_on_library_path

REPO = Path(__file__).resolve().parent.parent
PY39 = Path(os.environ.get("BERT_SQUAD_PY39", REPO / ".stack" / "py39" / "bin" / "python"))
# bert-squad-serve's own venv (Python 3.10+, setup.cfg [front]): it starts Serving's side with PY39
FRONT = Path(os.environ.get("BERT_SQUAD_FRONT", REPO / ".stack" / "front" / "bin" / "python"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition, timeout: float, what: str):
    """The first truthy value of `condition()`, polled until `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def run_python(code: str, *args, timeout: float) -> dict:
    """`code` run by this interpreter in a subprocess, tests/ on its path, with `args`; its last stdout line as
    JSON. For clients that must not share this process (they register their own protobuf messages)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])}
    done = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


class Server:
    """`python -m bert_squad.server.serve` (or any command printing READY_MARKER) as a managed child process."""

    def __init__(self, workdir: Path, servable_dir: Optional[Path] = None, extra_args: Sequence[str] = (),
                 command: Optional[List[str]] = None, grpc_port: Optional[int] = None,
                 rest_port: Optional[int] = None, env: Optional[dict] = None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.grpc_address = f"127.0.0.1:{grpc_port or free_port()}"
        self.rest_address = f"127.0.0.1:{rest_port or free_port()}"
        self.health_address = f"127.0.0.1:{free_port()}"  # extra_args may name another
        self.oip_grpc_address = f"127.0.0.1:{free_port()}"
        self.command = command or [
            str(FRONT), "-m", "bert_squad.server.serve", "--servable-dir", str(servable_dir),
            "--grpc-address", self.grpc_address, "--rest-address", self.rest_address,
            "--health-address", self.health_address, "--oip-grpc-address", self.oip_grpc_address,
            "--workdir", str(self.workdir), "--threads", "1", *extra_args]
        self.env = {**os.environ, **(env or {})}
        self.log_path = self.workdir / "server.out"
        self.process: Optional[subprocess.Popen] = None
        self.ready_line = ""

    def start(self, timeout: float = 180.0) -> "Server":
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0  # a restart appends to the log
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(self.command, cwd=self.workdir, env=self.env, stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = find_ready_line(self.log_path.read_bytes()[offset:].decode(errors="replace"))
            if line:
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
        """Serving's worker processes of this server (in its process group, running start_worker.py)."""
        return self._group_running(b"start_worker.py")

    def master_pid(self) -> Optional[int]:
        """The process running Serving's master (bert-squad-serve keeps it in a child process), if any."""
        pids = self._group_running(b"bert_squad.serving.master")
        return pids[0] if pids else None

    def _group_running(self, part: bytes) -> List[int]:
        if not self.process:
            return []
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != self.process.pid:
                try:
                    if os.getpgid(int(entry.name)) != self.process.pid:
                        continue
                    command = (entry / "cmdline").read_bytes().split(b"\0")
                except (ProcessLookupError, OSError):
                    continue
                if any(p.endswith(part) for p in command):
                    pids.append(int(entry.name))
        return sorted(pids)

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

    def kill(self) -> None:
        """SIGKILL the server and its workers at once, like a crash or a power cut."""
        if self.process:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait()

    def restart(self, timeout: float = 180.0) -> "Server":
        """Stop, then start again on the same ports."""
        self.stop()
        return self.start(timeout)

    def running(self) -> List[int]:
        """Live (not zombie) processes left in the server's process group: [] once it is fully stopped."""
        if not self.process:
            return []
        alive = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(stat[2]) == self.process.pid and stat[0] != "Z":
                    alive.append(int(entry.name))
        return alive

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# --- toy servable, TLS files and the oracle model for client tests (bert_squad_client) ---

TOY_SERVE = REPO / "tests" / "servables" / "serve_toy.py"
TOY_CONFIG = REPO / "tests" / "servables" / "toy_qa" / "servable_config.py"


SERVABLE_CONFIG = REPO / "servable" / "bert_squad" / "servable_config.py"


def new_servable_dir(servable_dir: Path) -> Path:
    """servable_dir/bert_squad/ holding our servable_config.py and no version yet; returns servable_dir."""
    servable_dir = Path(servable_dir)
    (servable_dir / "bert_squad").mkdir(parents=True, exist_ok=True)
    shutil.copy(SERVABLE_CONFIG, servable_dir / "bert_squad")
    return servable_dir


def export_servable(servable_dir: Path, checkpoint: Path, **export_args) -> Path:
    """new_servable_dir() with `checkpoint` exported into it as version 1 (export_version's arguments, quiet)."""
    from bert_squad.export.exporter import export_version

    new_servable_dir(servable_dir)
    export_version(checkpoint, servable_dir, log=lambda _: None, **export_args)
    return Path(servable_dir)


def toy_server(workdir: Path) -> Server:
    """A (not started) server running the toy servable (tests/servables/toy_qa) deployed as `bert_squad`."""
    workdir = Path(workdir)
    servables = workdir / "servables"
    (servables / "bert_squad" / "1").mkdir(parents=True, exist_ok=True)
    shutil.copy(TOY_CONFIG, servables / "bert_squad" / "servable_config.py")
    grpc_port, rest_port = free_port(), free_port()
    command = [str(PY39), str(TOY_SERVE), "--servable-dir", str(servables), "--name", "bert_squad",
               "--grpc-address", f"127.0.0.1:{grpc_port}", "--rest-address", f"127.0.0.1:{rest_port}"]
    return Server(workdir / "run", command=command, grpc_port=grpc_port, rest_port=rest_port,
                  env=with_lite_on_library_path({"LD_LIBRARY_PATH": os.environ.get("LD_LIBRARY_PATH", "")}))


def make_tls(directory: Path) -> dict:
    """A throwaway CA, a server certificate for 127.0.0.1 and localhost, and a client certificate (openssl CLI)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=bert-squad test CA")
    (d / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for who in ("server", "client"):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{who}.key", "-out", f"{who}.csr",
                "-subj", f"/CN=bert-squad test {who}")
        ext = ["-extfile", "server.ext"] if who == "server" else []
        openssl("x509", "-req", "-in", f"{who}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{who}.pem", "-days", "2", *ext)
    return {"ca": str(d / "ca.pem"), "server_cert": str(d / "server.pem"), "server_key": str(d / "server.key"),
            "client_cert": str(d / "client.pem"), "client_key": str(d / "client.key")}


_EXPORT_ORACLE = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from harness import export_servable
from oracle import build_oracle_checkpoint, uncased_vocab_file
root, buckets = Path(sys.argv[2]), [int(b) for b in sys.argv[3].split(",")]
config = build_oracle_checkpoint(root / "oracle.ckpt", uncased_vocab_file(), sys.argv[4], sys.argv[5])
export_servable(root / "servable", root / "oracle.ckpt", vocab_file=uncased_vocab_file(), config=config,
                buckets=buckets, runtime="serving")
"""


def export_oracle(root: Path, buckets: Sequence[int] = (128, 384), span: Tuple[str, str] = ("paris", "france")) -> Path:
    """The oracle servable (answers span "paris" .. "france", or the words of `span`: tests/oracle.py) exported by
    the py39 venv, so that tests running under any Python can serve it; returns the servable directory."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([str(PY39), "-c", _EXPORT_ORACLE, str(REPO / "tests"), str(root),
                           ",".join(map(str, buckets)), *span], capture_output=True, text=True, cwd=root)
    assert done.returncode == 0, f"oracle export failed:\n{done.stdout}\n{done.stderr}"
    return root / "servable"
