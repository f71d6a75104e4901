"""A grpc.aio server on one public address of the front door (MindSpore Serving's gRPC API on --grpc-address, the
Open Inference Protocol's on --oip-grpc-address): the same message limits and TLS for both."""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple

import grpc


async def start_server(register: Callable[[grpc.aio.Server], None], address: str, max_message_bytes: int,
                       tls_cert: Optional[bytes] = None, tls_key: Optional[bytes] = None,
                       tls_client_ca: Optional[bytes] = None,
                       interceptors: Sequence[grpc.aio.ServerInterceptor] = ()) -> Tuple[grpc.aio.Server, int]:
    """A server with the services `register(server)` adds, listening on `address` (TLS with a certificate; mutual
    TLS with a client CA), each call through `interceptors` (the API key check); (server, port). Raises OSError when
    the address cannot be listened on."""
    limits = [("grpc.max_receive_message_length", max_message_bytes),
              ("grpc.max_send_message_length", max_message_bytes), ("grpc.so_reuseport", 0)]
    server = grpc.aio.server(options=limits, interceptors=list(interceptors) or None)
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
