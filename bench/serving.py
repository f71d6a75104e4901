"""Our servable under load: start `bert_squad.server.serve`, drive it over gRPC, read its workers' memory.

Runs in the Python 3.9 server venv, with MindSpore Serving's own gRPC client or this
project's (bert_squad_client). Each concurrency level sends every question once, one
question per request, with that many requests in flight: from one asyncio thread on one
channel (stream "aio") or from that many threads with a blocking client each ("threads").
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import psutil

from bench.reference import level_result, stream, window_input
from bert_squad.front.health import find_ready_line, ready_fields
from bert_squad.serving.servable_glue import MODEL_TIMES_ENV, read_model_times

REPO = Path(__file__).resolve().parent.parent
# bert-squad-serve's venv (setup.cfg [front]); it starts Serving's master and workers on .stack/py39
FRONT = Path(os.environ.get("BERT_SQUAD_FRONT", REPO / ".stack" / "front" / "bin" / "python"))

START_TIMEOUT_S = 300.0
REQUEST_TIMEOUT_S = 120.0  # one question; a level that takes longer than this per question is broken
WORKER_SCRIPT = "start_worker.py"


class BenchError(RuntimeError):
    """A benchmark step failed; the message says which and where its log is."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_memory(pid: int) -> Dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, bytes."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) * 1024
    return fields


def _tail(path: Path, lines: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


class ModelTimes:
    """The workers' model-stage log ($BERT_SQUAD_MODEL_TIMES): each take() gives the lines added since the last."""

    def __init__(self, path: Path):
        self.path, self.offset = path, 0

    def take(self) -> List[dict]:
        lines, self.offset = read_model_times(self.path, self.offset)
        return lines


@dataclass
class Server:
    proc: subprocess.Popen
    address: str
    log: Path
    cold_start_s: float
    ready_line: str
    workers: List[int]
    model_times: ModelTimes
    rest_address: str  # the serve command's HTTP front door (REST and OIP REST, forwarded to Serving over gRPC)
    oip_grpc_address: str  # the front door's Open Inference Protocol gRPC service
    internal_address: str  # Serving's master itself (a unix socket behind the front door): the transport baseline


def start_server(servable_dir: Path, threads: int, workdir: Path, options: Sequence[str] = (),
                 env: Optional[Dict[str, str]] = None, python: Path = FRONT) -> Server:
    """Start the serve command on the front door's venv, or `python`'s (`env`: variables added to ours); cold start
    = from process start to its ready line."""
    address = f"127.0.0.1:{free_port()}"
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "serve.log"
    rest_address, oip_grpc_address = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    cmd = [str(python), "-m", "bert_squad.server.serve", "--servable-dir", str(servable_dir), "--grpc-address", address,
           "--rest-address", rest_address, "--oip-grpc-address", oip_grpc_address, "--health-address", "off",
           "--threads", str(threads), "--workdir", str(workdir), *options]
    model_times = workdir / "model-times.jsonl"
    model_times.unlink(missing_ok=True)
    lines: "queue.Queue[Optional[str]]" = queue.Queue()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env={**os.environ, **(env or {}), MODEL_TIMES_ENV: str(model_times)})

    def pump():  # keep reading so the pipe never fills; everything also goes to the log
        with open(log, "w") as f:
            for line in proc.stdout:
                f.write(line)
                f.flush()
                lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    deadline = t0 + START_TIMEOUT_S
    while True:
        try:
            line = lines.get(timeout=max(0.1, deadline - time.perf_counter()))
        except queue.Empty:
            stop_server_proc(proc)
            raise BenchError(f"the server did not get ready in {START_TIMEOUT_S:.0f} s; its output:\n"
                             f"{_tail(log)}") from None
        if line is None:
            proc.wait()
            raise BenchError(f"the server exited with code {proc.returncode} before it was ready; its output:\n"
                             f"{_tail(log)}")
        ready = find_ready_line(line)
        if ready:
            cold = time.perf_counter() - t0
            break
    workers = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)
               if any(WORKER_SCRIPT in part for part in p.cmdline())]
    if not workers:
        stop_server_proc(proc)
        raise BenchError(f"no {WORKER_SCRIPT} process under the server (pid {proc.pid}); log: {log}")
    internal = ready_fields(ready)["internal"]
    return Server(proc, address, log, cold, ready.strip(), workers, ModelTimes(model_times), rest_address,
                  oip_grpc_address, unix_target(internal, workdir))


