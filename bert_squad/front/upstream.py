"""One running version of the model as the front door reaches it: its Serving master's internal address, the channel
to it and the calls in flight on it.

The front door holds one Upstream at a time; a version switch (versions_live.py) puts the new version's in its place,
and the old one is closed only once the requests that took it before the switch have finished (`drain`): every
request takes the upstream once (`use`) and is answered by that version alone.
"""
from __future__ import annotations

import asyncio
import contextlib
from typing import Callable, Optional

import grpc

from bert_squad.front import health
from bert_squad_client import protocol
from bert_squad_client.client import channel_options


class Upstream:
    """Serving's master of one version (its internal gRPC address, plain text: contract.py) and what the front door
    needs to forward to it: the servable, the largest body it takes and the deadline of a forwarded call."""

    def __init__(self, target: str, servable: str, version: int, max_body_bytes: int, timeout_s: float):
        self.target, self.servable, self.version = target, servable, version
        self.max_body_bytes, self.timeout_s = max_body_bytes, timeout_s
        self.in_flight = 0
        self._channel: Optional[grpc.aio.Channel] = None
        self._predict = self._raw_predict = None
        self._idle: Optional[asyncio.Event] = None
        self._probe: Optional[health.Probe] = None

    @contextlib.contextmanager
    def use(self):
        """Around everything a request does with this version, so that a switch waits for it before closing."""
        self.in_flight += 1
        try:
            yield self
        finally:
            self.in_flight -= 1
            if self.in_flight == 0 and self._idle is not None:
                self._idle.set()

    def call(self) -> grpc.aio.UnaryUnaryMultiCallable:
        """Serving's Predict over this version's channel, messages in and out (REST and the OIP), made on first use on
        the serving event loop."""
        if self._predict is None:
            self._predict = self._serving().unary_unary(protocol.PREDICT_PATH,
                                                        request_serializer=protocol.PredictRequest.SerializeToString,
                                                        response_deserializer=protocol.PredictReply.FromString)
        return self._predict

    def raw_call(self) -> grpc.aio.UnaryUnaryMultiCallable:
        """The same call, bytes in and out, for MindSpore Serving's gRPC API at the front door (serving_grpc.py)."""
        if self._raw_predict is None:
            self._raw_predict = self._serving().unary_unary(protocol.PREDICT_PATH)
        return self._raw_predict

    def probe(self) -> None:
        """The readiness probe (health.grpc_probe) against this version's master; raises ProbeFailed."""
        if self._probe is None:
            self._probe = health.grpc_probe(self.target, self.servable)
        self._probe()

    def _serving(self) -> grpc.aio.Channel:
        if self._channel is None:
            # the client's options: a call left on a connection to a master that died fails within seconds
            self._channel = grpc.aio.insecure_channel(self.target, channel_options())
        return self._channel

    async def drain(self, timeout_s: float) -> bool:
        """Wait until no request uses this version (at most `timeout_s`), then close its channel; whether none was
        left."""
        if self.in_flight:
            self._idle = asyncio.Event()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._idle.wait(), timeout_s)
        drained = self.in_flight == 0
        await self.close()
        return drained

    async def close(self) -> None:
        if self._channel is not None:
            channel, self._channel, self._predict, self._raw_predict = self._channel, None, None, None
            await channel.close()


Current = Callable[[], Upstream]  # the front door's upstream now (a switch replaces it)
