"""A bare gRPC pass-through for the benchmark's transport pass: MindSpore Serving's Predict forwarded as bytes to
the master's socket, with nothing else (no metrics, logs, request IDs, keys or deadlines of ours). Its hop over the
master is the least a front door on that interpreter's grpcio can cost; the front door's own is measured beside it.

    PYTHON bench/passthrough.py aio|sync LISTEN UPSTREAM

Prints READY when it listens; runs until killed. Python 3.9+ (it runs on the serve command's interpreter).
"""
import asyncio
import sys
from concurrent import futures

import grpc

SERVICE, METHOD = "mindspore.serving.proto.MSService", "Predict"
MODES = ("aio", "sync")


def serve_sync(listen: str, upstream: str) -> None:
    """grpc.server on a thread pool, a blocking call to the master per request."""
    forward = grpc.insecure_channel(upstream).unary_unary(f"/{SERVICE}/{METHOD}")
    server = grpc.server(futures.ThreadPoolExecutor(4))
    handler = grpc.unary_unary_rpc_method_handler(lambda request, context: forward(request))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {METHOD: handler}),))
    server.add_insecure_port(listen)
    server.start()
    print("READY", flush=True)
    server.wait_for_termination()


async def serve_aio(listen: str, upstream: str) -> None:
    """grpc.aio, as the front door serves: one event loop, an awaited call to the master per request."""
    forward = grpc.aio.insecure_channel(upstream).unary_unary(f"/{SERVICE}/{METHOD}")

    async def predict(request, context):
        return await forward(request)

    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(predict)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {METHOD: handler}),))
    server.add_insecure_port(listen)
    await server.start()
    print("READY", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] not in MODES:
        sys.exit(f"usage: passthrough.py {'|'.join(MODES)} LISTEN UPSTREAM")
    mode, listen, upstream = sys.argv[1:]
    if mode == "sync":
        serve_sync(listen, upstream)
    else:
        asyncio.run(serve_aio(listen, upstream))