def unix_target(internal: str, workdir: Path) -> str:
    """The master's socket (`unix:PATH`, PATH relative to the server's workdir) as this process can dial it: a path
    relative to our own directory when the absolute one is too long for a socket address (107 bytes)."""
    path = workdir.resolve() / internal[len("unix:"):]
    return "unix:" + (str(path) if len(str(path)) < 100 else os.path.relpath(path))


def stop_server_proc(proc: subprocess.Popen, extra_pids: Sequence[int] = ()) -> None:
    """SIGTERM the serve process; kill its process group and listed pids if they linger."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    for pid in extra_pids:
        try:
            p = psutil.Process(pid)
            p.wait(timeout=10)
        except psutil.NoSuchProcess:
            continue
        except psutil.TimeoutExpired:
            p.kill()


def stop_server(server: Server) -> None:
    stop_server_proc(server.proc, server.workers)


def workers_memory(server: Server) -> Dict[str, int]:
    """Sum over worker processes (one per device id; one here)."""
    total = {"rss": 0, "hwm": 0}
    for pid in server.workers:
        m = read_memory(pid)
        total["rss"] += m["VmRSS"]
        total["hwm"] += m["VmHWM"]
    return total


class OfficialClient:
    """MindSpore Serving's own gRPC client (mindspore_serving.client)."""

    name = "mindspore_serving.client.Client (gRPC)"
    refusal = BenchError  # what a request the server refuses raises

    def __init__(self, address: str):
        from mindspore_serving.client import Client

        self._predict = Client(address, "bert_squad", "predict")
        self._features = Client(address, "bert_squad", "predict_features")

    @staticmethod
    def _one(reply) -> dict:
        if isinstance(reply, dict):  # whole-request error (a one-instance request fails whole)
            raise BenchError(f"request failed: {reply.get('error', reply)}")
        if "error" in reply[0]:
            raise BenchError(f"request failed: {reply[0]['error']}")
        return reply[0]

    def answer(self, question: str, context: str) -> list:
        out = self._one(self._predict.infer([{"question": question, "context": context}]))
        return [str(out["answer"]), int(out["start"]), int(out["end"])]

    def features(self, ids, mask, segment) -> None:
        self._one(self._features.infer([{"input_ids": ids, "input_mask": mask, "token_type_id": segment}]))


class ProjectClient:
    """This project's client (bert_squad_client), no retries."""

    name = "bert_squad_client.Client (gRPC)"

    def __init__(self, address: str):
        from bert_squad_client import Client, RequestError

        self.refusal = RequestError
        self._client = Client(address, timeout=REQUEST_TIMEOUT_S, retry=None)

    def answer(self, question: str, context: str) -> list:
        result = self._client.answer(question, context)
        return [result.text, result.start, result.end]

    def features(self, ids, mask, segment) -> None:
        self._client.logits(ids, mask, segment)


CLIENTS = {"official": OfficialClient, "ours": ProjectClient}


STREAMS = ("aio", "threads")


def stream_async(address: str, questions: Sequence[dict], concurrency: int, timeout_s: float) -> dict:
    """bench.reference.stream's result, with `concurrency` requests in flight from one event loop on one channel
    (bert_squad_client.AsyncClient). The load generator shares the cores with the server it measures: this one
    takes about 1.2 ms of CPU a question at any concurrency, blocking clients on threads 3-14 ms (2026-12-02)."""
    from bert_squad_client import AsyncClient

    n = len(questions)
    latencies, answered, results, errors = [0.0] * n, [0.0] * n, [None] * n, []
    cursor = iter(range(n))

    async def run() -> float:
        async with AsyncClient(address, timeout=REQUEST_TIMEOUT_S, retry=None) as client:
            async def worker():
                for i in cursor:
                    t = time.perf_counter()
                    try:
                        result = await client.answer(questions[i]["question"], questions[i]["context"])
                        results[i] = [result.text, result.start, result.end]
                    except Exception as e:  # noqa: BLE001 - counted and reported, the level goes on
                        errors.append(f"{questions[i]['id']}: {e}")
                    answered[i] = time.perf_counter()
                    latencies[i] = answered[i] - t

            await client.logits(*window_input(8))  # the channel connects before the clock starts
            t0, cpu = time.perf_counter(), time.process_time()
            try:
                await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(concurrency))), timeout_s)
            except asyncio.TimeoutError:
                raise TimeoutError(f"concurrency {concurrency}: requests still open after {timeout_s:.0f} s") from None
            return t0, time.process_time() - cpu

    t0, cpu_s = asyncio.run(run())
    return level_result(questions, latencies, answered, results, errors, t0, cpu_s)


