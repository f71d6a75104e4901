"""REST client for MindSpore Serving's RESTful API, for places where gRPC cannot go; same results as Client.

POST /model/<servable>[/version/<n>]:<method> with {"instances": [{input: value}]}. Integer inputs are sent
as typed base64 tensors so the server sees int32, as it does over gRPC. Connections are kept open between
requests (HTTP/1.1 keep-alive, one per thread in flight): a new TCP connection per request cost about 0.75 ms.
Uses only the standard library.
"""
from __future__ import annotations

import base64
import http.client
import json
import socket
import ssl
import threading
from urllib.parse import urlsplit

import numpy as np

from .client import DEFAULT_TIMEOUT, PROBE_SERVABLE, BlockingCalls, Retry, Tls
from .errors import AuthenticationError, BertSquadError, DeadlineExceeded, InvalidResponse, RequestError, ServerUnavailable
from .protocol import MODEL_VERSION_HEADER, REQUEST_ID_HEADER, model_version
from .results import API_KEY_ENV, DEFAULT_REST_ADDRESS, SERVABLE

_RETRYABLE_HTTP = (502, 503, 504)  # a proxy in front of a (re)starting server
_MAX_IDLE_CONNECTIONS = 64  # kept open for reuse; more threads than this in flight open and close the extra ones
# A kept connection the server has meanwhile closed (its keep-alive timeout, a restart) fails like this on reuse,
# before the server read the request: sent again at once on a new connection.
_STALE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError, ConnectionAbortedError)


class _VerifiedHttps(http.client.HTTPSConnection):
    """HTTPS that checks the certificate against `server_name` rather than the host it connects to."""

    def __init__(self, host: str, port: int, server_name: str, context: ssl.SSLContext, timeout: float):
        super().__init__(host, port, timeout=timeout, context=context)
        self._server_name, self._tls_context = server_name, context

    def connect(self) -> None:
        http.client.HTTPConnection.connect(self)
        self.sock = self._tls_context.wrap_socket(self.sock, server_hostname=self._server_name)


def _json_value(value):
    if isinstance(value, str):
        return value
    array = np.asarray(value)
    return {"type": array.dtype.name, "shape": list(array.shape),
            "b64": base64.b64encode(np.ascontiguousarray(array, array.dtype.newbyteorder("<")).tobytes()).decode()}


