"""Health for load balancers and orchestrators: what GET /livez and GET /readyz answer, and the readiness probe.

MindSpore Serving has no health check: its gRPC port keeps accepting requests while the
worker that runs the model is dead or being restarted. So /readyz asks the served model a
real question (at most once per TTL, however often it is polled) and /livez only says that
the serve process and Serving's master are up: an orchestrator should restart the process
when restarting can help, and stop sending traffic while the model cannot answer.

Semantics (the README repeats them):
- /livez: 200 while the serve process starts up, and then while Serving's master runs;
  503 once the server stops. It never touches the model, so a worker restart does not fail it.
- /readyz: 200 when the probe question was answered within the last TTL seconds (a fresh
  probe runs when the last outcome is older than TTL; callers that arrive meanwhile wait
  for it and share its outcome). 503 with a JSON reason while starting (before the serve
  command's warm-up question was answered), while stopping, and when the probe failed:
  the worker is restarting ("servable is not available"), the deadline passed, or the
  servable returned an error. With several workers it stays 200 while any worker answers.
Both answer GET and HEAD with a JSON body {"status": ..., ...}; http.py serves them, on the REST address and
alone on --health-address (where other paths get 404).
"""
from __future__ import annotations

import threading
import time
from typing import Callable, Optional, Tuple

from bert_squad import settings
from bert_squad.contract.warmup import predict_call, predict_request, reply_failure

READY_MARKER = "bert-squad-serve: ready"


def find_ready_line(output: str) -> Optional[str]:
    """The serve command's ready line in a server's combined output, or None.

    Serving's C++ threads write the same stdout in pieces (seen: a ready line landing in the
    middle of "listening on <address>"), so the marker need not start a line. The serve command
    writes its whole line with one write(), so marker to newline is all ours.
    """
    at = output.find(READY_MARKER)
    if at < 0:
        return None
    end = output.find("\n", at)
    return output[at:] if end < 0 else output[at:end]

def ready_fields(line: str) -> dict:
    """The ready line's `key=value` fields (grpc, rest, version, internal, ...), for scripts that start a server."""
    return dict(part.split("=", 1) for part in line.split() if "=" in part)


STARTING, SERVING, RESTARTING, STOPPING = "starting", "serving", "restarting", "stopping"
STOPPING_REASON = "the server is stopping"

Probe = Callable[[], None]  # returns when the model answered, raises (ProbeFailed) when it did not


class HealthError(Exception):
    """The health endpoint cannot start; the message says why and what to do."""


class ProbeFailed(Exception):
    """The probe question was not answered; the message says why (it becomes /readyz's reason)."""


def parse_address(address: str) -> Tuple[str, int]:
    """'host:port' or '[ipv6]:port' -> (host, port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise HealthError(f"address {address!r} is not host:port (for example 127.0.0.1:8080), nor 'off' to "
                          f"disable that listener")
    return host.strip("[]"), int(port)


class HealthState:
    """What the endpoints report: the serve command's phase, Serving's master, the cached outcome of the last probe."""

    def __init__(self, probe: Probe, ttl: float, alive: Callable[[], bool]):
        self._probe, self._ttl, self._alive = probe, ttl, alive
        self.phase = STARTING
        self.restart_reason = ""  # why Serving's master is being started again (phase RESTARTING)
        self._lock = threading.Lock()  # one probe at a time; callers arriving meanwhile share its outcome
        self._checked: Optional[float] = None  # monotonic time the last probe finished
        self._reason: Optional[str] = None  # why the last probe failed; None when it passed
        self._took = 0.0

    def set_phase(self, phase: str, reason: str = "") -> None:
        """Move to `phase`; a fresh probe decides readiness once serving again."""
        self.phase, self.restart_reason = phase, reason
        self._checked = None  # plain assignments: a probe in progress must not hold up the supervisor

    def live(self) -> Tuple[bool, dict]:
        if self.phase in (STARTING, RESTARTING):  # the master is not up yet: nothing an orchestrator should fix
            return True, {"status": "alive", "phase": self.phase}
        if self.phase == STOPPING or not self._alive():
            return False, {"status": "stopped", "phase": STOPPING}
        return True, {"status": "alive", "phase": SERVING}

    def unavailable(self) -> Optional[str]:
        """Why the model cannot be asked now (starting, restarting, stopping), or None while serving: /readyz's
        reason, and the REST front door's 503."""
        if self.phase == STARTING:
            return "the server is starting: the model has not answered its warm-up question yet"
        if self.phase == RESTARTING:
            return self.restart_reason or "Serving's master is restarting"
        if self.phase == STOPPING:
            return STOPPING_REASON
        return None

    def ready(self) -> Tuple[bool, dict]:
        reason = self.unavailable() or (None if self._alive() else STOPPING_REASON)
        if reason:
            return False, {"status": "not ready", "reason": reason}
        with self._lock:
            if self._checked is None or time.monotonic() - self._checked >= self._ttl:
                self._run_probe()
            age, reason, took = time.monotonic() - self._checked, self._reason, self._took
        body = {"checked_s_ago": round(age, 3), "probe_s": round(took, 3)}
        if reason is None:
            return True, {"status": "ready", **body}
        return False, {"status": "not ready", "reason": reason, **body}

    def _run_probe(self) -> None:
        t0 = time.monotonic()
        try:
            self._probe()
            self._reason = None
        except ProbeFailed as e:
            self._reason = str(e)
        except Exception as e:  # a health check reports every failure; it must not die of one
            self._reason = f"the probe itself failed: {type(e).__name__}: {e}"
        self._checked = time.monotonic()
        self._took = self._checked - t0


def grpc_probe(address: str, servable: str, timeout: float = settings.HEALTH_PROBE_TIMEOUT_S) -> Probe:
    """A probe that asks `servable`'s predict method the warm-up question at Serving's master (`address`, its
    internal plain-text gRPC address), as the front door forwards client requests: master -> worker -> model, so it
    fails while the worker restarts.
    """
    import grpc

    predict = predict_call(grpc.insecure_channel(address))
    request = predict_request(servable)

    def probe() -> None:
        try:
            reply = predict(request, timeout=timeout)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise ProbeFailed(f"the probe question got no answer within {timeout:g} s") from None
            raise ProbeFailed(f"the probe question failed: gRPC {e.code().name}: {e.details()}") from None
        failure = reply_failure(reply)
        if failure:
            raise ProbeFailed(f"the probe question failed: {failure}")

    return probe
