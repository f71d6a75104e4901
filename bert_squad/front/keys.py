"""API keys (--api-key-file): who may call the front door, on every protocol.

With a key file, every request needs `Authorization: Bearer KEY` (gRPC: `authorization` metadata) with one of the
file's keys, except the probes an orchestrator sends without credentials (/livez, /readyz, /v2/health/*, and their
gRPC twins ServerLive / ServerReady) and the two pages' static shells (/ and /docs), which carry no data and ask
the user for a key. The file holds one key per line (blank lines and # comments skipped); SIGHUP re-reads it. Keys
are kept only as SHA-256 digests, compared in constant time, and never logged.
"""
from __future__ import annotations

import hashlib
import hmac
from pathlib import Path
from typing import List, Optional

import grpc

from bert_squad.front import access, tracing
HEADER = "authorization"  # HTTP header (any case) and gRPC metadata key (lower case)
SCHEME = "Bearer"
MIN_KEY_LENGTH = 16
# Open with keys on: the probes (an orchestrator has no key) and the pages' shells (they ask the user for one).
OPEN_PATHS = frozenset({"/livez", "/readyz", "/v2/health/live", "/v2/health/ready", "/", "/docs"})
OPEN_PREFIXES = ("/docs/",)  # Swagger UI's script, style and icon
OPEN_GRPC_METHODS = frozenset({"/inference.GRPCInferenceService/ServerLive",
                               "/inference.GRPCInferenceService/ServerReady"})
NEEDED = (f"this server needs an API key: send the header 'Authorization: {SCHEME} <key>' (gRPC: "
          f"'{HEADER}' metadata); its operator has the keys")


class KeyFileError(ValueError):
    """The key file cannot be used; the message names it and the fix."""


def is_open(path: str) -> bool:
    """Whether an HTTP path answers without a key."""
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


def read_keys(path: Path) -> List[str]:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise KeyFileError(f"cannot read the API key file {path}: {e}") from None
    keys = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    for number, key in enumerate(keys, 1):
        if len(key) < MIN_KEY_LENGTH or not key.isascii() or not key.isprintable() or " " in key:
            raise KeyFileError(f"key {number} of {path} is not usable: a key is at least {MIN_KEY_LENGTH} printable "
                               f"ASCII characters without spaces (make one with: openssl rand -hex 32)")
    if not keys:
        raise KeyFileError(f"the API key file {path} holds no key; put one key per line in it")
    return keys


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("latin-1")).digest()


class ApiKeys:
    """The keys of one file; `reload()` on SIGHUP."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._digests = [_digest(key) for key in read_keys(self.path)]

    def reload(self) -> int:
        """Read the file again (KeyFileError: the keys in use stay); how many keys there are now."""
        self._digests = [_digest(key) for key in read_keys(self.path)]
        return len(self._digests)

    def refusal(self, authorization: Optional[str]) -> Optional[str]:
        """None when `authorization` (the header's value) holds one of the keys, else why not."""
        if not authorization:
            return NEEDED
        scheme, _, key = authorization.strip().partition(" ")
        if scheme.lower() != SCHEME.lower() or not key.strip():
            return f"the Authorization header must be '{SCHEME} <key>'"
        given = _digest(key.strip())
        found = False
        for digest in self._digests:  # every digest compared: the time does not tell which key matched
            found |= hmac.compare_digest(given, digest)
        return None if found else "the API key sent is not one of this server's keys; its operator has the keys"


class GrpcKeyCheck(grpc.aio.ServerInterceptor):
    """Refuses a gRPC call without a right key (UNAUTHENTICATED), recorded in `meter` (metrics and access line)."""

    def __init__(self, keys: ApiKeys, meter):
        self._keys, self._meter = keys, meter

    async def intercept_service(self, continuation, details):
        if details.method in OPEN_GRPC_METHODS:
            return await continuation(details)
        metadata = details.invocation_metadata or ()
        reason = self._keys.refusal(next((v for k, v in metadata if k == HEADER), None))
        if reason is None:
            return await continuation(details)
        return grpc.unary_unary_rpc_method_handler(self._refuser(reason, details.method, metadata))

    def _refuser(self, reason: str, method: str, metadata):
        async def refuse(_request: bytes, context) -> None:
            record = self._meter.begin(method.lstrip("/"), metadata, lambda: tracing.grpc_attributes(method))
            request_id = access.from_metadata(metadata)
            self._meter.end(record, "other", 401, request_id=request_id, status="UNAUTHENTICATED",
                            client=context.peer(), error=reason)
            context.set_trailing_metadata(((access.REQUEST_ID_HEADER, request_id),))
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, reason)

        return refuse

