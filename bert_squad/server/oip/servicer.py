"""inference.GRPCInferenceService for grpc.aio, around injected callables: the front door passes how it asks the
servable (one Serving request of N instances per ModelInfer) and how it knows liveness and readiness."""
from __future__ import annotations

from typing import Awaitable, Callable, Mapping, Sequence

from . import grpc_codec, models
from .models import Model, OipError
from .stubs import pb, pb_grpc

# ask(method, instances) -> one outcome per instance: a dict of outputs, or an exception for a refused instance;
# a whole-request failure raises OipError (429 / 503 with Retry-After, 504, ...).
Ask = Callable[[str, list], Awaitable[Sequence]]
Check = Callable[[], Awaitable[bool]]


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, table: Mapping[str, Model], served: str, package_version: str, ask: Ask, live: Check,
                 ready: Check):
        self._table, self._served, self._package_version = table, served, package_version
        self._ask, self._live, self._ready = ask, live, ready

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=await self._live())

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=await self._ready())

    async def ModelReady(self, request, context):
        await self._model(request, context)
        return pb.ModelReadyResponse(ready=await self._ready())

    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(**models.server_metadata(self._package_version))

    async def ModelMetadata(self, request, context):
        return grpc_codec.model_metadata(await self._model(request, context), self._served)

    async def ModelInfer(self, request, context):
        try:
            parsed = grpc_codec.parse_infer(request, self._table, self._served)
            outcomes = await self._ask(parsed.request.method, parsed.request.instances)
            outputs = models.to_outputs(parsed.request, outcomes)
        except OipError as error:
            await self._abort(context, error)
        return grpc_codec.response(parsed, outputs, self._served)

    async def _model(self, request, context) -> Model:
        try:
            return models.find_model(self._table, request.name, request.version, self._served)
        except OipError as error:
            await self._abort(context, error)

    @staticmethod
    async def _abort(context, error: OipError):
        if error.retry_after is not None:  # gRPC has no Retry-After: the same hint as trailing metadata
            context.set_trailing_metadata((("retry-after", str(error.retry_after)),))
        await context.abort(grpc_codec.status_code(error), error.message)
