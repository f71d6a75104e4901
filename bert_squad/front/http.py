"""The HTTP front door: MindSpore Serving's REST API, the Open Inference Protocol's REST API (/v2, with the model
repository extension), /livez, /readyz, /metrics and /openapi.json on one port, and the same machinery serving /livez
and /readyz alone on --health-address (health_app). The front door holds the upstream (upstream.py: the served
version's channel to Serving, which a version switch replaces) and `ask`, which the OIP gRPC service
(oip/servicer.py, started by serve.py on the same event loop) shares with /v2 REST. Every answer says which version
produced it: the OIP's model_version, and the X-Model-Version header on MindSpore Serving's REST API.

Built on Starlette served by uvicorn (ASGI): both are small, well kept, have Python 3.9 wheels, and uvicorn
does HTTP/1.1 parsing (httptools), TLS and mutual TLS (the standard ssl module) and graceful shutdown.
REST predict requests are translated (rest.py, oip/rest_codec.py) and forwarded to Serving's gRPC endpoint with
asyncio gRPC; Serving's own REST server is not started. `POST /model/...` and `POST /v2/models/.../infer` are
answered in plain ASGI before Starlette's routing and middleware, which cost ~0.2 ms of the front door's ~1 ms per
request; everything else is Starlette. Whole-request failures get real status codes (400, 404, 405, 413, 429 and
503 with Retry-After, 500, 502, 504): {"error_msg": reason} on MindSpore Serving's routes, {"error": reason} on
/v2 as the protocol says; per-question errors stay in a 200.
"""
from __future__ import annotations

import contextlib
import logging
import ssl
from typing import Awaitable, Callable, Optional, Sequence, Tuple

import grpc
import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bert_squad.front import access, health, keys, metrics, rest, statuses, tracing
from bert_squad.front.http_limits import Limits
from bert_squad.front.oip import models as oip_models
from bert_squad.front.oip import rest_codec as oip_rest
from bert_squad.front.oip import serving as oip_serving
from bert_squad.front.oip.models import OipError
from bert_squad.front.upstream import Upstream
from bert_squad_client import protocol

RETRY_AFTER_S = 2  # while the master starts, restarts or stops
OFFLOAD_BYTES = 256 * 1024  # bodies this large are parsed in a thread, so the event loop keeps answering
Availability = Callable[[], Optional[str]]  # None while Serving answers, else why not (starting, restarting, ...)
JSON_HEADERS = [(b"content-type", b"application/json")]
REQUEST_ID_KEY = "bert_squad.request_id"  # where app() leaves a request's ID in its ASGI scope
_REQUEST_ID_HEADER = access.REQUEST_ID_HEADER.encode()  # ASGI header names are lower-case bytes
_AUTHORIZATION = keys.HEADER.encode()
_MODEL_VERSION_HEADER = protocol.MODEL_VERSION_HEADER.encode()
OIP_LARGE = 64  # questions past which an OIP request's outputs are built in a thread
# span names of the two predict routes (low cardinality: the route, not the path)
REST_ROUTE = "/model/{name}[/version/{version}]:{method}"
OIP_ROUTE = "/v2/models/{model}[/versions/{version}]/infer"
REST_SPAN, OIP_SPAN = f"POST {REST_ROUTE}", f"POST {OIP_ROUTE}"
# CORS (--cors-allow-origin): what a page on another origin may send and read.
CORS_HEADERS = ["Content-Type", "Inference-Header-Content-Length", "Authorization", "X-Request-ID"]
CORS_EXPOSED = ["Retry-After", "Inference-Header-Content-Length"]
# POST /v2/repository/models/<model>/load: check the servable directory now (versions_live.py); the refusal's reason,
# or None once the version the policy names is served.
Load = Callable[[], Awaitable[Optional[str]]]
log = logging.getLogger("bert_squad.http")


class ClientGone(Exception):
    """The client disconnected before its request body arrived: nobody to answer."""


