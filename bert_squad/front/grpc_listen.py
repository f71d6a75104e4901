"""A grpc.aio server on one public address of the front door (MindSpore Serving's gRPC API on --grpc-address, the
Open Inference Protocol's on --oip-grpc-address): the same limits and TLS for both."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Tuple

import grpc

from bert_squad import settings


@dataclass(frozen=True)
class Limits:
    """What one client may take of a listener (the --grpc-* options; settings.GRPC_* are the defaults)."""

    max_message_bytes: int = settings.MAX_MESSAGE_MB << 20
    max_streams: int = settings.GRPC_MAX_STREAMS
    max_metadata_kb: int = settings.GRPC_MAX_METADATA_KB
    max_connection_age_s: float = settings.GRPC_MAX_CONNECTION_AGE_S
    max_connection_idle_s: float = settings.GRPC_MAX_CONNECTION_IDLE_S
    min_ping_interval_s: float = settings.GRPC_MIN_PING_INTERVAL_S

    @classmethod
    def from_args(cls, args) -> "Limits":
        return cls(args.max_message_mb << 20, args.grpc_max_streams, args.grpc_max_metadata_kb,
                   args.grpc_max_connection_age_s, args.grpc_max_connection_idle_s, args.grpc_min_ping_interval_s)

    def options(self) -> list:
        """grpc core's channel arguments for them (0 s = no limit for the connection age and idle time)."""
        ms = lambda seconds: int(seconds * 1000)  # noqa: E731
        options = [("grpc.max_receive_message_length", self.max_message_bytes),
                   ("grpc.max_send_message_length", self.max_message_bytes), ("grpc.so_reuseport", 0),
                   ("grpc.max_concurrent_streams", self.max_streams),
                   ("grpc.max_metadata_size", self.max_metadata_kb << 10),
                   ("grpc.absolute_max_metadata_size", self.max_metadata_kb << 10),
                   ("grpc.http2.min_ping_interval_without_data_ms", ms(self.min_ping_interval_s)),
                   ("grpc.http2.max_ping_strikes", 2), ("grpc.keepalive_permit_without_calls", 0)]
        if self.max_connection_age_s:  # calls in flight then get the REST deadline to finish
            options += [("grpc.max_connection_age_ms", ms(self.max_connection_age_s)),
                        ("grpc.max_connection_age_grace_ms", ms(settings.REST_TIMEOUT_S))]
        if self.max_connection_idle_s:
            options.append(("grpc.max_connection_idle_ms", ms(self.max_connection_idle_s)))
        return options


async def start_server(register: Callable[[grpc.aio.Server], None], address: str, limits: Limits = Limits(),
                       tls_cert: Optional[bytes] = None, tls_key: Optional[bytes] = None,
                       tls_client_ca: Optional[bytes] = None,
                       interceptors: Sequence[grpc.aio.ServerInterceptor] = ()) -> Tuple[grpc.aio.Server, int]:
    """A server with the services `register(server)` adds, listening on `address` within `limits` (TLS with a
    certificate; mutual TLS with a client CA), each call through `interceptors` (the API key check); (server, port).
    Raises OSError when the address cannot be listened on."""
    server = grpc.aio.server(options=limits.options(), interceptors=list(interceptors) or None)
    register(server)
    try:
        if tls_cert:
            credentials = grpc.ssl_server_credentials([(tls_key, tls_cert)], root_certificates=tls_client_ca,
                                                      require_client_auth=bool(tls_client_ca))
            port = server.add_secure_port(address, credentials)
        else:
            port = server.add_insecure_port(address)
    except RuntimeError:  # newer grpcio raises where 1.47 answers 0
        port = 0
    if not port:
        raise OSError(f"cannot listen on {address}")
    await server.start()
    return server, port
