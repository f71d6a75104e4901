"""The checkpoint download against a local HTTP server: resume, restart, verify, give up clearly."""
from __future__ import annotations

import hashlib
import os
import re
import socket
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bert_squad import settings
from bert_squad.model.hub import DownloadError, default_cache_dir, fetch_checkpoint

pytestmark = pytest.mark.pure

BODY = os.urandom(3 * (1 << 20) + 12345)  # not a whole number of download chunks
SHA = hashlib.sha256(BODY).hexdigest()
NAME = "tiny_squad.ckpt"
FAST = dict(backoff=0.001, timeout=5.0)  # keep retries quick


class Handler(BaseHTTPRequestHandler):
    """Serves server.body at any path, honouring `Range: bytes=N-` unless told otherwise.

    Behaviour switches live on the server: cut_first (send half the body on the first
    request, then hang up), cap (send at most that many bytes per request, then hang up),
    ignore_range, stall (send half, then wait for the test), fail_first (statuses answered
    to the first requests), status (answered to all).
    """

    def do_GET(self):
        srv = self.server
        with srv.lock:
            srv.requests.append({"path": self.path, "range": self.headers.get("Range")})
            n = len(srv.requests)
        if n <= len(srv.fail_first):
            return self.send_error(srv.fail_first[n - 1])
        if srv.status:
            return self.send_error(srv.status)
        body, start = srv.body, 0
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if match and not srv.ignore_range:
            start = int(match.group(1))
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                return self.end_headers()
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        rest = body[start:]
        if srv.cap and len(rest) > srv.cap:
            self.wfile.write(rest[: srv.cap])
            return
        if (srv.cut_first and n == 1) or srv.stall:
            self.wfile.write(rest[: len(rest) // 2])
            self.wfile.flush()
            if srv.stall:
                srv.release.wait(10)
            return  # HTTP/1.0: returning closes the connection mid-body
        self.wfile.write(rest)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    """Factory for a local server on a free port; every one started is stopped at teardown."""
    started = []

    def start(body=BODY, cut_first=False, cap=0, ignore_range=False, stall=False, status=None, fail_first=()):
        srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        srv.daemon_threads = True
        srv.body, srv.cut_first, srv.cap = body, cut_first, cap
        srv.ignore_range, srv.stall = ignore_range, stall
        srv.status, srv.fail_first = status, tuple(fail_first)
        srv.requests, srv.lock, srv.release = [], threading.Lock(), threading.Event()
        thread = threading.Thread(target=srv.serve_forever, args=(0.02,), daemon=True)
        thread.start()
        started.append((srv, thread))
        srv.url = f"http://127.0.0.1:{srv.server_address[1]}/models/r1.5/{NAME}"
        return srv

    yield start
    for srv, thread in started:
        srv.release.set()
        srv.shutdown()
        srv.server_close()
        thread.join(10)


def test_clean_download_is_verified_named_after_the_url_and_reports_progress(server, tmp_path):
    srv = server()
    seen = []
    path = fetch_checkpoint(srv.url, SHA, tmp_path, progress=lambda *args: seen.append(args), **FAST)
    assert path == tmp_path / NAME
    assert path.read_bytes() == BODY
    assert sorted(p.name for p in tmp_path.iterdir()) == [NAME]  # no .part left
    assert len(srv.requests) == 1 and srv.requests[0]["range"] is None
    assert seen[0] == (0, len(BODY)) and seen[-1] == (len(BODY), len(BODY))
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_cached_file_is_returned_without_any_request(server, tmp_path):
    srv = server()
    first = fetch_checkpoint(srv.url, SHA.upper(), tmp_path, **FAST)
    second = fetch_checkpoint(srv.url, SHA, tmp_path, **FAST)
    assert second == first and len(srv.requests) == 1


def test_damaged_cached_file_is_downloaded_again(server, tmp_path):
    srv = server()
    (tmp_path / NAME).write_bytes(BODY[:-1] + bytes([BODY[-1] ^ 0xFF]))  # differs from BODY whatever its last byte
    assert fetch_checkpoint(srv.url, SHA, tmp_path, **FAST).read_bytes() == BODY
    assert len(srv.requests) == 1


def test_connection_cut_half_way_is_resumed_with_range(server, tmp_path):
    srv = server(cut_first=True)
    path = fetch_checkpoint(srv.url, SHA, tmp_path, attempts=2, **FAST)
    assert path.read_bytes() == BODY
    assert [r["range"] for r in srv.requests] == [None, f"bytes={len(BODY) // 2}-"]


def test_only_failures_in_a_row_count_so_a_download_survives_many_breaks(server, tmp_path):
    srv = server(cap=700_000)  # every connection breaks after 700 kB
    path = fetch_checkpoint(srv.url, SHA, tmp_path, attempts=2, **FAST)
    assert path.read_bytes() == BODY
    assert [r["range"] for r in srv.requests] == [None] + [f"bytes={700_000 * i}-" for i in range(1, 5)]

    srv = server(cap=700_000, ignore_range=True)  # no progress past 700 kB: gives up
    with pytest.raises(DownloadError, match="after 2 attempts in a row"):
        fetch_checkpoint(srv.url, SHA, tmp_path / "other", attempts=2, **FAST)
    assert len(srv.requests) == 2  # the second restarts from zero and gets no further


def test_partial_file_of_an_earlier_run_is_resumed(server, tmp_path):
    srv = server()
    (tmp_path / (NAME + ".part")).write_bytes(BODY[:1000])
    assert fetch_checkpoint(srv.url, SHA, tmp_path, **FAST).read_bytes() == BODY
    assert [r["range"] for r in srv.requests] == ["bytes=1000-"]


def test_server_that_ignores_range_restarts_from_zero(server, tmp_path):
    srv = server(cut_first=True, ignore_range=True)
    path = fetch_checkpoint(srv.url, SHA, tmp_path, attempts=2, **FAST)
    assert path.read_bytes() == BODY
    assert len(srv.requests) == 2 and srv.requests[1]["range"] is not None  # asked, got 200


def test_complete_partial_file_answered_416_is_finished_without_download(server, tmp_path):
    srv = server()
    (tmp_path / (NAME + ".part")).write_bytes(BODY)
    assert fetch_checkpoint(srv.url, SHA, tmp_path, **FAST).read_bytes() == BODY
    assert [r["range"] for r in srv.requests] == [f"bytes={len(BODY)}-"]


def test_partial_file_longer_than_the_remote_file_is_discarded(server, tmp_path):
    srv = server()
    (tmp_path / (NAME + ".part")).write_bytes(os.urandom(len(BODY) + 10))
    assert fetch_checkpoint(srv.url, SHA, tmp_path, **FAST).read_bytes() == BODY
    assert [r["range"] for r in srv.requests] == [f"bytes={len(BODY) + 10}-", None]


def test_wrong_sha256_names_both_hashes_and_leaves_no_file(server, tmp_path):
    srv = server()
    wrong = hashlib.sha256(b"another checkpoint").hexdigest()
    with pytest.raises(DownloadError) as err:
        fetch_checkpoint(srv.url, wrong, tmp_path, **FAST)
    assert wrong in str(err.value) and SHA in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_connection_refused_names_url_sha256_attempts_and_the_way_out(tmp_path):
    with socket.socket() as closed:  # bound, never listening: connections are refused
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}/models/{NAME}"
        with pytest.raises(DownloadError) as err:
            fetch_checkpoint(url, SHA, tmp_path, attempts=3, **FAST)
    message = str(err.value)
    for part in (url, SHA, "3 attempts", "--checkpoint PATH", "bert-squad-export", "refused"):
        assert part in message
    assert list(tmp_path.iterdir()) == []


def test_stalled_transfer_times_out_and_keeps_the_bytes_received(server, tmp_path):
    srv = server(stall=True)
    with pytest.raises(DownloadError, match="timed out") as err:
        fetch_checkpoint(srv.url, SHA, tmp_path, attempts=2, backoff=0.001, timeout=0.5)
    part = tmp_path / (NAME + ".part")
    assert part.is_file() and part.stat().st_size > 0 and BODY.startswith(part.read_bytes())
    assert str(part) in str(err.value)
    # The second attempt resumed; a chunk cut short by the timeout is read again.
    resumed_from = int(re.fullmatch(r"bytes=(\d+)-", srv.requests[1]["range"]).group(1))
    assert 0 < resumed_from <= len(BODY) // 2


@pytest.mark.parametrize("status", [404, 403])
def test_not_found_and_forbidden_are_not_retried(server, tmp_path, status):
    srv = server(status=status)
    with pytest.raises(DownloadError, match=f"HTTP {status}.*not retried") as err:
        fetch_checkpoint(srv.url, SHA, tmp_path, attempts=5, **FAST)
    assert len(srv.requests) == 1 and "--checkpoint PATH" in str(err.value)


def test_server_errors_are_retried_with_backoff(server, tmp_path):
    srv = server(fail_first=(503, 500))
    assert fetch_checkpoint(srv.url, SHA, tmp_path, attempts=3, **FAST).read_bytes() == BODY
    assert len(srv.requests) == 3

    srv = server(status=503)
    with pytest.raises(DownloadError, match="after 2 attempts.*HTTP 503"):
        fetch_checkpoint(srv.url, SHA, tmp_path / "other", attempts=2, **FAST)
    assert len(srv.requests) == 2


def test_cache_folder_comes_from_the_environment(server, tmp_path, monkeypatch):
    monkeypatch.setenv("BERT_SQUAD_CACHE", str(tmp_path / "cache"))
    assert default_cache_dir() == tmp_path / "cache"
    srv = server()
    assert fetch_checkpoint(srv.url, SHA, **FAST) == tmp_path / "cache" / NAME
    monkeypatch.delenv("BERT_SQUAD_CACHE")
    assert default_cache_dir() == default_cache_dir().home() / ".cache" / "bert_squad" / "checkpoints"


def test_hub_file_name_is_the_last_segment_of_the_hub_url():
    path = urllib.parse.urlsplit(settings.HUB_CHECKPOINT_URL).path
    assert path.rsplit("/", 1)[-1] == settings.HUB_CHECKPOINT_NAME


def test_bad_arguments_are_refused_before_any_request(tmp_path):
    with pytest.raises(ValueError, match="64 hexadecimal"):
        fetch_checkpoint("http://127.0.0.1:9/x.ckpt", "abc", tmp_path)
    with pytest.raises(ValueError, match="end in a file name"):
        fetch_checkpoint("http://127.0.0.1:9/models/", SHA, tmp_path)
