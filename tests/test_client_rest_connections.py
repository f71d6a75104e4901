"""RestClient's kept connections, against a stand-in HTTP/1.1 server that counts the TCP connections it accepts
(the real front door's answers are covered by test_client_api; this is about the sockets)."""
from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bert_squad_client import RestClient

pytestmark = pytest.mark.pure


class Counting(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.connections, self.requests, self.ended = 0, 0, 0
        self.drop_after = set()  # request numbers after whose reply the server closes the connection silently
        self.lock = threading.Lock()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive unless a side closes

    def setup(self):
        super().setup()
        with self.server.lock:
            self.server.connections += 1

    def finish(self):
        super().finish()
        with self.server.lock:
            self.server.ended += 1

    def do_POST(self):
        instances = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["instances"]
        with self.server.lock:
            self.server.requests += 1
            number = self.server.requests
        body = json.dumps({"instances": [{"answer": f"reply {number}"} for _ in instances]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        if number in self.server.drop_after:  # as a keep-alive timeout or a restart would, with no warning
            self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    srv = Counting()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def answers(client: RestClient, count: int) -> list:
    return [client.call("predict", [{"question": "q", "context": "c"}])[0]["answer"] for _ in range(count)]


def test_one_connection_carries_every_request_of_a_thread(server):
    with RestClient(server.address, timeout=10) as client:
        assert answers(client, 20) == [f"reply {n}" for n in range(1, 21)]
    assert (server.connections, server.requests) == (1, 20)


def test_a_connection_the_server_closed_is_replaced_without_an_error(server):
    server.drop_after = {3, 7}
    with RestClient(server.address, timeout=10, retry=None) as client:  # no retry: the resend is not a retry
        assert answers(client, 10) == [f"reply {n}" for n in range(1, 11)]
    assert (server.connections, server.requests) == (3, 10)


def test_threads_in_flight_share_a_few_connections(server):
    with RestClient(server.address, timeout=10) as client, ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(lambda _: answers(client, 15), range(4)))
    assert sorted(sum(replies, [])) == sorted(f"reply {n}" for n in range(1, 61))
    assert server.connections <= 4  # one per thread at most


def test_close_closes_the_kept_connection(server):
    client = RestClient(server.address, timeout=10)
    answers(client, 2)
    assert server.ended == 0
    client.close()
    for _ in range(250):
        if server.ended == 1:
            break
        time.sleep(0.02)
    assert server.ended == 1
