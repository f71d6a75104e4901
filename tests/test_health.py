"""Health endpoints: /livez and /readyz semantics, then against real servers whose worker is killed."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest

from bert_squad import settings
from bert_squad.front.health import (READY_MARKER, SERVING, STOPPING, HealthError, HealthState, ProbeFailed,
                                      find_ready_line, parse_address, ready_fields)


def get(address: str, path: str, method: str = "GET", timeout: float = 10.0):
    """(status, JSON body) of one request; (None, None) when nothing listens."""
    request = urllib.request.Request(f"http://{address}{path}", method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            data = reply.read()
            return reply.status, json.loads(data) if data else None
    except urllib.error.HTTPError as e:
        data = e.read()
        return e.code, json.loads(data) if data else None
    except (ConnectionError, urllib.error.URLError):
        return None, None


class CountingProbe:
    """A probe whose outcome the test sets, counting how often the endpoints ran it."""

    def __init__(self, delay: float = 0.0):
        self.calls = 0
        self.failure = None
        self.delay = delay
        self._lock = threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            self.calls += 1
        time.sleep(self.delay)
        if self.failure:
            raise self.failure


class Endpoints:
    """The --health-address listener (http.health_app on uvicorn, as the serve command runs it) on a free
    loopback port, on an event loop of its own; the test moves its phase as the serve command does."""

    def __init__(self, probe, ttl: float, alive):
        import asyncio

        from bert_squad.front.http import HttpServer, health_app

        self.state = HealthState(probe, ttl, alive)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.server = HttpServer(health_app(self.state), f"127.0.0.1:{port}")
        self.thread = threading.Thread(target=lambda: asyncio.run(self.server.serve()), daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "the health listener did not start"
            time.sleep(0.02)
        self.address = self.server.address

    def mark_serving(self) -> None:
        self.state.set_phase(SERVING)

    def mark_stopping(self) -> None:
        self.state.set_phase(STOPPING)

    def stop(self) -> None:
        self.server.stop()
        self.thread.join(30)


@pytest.fixture
def endpoints():
    started = []

    def start(probe, ttl=60.0, alive=lambda: True):
        started.append(Endpoints(probe, ttl, alive))
        return started[-1]

    yield start
    for server in started:
        server.stop()


@pytest.mark.pure
def test_not_ready_while_starting_then_ready_once_serving(endpoints):
    probe = CountingProbe()
    health = endpoints(probe)
    status, body = get(health.address, "/readyz")
    assert status == 503 and "starting" in body["reason"]
    assert get(health.address, "/livez") == (200, {"status": "alive", "phase": "starting"})
    assert probe.calls == 0, "the model must not be probed before the warm-up question was answered"
    health.mark_serving()
    status, body = get(health.address, "/readyz")
    assert (status, body["status"], probe.calls) == (200, "ready", 1)


@pytest.mark.pure
def test_a_probe_outcome_is_reused_for_the_ttl_only(endpoints):
    probe = CountingProbe()
    health = endpoints(probe, ttl=3.0)  # far longer than 20 local requests take, even on a loaded machine
    health.mark_serving()
    for _ in range(20):
        assert get(health.address, "/readyz")[0] == 200
    assert probe.calls == 1
    time.sleep(3.1)
    status, body = get(health.address, "/readyz")
    assert (status, probe.calls) == (200, 2)
    assert body["checked_s_ago"] < 0.5


@pytest.mark.pure
def test_a_failed_probe_gives_503_with_its_reason_and_recovery_gives_200(endpoints):
    probe = CountingProbe()
    probe.failure = ProbeFailed("the servable did not answer the probe question: servable is not available")
    health = endpoints(probe, ttl=0.3)
    health.mark_serving()
    status, body = get(health.address, "/readyz")
    assert status == 503
    assert body["reason"] == str(probe.failure)
    assert get(health.address, "/livez")[0] == 200, "a failing model must not fail liveness"
    probe.failure = None
    time.sleep(0.4)
    assert get(health.address, "/readyz")[0] == 200


@pytest.mark.pure
def test_concurrent_polls_share_one_probe(endpoints):
    probe = CountingProbe(delay=0.5)
    health = endpoints(probe, ttl=60.0)
    health.mark_serving()
    results = []
    threads = [threading.Thread(target=lambda: results.append(get(health.address, "/readyz")[0])) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [200] * 10
    assert probe.calls == 1


@pytest.mark.pure
def test_a_crashing_probe_is_reported_not_fatal(endpoints):
    probe = CountingProbe()
    probe.failure = KeyError("answer")
    health = endpoints(probe, ttl=0.0)
    health.mark_serving()
    status, body = get(health.address, "/readyz")
    assert status == 503 and "KeyError" in body["reason"]
    probe.failure = None
    assert get(health.address, "/readyz")[0] == 200


@pytest.mark.pure
def test_stopping_is_not_ready_at_once_and_not_alive(endpoints):
    probe = CountingProbe()
    health = endpoints(probe, ttl=60.0)
    health.mark_serving()
    assert get(health.address, "/readyz")[0] == 200  # a passing outcome is now cached for 60 s
    health.mark_stopping()
    status, body = get(health.address, "/readyz")
    assert status == 503 and "stopping" in body["reason"]
    assert get(health.address, "/livez")[0] == 503


@pytest.mark.pure
def test_a_stopped_master_fails_both_checks(endpoints):
    master_running = [True]
    health = endpoints(CountingProbe(), alive=lambda: master_running[0])
    health.mark_serving()
    assert get(health.address, "/livez")[0] == get(health.address, "/readyz")[0] == 200
    master_running[0] = False
    assert get(health.address, "/livez") == (503, {"status": "stopped", "phase": "stopping"})
    assert get(health.address, "/readyz")[0] == 503


@pytest.mark.pure
def test_head_unknown_paths_and_query_strings(endpoints):
    health = endpoints(CountingProbe())
    health.mark_serving()
    assert get(health.address, "/readyz", method="HEAD") == (200, None)
    assert get(health.address, "/livez?verbose=1")[0] == 200
    status, body = get(health.address, "/healthz")
    assert status == 404 and "/livez and /readyz" in body["reason"]
    assert get(health.address, "/metrics")[0] == 404, "the health listener serves the health routes only"
    status, body = get(health.address, "/livez", method="POST")
    assert status == 405 and "GET and HEAD" in body["reason"]


@pytest.mark.pure
def test_bad_addresses_are_refused_clearly():
    from bert_squad.front.http import bind_error

    with pytest.raises(HealthError, match="not host:port"):
        parse_address("8080")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert bind_error(f"127.0.0.1:{port}") == (False, "Address already in use")
    assert bind_error(f"127.0.0.1:{port}") == (True, "")


@pytest.mark.pure
def test_the_ready_line_is_found_where_serving_output_splits_around_it():
    # As CI saw it: Serving's C++ thread wrote "listening on " and its address in two writes,
    # and the serve command's ready line landed between them.
    output = ("Serving: Serving gRPC server start success, listening on 127.0.0.1:48929\n"
              "Serving: Serving RESTful server start success, listening on "
              f"{READY_MARKER} grpc=127.0.0.1:48929 workers=1\n127.0.0.1:50715\n")
    assert find_ready_line(output) == f"{READY_MARKER} grpc=127.0.0.1:48929 workers=1"
    assert find_ready_line(f"started\n{READY_MARKER} grpc=a") == f"{READY_MARKER} grpc=a"  # not yet flushed: no newline
    assert find_ready_line("Serving: Master server start success\nbert-squad-serve: starting\n") is None


# --- real servers (MindSpore Serving on CPU through Lite, oracle model) ---


def health_server(tmp_path, oracle_servable, *extra):
    from harness import Server, free_port

    address = f"127.0.0.1:{free_port()}"
    server = Server(tmp_path / "run", oracle_servable["servable_dir"],
                    extra_args=["--health-address", address, *extra])
    server.health_address = address
    return server


def poll(address: str, seconds: float, until=None, interval: float = 0.1):
    """[(t, livez status, readyz status, readyz body)] every `interval` s, for `seconds` or until `until(sample)`.

    /readyz is asked before /livez, so a sample whose /readyz answered has a /livez asked of a server
    that was already listening (one that starts listening between the two calls cannot pair a refused
    /livez with an answered /readyz)."""
    samples, t0 = [], time.monotonic()
    while time.monotonic() - t0 < seconds:
        ready, body = get(address, "/readyz")
        live = get(address, "/livez")[0]
        samples.append((time.monotonic() - t0, live, ready, body))
        if until and until(samples[-1]):
            break
        time.sleep(interval)
    return samples


def test_real_server_is_not_ready_while_starting_and_ready_after_its_ready_line(oracle_servable, tmp_path):
    server = health_server(tmp_path, oracle_servable)
    seen = []
    done = threading.Event()

    def watch():
        # /readyz first: once it answers, the health server listens until the server stops (after this
        # watcher), so the /livez asked next must answer too. Asked the other way round, the server could
        # begin listening between the two calls and a refused /livez would pair with a 503 /readyz.
        while not done.is_set():
            ready = get(server.health_address, "/readyz")
            seen.append((get(server.health_address, "/livez")[0], ready))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        server.start()
    finally:
        done.set()
        watcher.join()
    try:
        starting = [body for live, (ready, body) in seen if ready == 503]
        assert starting and all("starting" in body["reason"] for body in starting), seen
        assert all(live == 200 for live, (ready, _) in seen if ready is not None), seen
        assert f"health={server.health_address}" in server.ready_line
        assert get(server.health_address, "/livez")[0] == 200
        status, body = get(server.health_address, "/readyz")
        assert (status, body["status"]) == (200, "ready"), body
    finally:
        server.stop()


def test_killed_worker_makes_the_server_unready_until_serving_restarts_it(oracle_servable, tmp_path):
    server = health_server(tmp_path, oracle_servable).start()
    try:
        assert get(server.health_address, "/readyz")[0] == 200
        time.sleep(settings.HEALTH_TTL_S + 0.2)  # the cached outcome has expired: the next poll probes the model
        [worker] = server.worker_pids()
        os.kill(worker, signal.SIGKILL)
        samples = poll(server.health_address, 90, until=lambda s: s[2] == 200)
        assert samples[0][2] == 503 and "not available" in samples[0][3]["reason"], samples[0]
        assert samples[-1][2] == 200, f"not ready again 90 s after the worker was killed: {samples[-1]}"
        assert all(live == 200 for _, live, _, _ in samples), "liveness must not fail while a worker restarts"
        assert server.worker_pids() and worker not in server.worker_pids()
    finally:
        server.stop()


def test_with_two_workers_the_server_stays_ready_while_one_restarts(oracle_servable, tmp_path):
    server = health_server(tmp_path, oracle_servable, "--device-ids", "0,1").start()
    try:
        workers = server.worker_pids()
        assert len(workers) == 2
        time.sleep(settings.HEALTH_TTL_S + 0.2)
        os.kill(workers[0], signal.SIGKILL)
        restarted = lambda s: len(set(server.worker_pids()) - set(workers)) == 1  # noqa: E731
        samples = poll(server.health_address, 90, until=restarted)
        assert restarted(None), "Serving did not restart the killed worker within 90 s"
        samples += poll(server.health_address, settings.HEALTH_TTL_S + 1)
        assert all(ready == 200 for _, _, ready, _ in samples), [s for s in samples if s[2] != 200]
    finally:
        server.stop()


def test_sigterm_drains_readiness_then_closes_the_endpoints(oracle_servable, tmp_path):
    server = health_server(tmp_path, oracle_servable).start()
    try:
        assert get(server.health_address, "/readyz")[0] == 200
        server.process.send_signal(signal.SIGTERM)
        # The serve loop notices the signal within its 0.5 s tick, later on a loaded machine: wait for the
        # first sample that is not 200 rather than for a fixed time, then it must never be 200 again.
        turned = poll(server.health_address, 30, until=lambda s: s[2] != 200, interval=0.02)
        assert turned[-1][2] != 200, "/readyz still 200 30 s after SIGTERM"
        samples = poll(server.health_address, 30, until=lambda s: s[2] is None, interval=0.02)
        assert samples[-1][2] is None, "the health endpoints still answer 30 s after SIGTERM"
        assert all(ready in (503, None) for _, _, ready, _ in samples), samples
        assert server.process.wait(30) == 0
    finally:
        server.stop()


def test_health_address_is_checked_before_anything_starts(oracle_servable, tmp_path):
    from harness import FRONT

    done = subprocess.run([str(FRONT), "-m", "bert_squad.server.serve", "--servable-dir", str(oracle_servable["servable_dir"]),
                           "--health-address", "localhost"], capture_output=True, text=True, timeout=60,
                          cwd=tmp_path)
    assert done.returncode == 2
    assert "--health-address: address 'localhost' is not host:port" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_taken_health_port_stops_the_server_with_a_clear_error(oracle_servable, tmp_path):
    from harness import Server

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = "127.0.0.1:%d" % taken.getsockname()[1]
        server = Server(tmp_path / "run", oracle_servable["servable_dir"], extra_args=["--health-address", address])
        with pytest.raises(RuntimeError, match="did not become ready"):
            server.start(timeout=60)
    out = server.output()
    assert f"cannot listen on {address} for the health endpoints" in out
    assert "Traceback" not in out
    assert server.process.returncode == 2
    assert server.running() == []


def test_the_ready_lines_fields_are_read_by_name():
    line = (f"{READY_MARKER} grpc=127.0.0.1:5500 version=2 warm-up=0.10 s master=17 "
            f"internal=unix:internal/serving-master-9-2.sock")
    fields = ready_fields(line)
    assert fields["internal"] == "unix:internal/serving-master-9-2.sock" and fields["version"] == "2"
    assert fields["warm-up"] == "0.10" and "s" not in fields
