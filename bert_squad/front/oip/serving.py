"""The front door's side of "ask the servable": a decoded OIP request as one MindSpore Serving PredictRequest of N
instances (the message bert_squad_client sends for the same questions), and Serving's PredictReply as the
outcomes models.to_outputs takes, whole-request failures as OipError with the statuses of Serving's REST API.
A refused question's reason loses Serving's wrapper ("Call Function '...' Failed, method: ..., error msg: "): the
protocol's `error` output says what was wrong with the question, not where in Serving it was noticed."""
from __future__ import annotations

import re

from bert_squad.front import rest
from bert_squad_client import protocol
from bert_squad_client.errors import InvalidResponse, RequestError, ServerUnavailable

from .models import OipError, Request


def predict_request(request: Request, servable: str, version: int):
    """The PredictRequest of `request` (version 0: the newest)."""
    return protocol.make_request(servable, request.method, version, request.instances)


_STAGE_WRAPPER = re.compile(r"Call Function '[^']*' Failed, method: '[^']*', stage index\(begin with 1\): \d+, "
                            r"error msg: ")


def reason(text: str) -> str:
    """A stage's own error message, without the wrapper Serving puts around it."""
    return _STAGE_WRAPPER.sub("", text, count=1)


def outcomes(reply, request: Request) -> list:
    """One outcome per instance: its outputs, or a RequestError for an instance the servable refused."""
    if reply.error_msg and not reply.instances:
        code, text = int(reply.error_msg[0].error_code), reply.error_msg[0].error_msg.decode("utf-8", "replace")
        if code == rest.STAGE_FAILED:  # Serving's form of "every instance failed in a stage": each one's reason
            return [RequestError(reason(text), instance=index, code=code) for index in range(len(request))]
        error = rest.whole_request_error(code, text)
        raise OipError(error.status, error.message, error.retry_after)
    try:
        return [RequestError(reason(o.server_message), instance=o.instance, code=o.code)
                if isinstance(o, RequestError) else o for o in protocol.read_reply(reply, len(request), request.method)]
    except ServerUnavailable as error:
        raise OipError(503, f"{error}; retry shortly", retry_after=1) from None
    except InvalidResponse as error:
        raise OipError(502, str(error)) from None
