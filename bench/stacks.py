"""The stacks (our servables, ONNX Runtime, PyTorch) behind one interface, so run.py can interleave them.

All stacks are started first and stay up, idle, while the others are measured; each
measurement (one window length, one half of a concurrency level) then runs stack after stack.
Interleaving spreads any drift in machine load over all stacks instead of one.
"""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from bench import serving

REPLY = "reference: "  # bench/reference.py's reply prefix


class ServingStack:
    """bert_squad.server.serve on one exported servable dir, measured over gRPC."""

    def __init__(self, name: str, label: str, servable_dir: Path, buckets, threads: int, workdir: Path,
                 client: str, stream: str = "aio", options: Sequence[str] = (), python: Path = serving.FRONT):
        self.python = python  # the serve command's interpreter: another checkout's for run.py --before
        self.name, self.label, self.buckets, self.client, self.stream = name, label, list(buckets), client, stream
        self.options = list(options)
        self.servable_dir, self.threads, self.workdir = servable_dir, threads, workdir
        self.server: Optional[serving.Server] = None
        self.info: Dict[str, object] = {}
        self.env: Dict[str, str] = {}
        self.receiver = None

    def trace_to_receiver(self) -> None:
        """Export the server's spans (OTLP gRPC, every request sampled) to tests/otlp_receiver.py's receiver, run
        by this process: what tracing on costs, with a collector that answers at once."""
        import sys

        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
        from otlp_receiver import OtlpReceiver

        self.receiver = OtlpReceiver().start()
        self.env = self.receiver.environment("grpc")

    def start(self) -> None:
        self.server = serving.start_server(self.servable_dir, self.threads, self.workdir, self.options,
                                           self.env, self.python)
        self.info = {"cold_start_s": self.server.cold_start_s, "ready_line": self.server.ready_line,
                     "memory_ready": self.memory()}

    def window(self, length: int, repeats: int) -> Dict[str, List[float]]:
        """Round trips ("latency") and the worker's model times ("model") of one window."""
        return serving.window_latency(self.client, self.server, length, repeats)

    def null_rtt(self, repeats: int) -> List[float]:
        return serving.null_rtt(self.client, self.server.address, repeats)

    def sweep(self, concurrency: int, questions, first: int = 0) -> dict:
        return serving.sweep(self.client, self.server.address, questions, concurrency, self.stream)

    def paired_pass(self, questions) -> dict:
        return serving.paired_pass(self.client, self.server, questions)

    def transport_pass(self, questions, rounds: int) -> dict:
        return serving.transport_pass(self.server, questions, rounds, self.python)

    def batch_pass(self, questions, n: int) -> dict:
        return serving.batch_pass(self.server, questions, n)

    def memory(self) -> Dict[str, int]:
        return serving.workers_memory(self.server)

    def stop(self) -> None:
        if self.server is not None:
            serving.stop_server(self.server)
        if self.receiver is not None:
            self.receiver.stop()
            self.server = None


class ReferenceStack:
    """bench/reference.py in the Python 3.11 venv: ONNX Runtime or PyTorch, driven over stdin/stdout."""

    def __init__(self, name: str, label: str, python: str, script: Path, job: dict, workdir: Path):
        self.name, self.label = name, label
        self.python, self.script, self.job, self.workdir = python, script, job, workdir
        self.proc: Optional[subprocess.Popen] = None
        self.info: Dict[str, object] = {}

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        job_file = self.workdir / "job.json"
        job_file.write_text(json.dumps({**self.job, "stack": self.name}))
        self.stderr = open(self.workdir / "stderr.log", "w")
        t0 = time.perf_counter()
        self.proc = subprocess.Popen([self.python, str(self.script), "serve", "--job", str(job_file)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, text=True,
                                     cwd=self.workdir)
        ready = self._reply()
        self.info = {"cold_start_s": time.perf_counter() - t0, "version": ready["version"],
                     "memory_ready": ready["memory"]}

    def _reply(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith(REPLY):
                message = json.loads(line[len(REPLY):])
                if "error" in message:
                    raise serving.BenchError(f"{self.name} runner: {message['error']}")
                return message
        self.proc.wait()
        log = (self.workdir / "stderr.log").read_text()[-3000:]
        raise serving.BenchError(f"{self.name} runner exited with code {self.proc.returncode}:\n{log}")

    def _ask(self, **command) -> dict:
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        return self._reply()

    def window(self, length: int, repeats: int) -> Dict[str, List[float]]:
        """In-process model calls: the latency is the model time."""
        times = self._ask(cmd="window", length=length, repeats=repeats)["times"]
        return {"latency": times, "model": times}

    def sweep(self, concurrency: int, questions, first: int = 0) -> dict:
        """`questions` must be the job's questions[first:first + len(questions)]: the runner has the texts."""
        return self._ask(cmd="sweep", concurrency=concurrency, first=first, count=len(questions))

    def memory(self) -> Dict[str, int]:
        return self._ask(cmd="memory")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None:
            self.stderr.close()
        self.proc = None
