"""The warm-up question: the master asks it before it reports ready, /readyz asks it as its probe (health.py).

Built and sent with bert_squad_client's wire format (protocol.py), not mindspore_serving's generated module: the probe
runs in the front door (Python 3.11, current protobuf), the master beside Serving (Python 3.9, protobuf 3.20).
"""
from __future__ import annotations

from typing import Optional

from bert_squad_client import protocol

WARMUP_QUESTION = "Who wrote the plays?"
WARMUP_CONTEXT = "The plays were written by William Shakespeare in London."


def predict_request(servable: str):
    """The warm-up question as one instance of a PredictRequest for `servable`'s predict method."""
    return protocol.make_request(servable, "predict", 0, [{"question": WARMUP_QUESTION, "context": WARMUP_CONTEXT}])


def predict_call(channel):
    """Serving's Predict on a blocking grpc `channel`, messages in and out."""
    return channel.unary_unary(protocol.PREDICT_PATH, request_serializer=protocol.PredictRequest.SerializeToString,
                               response_deserializer=protocol.PredictReply.FromString)


def reply_failure(reply) -> Optional[str]:
    """Why Serving's reply to the warm-up question is not an answer to it; None when it is."""
    errors = [e.error_msg.decode("utf-8", "replace") for e in reply.error_msg if e.error_code != 0]
    if errors:
        return f"the servable did not answer it: {errors[0]}"
    if len(reply.instances) != 1 or "answer" not in reply.instances[0].items:
        return f"the reply has no answer ({len(reply.instances)} instances)"
    return None
