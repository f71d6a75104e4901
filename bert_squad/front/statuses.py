"""One table between HTTP statuses and gRPC status codes, read both ways: an OipError's status as the code the Open
Inference Protocol's gRPC service answers (oip/grpc_codec.py), and a failed gRPC call to Serving's master as the HTTP
status the REST routes answer and every protocol counts in its metrics (http.py, serving_grpc.py)."""
from __future__ import annotations

import grpc

# (HTTP status, gRPC code); a code that stands for two statuses (RESOURCE_EXHAUSTED: too large, busy) reads back as
# the first.
PAIRS = ((400, grpc.StatusCode.INVALID_ARGUMENT), (404, grpc.StatusCode.NOT_FOUND),
         (413, grpc.StatusCode.RESOURCE_EXHAUSTED), (429, grpc.StatusCode.RESOURCE_EXHAUSTED),
         (503, grpc.StatusCode.UNAVAILABLE), (504, grpc.StatusCode.DEADLINE_EXCEEDED))
GRPC_CODE = dict(PAIRS)  # any other status: INTERNAL
HTTP_STATUS: dict = {}  # any other code: 502
for _status, _code in PAIRS:
    HTTP_STATUS.setdefault(_code, _status)
