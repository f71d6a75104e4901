"""MindSpore Serving's gRPC API (MSService.Predict) on the front door's --grpc-address, forwarded to Serving's master
on its internal address: the bytes go through unchanged, so existing clients and bert_squad_client see Serving's own
replies and codes. The front door reads only the request's servable, method and number of instances (not the
instances themselves) and the reply's errors, for its metrics and access line, and adds what it owns: the request
ID and the model version that answered (trailing metadata), a quick UNAVAILABLE while the master starts, restarts or
stops, and the caller's deadline passed on to Serving.
"""
from __future__ import annotations

import asyncio
import functools
import logging
from typing import Callable, Optional

import grpc
from google.protobuf.message import DecodeError

from bert_squad import protowire
from bert_squad.front import access, rest, tracing
from bert_squad.front.statuses import HTTP_STATUS
from bert_squad.front.upstream import Current
from bert_squad_client import protocol

log = logging.getLogger("bert_squad.grpc")
_SERVICE, _METHOD = protocol.PREDICT_PATH.strip("/").split("/")
_SPAN = protocol.PREDICT_PATH.lstrip("/")  # a call's span name and rpc attributes
_span_attributes = functools.partial(tracing.grpc_attributes, protocol.PREDICT_PATH)


class PassThrough:
    """MSService.Predict for grpc.aio, around the front door's `current` upstream (upstream.py: the served version's
    channel to Serving), its `availability` (None while Serving answers, else why not) and the `meter` a request is
    recorded in (metrics.Meter("grpc"))."""

    def __init__(self, current: Current, availability: Callable[[], Optional[str]], meter, servable: str):
        self._current, self._availability, self._meter = current, availability, meter
        self._servable = servable

    def register(self, server: grpc.aio.Server) -> None:
        """What grpc_listen.start_server calls to add the service to its server."""
        handler = grpc.unary_unary_rpc_method_handler(self.Predict)  # no (de)serializers: bytes in, bytes out
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(_SERVICE, {_METHOD: handler}),))

    async def Predict(self, request: bytes, context) -> bytes:
        metadata = context.invocation_metadata()
        record = self._meter.begin(_SPAN, metadata, _span_attributes)
        request_id = access.from_metadata(metadata)
        context.set_trailing_metadata(((access.REQUEST_ID_HEADER, request_id),))
        spec, questions, served = None, None, None  # known once the request is read

        def end(outcome, status: str, error: Optional[str] = None) -> None:
            read = spec is not None
            self._meter.end(record, spec.method_name if read else "other", outcome, request_id=request_id,
                            model=spec.name if read else None,
                            version=str(spec.version_number or served or "") if read else None, status=status,
                            questions=questions, client=context.peer(), error=error,
                            text=_text(request) if read and access.wants_text() else None)

        try:
            spec, questions = read_head(request)
        except DecodeError as e:
            message = f"the request is not a MindSpore Serving PredictRequest ({e}); send MSService.Predict's message"
            end(400, "INVALID_ARGUMENT", message)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)
        unavailable = self._availability()
        if unavailable:
            end(503, "UNAVAILABLE", unavailable)
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"{unavailable}; retry shortly")
        try:
            with self._current().use() as up, self._meter.serving_call():
                served = up.version
                context.set_trailing_metadata(((access.REQUEST_ID_HEADER, request_id),
                                               (protocol.MODEL_VERSION_HEADER, str(served))))
                reply = await up.raw_call()(request, timeout=context.time_remaining())
        except grpc.aio.AioRpcError as e:
            code, details = e.code(), e.details() or ""
            if code == grpc.StatusCode.UNAVAILABLE:
                details = f"Serving's master is unavailable ({details}); retry shortly"
            end(_outcome(code), code.name, details)
            await context.abort(code, details)
        except asyncio.CancelledError:  # the caller hung up or its deadline passed: the call to Serving is cancelled
            end("client_gone", "CANCELLED")
            raise
        except Exception as e:  # a bug of ours: say so, keep the trace in the server's log
            log.exception("gRPC Predict failed (request %s)", request_id)
            message = f"the front door failed: {type(e).__name__}: {e}; see the server log"
            end("error", "INTERNAL", message)
            await context.abort(grpc.StatusCode.INTERNAL, message)
        known = spec.name == self._servable and spec.version_number in (0, served)
        end(*_reply_outcome(reply, known))
        return reply


def _text(request: bytes) -> list:
    """The questions and contexts of a request (--log-request-text only: this parses every instance)."""
    return access.request_text(protocol.PredictRequest.FromString(request).instances)


def read_head(request: bytes):
    """(servable spec, number of instances) of a serialized PredictRequest, without parsing its instances: a request
    can carry tens of MB of them, and the front door forwards its bytes as they came. DecodeError when it is not
    one."""
    spec, instances = protocol.ServableSpec(), 0
    try:
        for number, wire_type, start, end in protowire.fields(request):
            if wire_type == protowire.LENGTH_DELIMITED and number == 1:
                spec.MergeFromString(request[start:end])
            elif wire_type == protowire.LENGTH_DELIMITED and number == 2:
                instances += 1
    except protowire.WireError as e:
        raise DecodeError(str(e)) from None
    return spec, instances


_CODE_OUTCOMES = {**HTTP_STATUS, grpc.StatusCode.CANCELLED: "client_gone"}


def _outcome(code: grpc.StatusCode):
    """The metrics outcome of a call Serving failed with `code` (metrics.OUTCOMES' statuses, as REST maps it)."""
    return _CODE_OUTCOMES.get(code, "error")


def _reply_outcome(reply: bytes, known: bool):
    """(outcome, status, error) of a Serving reply: a whole-request refusal gets the status REST would answer (404
    when the request named another servable or version than the one served: `known` False)."""
    parsed = protocol.PredictReply.FromString(reply)
    errors = [e for e in parsed.error_msg if e.error_code != 0]
    if not errors:
        return "ok", "OK", None
    message = errors[0].error_msg.decode("utf-8", "replace")
    if parsed.instances or errors[0].error_code == rest.STAGE_FAILED:
        return "instance_error", "OK", None
    return (rest.whole_request_error(int(errors[0].error_code), message).status if known else 404), "OK", message
