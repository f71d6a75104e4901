"""Known HTTP/2 attacks on both gRPC ports of a real server (tests/h2_attacks.py: raw frames, loopback, bounded in
time): during and after each, the server is alive, a legitimate caller on the same port is answered within
CALL_DEADLINE_S every time, and the front door's memory stays within MEMORY_BOUND_MB of where it started.

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

from bert_squad.server.warmup import predict_request, reply_failure
from bert_squad_client import protocol

ATTACK_S = float(os.environ.get("BERT_SQUAD_ATTACK_SECONDS", "5"))
CALL_DEADLINE_S = 2.0  # a legitimate call is answered within this, during and after an attack
CALL_EVERY_S = 0.2
AFTER_S = 2.0  # the caller goes on this long after the attack
MEMORY_BOUND_MB = 256  # the front door's resident memory may grow this much over an attack, no more
OIP_LIVE = "/inference.GRPCInferenceService/ServerLive"
OIP_LIVE_REPLY = b"\x08\x01"  # ServerLiveResponse{live: true}

ATTACKS = {
    "rapid_reset": "h2_attacks.rapid_reset({port}, {path!r}, {seconds})",
    "continuation_flood": "h2_attacks.continuation_flood({port}, {path!r}, {seconds})",
    "hpack_integer_padding": "h2_attacks.hpack_integer_padding({port}, {path!r}, {seconds})",
    "crafted_headers": "h2_attacks.crafted_headers({port}, {path!r}, {seconds})",
    "connection_burst": "h2_attacks.connection_burst({port}, {seconds})",
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
        if port_name == "grpc":  # MindSpore Serving's API: the warm-up question, answered by the model
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
            self.calls.append((t0, failure is None, failure or round(time.monotonic() - t0, 3)))
            self._stop.wait(max(0.0, CALL_EVERY_S - (time.monotonic() - t0)))

    def __enter__(self) -> "Caller":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(CALL_DEADLINE_S + 5)
        self._channel.close()


def attack(name: str, port: int, path: str, seconds: float) -> subprocess.Popen:
    """The attack in a process of its own (its loop must not take this process's GIL from the caller)."""
    code = f"import json, h2_attacks; print(json.dumps({ATTACKS[name].format(port=port, path=path, seconds=seconds)}))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])}
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)


@pytest.mark.parametrize("name", list(ATTACKS))
@pytest.mark.parametrize("port_name", ["grpc", "oip_grpc"])
def test_an_http2_attack_leaves_every_legitimate_caller_answered_and_memory_bounded(oracle, port_name, name):
    address = oracle.grpc_address if port_name == "grpc" else oracle.oip_grpc_address
    path = protocol.PREDICT_PATH if port_name == "grpc" else OIP_LIVE
    port = int(address.rsplit(":", 1)[1])
    pid = oracle.process.pid
    with Caller(address, port_name, "bert_squad") as caller:
        time.sleep(0.5)
        before = rss_mb(pid)
        peak = before
        t0 = time.monotonic()
        attacker = attack(name, port, path, ATTACK_S)
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
    report = (f"{name} on the {port_name} port: attacker {sent}; caller {len(during)} calls during, {len(after)} "
              f"after, failed {failed[:5]}; front door RSS {before:.0f} -> peak {peak:.0f} MB")
    print(report)
    assert oracle.process.poll() is None, f"the server died: {report}"
    assert sent.get("streams", sent.get("frames", sent.get("connections"))), f"the attack sent nothing: {report}"
    assert len(during) >= int(ATTACK_S / CALL_DEADLINE_S) and after, f"the caller was held up: {report}"
    assert not failed, f"legitimate calls failed: {report}"
    assert peak - before < MEMORY_BOUND_MB, f"memory grew past the bound: {report}"
