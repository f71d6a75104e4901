"""Slow and oversized clients of an HTTP/1.1 port (REST), written with plain sockets: each bounded in count and
time, loopback only, stopping by itself. Each returns what it did and what the server answered."""
from __future__ import annotations

import select
import socket
import struct
import time

REQUEST_LINE = b"POST /model/bert_squad:predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"


def _status(sock: socket.socket, timeout: float) -> int:
    """The status code of the server's answer on `sock` (0 when it closed without one or said nothing in time)."""
    sock.settimeout(timeout)
    try:
        head = sock.recv(64)
    except OSError:
        return 0
    parts = head.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and head.startswith(b"HTTP/1.") and parts[1].isdigit() else 0


def _close(socks) -> None:
    for sock in socks:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()


def _collect(socks: list, statuses: dict) -> None:
    """Record the status of each socket the server answered (or closed) meanwhile, without waiting."""
    waiting = {sock.fileno(): sock for sock in socks if sock.fileno() not in statuses}
    if not waiting:
        return
    poll = select.poll()
    for fd in waiting:
        poll.register(fd, select.POLLIN)
    for fd, _ in poll.poll(0):
        statuses[fd] = _status(waiting[fd], 0.5)


def slow_headers(port: int, seconds: float, connections: int = 200) -> dict:
    """Slowloris: `connections` requests whose headers arrive one short line a second and never end, for `seconds`;
    what the server answered each of them."""
    socks = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(connections)]
    for sock in socks:
        sock.sendall(REQUEST_LINE)
    deadline, statuses = time.monotonic() + seconds, {}
    while time.monotonic() < deadline:
        for i, sock in enumerate(socks):
            if sock.fileno() not in statuses:
                try:
                    sock.sendall(b"X-Slow-%d: x\r\n" % i)
                except OSError:
                    pass
        _collect(socks, statuses)
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
    _collect(socks, statuses)
    answered = [statuses.get(sock.fileno(), "none") for sock in socks]
    _close(socks)
    return {"connections": connections, "answered": {s: answered.count(s) for s in set(answered)}}


def _one_request(port: int, head: bytes) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        try:
            sock.sendall(head)
        except OSError:  # the server answered and closed before it had all of it
            pass
        return _status(sock, 5)


def oversized_header(port: int, seconds: float, size: int = 64 << 10) -> dict:
    """Requests with one header of `size` bytes, over and over for `seconds`."""
    head = REQUEST_LINE + b"X-Big: " + b"b" * size + b"\r\nContent-Length: 2\r\n\r\n{}"
    return _repeat(port, head, seconds)


def many_headers(port: int, seconds: float, count: int = 2000) -> dict:
    """Requests with `count` small headers, over and over for `seconds`."""
    head = REQUEST_LINE + b"".join(b"X-H%d: v\r\n" % i for i in range(count)) + b"Content-Length: 2\r\n\r\n{}"
    return _repeat(port, head, seconds)


def _repeat(port: int, head: bytes, seconds: float) -> dict:
    deadline, statuses = time.monotonic() + seconds, []
    while time.monotonic() < deadline:
        statuses.append(_one_request(port, head))
    return {"requests": len(statuses), "answered": {s: statuses.count(s) for s in set(statuses)}}


def endless_chunked_body(port: int, seconds: float, chunk: int = 64 << 10) -> dict:
    """One request whose chunked body never ends: 64 KB chunks as fast as the server takes them, for `seconds`."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(REQUEST_LINE + b"Transfer-Encoding: chunked\r\n\r\n")
    piece = b"%x\r\n" % chunk + b"a" * chunk + b"\r\n"
    deadline, sent = time.monotonic() + seconds, 0
    sock.settimeout(1)
    while time.monotonic() < deadline:
        try:
            sock.sendall(piece)
            sent += chunk
        except socket.timeout:
            continue
        except OSError:  # the server answered and closed
            break
    status = _status(sock, 3)
    _close([sock])
    return {"sent_mb": sent >> 20, "answered": status}


def idle_connections(port: int, seconds: float, count: int = 3000) -> dict:
    """`count` connections that send nothing, held for `seconds`; how the server answered them by then."""
    socks, statuses = [], {}
    deadline = time.monotonic() + seconds
    for _ in range(count):
        try:
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        except OSError:
            break
    while time.monotonic() < deadline:
        _collect(socks, statuses)
        time.sleep(0.2)
    answered = [statuses.get(sock.fileno(), "none") for sock in socks]
    _close(socks)
    return {"connections": len(socks), "answered": {s: answered.count(s) for s in set(answered)}}


def past_the_connection_limit(port: int, limit: int, extra: int = 5) -> dict:
    """`limit` connections held at once, then `extra` more: how the extra ones were answered."""
    socks = []
    for _ in range(limit):
        socks.append(socket.create_connection(("127.0.0.1", port), timeout=5))
    more = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(extra)]
    answered = [_status(sock, 3) for sock in more]
    _close(socks + more)
    return {"held": len(socks), "answered": {s: answered.count(s) for s in set(answered)}}
