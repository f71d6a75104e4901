"""gRPC clients (blocking and asyncio) for the bert_squad servable on MindSpore Serving.

Every call has a deadline (the client's `timeout`, or the call's own), and that deadline bounds the retries
too. Retried: the server cannot be reached, says its servable is (re)starting or busy, or was stopped while
answering (the request is then resent once the server is back). Never retried: a request the server refuses,
and a request whose worker died while the server stayed up, since that request may be what killed it.
"""
from __future__ import annotations

import asyncio
import os
import random
import ssl
import threading
import time
import weakref
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Iterable, Iterator, Tuple, Union

import grpc

from . import protocol
from .errors import AuthenticationError, BertSquadError, DeadlineExceeded, RequestError, ServerUnavailable
from .results import (API_KEY_ENV, DEFAULT_GRPC_ADDRESS, SERVABLE, Logits, Result, answer_request, logits_request, to_logits,
                      to_result)

DEFAULT_TIMEOUT = 30.0  # seconds per call, retries included
DEFAULT_MAX_IN_FLIGHT = 8  # requests answer_many keeps open at once
# After a request is lost in flight, how long to watch whether the whole server is going away (a stop or
# restart: Serving closes its port within milliseconds) or stays up (one worker died).
LOST_IN_FLIGHT_GRACE = 1.0
# A call written to the master just before it is killed can be left on a connection the kernel has already reset
# while grpcio 1.47 still counts it READY: nothing ever fails that call, and it waited out its whole deadline (3 in
# 60 restarts under CPU load). A keepalive ping KEEPALIVE_MS into a call is written to that socket, the write fails,
# and gRPC fails the call as UNAVAILABLE, which the retry loop resends. gRPC sends at most two pings per call
# (grpc.http2.max_pings_without_data), which the server's ping policy tolerates: a long healthy call is not cut short.
KEEPALIVE_MS = 2000
KEEPALIVE_TIMEOUT_MS = 20000  # a live but busy server acks within this; only then is a ping's silence fatal
PROBE_SERVABLE = "bert-squad-client-probe"  # no such servable: Serving's master answers it without a worker

Pair = Tuple[str, str]  # (question, context)
Outcome = Union[Result, RequestError]
PathLike = Union[str, "os.PathLike[str]"]


@dataclass(frozen=True)
class Tls:
    """TLS settings: `ca` is the PEM file that signed the server certificate (None: the system's roots);
    `cert` and `key` are the client's certificate and key when the server asks for one; `server_name` is the
    name in the server certificate when it is not the host of the address."""

    ca: PathLike | None = None
    cert: PathLike | None = None
    key: PathLike | None = None
    server_name: str | None = None

    def __post_init__(self):
        if (self.cert is None) != (self.key is None):
            raise ValueError("Tls needs both cert and key for a client certificate, or neither")

    def grpc_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(root_certificates=_read_pem(self.ca), private_key=_read_pem(self.key),
                                            certificate_chain=_read_pem(self.cert))

    def ssl_context(self) -> ssl.SSLContext:
        _read_pem(self.ca), _read_pem(self.cert), _read_pem(self.key)  # clear errors for unreadable files
        context = ssl.create_default_context(cafile=os.fspath(self.ca) if self.ca is not None else None)
        if self.cert is not None:
            context.load_cert_chain(os.fspath(self.cert), os.fspath(self.key))
        return context


def _read_pem(path: PathLike | None) -> bytes | None:
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as error:
        raise ValueError(f"cannot read TLS file {os.fspath(path)!r}: {error.strerror}") from None


@dataclass(frozen=True)
class Retry:
    """Exponential backoff with jitter between attempts; attempts stop when the call's deadline is reached."""

    initial_backoff: float = 0.1
    max_backoff: float = 2.0
    multiplier: float = 2.0

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        ceiling = min(self.max_backoff, self.initial_backoff * self.multiplier ** (attempt - 1))
        return ceiling * (0.5 + 0.5 * random.random())


def _check_timeout(timeout: float) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    return float(timeout)


