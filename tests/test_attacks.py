"""Known attacks on the public ports of a real server: HTTP/2 on both gRPC ports (tests/h2_attacks.py: raw frames)
and slow or oversized clients on the REST port (tests/http1_attacks.py: plain sockets); loopback, bounded in time.
During and after each, the server is alive, a legitimate caller on the same port is answered within CALL_DEADLINE_S
every time, and the front door's memory stays within MEMORY_BOUND_MB of where it started; the REST limits answer the
attacker with HTTP's own refusals (408, 431, 413, 503).

Against grpcio 1.47 (the front door before it moved to Python 3.11) the rapid reset alone left the caller without an
answer and grew the process by gigabytes; docs/reliability-and-security.md has the numbers.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest

from bert_squad.contract.warmup import WARMUP_CONTEXT, WARMUP_QUESTION, predict_request, reply_failure
from bert_squad_client import protocol
from harness import Server
from wire import rest_exchange

ATTACK_S = float(os.environ.get("BERT_SQUAD_ATTACK_SECONDS", "5"))
CALL_DEADLINE_S = 2.0  # a legitimate call is answered within this, during and after an attack
CALL_EVERY_S = 0.2
AFTER_S = 2.0  # the caller goes on this long after the attack
MEMORY_BOUND_MB = 384  # the front door's resident memory may grow this much over an attack (grpcio 1.47: +2.8 GB in 5 s)
OIP_LIVE = "/inference.GRPCInferenceService/ServerLive"
OIP_LIVE_REPLY = b"\x08\x01"  # ServerLiveResponse{live: true}

HEADER_TIMEOUT_S = 3  # the server's --http-header-timeout-s and --http-body-timeout-s here: shorter than an attack
MAX_CONNECTIONS = 3500  # its --http-max-connections: above the idle connections' attack
ATTACKS = {
    "rapid_reset": "h2_attacks.rapid_reset({port}, {path!r}, {seconds})",
    "continuation_flood": "h2_attacks.continuation_flood({port}, {path!r}, {seconds})",
    "hpack_integer_padding": "h2_attacks.hpack_integer_padding({port}, {path!r}, {seconds})",
    "crafted_headers": "h2_attacks.crafted_headers({port}, {path!r}, {seconds})",
    "connection_burst": "h2_attacks.connection_burst({port}, {seconds})",
}
HTTP_ATTACKS = {  # attack -> the status every one of its requests must get
    "slow_headers": ("http1_attacks.slow_headers({port}, {seconds})", 408),
    "oversized_header": ("http1_attacks.oversized_header({port}, {seconds})", 431),
    "many_headers": ("http1_attacks.many_headers({port}, {seconds})", 431),
    "endless_chunked_body": ("http1_attacks.endless_chunked_body({port}, {seconds})", 413),
    "idle_connections": ("http1_attacks.idle_connections({port}, {seconds})", 408),
}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Caller:
    """A legitimate client asking every CALL_EVERY_S on its own channel, each call with a CALL_DEADLINE_S deadline;
    records (when, ok, what)."""

    def __init__(self, address: str, port_name: str, servable: str):
        self._channel = grpc.insecure_channel(address)
        if port_name == "rest":  # MindSpore Serving's REST API, a new connection each time
            body = {"instances": [{"question": WARMUP_QUESTION, "context": WARMUP_CONTEXT}]}
            path = "/model/bert_squad:predict"
            self._ask = lambda: (None if rest_exchange(address, path, body, timeout=CALL_DEADLINE_S)[0] == 200
                                 else "not 200")
        elif port_name == "grpc":  # MindSpore Serving's API: the warm-up question, answered by the model
            call = self._channel.unary_unary(protocol.PREDICT_PATH)
            request = predict_request(servable).SerializeToString()
            self._ask = lambda: reply_failure(protocol.PredictReply.FromString(call(request, timeout=CALL_DEADLINE_S)))
        else:  # the Open Inference Protocol's ServerLive
            call = self._channel.unary_unary(OIP_LIVE)
            self._ask = lambda: None if call(b"", timeout=CALL_DEADLINE_S) == OIP_LIVE_REPLY else "not live"
        self.calls: list = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            t0 = time.monotonic()
            try:
                failure = self._ask()
            except grpc.RpcError as e:
                failure = f"{e.code().name}: {e.details()}"
            except OSError as e:  # REST: refused, reset or timed out
                failure = f"{type(e).__name__}: {e}"
            self.calls.append((t0, failure is None, failure or round(time.monotonic() - t0, 3)))
            self._stop.wait(max(0.0, CALL_EVERY_S - (time.monotonic() - t0)))

    def __enter__(self) -> "Caller":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(CALL_DEADLINE_S + 5)
        self._channel.close()


def attack(call: str) -> subprocess.Popen:
    """The attack `call` in a process of its own (its loop must not take this process's GIL from the caller)."""
    code = f"import json, h2_attacks, http1_attacks; print(json.dumps({call}))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])}
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)