def sweep(client_kind: str, address: str, questions: Sequence[dict], concurrency: int,
          stream_kind: str = "aio") -> dict:
    """Every question once with `concurrency` requests in flight; latencies as the client sees them, and the
    CPU the load generator (this process) took while the stream ran."""
    def make_ask():
        client = CLIENTS[client_kind](address)
        return lambda q: client.answer(q["question"], q["context"])

    budget = REQUEST_TIMEOUT_S * len(questions) / concurrency
    try:
        if stream_kind == "aio":
            level = stream_async(address, list(questions), concurrency, budget)
        else:
            level = stream(list(questions), concurrency, make_ask, lambda elapsed: max(1.0, budget - elapsed))
    except TimeoutError as e:
        raise BenchError(f"{e}: more than {REQUEST_TIMEOUT_S} s per question; the server hangs") from None
    level["client_cpu_s"] = level.pop("cpu_s")
    answers = level.pop("results")
    return {**level, "answers": {qid: a for qid, a in zip(level["ids"], answers) if a is not None}}


def window_latency(client_kind: str, server: Server, length: int, repeats: int) -> Dict[str, List[float]]:
    """predict_features round trips of one window (model + transport, no text stages) and the
    worker's model time of each (its model-stage log)."""
    client = CLIENTS[client_kind](server.address)
    ids, mask, segment = (a[0] for a in window_input(length))
    client.features(ids, mask, segment)  # warm-up
    server.model_times.take()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        client.features(ids, mask, segment)
        times.append(time.perf_counter() - t)
    lines = server.model_times.take()
    if [line["lengths"] for line in lines] != [[length]] * repeats:
        raise BenchError(f"the model-stage log {server.model_times.path} does not match the {repeats} windows of "
                         f"{length} tokens just sent: {[line['lengths'] for line in lines]}")
    return {"latency": times, "model": [line["seconds"] for line in lines]}


def paired_pass(client_kind: str, server: Server, questions: Sequence[dict]) -> dict:
    """Per question, one at a time: the `predict` round trip and the worker's model time for it."""
    client = CLIENTS[client_kind](server.address)
    server.model_times.take()
    e2e, model = [], []
    for q in questions:
        t = time.perf_counter()
        client.answer(q["question"], q["context"])
        e2e.append(time.perf_counter() - t)
        lines = server.model_times.take()
        if len(lines) != 1:
            raise BenchError(f"one question gave {len(lines)} model batches in {server.model_times.path}; expected 1")
        model.append(lines[0]["seconds"])
    return {"ids": [q["id"] for q in questions], "e2e": e2e, "model": model}


BASELINE = "serving"  # the transport pass's baseline: Serving's gRPC at the master itself, without the front door
# Serving's gRPC through bench/passthrough.py (grpc.aio and a thread-pool grpc.server) on the serve command's own
# interpreter: the floor of any front door in that Python's grpcio, beside ours
BARE = {"bare_aio": "aio", "bare_sync": "sync"}
TRANSPORTS = (BASELINE, "grpc", "rest", "oip_grpc", "oip_rest", *BARE)
PASSTHROUGH = Path(__file__).resolve().parent / "passthrough.py"


@contextlib.contextmanager
def passthrough(python: Path, mode: str, upstream: str):
    """bench/passthrough.py in `mode` in front of `upstream` on a free loopback port: its address, while in use."""
    address = f"127.0.0.1:{free_port()}"
    proc = subprocess.Popen([str(python), str(PASSTHROUGH), mode, address, upstream], stdout=subprocess.PIPE,
                            text=True)
    try:
        if proc.stdout.readline().strip() != "READY":
            raise BenchError(f"bench/passthrough.py {mode} on {python} did not start (exit {proc.poll()})")
        yield address
    finally:
        proc.kill()
        proc.wait()


def transport_pass(server: Server, questions: Sequence[dict], rounds: int, python: Path = FRONT) -> dict:
    """`rounds` times per question, one request at a time: the `predict` round trip over Serving's gRPC straight to
    the master (the baseline) and through the front door, Serving's REST API, and the Open Inference Protocol's gRPC
    and REST (all through the front door), and through the bare pass-throughs (BARE) on `python` (the serve
    command's interpreter), in turn, the first protocol rotating, so that drift weighs on all alike. Then as many
    requests the first stage refuses (blank question): the transport alone, without the model time whose spread
    (+-2 ms a question) blurs the real pairs."""
    with contextlib.ExitStack() as bare:
        addresses = {name: bare.enter_context(passthrough(python, mode, server.internal_address))
                     for name, mode in BARE.items()}
        return _transport_pass(server, questions, rounds, addresses)


