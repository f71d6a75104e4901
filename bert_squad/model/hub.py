"""Download the MindSpore Hub SQuAD checkpoint into a local cache, verified by sha256.

The file is ~1.3 GB and long transfers break, so it is streamed into `<name>.part`,
resumed with an HTTP Range request after a broken connection, and renamed to its
final name only once its sha256 matches. A cached file is hashed again before use,
so one damaged on disk is downloaded again rather than served. Stdlib only.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable, Optional, Tuple, Union

from bert_squad import settings
from bert_squad.metadata import sha256_file

CACHE_ENV = "BERT_SQUAD_CACHE"  # when set, the folder checkpoints are cached in
DEFAULT_CACHE_DIR = "~/.cache/bert_squad/checkpoints"
DOWNLOAD_ATTEMPTS = 5  # failed connections before giving up; each one resumes where the last stopped
DOWNLOAD_TIMEOUT_S = 30.0  # longest a connect or a single read may block
DOWNLOAD_BACKOFF_S = 1.0  # wait after the first failure; doubles after each further one
MAX_BACKOFF_S = 60.0
CHUNK_BYTES = 1 << 20
# Statuses that may change on another try. Any other error (404, 403, ...) will not.
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
WAY_OUT = (
    "download it elsewhere and pass it with --checkpoint PATH (bert-squad-serve) "
    "or as the CHECKPOINT argument of bert-squad-export"
)

Progress = Callable[[int, Optional[int]], None]  # (bytes_done, bytes_total or None)


class DownloadError(RuntimeError):
    """The checkpoint could not be downloaded, or what arrived is not the expected file."""


class _Broken(Exception):
    """This connection cannot finish the file; another one may (resuming from what arrived)."""


class _Partial:
    """The `.part` file and the sha256 of exactly the bytes it holds, kept in step."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.digest = hashlib.sha256()
        self.size = 0
        if path.is_file():  # a previous run was interrupted: hash what it left, then resume
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(CHUNK_BYTES), b""):
                    self.digest.update(block)
                    self.size += len(block)

    def restart(self) -> None:
        if self.path.exists():
            self.path.unlink()
        self.digest = hashlib.sha256()
        self.size = 0


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR).expanduser()


def fetch_checkpoint(
    url: str = settings.HUB_CHECKPOINT_URL,
    sha256: str = settings.HUB_CHECKPOINT_SHA256,
    cache_dir: Union[str, Path, None] = None,
    *,
    attempts: int = DOWNLOAD_ATTEMPTS,
    timeout: float = DOWNLOAD_TIMEOUT_S,
    backoff: float = DOWNLOAD_BACKOFF_S,
    progress: Optional[Progress] = None,
) -> Path:
    """Path of the verified file at `url` in the cache, downloaded only if not there yet.

    The file keeps the last segment of the URL path as its name. Raises DownloadError
    when `attempts` connections in a row fail without progress, on an HTTP error that a retry
    cannot fix (404, 403, ...), or when the downloaded bytes have another sha256.
    """
    expected = sha256.lower()
    if not re.fullmatch(r"[0-9a-f]{64}", expected):
        raise ValueError(f"sha256 must be 64 hexadecimal digits, got {sha256!r}")
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, got {attempts}")
    split = urllib.parse.urlsplit(url)
    name = urllib.parse.unquote(split.path.rsplit("/", 1)[-1])
    if split.scheme not in ("http", "https") or not name:
        raise ValueError(f"the checkpoint URL must be http(s) and end in a file name, got {url!r}")

    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    final = folder / name
    if final.is_file():
        if sha256_file(final) == expected:
            return final
        final.unlink()  # damaged or replaced by hand: fetch the real one
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(f"cannot create the checkpoint cache {folder}: {exc}; "
                            f"set {CACHE_ENV} to a writable folder") from exc

    partial = _Partial(folder / (name + ".part"))
    _download(url, expected, partial, attempts=attempts, timeout=timeout, backoff=backoff,
              progress=progress)
    actual = partial.digest.hexdigest()
    if actual != expected:
        partial.restart()  # a resumed download would only extend the wrong bytes
        raise DownloadError(
            f"the file downloaded from {url} has sha256 {actual}, expected {expected}; "
            "it was deleted. The server may hold another file under that name: check the URL, "
            f"or {WAY_OUT}"
        )
    os.replace(partial.path, final)
    return final


