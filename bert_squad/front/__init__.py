"""The front door (Python 3.10+, in the serve process): every public port. MindSpore Serving's gRPC API passed through
(serving_grpc), REST and the Open Inference Protocol over HTTP (http, rest, oip), the OIP's gRPC service (oip), health,
metrics, access logs and request IDs, API keys, traces, the try-it page and /docs; the limits each listener keeps
(grpc_listen, http_limits) and the way to one model version's master (upstream)."""