class FrontDoor:
    """The ASGI app and the gRPC channel it forwards over (made on the server's event loop at start-up)."""

    def __init__(self, upstream: Upstream, state: health.HealthState, availability: Availability,
                 openapi: Callable[[], dict], extra_routes: Sequence[Route] = (), package_version: str = "unknown",
                 api_keys: Optional[keys.ApiKeys] = None, tracer: Optional[tracing.Tracing] = None,
                 span_facts: Optional[dict] = None, load: Optional[Load] = None):
        """`tracer` (None: tracing off) and `span_facts` (runtime, precision) go to every protocol's Meter; `load`
        answers the OIP repository extension's load (None: the repository routes say versions are fixed)."""
        self.upstream, self.state, self.availability, self.openapi = upstream, state, availability, openapi
        self.package_version, self.api_keys = package_version, api_keys
        self.tracer, self._span_facts, self._load = tracer, span_facts, load
        self.oip_models = oip_models.models(upstream.servable)  # the OIP's model names -> their tensors
        self._rest_meter, self._oip_meter = self.meter("rest"), self.meter("oip_rest")
        self._starlette = Starlette(routes=[
            Route("/model/{tail:path}", self._not_post, methods=["POST"]),  # GET and others: 405 from Starlette
            *health_routes(state),
            Route("/v2", self.oip_server, methods=["GET"]),
            Route("/v2/health/live", self.oip_live, methods=["GET", "HEAD"]),
            Route("/v2/health/ready", self.oip_ready, methods=["GET", "HEAD"]),
            Route("/v2/models/{tail:path}", self.oip_model, methods=["GET"]),  # POST .../infer: app()
            Route("/v2/repository/index", self.oip_repository_index, methods=["POST"]),
            Route("/v2/repository/models/{model}/{action}", self.oip_repository_model, methods=["POST"]),
            Route("/metrics", self.metrics, methods=["GET"]),
            Route("/openapi.json", self.openapi_json, methods=["GET"]),
            *extra_routes,  # the try-it page (page.py), unless --page off
        ], exception_handlers={HTTPException: self._http_error}, lifespan=self._lifespan)

    def meter(self, protocol: str) -> metrics.Meter:
        """Where a request of `protocol` is recorded: metrics, access line, span (the gRPC services' too)."""
        return metrics.Meter(protocol, self.tracer, self._span_facts)

    async def app(self, scope, receive, send) -> None:
        """The ASGI entry: every HTTP request gets its ID (access.py), sent back as X-Request-ID, and, with API keys,
        is refused here without a right one (keys.py); REST predict and
        OIP infer are answered here, the rest (and the lifespan) through Starlette."""
        if scope["type"] != "http":
            return await self._starlette(scope, receive, send)
        given = next((v for k, v in scope["headers"] if k == _REQUEST_ID_HEADER), b"").decode("latin-1")
        request_id = scope[REQUEST_ID_KEY] = access.request_id(given)
        id_header = (_REQUEST_ID_HEADER, request_id.encode())

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), id_header]}
            await send(message)

        path = scope["path"]
        if self.api_keys is not None and not keys.is_open(path):
            given = next((v for k, v in scope["headers"] if k == _AUTHORIZATION), b"").decode("latin-1")
            refusal = self.api_keys.refusal(given)
            if refusal:
                return await self._unauthorized(scope, send_with_id, request_id, refusal)
        if scope["method"] == "POST":
            if path.startswith("/model/"):
                return await self.predict(scope, receive, send_with_id)
            if path.startswith("/v2/models/") and path.endswith("/infer"):
                return await self.oip_infer(scope, receive, send_with_id)
        await self._starlette(scope, receive, send_with_id)

    async def _unauthorized(self, scope, send, request_id: str, reason: str) -> None:
        """401 for a request without a right API key, in the error form of its API, counted and logged."""
        oip = scope["path"] == "/v2" or scope["path"].startswith("/v2/")
        meter = self._oip_meter if oip else self._rest_meter
        record = meter.begin(scope["method"], scope["headers"], lambda: _span_attributes(scope, None))
        meter.end(record, "other", 401, request_id=request_id, status=401, client=_client(scope), error=reason)
        body = rest.dumps({"error" if oip else "error_msg": reason, "request_id": request_id})
        await send({"type": "http.response.start", "status": 401,
                    "headers": [*JSON_HEADERS, (b"www-authenticate", keys.SCHEME.encode()),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    @property
    def served(self) -> str:
        """The version answering new requests now (the OIP's model_version)."""
        return str(self.upstream.version)

    def current(self) -> Upstream:
        """The upstream new requests go to (serving_grpc.PassThrough asks per request)."""
        return self.upstream

    async def close(self) -> None:
        await self.upstream.close()

    @contextlib.asynccontextmanager
    async def _lifespan(self, _app):
        try:
            yield
        finally:
            await self.close()

    async def _http_error(self, request: Request, error: HTTPException) -> Response:
        path = request.url.path
        reason = {404: f"no {path} here; see GET /openapi.json",
                  405: f"{request.method} is not allowed on {path}"}.get(error.status_code, error.detail)
        request_id = {"request_id": request.scope[REQUEST_ID_KEY]} if REQUEST_ID_KEY in request.scope else {}
        if path == "/v2" or path.startswith("/v2/"):  # the protocol's error form
            if error.status_code == 405 and path.endswith("/infer"):
                reason = f"{request.method} is not allowed on {path}: send the inference request with POST"
            return JSONResponse({"error": reason, **request_id}, error.status_code, headers=error.headers)
        return JSONResponse({"error_msg": reason, **request_id}, error.status_code, headers=error.headers)

    async def _not_post(self, request: Request) -> Response:  # app() answers every POST /model/... itself
        raise HTTPException(405)

    # ------------------------------------------------------------ REST predict

    async def predict(self, scope, receive, send) -> None:
        record = self._rest_meter.begin(REST_SPAN, scope["headers"], lambda: _span_attributes(scope, REST_ROUTE))
        request_id, seen = scope[REQUEST_ID_KEY], {"questions": None}
        method, headers, servable, version, error = "other", JSON_HEADERS, None, None, None
        try:
            servable, version, method = rest.parse_path(scope["path"])
            body, status = await self._answer(scope, receive, servable, version, method, seen), 200
            outcome = "instance_error" if b'"error_msg"' in body else "ok"
            headers = [*JSON_HEADERS, (_MODEL_VERSION_HEADER, str(seen["version"]).encode())]
        except rest.RestError as e:
            outcome, status, body, error = e.status, e.status, e.body(request_id), e.message
            if e.retry_after:
                headers = [*JSON_HEADERS, (b"retry-after", str(e.retry_after).encode())]
        except ClientGone:  # nothing to send
            outcome = status = "client_gone"
        except Exception as e:  # a bug of ours: say so in JSON, keep the trace in the server's log
            log.exception("REST predict %s failed (request %s)", scope["path"], request_id)
            outcome, status = "error", 500
            error = f"the front door failed: {type(e).__name__}: {e}; see the server log"
            body = rest.dumps({"error_msg": error, "request_id": request_id})
        self._rest_meter.end(record, method, outcome, request_id=request_id, model=servable,
                             version=None if version is None else str(version or seen.get("version") or ""),
                             status=status, questions=seen["questions"], client=_client(scope), error=error,
                             text=seen.get("text"))
        if status == "client_gone":
            return
        await send({"type": "http.response.start", "status": status,
                    "headers": [*headers, (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def _answer(self, scope, receive, servable: str, version: int, method: str, seen: dict) -> bytes:
        """The reply body of a predict request, from the version served when it arrived; its number of instances and
        that version go into `seen`."""
        with self.upstream.use() as up:
            seen["version"] = up.version
            return await self._answer_from(up, scope, receive, servable, version, method, seen)

    async def _answer_from(self, up: Upstream, scope, receive, servable: str, version: int, method: str,
                           seen: dict) -> bytes:
        if servable != up.servable or version not in (0, up.version):  # Serving's own words, then ours
            asked = f"servable({servable}) method({method}) " + (f" version({version}) " if version else "")
            raise rest.RestError(404, f"Request {asked}, {rest.NOT_AVAILABLE}: this server serves "
                                      f"{up.servable!r} version {up.version} (version 0 or none: that one)")
        unavailable = self.availability()
        if unavailable:
            raise rest.RestError(503, unavailable, retry_after=RETRY_AFTER_S)
        body = await self._read_body(scope, receive)
        if len(body) > OFFLOAD_BYTES:
            message, count = await run_in_threadpool(rest.parse_body, body, servable, version, method)
        else:
            message, count = rest.parse_body(body, servable, version, method)
        seen["questions"] = count
        if access.wants_text():
            seen["text"] = access.request_text(message.instances)
        try:
            with self._rest_meter.serving_call():
                reply = await up.call()(message, timeout=up.timeout_s)
        except grpc.aio.AioRpcError as e:
            raise _rpc_error(e, up.timeout_s) from None
        if count > 64:
            return await run_in_threadpool(rest.reply_body, reply, count)
        return rest.reply_body(reply, count)

    async def _read_body(self, scope, receive, unit: str = "instances") -> bytes:
        limit = self.upstream.max_body_bytes
        declared = next((value for name, value in scope["headers"] if name == b"content-length"), b"")
        too_large = f"is larger than the limit of {limit} bytes (--max-message-mb); send fewer or shorter {unit}"
        if declared.isdigit() and int(declared) > limit:
            raise rest.RestError(413, f"the request body ({declared.decode()} bytes) {too_large}")
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise rest.RestError(413, f"the request body {too_large}")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    # ------------------------------------------------------------ Open Inference Protocol

    async def ask(self, request: oip_models.Request) -> Tuple[list, str]:
        """One Serving request of the OIP request's N instances: their outcomes (oip/serving.py) and the version that
        answered."""
        unavailable = self.availability()
        if unavailable:
            raise OipError(503, unavailable, retry_after=RETRY_AFTER_S)
        with self.upstream.use() as up:
            try:
                with self._oip_meter.serving_call():
                    reply = await up.call()(oip_serving.predict_request(request, up.servable, up.version),
                                            timeout=up.timeout_s)
            except grpc.aio.AioRpcError as e:
                error = _rpc_error(e, up.timeout_s)
                raise OipError(error.status, error.message, error.retry_after) from None
        return oip_serving.outcomes(reply, request), str(up.version)

    async def is_live(self) -> bool:
        return self.state.live()[0]

    async def is_ready(self) -> Tuple[bool, dict]:
        return await run_in_threadpool(self.state.ready)

    async def oip_infer(self, scope, receive, send) -> None:
        record = self._oip_meter.begin(OIP_SPAN, scope["headers"], lambda: _span_attributes(scope, OIP_ROUTE))
        request_id, method, status, model, parsed, error = scope[REQUEST_ID_KEY], "other", 200, None, None, None
        answered = self.served
        try:
            model, action = oip_rest.parse_path(scope["path"], self.oip_models, self.served)
            if action != "infer":  # /v2/models/<m>/ready/infer and the like
                raise OipError(404, f"no {scope['path']}: the inference path is /v2/models/{model.name}/infer")
            try:
                body = await self._read_body(scope, receive, "questions")
            except rest.RestError as e:
                raise OipError(e.status, e.message) from None
            header = next((value.decode("latin-1") for name, value in scope["headers"]
                           if name == b"inference-header-content-length"), None)
            large = len(body) > OFFLOAD_BYTES
            parsed = await (run_in_threadpool if large else _now)(oip_rest.parse_infer, body, header, model)
            method = parsed.request.method
            outcomes, answered = await self.ask(parsed.request)
            large = large or len(parsed.request) > OIP_LARGE
            outputs = await (run_in_threadpool if large else _now)(oip_models.to_outputs, parsed.request, outcomes)
            body, headers = await (run_in_threadpool if large else _now)(oip_rest.response, parsed, outputs,
                                                                         answered)
            outcome = "instance_error" if any(outputs[oip_models.ERROR_OUTPUT]) else "ok"
        except OipError as e:
            status, body, headers = oip_rest.error_response(e, request_id)
            outcome, error = status, e.message
        except ClientGone:  # nothing to send
            outcome = status = "client_gone"
        except Exception as e:  # a bug of ours: say so in JSON, keep the trace in the server's log
            log.exception("OIP infer %s failed (request %s)", scope["path"], request_id)
            status, headers, outcome = 500, {"Content-Type": "application/json"}, "error"
            error = f"the front door failed: {type(e).__name__}: {e}; see the server log"
            body = rest.dumps({"error": error, "request_id": request_id})
        self._oip_meter.end(record, method, outcome, request_id=request_id, model=model and model.name,
                            version=answered if model else None, status=status,
                            questions=len(parsed.request) if parsed else None, client=_client(scope), error=error,
                            text=access.request_text(parsed.request.instances) if parsed and access.wants_text()
                            else None)
        if status == "client_gone":
            return
        raw_headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        await send({"type": "http.response.start", "status": status,
                    "headers": [*raw_headers, (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def oip_server(self, _request: Request) -> Response:
        return JSONResponse(oip_models.server_metadata(self.package_version))

    async def oip_live(self, request: Request) -> Response:
        live = await self.is_live()
        return _oip_health({"live": live}, live, request)

    async def oip_ready(self, request: Request) -> Response:
        ready, detail = await self.is_ready()
        return _oip_health({"ready": ready, **({} if ready else {"reason": detail.get("reason", "")})}, ready,
                           request)

    async def oip_model(self, request: Request) -> Response:
        try:
            model, action = oip_rest.parse_path(request.url.path, self.oip_models, self.served)
        except OipError as e:
            status, body, headers = oip_rest.error_response(e, request.scope.get(REQUEST_ID_KEY))
            return Response(body, status, headers=headers)
        if action == "metadata":
            return JSONResponse(model.metadata(self.served))
        if action == "ready":
            ready, _ = await self.is_ready()
            return _oip_health({"name": model.name, "ready": ready}, ready, request)
        raise HTTPException(405)  # GET .../infer

    async def oip_repository_index(self, request: Request) -> Response:
        """The repository extension's index: the models served, with the version answering now."""
        ready, _ = await self.is_ready()
        return JSONResponse([{"name": name, "version": self.served, "state": "READY" if ready else "UNAVAILABLE"}
                             for name in sorted(self.oip_models)])

    async def oip_repository_model(self, request: Request) -> Response:
        """The repository extension's load: look at the servable directory now and switch to the version the
        --version-policy names, if it is not served yet (answered once that version serves, or with the reason it
        was refused). Unload is refused: the server always serves one version."""
        name, action = request.path_params["model"], request.path_params["action"]
        if action not in ("load", "unload"):
            raise HTTPException(404)
        try:
            oip_models.find_model(self.oip_models, name, None, self.served)  # 404 for another model
            if action == "unload":
                raise OipError(400, "this server always serves one version of its model: to serve another, export "
                                    "it and load; to stop serving, stop the server")
            if await request.body() not in (b"", b"{}"):
                raise OipError(400, "load takes no parameters here: export a new version folder into the servable "
                                    "directory, then load")
            refused = await self._load() if self._load else "this server does not switch versions"
            if refused:
                raise OipError(400, refused)
        except OipError as e:
            status, body, headers = oip_rest.error_response(e, request.scope.get(REQUEST_ID_KEY))
            return Response(body, status, headers=headers)
        return JSONResponse({"model_version": self.served})

    # ------------------------------------------------------------ operators

    async def metrics(self, _request: Request) -> Response:
        return Response(await run_in_threadpool(metrics.exposition), media_type=metrics.CONTENT_TYPE_LATEST)

    async def openapi_json(self, _request: Request) -> Response:
        return JSONResponse(self.openapi())


def _span_attributes(scope, route: Optional[str]) -> dict:
    """A request's HTTP span attributes (Meter.begin asks for them only with tracing on)."""
    attributes = tracing.http_attributes(scope["method"], scope["path"], route, scope.get("scheme", "http"))
    attributes[tracing.Attr.CLIENT_ADDRESS] = (scope.get("client") or (None,))[0]
    return attributes


def _client(scope) -> Optional[str]:
    """host:port of the caller, for the access log."""
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else None


async def _now(function, *args):
    """`function(*args)` on the event loop: the small-request twin of run_in_threadpool."""
    return function(*args)


def _oip_health(body: dict, ok: bool, request: Request) -> Response:
    """An OIP health answer: 200 when true, 503 when false (as KServe answers; the protocol allows any 4xx/5xx)."""
    return Response(rest.dumps(body) if request.method != "HEAD" else b"", 200 if ok else 503,
                    media_type="application/json", headers={"Cache-Control": "no-store"})


def health_routes(state: health.HealthState) -> "list[Route]":
    """GET and HEAD /livez and /readyz (health.py's semantics): on the REST address, and alone on --health-address."""

    async def livez(request: Request) -> Response:
        return _health_response(*state.live(), request)

    async def readyz(request: Request) -> Response:
        return _health_response(*await run_in_threadpool(state.ready), request)

    return [Route("/livez", livez, methods=["GET", "HEAD"]), Route("/readyz", readyz, methods=["GET", "HEAD"])]


def health_app(state: health.HealthState) -> Starlette:
    """The --health-address listener's app: the health routes only, so that it can be opened to a network the
    REST API is not; any other request gets a JSON reason naming the two endpoints."""

    async def refused(request: Request, error: HTTPException) -> Response:
        if error.status_code == 404:
            body = {"status": "not found", "reason": f"no {request.url.path}; the endpoints are /livez and /readyz"}
        else:
            body = {"status": "refused", "reason": f"{request.method} {request.url.path}: {error.detail}; the "
                                                   f"endpoints answer GET and HEAD"}
        return _health_response(False, body, request, error.status_code)

    return Starlette(routes=health_routes(state), exception_handlers={HTTPException: refused})


def _health_response(ok: bool, body: dict, request: Request, failed: int = 503) -> Response:
    data = rest.dumps(body) + b"\n" if request.method != "HEAD" else b""
    return Response(data, 200 if ok else failed, media_type="application/json",
                    headers={"Cache-Control": "no-store"})


def _rpc_error(error: grpc.aio.AioRpcError, timeout: float) -> rest.RestError:
    code, details = error.code(), error.details() or ""
    status = statuses.HTTP_STATUS.get(code, 502)
    if status == 503:
        return rest.RestError(503, f"Serving's gRPC endpoint is unavailable ({details}); retry shortly",
                              retry_after=RETRY_AFTER_S)
    if status == 504:
        return rest.RestError(504, f"no answer from Serving within {timeout:g} s")
    if status == 413:
        return rest.RestError(413, f"Serving refused the request as too large: {details}")
    return rest.RestError(status, f"Serving's gRPC endpoint failed the request: {code.name}: {details}")


class _Uvicorn(uvicorn.Server):
    """uvicorn.Server, minus its signal handling: the serve command owns SIGINT / SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


def with_cors(app, origins: Sequence[str]):
    """`app` answering browsers' cross-origin calls from `origins` (preflight included, credentials off), around
    every route, the plain-ASGI POSTs too; without origins `app` itself, which sends no CORS headers."""
    if not origins:
        return app
    return CORSMiddleware(app, allow_origins=list(origins), allow_methods=["GET", "HEAD", "POST"],
                          allow_headers=CORS_HEADERS, expose_headers=CORS_EXPOSED, allow_credentials=False,
                          max_age=600)


class HttpServer:
    """An ASGI app (the front door's, or health_app) listening on one address; `serve()` runs until `stop()`,
    finishing in-flight requests."""

    def __init__(self, app, address: str, tls_cert: Optional[str] = None, tls_key: Optional[str] = None,
                 tls_client_ca: Optional[str] = None, drain_s: float = 30.0, limits: Limits = Limits()):
        host, port = health.parse_address(address)
        tls = {}
        if tls_cert:
            tls = {"ssl_certfile": tls_cert, "ssl_keyfile": tls_key}
            if tls_client_ca:
                tls.update(ssl_ca_certs=tls_client_ca, ssl_cert_reqs=ssl.CERT_REQUIRED)
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                                lifespan="on", timeout_graceful_shutdown=int(drain_s), server_header=False,
                                proxy_headers=False, interface="asgi3", http=limits.protocol(),
                                timeout_keep_alive=limits.keep_alive_s, **tls)
        self._server = _Uvicorn(config)
        self.host, self.port = host, port

    @property
    def started(self) -> bool:
        return self._server.started

    @property
    def address(self) -> str:
        if self._server.servers and self._server.servers[0].sockets:
            host, port = self._server.servers[0].sockets[0].getsockname()[:2]
            return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return f"{self.host}:{self.port}"

    async def serve(self) -> None:
        await self._server.serve()

    def stop(self) -> None:
        self._server.should_exit = True


def bind_error(address: str) -> Tuple[bool, str]:
    """Whether `address` can be listened on now, and the reason when not (checked before anything starts)."""
    import socket

    host, port = health.parse_address(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            return False, e.strerror or str(e)
    return True, ""