def _download(url: str, expected: str, partial: _Partial, *, attempts: int, timeout: float,
              backoff: float, progress: Optional[Progress]) -> None:
    """Fill `partial` with the whole remote file, over as many connections as it takes.

    Only failures in a row count against `attempts`: a connection that brought the file
    further than ever before resets the count, so a long download survives many breaks.
    """
    failures = 0
    furthest = partial.size
    while True:
        try:
            _transfer(url, partial, timeout, progress)
            return
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and partial.size:
                # Nothing to send from our offset: either the last run got every byte and
                # stopped before the rename, or the .part is not a prefix of the remote file.
                if partial.digest.hexdigest() == expected:
                    return
                partial.restart()
                continue
            if exc.code not in RETRY_STATUSES:
                raise DownloadError(
                    f"{url} answered HTTP {exc.code} {exc.reason}; not retried, as asking again "
                    f"gets the same answer. Check the URL (expected sha256 {expected}), or {WAY_OUT}"
                ) from exc
            reason: object = f"HTTP {exc.code} {exc.reason}"
        except urllib.error.URLError as exc:  # DNS failure, connection refused, connect timeout
            reason = exc.reason
        except (OSError, http.client.HTTPException, _Broken) as exc:  # broken or stalled transfer
            reason = exc
        if partial.size > furthest:
            furthest, failures = partial.size, 0
        failures += 1
        if failures >= attempts:
            kept = (f"\nThe {partial.size} bytes received are kept in {partial.path}; "
                    "the next run resumes from them." if partial.size else "")
            raise DownloadError(
                f"could not download the checkpoint after {failures} attempt"
                f"{'' if failures == 1 else 's'} in a row ({str(reason) or type(reason).__name__})\n"
                f"  URL: {url}\n"
                f"  expected sha256: {expected}\n"
                f"Without network here, {WAY_OUT} (check its sha256 first).{kept}"
            )
        time.sleep(min(backoff * 2 ** (failures - 1), MAX_BACKOFF_S))


def _transfer(url: str, partial: _Partial, timeout: float, progress: Optional[Progress]) -> None:
    """One connection: append what the server sends to `partial`, asking only for the
    bytes it lacks. Raises _Broken if the connection ends before the last byte."""
    headers = {"Accept-Encoding": "identity", "User-Agent": "bert_squad"}
    if partial.size:
        headers["Range"] = f"bytes={partial.size}-"
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as response:
        header = response.headers.get("Content-Length")
        length = int(header) if header is not None else None
        if response.status == 206:
            start, total = _content_range(response.headers.get("Content-Range"))
            if start != partial.size:
                partial.restart()  # another range than asked for: fetch the whole file next time
                raise _Broken(f"the server sent bytes from {start}, not from {partial.size}")
            if total is None and length is not None:
                total = start + length
        else:
            if partial.size:
                partial.restart()  # the server ignored Range and sends the whole file
            total = length
        try:  # every OSError in here is local: network errors come out of _read as _Broken
            with open(partial.path, "ab") as f:
                if progress:
                    progress(partial.size, total)
                while total is None or partial.size < total:
                    chunk = _read(response)
                    if not chunk:
                        break
                    f.write(chunk)
                    partial.digest.update(chunk)
                    partial.size += len(chunk)
                    if progress:
                        progress(partial.size, total)
        except OSError as exc:
            raise DownloadError(f"cannot write {partial.path}: {exc}; "
                                f"set {CACHE_ENV} to a folder with room for the checkpoint") from exc
    if total is not None and partial.size < total:
        raise _Broken(f"the connection closed after {partial.size} of {total} bytes")


def _read(response: http.client.HTTPResponse) -> bytes:
    try:
        return response.read(CHUNK_BYTES)
    except (OSError, http.client.HTTPException) as exc:  # reset, timeout, truncated chunk
        raise _Broken(str(exc) or type(exc).__name__) from exc


def _content_range(value: Optional[str]) -> Tuple[int, Optional[int]]:
    """(first byte, file size or None) of a `Content-Range: bytes a-b/size` header."""
    match = re.fullmatch(r"\s*bytes\s+(\d+)-\d+/(\d+|\*)\s*", value or "")
    if not match:
        raise _Broken(f"a partial reply without a usable Content-Range header ({value!r})")
    return int(match.group(1)), None if match.group(2) == "*" else int(match.group(2))