def _transport_pass(server: Server, questions: Sequence[dict], rounds: int, bare: Dict[str, str]) -> dict:
    from bert_squad_client import Client, RequestError, RestClient

    from bench import oip

    clients = {BASELINE: Client(server.internal_address, timeout=REQUEST_TIMEOUT_S, retry=None),
               "grpc": Client(server.address, timeout=REQUEST_TIMEOUT_S, retry=None),
               "rest": RestClient(server.rest_address, timeout=REQUEST_TIMEOUT_S, retry=None),
               "oip_grpc": oip.OipGrpc(server.oip_grpc_address, REQUEST_TIMEOUT_S),
               "oip_rest": oip.OipRest(server.rest_address, REQUEST_TIMEOUT_S),
               **{name: Client(address, timeout=REQUEST_TIMEOUT_S, retry=None) for name, address in bare.items()}}
    refusals = {BASELINE: RequestError, "grpc": RequestError, "rest": RequestError, "oip_grpc": oip.Refused,
                "oip_rest": oip.Refused, **{name: RequestError for name in bare}}
    asked = [q for _ in range(rounds) for q in questions]

    def in_turn(ask) -> Dict[str, List[float]]:
        """ask(name, client) timed for every asked question, over every protocol, the first one rotating."""
        times: Dict[str, List[float]] = {name: [] for name in TRANSPORTS}
        for i, q in enumerate(asked):
            turn = i % len(TRANSPORTS)
            for name in TRANSPORTS[turn:] + TRANSPORTS[:turn]:
                t = time.perf_counter()
                ask(name, clients[name], q)
                times[name].append(time.perf_counter() - t)
        return times

    times = in_turn(lambda _, client, q: client.answer(q["question"], q["context"]))
    refused = in_turn(lambda name, client, _: ask_refused(client, refusals[name]))
    times.update({"null_" + name: t for name, t in refused.items()})
    for client in clients.values():
        client.close()
    return {"ids": [q["id"] for q in asked], **times}


def batch_pass(server: Server, questions: Sequence[dict], n: int) -> dict:
    """Questions per second over OIP gRPC two ways: requests of `n` questions sent one at a time, and single
    questions from `n` threads at once (each with a channel of its own). Same questions, each way twice, in turn."""
    from concurrent.futures import ThreadPoolExecutor

    from bench import oip

    pairs = [(q["question"], q["context"]) for q in questions]
    batches = [pairs[i:i + n] for i in range(0, len(pairs), n)]
    clients = [oip.OipGrpc(server.oip_grpc_address, REQUEST_TIMEOUT_S) for _ in range(n)]

    def batched() -> list:
        return [answer for batch in batches for answer in clients[0].ask(batch)]

    def concurrent() -> list:
        with ThreadPoolExecutor(n) as pool:
            return list(pool.map(lambda k: [clients[k].answer(*pair) for pair in pairs[k::n]], range(n)))

    seconds: Dict[str, List[float]] = {"batched": [], "concurrent": []}
    answers = {}
    for _ in range(2):
        for name, run in (("batched", batched), ("concurrent", concurrent)):
            t = time.perf_counter()
            answers[name] = run()
            seconds[name].append(time.perf_counter() - t)
    for client in clients:
        client.close()
    by_thread = answers["concurrent"]
    unstriped = [by_thread[i % n][i // n] for i in range(len(pairs))]
    if unstriped != answers["batched"]:
        raise BenchError("OIP gRPC answered a question differently in a request of "
                         f"{n} than alone; the batch pass must see the same answers")
    return {"n": n, "questions": len(pairs), "seconds": seconds,
            "qps": {name: len(pairs) / min(s) for name, s in seconds.items()}}


def ask_refused(client, refusal: type) -> None:
    """The request the first stage refuses (blank question); BenchError if it is answered instead."""
    try:
        client.answer(" ", "x")
    except refusal:
        return
    raise BenchError("the null request (blank question) was answered; it should be refused")


def null_rtt(client_kind: str, address: str, repeats: int) -> List[float]:
    """Round trips of a request the first stage refuses (blank question): Serving's cost without the model."""
    client = CLIENTS[client_kind](address)
    times = []
    for _ in range(repeats + 1):
        t = time.perf_counter()
        ask_refused(client, client.refusal)
        times.append(time.perf_counter() - t)
    return times[1:]