class RestClient(BlockingCalls):
    """Blocking REST client for one server and servable, with the API of Client.

    `address` is "host:port" or a URL "http(s)://host:port"; `tls` makes it HTTPS.
    """

    transport = "REST"

    def __init__(self, address: str = DEFAULT_REST_ADDRESS, servable: str = SERVABLE, *, version: int = 0,
                 timeout: float = DEFAULT_TIMEOUT, tls: Tls | None = None, retry: Retry | None = Retry(),
                 api_key: str | None = None):
        super().__init__(address, servable, version, timeout, tls, retry, api_key)
        url = urlsplit(address if "://" in address else f"{'https' if tls else 'http'}://{address}")
        if url.scheme not in ("http", "https") or not url.hostname or url.path not in ("", "/"):
            raise ValueError(f"address must be 'host:port' or 'http(s)://host:port', got {address!r}")
        if url.scheme == "http" and tls is not None:
            raise ValueError(f"address {address!r} says http but tls is set; use https:// or drop the scheme")
        try:
            self._port = url.port or (443 if url.scheme == "https" else 80)
        except ValueError:
            raise ValueError(f"bad port in address {address!r}") from None
        self._host = url.hostname
        self._tls = tls if url.scheme == "http" or tls is not None else Tls()
        self._ssl_context = self._tls.ssl_context() if self._tls is not None else None
        version_part = f"/version/{version}" if version else ""
        self._path = f"/model/{servable}{version_part}:"
        self._headers = {"Content-Type": "application/json", **dict(self.auth or ())}
        self._idle: list[http.client.HTTPConnection] = []  # open connections no request is using
        self._idle_lock = threading.Lock()

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        if self._tls is None:
            return http.client.HTTPConnection(self._host, self._port, timeout=timeout)
        return _VerifiedHttps(self._host, self._port, self._tls.server_name or self._host, self._ssl_context, timeout)

    def _exchange(self, path: str, body: bytes, timeout: float) -> tuple[int, bytes, str | None, str | None]:
        """(status, body, the server's X-Request-ID, its X-Model-Version) of one POST, on a kept connection when one
        is idle; the connection goes back for reuse after a whole reply."""
        with self._idle_lock:
            connection = self._idle.pop() if self._idle else None
        reused = connection is not None
        if connection is None:
            connection = self._connection(timeout)
        else:
            connection.timeout = timeout
            connection.sock.settimeout(timeout)
        try:
            connection.request("POST", path, body=body, headers=self._headers)
            response = connection.getresponse()
            status, data = response.status, response.read()
            request_id, version = response.getheader(REQUEST_ID_HEADER), response.getheader(MODEL_VERSION_HEADER)
        except _STALE:
            connection.close()
            if not reused:
                raise
            return self._exchange(path, body, timeout)
        except BaseException:
            connection.close()
            raise
        with self._idle_lock:
            keep = not response.will_close and not self._closed.is_set() and len(self._idle) < _MAX_IDLE_CONNECTIONS
            if keep:
                self._idle.append(connection)
        if not keep:
            connection.close()
        return status, data, request_id, version

    def _attempt(self, method: str, instances: list[dict], timeout: float) -> tuple[list, int | None]:
        body = json.dumps({"instances": [{k: _json_value(v) for k, v in inputs.items()} for inputs in instances]})
        try:
            status, data, request_id, version = self._exchange(self._path + method, body.encode("utf-8"),
                                                               max(timeout, 0.001))
        except socket.timeout:
            raise DeadlineExceeded(f"no reply to {method!r} within the timeout") from None
        except ssl.SSLError as error:
            raise BertSquadError(f"TLS with {self._host}:{self._port} failed: {error}; check Tls(ca=..., cert=..., "
                                 f"key=...) and that the server certificate names this host") from None
        except (ConnectionError, http.client.HTTPException, OSError) as error:
            raise ServerUnavailable(f"{type(error).__name__}: {error}") from None
        if status in _RETRYABLE_HTTP:
            raise ServerUnavailable(f"HTTP {status}")
        if status == 401:
            raise AuthenticationError(f"{_error_text(data) or 'HTTP 401'} (give the client api_key=..., or set "
                                      f"${API_KEY_ENV})", code=status, method=method, request_id=request_id)
        if status != 200:
            raise RequestError(_error_text(data) or f"HTTP {status}", code=status, method=method,
                               request_id=request_id)
        return self._read(data, len(instances), method, request_id), model_version(version)

    def _probe(self, timeout: float) -> bool:
        connection = self._connection(timeout)
        try:
            connection.request("POST", f"/model/{PROBE_SERVABLE}:probe", body=b'{"instances": [{}]}',
                               headers=self._headers)
            connection.getresponse().read()
        except socket.timeout:
            return True
        except (ConnectionError, http.client.HTTPException, OSError):
            return False
        finally:
            connection.close()
        return True

    def close(self) -> None:
        """Stop retrying and close the kept connections."""
        super().close()
        with self._idle_lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()

    @staticmethod
    def _read(data: bytes, count: int, method: str, request_id: str | None = None) -> list:
        try:
            reply = json.loads(data)
        except ValueError:
            raise InvalidResponse(f"reply to {method!r} is not JSON: {data[:200]!r}") from None
        if not isinstance(reply, dict):
            raise InvalidResponse(f"reply to {method!r} is not a JSON object: {data[:200]!r}")
        if "error_msg" in reply:
            raise RequestError(str(reply["error_msg"]), method=method, request_id=request_id)
        instances = reply.get("instances")
        if not isinstance(instances, list) or len(instances) != count:
            raise InvalidResponse(f"reply to {method!r} does not have {count} instances: {data[:200]!r}")
        outcomes = []
        for index, outputs in enumerate(instances):
            if not isinstance(outputs, dict):
                raise InvalidResponse(f"instance {index} of the reply is not a JSON object")
            error = outputs.get("error_msg", outputs.get("error"))
            if error is not None:
                outcomes.append(RequestError(str(error), instance=index, method=method, request_id=request_id))
            else:
                outcomes.append({k: v if isinstance(v, str) else np.asarray(v) for k, v in outputs.items()})
        return outcomes


def _error_text(data: bytes) -> str:
    """The message of a refusal's body: its error_msg when it is the server's JSON, else the body as text."""
    text = data.decode("utf-8", errors="replace")
    try:
        reply = json.loads(text)
    except ValueError:
        return text
    return str(reply["error_msg"]) if isinstance(reply, dict) and "error_msg" in reply else text