class _Calls:
    """State and retry policy shared by the blocking and asyncio clients of both transports."""

    transport = "gRPC"

    def __init__(self, address: str, servable: str, version: int, timeout: float, tls: Tls | None,
                 retry: Retry | None, api_key: str | None):
        if not isinstance(address, str) or not address:
            raise ValueError(f"address must be 'host:port', got {address!r}")
        if isinstance(version, bool) or not isinstance(version, int) or version < 0:
            raise ValueError(f"version must be an int >= 0 (0: newest), got {version!r}")
        self.address = address
        self.servable = servable
        self.version = version
        self.timeout = _check_timeout(timeout)
        self.tls = tls
        self.retry = retry
        self._served = False  # the servable has answered this client: it exists
        api_key = (os.environ.get(API_KEY_ENV) or None) if api_key is None else api_key
        if api_key is not None and (not isinstance(api_key, str) or not api_key.strip() or "\n" in api_key):
            raise ValueError(f"api_key must be the key's text (one line), got {type(api_key).__name__}")
        # sent with every call: gRPC metadata, or the HTTP header of the same name
        self.auth = (("authorization", f"Bearer {api_key.strip()}"),) if api_key else None

    def _attempts(self, timeout: float | None) -> "_Attempts":
        return _Attempts(self, self.timeout if timeout is None else _check_timeout(timeout))


class _Attempts:
    """The retry policy of one call, decided here once for the blocking and the asyncio clients, which only do
    the I/O it asks for: `left()` before each attempt, then `after()` says what comes next."""

    def __init__(self, calls: _Calls, timeout: float):
        self.calls = calls
        self.started = time.monotonic()
        self.deadline = self.started + timeout
        self.count = 0

    def left(self) -> float:
        """Seconds the next attempt may take (the call's deadline bounds its retries too)."""
        self.count += 1
        return max(self.deadline - time.monotonic(), 0.001)

    def after(self, outcomes: list | None, error: BertSquadError | None) -> "list | float | _LostInFlight":
        """The outcomes to return; seconds to wait before the next attempt; or _LostInFlight: watch the server
        for `probes()`, then ask `lost()`. Raises the error the caller should see."""
        if error is None:
            error = _busy(outcomes)
            if error is None:
                self.calls._served = True
                return outcomes
        if isinstance(error, RequestError):
            busy = _busy([error])
            if busy is not None:
                error = busy
            elif self.calls._served and error.instance is None and \
                    "servable is not available" in error.server_message:
                # the worker went away while answering, for a servable this client knows exists (Serving then
                # sends the text it sends for an unknown servable): only the server's fate says if it may be resent
                return _LostInFlight(error)
        return self._delay(error)

    def probes(self) -> Iterator[float]:
        """Timeouts of the probes that watch, for LOST_IN_FLIGHT_GRACE, whether the whole server goes away."""
        end = min(time.monotonic() + LOST_IN_FLIGHT_GRACE, self.deadline)
        while time.monotonic() < end:
            yield max(end - time.monotonic(), 0.01)

    def lost(self, lost: "_LostInFlight", server_stays_up: bool) -> float:
        """After a request lost in flight: raise when one worker died under it (it may be what killed the
        worker), else the delay before resending it to the restarted server."""
        if server_stays_up:
            error = lost.error
            raise RequestError(f"{error.server_message} (the worker stopped while answering and the server stayed "
                               f"up; not retried, as this request may be what stopped it)", code=error.code,
                               method=error.method) from None
        return self._delay(ServerUnavailable("the server stopped while answering"))

    def _delay(self, error: BertSquadError) -> float:
        calls = self.calls
        if not isinstance(error, ServerUnavailable):
            raise error
        delay = calls.retry.backoff(self.count) if calls.retry else 0.0
        now = time.monotonic()
        if calls.retry is None or now + delay >= self.deadline:
            tls = "TLS settings (ca, client certificate), " if calls.tls else "whether the server expects TLS, "
            raise ServerUnavailable(
                f"{calls.transport} server {calls.address} (servable {calls.servable!r}) unavailable; "
                f"tried {self.count} time(s) over {now - self.started:.1f} s: {error}. Check that the server is "
                f"running and serves {calls.servable!r} at this address, {tls}and firewalls; raise the timeout if "
                f"it is still starting.") from None
        return delay


