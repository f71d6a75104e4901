"""The warm-up question: the master asks it before it reports ready, /readyz asks it as its probe (health.py)."""
from __future__ import annotations

from typing import Optional

WARMUP_QUESTION = "Who wrote the plays?"
WARMUP_CONTEXT = "The plays were written by William Shakespeare in London."


def predict_request(servable: str):
    """The warm-up question as one instance of a PredictRequest for `servable`'s predict method (Serving's
    own message class: the callers send it with Serving's gRPC stub)."""
    from mindspore_serving.proto import ms_service_pb2 as pb

    request = pb.PredictRequest()
    request.servable_spec.name, request.servable_spec.method_name = servable, "predict"
    instance = request.instances.add()
    for name, text in (("question", WARMUP_QUESTION), ("context", WARMUP_CONTEXT)):
        tensor = instance.items[name]
        tensor.dtype = pb.MS_STRING
        tensor.shape.dims.append(1)
        tensor.bytes_val.append(text.encode("utf-8"))
    return request


def reply_failure(reply) -> Optional[str]:
    """Why Serving's reply to the warm-up question is not an answer to it; None when it is."""
    errors = [e.error_msg.decode("utf-8", "replace") for e in reply.error_msg if e.error_code != 0]
    if errors:
        return f"the servable did not answer it: {errors[0]}"
    if len(reply.instances) != 1 or "answer" not in reply.instances[0].items:
        return f"the reply has no answer ({len(reply.instances)} instances)"
    return None
