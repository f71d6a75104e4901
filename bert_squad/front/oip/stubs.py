"""The protocol's gRPC messages and service, generated from grpc_predict_v2.proto by scripts/setup.sh with
grpcio-tools 1.47.0 (never committed, never hand-written).

One set serves both venvs: code protoc 3.20 generated runs on protobuf 3.20.3 (server venv) and on protobuf 6
and 7 (Python 3.11), while code newer protoc generates checks the runtime's version and refuses protobuf 3.20.
They register the messages of package `inference` in protobuf's default pool, as tritonclient.grpc and kserve
register their own copies: a process imports one of the three, never two (the tests run those clients in a
subprocess, and compare wire bytes).
"""
try:
    from . import grpc_predict_v2_pb2 as pb
    from . import grpc_predict_v2_pb2_grpc as pb_grpc
except ImportError as error:  # pragma: no cover - a checkout that skipped set-up
    raise ImportError(f"the OIP gRPC stubs are missing ({error}); run scripts/setup.sh, which generates "
                      f"bert_squad/front/oip/grpc_predict_v2_pb2*.py from grpc_predict_v2.proto") from error

__all__ = ["pb", "pb_grpc"]