def _rpc_error(error: grpc.RpcError, method: str) -> BertSquadError:
    code, details = error.code(), error.details() or ""
    if code == grpc.StatusCode.UNAVAILABLE:
        return ServerUnavailable(details or "unavailable")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceeded(f"no reply to {method!r} within the timeout")
    if code == grpc.StatusCode.CANCELLED:
        # Our own cancellations (close()) surface as FutureCancelledError; a CANCELLED status comes from the
        # server, which cancels the calls in flight when it stops: asked again, they are answered after a restart.
        return ServerUnavailable(f"the server cancelled the call to {method!r} ({details or 'stopping'})")
    request_id = protocol.request_id(getattr(error, "trailing_metadata", lambda: None)())
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return AuthenticationError(f"{details} (give the client api_key=..., or set ${API_KEY_ENV})",
                                   code=code.name, method=method, request_id=request_id)
    return RequestError(f"{code.name}: {details}", code=code.name, method=method, request_id=request_id)


def grpc_target(address: str) -> str:
    """gRPC target for one server ("host:port"), several ("ip:port,ip:port,..." -> "ipv4:..." so gRPC spreads
    requests over them), or a gRPC target as it is ("dns:///name:port" resolving to several addresses)."""
    if "," in address and ":///" not in address and not address.startswith(("ipv4:", "ipv6:")):
        return "ipv4:" + ",".join(part.strip() for part in address.split(",") if part.strip())
    return address


def channel_options(server_name: str | None = None) -> list:
    """gRPC channel options of every channel to Serving: ours and the server's front door (the same restart
    behaviour for both); `server_name` is the TLS name expected when it is not the target's host."""
    options = [("grpc.max_send_message_length", protocol.MAX_MESSAGE_BYTES),
               # several servers behind one address list or DNS name: spread requests, skip the ones that are down
               ("grpc.lb_policy_name", "round_robin"),
               ("grpc.max_receive_message_length", protocol.MAX_MESSAGE_BYTES),
               # reconnect quickly after a server restart (gRPC's default backoff grows to 2 minutes); not
               # grpc.min_reconnect_backoff_ms, which gRPC also takes as the time a connection may take to be made
               ("grpc.initial_reconnect_backoff_ms", 100),
               ("grpc.max_reconnect_backoff_ms", 2000),
               # HTTP/2 keepalive while a call is in flight: see KEEPALIVE_MS
               ("grpc.keepalive_time_ms", KEEPALIVE_MS),
               ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
               ("grpc.keepalive_permit_without_calls", 0)]
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    return options


def _ignore_state(state: grpc.ChannelConnectivity) -> None:
    """Connectivity callback of Client: the subscription itself is what matters (see Client.__init__)."""


def _release_channel(channel: grpc.Channel) -> None:
    """Unsubscribe, wait (up to 2 s; they look every 0.2 s) for grpc's polling and callback threads to stop, close.
    Left running, such a daemon thread can be frozen at interpreter exit holding the lock the channel's __del__
    takes: the process then never exits (6 in 30 runs of a script that did not close its Client). Closing first
    makes the polling thread raise."""
    channel.unsubscribe(_ignore_state)
    state = getattr(channel, "_connectivity_state", None)  # grpc's private state of the subscription
    if state is not None:
        deadline = time.monotonic() + 2.0
        while (getattr(state, "polling", False) or getattr(state, "delivering", False)) \
                and time.monotonic() < deadline:
            time.sleep(0.005)
        if state.lock.acquire(timeout=1.0):  # taken and given back: the threads are past their last use of it
            state.lock.release()
    channel.close()


def _busy(outcomes: list) -> ServerUnavailable | None:
    """ServerUnavailable when the server refused an instance as busy (the whole request is asked again)."""
    for outcome in outcomes:
        if isinstance(outcome, RequestError) and protocol.SERVER_BUSY in outcome.server_message:
            return ServerUnavailable(outcome.server_message[outcome.server_message.index(protocol.SERVER_BUSY):])
    return None


class _LostInFlight(Exception):
    """A request whose worker went away while answering; only the server's fate says if it may be resent."""

    def __init__(self, error: RequestError):
        super().__init__(str(error))
        self.error = error


def _one(outcomes: list) -> dict:
    outcome = outcomes[0]
    if isinstance(outcome, RequestError):
        raise outcome
    return outcome


