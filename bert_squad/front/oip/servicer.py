"""inference.GRPCInferenceService for grpc.aio, around injected callables: the front door passes how it asks the
servable (one Serving request of N instances per ModelInfer), how it knows liveness and readiness, and the
metrics a request is counted in. grpc_listen.start_server listens with it (`register`)."""
from __future__ import annotations

import functools
import logging
from typing import Awaitable, Callable, Mapping, Optional, Sequence, Tuple

import grpc

from bert_squad.front import access, tracing
from . import grpc_codec, models
from .models import Model, OipError, Request
from .stubs import pb, pb_grpc

# ask(request) -> (one outcome per instance: a dict of outputs, or an exception for a refused instance; the model
# version that answered); a whole-request failure raises OipError (429 / 503 with Retry-After, 504, ...).
Ask = Callable[[Request], Awaitable[Tuple[Sequence, str]]]
Served = Callable[[], str]  # the model version answering new requests now
Live = Callable[[], Awaitable[bool]]
Ready = Callable[[], Awaitable[Tuple[bool, dict]]]  # (ready, details): the front door's is_ready
log = logging.getLogger("bert_squad.oip")
INFER_SPAN = "inference.GRPCInferenceService/ModelInfer"  # a ModelInfer call's span name and rpc attributes
_infer_attributes = functools.partial(tracing.grpc_attributes, "/" + INFER_SPAN)


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, table: Mapping[str, Model], served: Served, package_version: str, ask: Ask, live: Live,
                 ready: Ready, meter):
        """`meter`: where a request is recorded (bert_squad.front.metrics.Meter("oip_grpc") in the server: metrics
        and access line)."""
        self._table, self._served, self._package_version = table, served, package_version
        self._ask, self._live, self._ready, self._meter = ask, live, ready, meter

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=await self._live())

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=(await self._ready())[0])

    async def ModelReady(self, request, context):
        await self._model(request, context)
        return pb.ModelReadyResponse(ready=(await self._ready())[0])

    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(**models.server_metadata(self._package_version))

    async def ModelMetadata(self, request, context):
        return grpc_codec.model_metadata(await self._model(request, context), self._served())

    async def ModelInfer(self, request, context):
        metadata = context.invocation_metadata()
        record, method, parsed = self._meter.begin(INFER_SPAN, metadata, _infer_attributes), "other", None
        answered = self._served()
        request_id = access.from_metadata(metadata)
        trailing = [(access.REQUEST_ID_HEADER, request_id)]

        def end(outcome, status: str, error: Optional[str] = None) -> None:
            self._meter.end(record, method, outcome, request_id=request_id, model=request.model_name,
                            version=answered if parsed else None, status=status,
                            questions=len(parsed.request) if parsed else None, client=context.peer(), error=error,
                            text=access.request_text(parsed.request.instances) if parsed and access.wants_text()
                            else None)

        try:
            parsed = grpc_codec.parse_infer(request, self._table, answered)
            method = parsed.request.method
            outcomes, answered = await self._ask(parsed.request)
            outputs = models.to_outputs(parsed.request, outcomes)
            response = grpc_codec.response(parsed, outputs, answered)
        except OipError as error:
            end(error.status, grpc_codec.status_code(error).name, error.message)
            await self._abort(context, error, trailing)
        except Exception as error:  # a bug of ours: say so, keep the trace in the server's log
            log.exception("OIP ModelInfer failed (request %s)", request_id)
            message = f"the front door failed: {type(error).__name__}: {error}; see the server log"
            end("error", "INTERNAL", message)
            context.set_trailing_metadata(trailing)
            await context.abort(grpc.StatusCode.INTERNAL, message)
        end("instance_error" if any(outputs[models.ERROR_OUTPUT]) else "ok", "OK")
        context.set_trailing_metadata(trailing)
        return response

    async def _model(self, request, context) -> Model:
        try:
            return models.find_model(self._table, request.name, request.version, self._served())
        except OipError as error:
            await self._abort(context, error)

    @staticmethod
    async def _abort(context, error: OipError, trailing=()):
        """Fail the call with `error`'s code and message; `trailing` metadata (the request ID) goes with it."""
        if error.retry_after is not None:  # gRPC has no Retry-After: the same hint as trailing metadata
            trailing = [*trailing, ("retry-after", str(error.retry_after))]
        if trailing:
            context.set_trailing_metadata(tuple(trailing))
        await context.abort(grpc_codec.status_code(error), error.message)


def register(servicer: InferenceServicer) -> Callable[[grpc.aio.Server], None]:
    """What grpc_listen.start_server calls to add the service to its server."""
    return lambda server: pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
