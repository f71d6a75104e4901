"""Request IDs and access lines: one home for an ID's form and the fields of an access line (written in the log
format of bert_squad/contract/logs.py). The header that carries an ID is bert_squad_client.protocol's, which the REST
client reads too.

Every request the front door answers (MindSpore Serving's REST API, the Open Inference Protocol over REST and
gRPC) gets an ID: the caller's `X-Request-ID` (gRPC: `x-request-id` metadata) when it is 1-128 characters of
[A-Za-z0-9._:-], else a new random one. It goes back in the response header (gRPC: trailing metadata), in the
body of a refused request, and in the request's access line.
"""
from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Optional

from bert_squad.contract import logs
from bert_squad_client.protocol import REQUEST_ID_HEADER, metadata_value  # one home, shared with the clients

ACCESS_LOG = ("on", "off")
_VALID_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
ACCESS_FIELDS = ("request_id", "trace_id", "protocol", "model", "version", "method", "status", "duration_ms",
                 "questions", "client", "error", "text")
TEXT_INPUTS = ("question", "context")  # what `text` holds of each instance, with --log-request-text only
_log_text = False
access_log = logging.getLogger("bert_squad.access")


def request_id(given: Optional[str]) -> str:
    """The caller's ID when it has the allowed form, else a new one (32 hex digits)."""
    if given and _VALID_ID.fullmatch(given):
        return given
    return uuid.uuid4().hex


def from_metadata(metadata) -> str:
    """The ID of a gRPC request, from its invocation metadata ((key, value) pairs, keys lower-case)."""
    given = metadata_value(metadata, REQUEST_ID_HEADER)
    return request_id(given if isinstance(given, str) else None)


def wants_text() -> bool:
    """Whether access lines carry the questions and contexts (--log-request-text): callers gather them only then."""
    return _log_text and not access_log.disabled


def request_text(instances) -> list:
    """The questions and contexts of a request's instances: dicts of str (the OIP's), or a PredictRequest's."""
    found = []
    for instance in instances:
        if isinstance(instance, dict):
            found.append({k: v for k, v in instance.items() if k in TEXT_INPUTS and isinstance(v, str)})
        else:
            found.append({k: t.bytes_val[0].decode("utf-8", "replace") for k, t in instance.items.items()
                          if k in TEXT_INPUTS and t.bytes_val})
    return found


def log_request(started: float, **fields) -> None:
    """One access line: `started` is the request's time.perf_counter() on arrival; `fields` some of
    ACCESS_FIELDS (an unknown one is a bug of ours); `text` is dropped unless --log-request-text asked for it."""
    if access_log.disabled:  # --access-log off
        return
    unknown = set(fields) - set(ACCESS_FIELDS)
    if unknown:
        raise TypeError(f"not access-log fields: {sorted(unknown)}")
    if not _log_text:
        fields.pop("text", None)
    fields["duration_ms"] = round(1000 * (time.perf_counter() - started), 3)
    access_log.info("request", extra={name: fields[name] for name in ACCESS_FIELDS if fields.get(name) is not None})


class _TextFormatter(logs.TextFormatter):
    """The serve command's lines, and an access line as `bert-squad-serve: access key=value ...`."""

    def format(self, record: logging.LogRecord) -> str:
        if record.name == access_log.name:
            pairs = " ".join(f"{name}={getattr(record, name)!s}".replace("\n", " ")
                             for name in ACCESS_FIELDS if hasattr(record, name))
            return f"bert-squad-serve: access {pairs}"
        return super().format(record)


def configure(log_format: str, access_lines: bool = True, request_text: bool = False) -> None:
    """The serve process's logs (logs.configure): its own lines and, unless `access_lines` is False, the access
    lines, with each request's questions and contexts when `request_text`."""
    global _log_text
    access_log.disabled, _log_text = not access_lines, request_text
    logs.configure(log_format, _TextFormatter)