class BlockingCalls(_Calls):
    """The blocking API, over any transport that implements `_attempt`."""

    def __init__(self, address, servable, version, timeout, tls, retry, api_key):
        super().__init__(address, servable, version, timeout, tls, retry, api_key)
        self._closed = threading.Event()

    def _attempt(self, method: str, instances: list[dict], timeout: float) -> tuple[list, int | None]:
        """One request: the outcome of each instance, and the model version the reply named (None: not said)."""
        raise NotImplementedError

    def call(self, method: str, instances: list[dict], timeout: float | None = None) -> list:
        """Outputs (dict) or RequestError of each instance, for any method of the servable."""
        return self._call_with_version(method, instances, timeout)[0]

    def _call_with_version(self, method: str, instances: list[dict], timeout: float | None) -> tuple[list, int | None]:
        """call(), and the model version that answered."""
        if not instances:
            raise ValueError("no instances to send")  # Serving never answers an empty request
        attempts = self._attempts(timeout)
        while True:
            if self._closed.is_set():
                raise BertSquadError("client is closed")
            outcomes = error = version = None
            try:
                outcomes, version = self._attempt(method, instances, attempts.left())
            except (ServerUnavailable, RequestError) as raised:
                error = raised
            step = attempts.after(outcomes, error)
            if isinstance(step, list):
                return step, version
            if isinstance(step, _LostInFlight):
                step = attempts.lost(step, self._server_stays_up(attempts))
            self._closed.wait(step)

    def _probe(self, timeout: float) -> bool:
        """Whether the server's front end answers at all."""
        raise NotImplementedError

    def _server_stays_up(self, attempts: _Attempts) -> bool:
        for timeout in attempts.probes():
            if not self._probe(timeout):
                return False
            self._closed.wait(0.02)
        return True

    def answer(self, question: str, context: str, *, top_k: int = 1, max_answer_length: int | None = None,
               timeout: float | None = None) -> Result:
        """Answer one question about one context."""
        method, inputs = answer_request(question, context, top_k, max_answer_length)
        outcomes, version = self._call_with_version(method, [inputs], timeout)
        return to_result(_one(outcomes), context, method, version)

    def answer_as_completed(self, pairs: Iterable[Pair], *, top_k: int = 1, max_answer_length: int | None = None,
                            timeout: float | None = None, max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
                            ) -> Iterator[tuple[int, Outcome]]:
        """Yield (position, Result or RequestError) as answers arrive, keeping at most `max_in_flight`
        requests open; `pairs` is read lazily. ServerUnavailable and DeadlineExceeded end the iteration."""
        if isinstance(max_in_flight, bool) or not isinstance(max_in_flight, int) or max_in_flight < 1:
            raise ValueError(f"max_in_flight must be an int >= 1, got {max_in_flight!r}")
        items = enumerate(pairs)
        pending: dict = {}
        pool = ThreadPoolExecutor(max_in_flight, thread_name_prefix="bert-squad-client")
        try:
            while True:
                for index, (question, context) in items:
                    pending[pool.submit(self.answer, question, context, top_k=top_k,
                                        max_answer_length=max_answer_length, timeout=timeout)] = index
                    if len(pending) >= max_in_flight:
                        break
                if not pending:
                    return
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    index = pending.pop(future)
                    try:
                        outcome = future.result()
                    except RequestError as error:
                        outcome = error.at_instance(index)
                    yield index, outcome
        finally:
            # On an early exit, calls in flight are abandoned, not awaited: close() makes them end at once.
            pool.shutdown(wait=not pending, cancel_futures=True)

    def answer_many(self, pairs: Iterable[Pair], *, top_k: int = 1, max_answer_length: int | None = None,
                    timeout: float | None = None, max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
                    return_exceptions: bool = False) -> list:
        """Answers in input order, `max_in_flight` requests at a time. A refused question raises its
        RequestError (numbered by position), or takes its place in the list when `return_exceptions`."""
        outcomes: dict[int, Outcome] = {}
        for index, outcome in self.answer_as_completed(pairs, top_k=top_k, max_answer_length=max_answer_length,
                                                        timeout=timeout, max_in_flight=max_in_flight):
            if isinstance(outcome, RequestError) and not return_exceptions:
                raise outcome
            outcomes[index] = outcome
        return [outcomes[i] for i in range(len(outcomes))]

    def logits(self, input_ids, input_mask, token_type_id, *, timeout: float | None = None) -> Logits:
        """Start/end logits for windows the caller tokenized: arrays [seq] for one window or [n, seq] for n
        windows (one request); a refused window raises RequestError numbered by its row."""
        instances, single = logits_request(input_ids, input_mask, token_type_id)
        outcomes, version = self._call_with_version("predict_features", instances, timeout)
        return to_logits(outcomes, single, version)

    def close(self) -> None:
        """Stop retrying and release the connection; calls in flight fail."""
        self._closed.set()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class Client(BlockingCalls):
    """Blocking gRPC client for one server address and servable.

    >>> with Client("127.0.0.1:5500") as client:
    ...     result = client.answer("Who?", "Ada wrote it.", top_k=3)
    ...     result.text, result.score, result.top_k
    """

    def __init__(self, address: str = DEFAULT_GRPC_ADDRESS, servable: str = SERVABLE, *, version: int = 0,
                 timeout: float = DEFAULT_TIMEOUT, tls: Tls | None = None, retry: Retry | None = Retry(),
                 api_key: str | None = None):
        super().__init__(address, servable, version, timeout, tls, retry, api_key)
        options = channel_options(tls and tls.server_name)
        if tls is None:
            self._channel = grpc.insecure_channel(grpc_target(address), options=options)
        else:
            self._channel = grpc.secure_channel(grpc_target(address), tls.grpc_credentials(), options=options)
        self._predict = self._channel.unary_unary(protocol.PREDICT_PATH,
                                                  request_serializer=protocol.PredictRequest.SerializeToString,
                                                  response_deserializer=protocol.PredictReply.FromString)
        # grpcio 1.47's blocking channel only moves its connection while something polls it: a call sent as the
        # server restarts could wait on a half-made connection until its deadline (1 restart in 4 here) and the
        # reconnect took 10 s. Watching the connectivity state keeps a thread polling: no hang, about 4 s.
        self._channel.subscribe(_ignore_state, try_to_connect=False)
        # A subscribed channel still open when the interpreter exits hangs it in grpc's own clean-up, so a
        # Client nobody closed releases its channel when it is collected or, at the latest, at exit.
        self._release = weakref.finalize(self, _release_channel, self._channel)
        self._calls: set = set()  # RPCs in flight, which close() cancels
        self._calls_lock = threading.Lock()

    def _invoke(self, request, timeout: float):
        """One RPC, as a cancellable future (closing the channel under a blocking call crashes grpcio 1.47): the
        reply and its trailing metadata."""
        with self._calls_lock:
            if self._closed.is_set():
                raise BertSquadError("client is closed")
            call = self._predict.future(request, timeout=max(timeout, 0.001), metadata=self.auth)
            self._calls.add(call)
        try:
            return call.result(), call.trailing_metadata()
        except grpc.FutureCancelledError:
            raise BertSquadError("client is closed") from None
        finally:
            with self._calls_lock:
                self._calls.discard(call)

    def _attempt(self, method: str, instances: list[dict], timeout: float) -> tuple[list, int | None]:
        request = protocol.make_request(self.servable, method, self.version, instances)
        try:
            reply, metadata = self._invoke(request, timeout)
        except grpc.RpcError as error:
            raise _rpc_error(error, method) from None
        outcomes = protocol.read_reply(reply, len(instances), method, protocol.request_id(metadata))
        return outcomes, protocol.version_in(metadata)

    def _probe(self, timeout: float) -> bool:
        try:
            self._invoke(protocol.make_request(PROBE_SERVABLE, "probe", 0, [{}]), timeout)
        except grpc.RpcError as error:
            return error.code() != grpc.StatusCode.UNAVAILABLE
        return True

    def close(self) -> None:
        """Stop retrying, cancel the calls in flight (they raise BertSquadError), release the connection."""
        with self._calls_lock:
            super().close()
            calls = list(self._calls)
        for call in calls:
            call.cancel()
        deadline = time.monotonic() + 5.0
        while self._calls and time.monotonic() < deadline:
            time.sleep(0.005)
        self._release()


