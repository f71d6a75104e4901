"""Exceptions of bert_squad_client: one base class, and one subclass per thing a caller does differently."""
from __future__ import annotations


class BertSquadError(Exception):
    """Base class of every error this package raises on purpose."""


class ServerUnavailable(BertSquadError, ConnectionError):
    """The server could not be reached, or was (re)starting, for the whole time the call was allowed to retry."""


class DeadlineExceeded(BertSquadError, TimeoutError):
    """The call did not finish within its timeout."""


class RequestError(BertSquadError, ValueError):
    """The server refused or failed a request; retrying the same request will fail again.

    `server_message` is the server's own error text, `instance` the position of the failing question (or window)
    in the caller's input, None when the whole request failed, `code` the server's status code when it sent one,
    `request_id` the ID the server gave the request (the X-Request-ID header, or x-request-id trailing metadata over
    gRPC; None when the server sent none), which finds it in the server's access log.
    """

    def __init__(self, server_message: str, *, instance: int | None = None, code: int | str | None = None,
                 method: str | None = None, request_id: str | None = None):
        self.server_message = server_message
        self.instance = instance
        self.code = code
        self.method = method
        self.request_id = request_id
        where = "the request" if instance is None else f"instance {instance}"
        via = f" (method {method!r})" if method else ""
        found = f" [request id {request_id}]" if request_id else ""
        super().__init__(f"server rejected {where}{via}: {server_message}{found}")

    def at_instance(self, instance: int) -> RequestError:
        """The same error, numbered by its position in the caller's input rather than in one request."""
        return type(self)(self.server_message, instance=instance, code=self.code, method=self.method,
                          request_id=self.request_id)


class AuthenticationError(RequestError):
    """The server needs an API key and got none, or one it does not know (HTTP 401, gRPC UNAUTHENTICATED)."""


class InvalidResponse(BertSquadError):
    """The server answered with something this client cannot read: wrong servable, or client and server disagree."""