@pytest.fixture(scope="module")
def server(oracle_servable_dir, tmp_path_factory):
    """A server whose HTTP limits an attack of a few seconds reaches."""
    with Server(tmp_path_factory.mktemp("attacked"), oracle_servable_dir, extra_args=[
            "--http-header-timeout-s", str(HEADER_TIMEOUT_S), "--http-body-timeout-s", str(HEADER_TIMEOUT_S),
            "--http-max-connections", str(MAX_CONNECTIONS)]) as running:
        yield running


def under_attack(server: Server, port_name: str, call: str) -> dict:
    """Run the attack `call` against `port_name` of `server` with a legitimate caller beside it; check the caller,
    the server and its memory; what the attacker reported."""
    address = {"grpc": server.grpc_address, "oip_grpc": server.oip_grpc_address, "rest": server.rest_address}
    pid = server.process.pid
    with Caller(address[port_name], port_name, "bert_squad") as caller:
        time.sleep(0.5)
        before = rss_mb(pid)
        peak = before
        t0 = time.monotonic()
        attacker = attack(call)
        while attacker.poll() is None:
            peak = max(peak, rss_mb(pid))
            assert time.monotonic() - t0 < ATTACK_S + 60, "the attack did not stop by itself"
            time.sleep(0.1)
        t_end = time.monotonic()
        time.sleep(AFTER_S)
        peak = max(peak, rss_mb(pid))
    out, err = attacker.communicate()
    assert attacker.returncode == 0, err[-2000:]
    sent = json.loads(out.strip().splitlines()[-1])
    during = [c for c in caller.calls if t0 <= c[0] < t_end]
    after = [c for c in caller.calls if c[0] >= t_end]
    failed = [c for c in caller.calls if not c[1]]
    report = (f"{call.split('(')[0]} on the {port_name} port: attacker {sent}; caller {len(during)} calls during, "
              f"{len(after)} after, failed {failed[:5]}; front door RSS {before:.0f} -> peak {peak:.0f} MB")
    print(report)
    assert server.process.poll() is None, f"the server died: {report}"
    assert len(during) >= int(ATTACK_S / CALL_DEADLINE_S) and after, f"the caller was held up: {report}"
    assert not failed, f"legitimate calls failed: {report}"
    assert peak - before < MEMORY_BOUND_MB, f"memory grew past the bound: {report}"
    return sent


@pytest.mark.parametrize("name", list(ATTACKS))
@pytest.mark.parametrize("port_name", ["grpc", "oip_grpc"])
def test_an_http2_attack_leaves_every_legitimate_caller_answered_and_memory_bounded(server, port_name, name):
    address = server.grpc_address if port_name == "grpc" else server.oip_grpc_address
    path = protocol.PREDICT_PATH if port_name == "grpc" else OIP_LIVE
    sent = under_attack(server, port_name, ATTACKS[name].format(port=address.rsplit(":", 1)[1], path=path,
                                                                 seconds=ATTACK_S))
    assert sent.get("streams", sent.get("frames", sent.get("connections"))), f"the attack sent nothing: {sent}"


@pytest.mark.parametrize("name", list(HTTP_ATTACKS))
def test_a_slow_or_oversized_http_client_is_refused_and_every_legitimate_caller_answered(server, name):
    call, status = HTTP_ATTACKS[name]
    sent = under_attack(server, "rest", call.format(port=server.rest_address.rsplit(":", 1)[1], seconds=ATTACK_S))
    answered = sent["answered"]
    if isinstance(answered, dict):
        assert set(answered) == {str(status)}, f"{name}: every request should get {status}: {sent}"
    else:
        assert answered == status, f"{name}: the request should get {status}: {sent}"


def test_past_the_connection_limit_a_client_gets_503(server):
    out = subprocess.run([sys.executable, "-c", f"import json, http1_attacks; print(json.dumps("
                          f"http1_attacks.past_the_connection_limit({server.rest_address.rsplit(':', 1)[1]}, "
                          f"{MAX_CONNECTIONS})))"], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])})
    assert out.returncode == 0, out.stderr[-2000:]
    sent = json.loads(out.stdout.strip().splitlines()[-1])
    assert sent["held"] == MAX_CONNECTIONS and sent["answered"] == {"503": 5}, sent
    status, _, _ = rest_exchange(server.rest_address, "/livez", b"", method="GET", timeout=10)
    assert status == 200  # the held connections gone, the next client is answered