class AsyncClient(_Calls):
    """asyncio gRPC client: the API of Client with coroutines. Use it from one event loop."""

    def __init__(self, address: str = DEFAULT_GRPC_ADDRESS, servable: str = SERVABLE, *, version: int = 0,
                 timeout: float = DEFAULT_TIMEOUT, tls: Tls | None = None, retry: Retry | None = Retry(),
                 api_key: str | None = None):
        super().__init__(address, servable, version, timeout, tls, retry, api_key)
        self._credentials = tls.grpc_credentials() if tls is not None else None
        self._channel = None
        self._predict = None
        self._closed = False

    def _stub(self):
        if self._channel is None:  # created inside the running loop, which grpc.aio binds it to
            options = channel_options(self.tls and self.tls.server_name)
            if self._credentials is None:
                self._channel = grpc.aio.insecure_channel(grpc_target(self.address), options=options)
            else:
                self._channel = grpc.aio.secure_channel(grpc_target(self.address), self._credentials,
                                                        options=options)
            self._predict = self._channel.unary_unary(protocol.PREDICT_PATH,
                                                      request_serializer=protocol.PredictRequest.SerializeToString,
                                                      response_deserializer=protocol.PredictReply.FromString)
        return self._predict

    async def call(self, method: str, instances: list[dict], timeout: float | None = None) -> list:
        """Outputs (dict) or RequestError of each instance, for any method of the servable."""
        return (await self._call_with_version(method, instances, timeout))[0]

    async def _call_with_version(self, method: str, instances: list[dict],
                                 timeout: float | None) -> tuple[list, int | None]:
        """call(), and the model version that answered."""
        if not instances:
            raise ValueError("no instances to send")
        attempts = self._attempts(timeout)
        while True:
            if self._closed:
                raise BertSquadError("client is closed")
            outcomes = error = version = None
            try:
                outcomes, version = await self._attempt(method, instances, attempts.left())
            except (ServerUnavailable, RequestError) as raised:
                error = raised
            step = attempts.after(outcomes, error)
            if isinstance(step, list):
                return step, version
            if isinstance(step, _LostInFlight):
                step = attempts.lost(step, await self._server_stays_up(attempts))
            await asyncio.sleep(step)

    async def _attempt(self, method: str, instances: list[dict], timeout: float) -> tuple[list, int | None]:
        request = protocol.make_request(self.servable, method, self.version, instances)
        try:
            call = self._stub()(request, timeout=timeout, metadata=self.auth)
            reply = await call
            metadata = await call.trailing_metadata()
        except grpc.RpcError as error:
            raise _rpc_error(error, method) from None
        outcomes = protocol.read_reply(reply, len(instances), method, protocol.request_id(metadata))
        return outcomes, protocol.version_in(metadata)

    async def _probe(self, timeout: float) -> bool:
        try:
            await self._stub()(protocol.make_request(PROBE_SERVABLE, "probe", 0, [{}]), timeout=timeout,
                               metadata=self.auth)
        except grpc.RpcError as error:
            return error.code() != grpc.StatusCode.UNAVAILABLE
        return True

    async def _server_stays_up(self, attempts: _Attempts) -> bool:
        for timeout in attempts.probes():
            if not await self._probe(timeout):
                return False
            await asyncio.sleep(0.02)
        return True

    async def answer(self, question: str, context: str, *, top_k: int = 1, max_answer_length: int | None = None,
                     timeout: float | None = None) -> Result:
        """Answer one question about one context."""
        method, inputs = answer_request(question, context, top_k, max_answer_length)
        outcomes, version = await self._call_with_version(method, [inputs], timeout)
        return to_result(_one(outcomes), context, method, version)

    async def answer_many(self, pairs: Iterable[Pair], *, top_k: int = 1, max_answer_length: int | None = None,
                          timeout: float | None = None, max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
                          return_exceptions: bool = False) -> list:
        """Answers in input order, `max_in_flight` requests at a time (see Client.answer_many)."""
        if isinstance(max_in_flight, bool) or not isinstance(max_in_flight, int) or max_in_flight < 1:
            raise ValueError(f"max_in_flight must be an int >= 1, got {max_in_flight!r}")
        slots = asyncio.Semaphore(max_in_flight)

        async def one(index: int, question: str, context: str) -> Outcome:
            async with slots:
                try:
                    return await self.answer(question, context, top_k=top_k, max_answer_length=max_answer_length,
                                             timeout=timeout)
                except RequestError as error:
                    if return_exceptions:
                        return error.at_instance(index)
                    raise error.at_instance(index) from None

        tasks = [asyncio.ensure_future(one(i, q, c)) for i, (q, c) in enumerate(pairs)]
        try:
            return list(await asyncio.gather(*tasks))
        finally:
            for task in tasks:
                task.cancel()

    async def logits(self, input_ids, input_mask, token_type_id, *, timeout: float | None = None) -> Logits:
        """Start/end logits for windows the caller tokenized (see Client.logits)."""
        instances, single = logits_request(input_ids, input_mask, token_type_id)
        outcomes, version = await self._call_with_version("predict_features", instances, timeout)
        return to_logits(outcomes, single, version)

    async def close(self) -> None:
        self._closed = True
        if self._channel is not None:
            await self._channel.close()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.close()
