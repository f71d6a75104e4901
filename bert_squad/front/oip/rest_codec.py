"""The protocol's REST form: paths, inference request bodies (JSON, and the binary tensor data extension with its
Inference-Header-Content-Length header) to a models.Request, outputs to a response body; no I/O here.

Errors are {"error": "..."} with the OipError's status. A body nested deeper than JSON parsing allows (a
"nesting bomb") is a 400 like any other malformed body.
"""
from __future__ import annotations

import json
import re
from typing import Mapping, Optional, Tuple

import numpy as np

from bert_squad.front.rest import INT32_RANGE as _INT32, json_type as _kind  # as MindSpore Serving's REST API

from . import raw
from .models import NUMPY, Model, OipError, Parsed, check_count, find_model, to_request

HEADER_LENGTH = "Inference-Header-Content-Length"
PATH = re.compile(r"/v2/models/(?P<model>[^/]+)(?:/versions/(?P<version>[^/]+))?(?P<action>/ready|/infer)?")
EXAMPLE = ('{"inputs": [{"name": "question", "datatype": "BYTES", "shape": [1], "data": ["Who?"]}, '
           '{"name": "context", "datatype": "BYTES", "shape": [1], "data": ["..."]}]}')


def parse_path(path: str, table: Mapping[str, Model], served: str) -> Tuple[Model, str]:
    """(model, action: "metadata", "ready" or "infer") of a /v2/models/... path, or 404."""
    match = PATH.fullmatch(path)
    if not match:
        raise OipError(404, f"no {path}: model paths are /v2/models/<model>[/versions/<v>][/ready|/infer], for "
                            f"example /v2/models/{next(iter(table))}/infer")
    model = find_model(table, match["model"], match["version"], served)
    return model, (match["action"] or "/metadata")[1:]


def parse_infer(body: bytes, header_length: Optional[str], model: Model) -> Parsed:
    """The inference request of a POST .../infer body; `header_length` is the Inference-Header-Content-Length
    header (None when absent: the whole body is JSON)."""
    json_size = len(body)
    if header_length is not None:
        if not header_length.strip().isdigit() or int(header_length) > len(body):
            raise OipError(400, f"{HEADER_LENGTH} is {header_length!r} for a body of {len(body)} bytes; send the "
                                f"byte length of the JSON part that starts the body")
        json_size = int(header_length)
        if json_size == 0:
            raise OipError(400, f"{HEADER_LENGTH}: 0 (a raw binary request) serves models with one input only; "
                                f"model {model.name!r} takes {', '.join(t.name for t in model.inputs)}: send the "
                                f"JSON inference header first")
    message = _load(body[:json_size])
    binary = memoryview(body)[json_size:]
    inputs = _field(message, "inputs", list, "the request")
    if not inputs:
        raise OipError(400, f"'inputs' is empty; send {EXAMPLE}")
    tensors, offset = {}, 0
    for index, entry in enumerate(inputs):
        if not isinstance(entry, dict):
            raise OipError(400, f"inputs[{index}] is a JSON {_kind(entry)}; each input is an object of name, "
                                f"datatype, shape and data, as in {EXAMPLE}")
        name = _field(entry, "name", str, f"inputs[{index}]")
        tensor = model.input(name)
        if name in tensors:
            raise OipError(400, f"input {name!r} is sent twice; send each input once")
        kind = _field(entry, "datatype", str, f"input {name!r}")
        shape = _field(entry, "shape", list, f"input {name!r}")
        if not all(type(d) is int and 0 <= d < 2**63 for d in shape):
            raise OipError(400, f"input {name!r} has shape {shape}; a shape is a list of integers >= 0")
        tensor.check(kind, shape)
        parameters = _field(entry, "parameters", dict, f"input {name!r}", {})
        size = parameters.get("binary_data_size")
        if size is not None:
            if type(size) is not int or size < 0:
                raise OipError(400, f"input {name!r} has binary_data_size {size!r}; send its byte count")
            if "data" in entry:
                raise OipError(400, f"input {name!r} has both data and binary_data_size; send one of them")
            if offset + size > len(binary):
                raise OipError(400, f"input {name!r}: binary_data_size {size} goes past the end of the body "
                                    f"({len(binary) - offset} binary bytes left); the binary parts of the inputs "
                                    f"must add up to the body after the {json_size}-byte JSON header")
            tensors[name] = raw.decode(kind, binary[offset:offset + size].tobytes(), name, shape)
            offset += size
        elif "data" in entry:
            tensors[name] = _json_tensor(entry["data"], kind, shape, name)
        else:
            raise OipError(400, f"input {name!r} has no data; send \"data\": [...] or binary data with "
                                f"\"parameters\": {{\"binary_data_size\": <bytes>}}")
    if offset != len(binary):
        raise OipError(400, f"the body has {len(binary)} bytes after the {json_size}-byte JSON header but the "
                            f"inputs' binary_data_size add up to {offset}; send exactly the inputs' binary data "
                            f"after the JSON")
    request = to_request(model, tensors)
    request_id = message.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise OipError(400, f"'id' is a JSON {_kind(request_id)}; send a string or leave it out")
    parameters = _field(message, "parameters", dict, "the request", {})
    return Parsed(request, request_id, _outputs(message, model, parameters.get("binary_data_output") is True))


def _outputs(message: dict, model: Model, binary_default: bool) -> list:
    entries = _field(message, "outputs", list, "the request", None)
    if entries is None:
        return [(name, binary_default) for name in model.output_names(None)]
    names, binary = [], []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise OipError(400, f"outputs[{index}] is a JSON {_kind(entry)}; send {{\"name\": \"answer\"}}")
        names.append(_field(entry, "name", str, f"outputs[{index}]"))
        parameters = _field(entry, "parameters", dict, f"output {names[-1]!r}", {})
        if "classification" in parameters:
            raise OipError(400, f"output {names[-1]!r} asks for classification, which this model does not do; "
                                f"leave that parameter out")
        binary.append(parameters.get("binary_data", binary_default) is True)
    return list(zip(model.output_names(names), binary))


def _load(text: bytes):
    if not text:
        raise OipError(400, f"the request body is empty; send JSON such as {EXAMPLE}")
    try:
        message = json.loads(text)
    except RecursionError:
        raise OipError(400, "the request body nests JSON too deeply to read; an inference request nests a few "
                            f"levels, such as {EXAMPLE}") from None
    except UnicodeDecodeError as e:
        raise OipError(400, f"the JSON header is not valid UTF-8 (byte {e.start}); send JSON in UTF-8") from None
    except ValueError as e:
        raise OipError(400, f"the request body is not valid JSON ({e}); send JSON such as {EXAMPLE}") from None
    if not isinstance(message, dict):
        raise OipError(400, f"the request body is a JSON {_kind(message)}, not an object; send {EXAMPLE}")
    return message


_MISSING = object()


def _field(holder: dict, key: str, kind: type, where: str, default=_MISSING):
    value = holder.get(key, default)
    if value is _MISSING:
        raise OipError(400, f"{where} has no {key!r}; send {EXAMPLE}")
    if value is not default and not isinstance(value, kind):
        raise OipError(400, f"{key!r} of {where} is a JSON {_kind(value)}; send a JSON {_kind(kind())}")
    return value


def _json_tensor(data, kind: str, shape: list, name: str) -> np.ndarray:
    """`data` as given by the spec: flat, or nested as the shape (only as deep as the shape: no recursion past it)."""
    flat = _flatten(data, shape, name)
    check_count(name, shape, len(flat))
    if kind == "BYTES":
        if not all(isinstance(v, str) for v in flat):
            raise OipError(400, f"input {name!r} holds a {_kind(next(v for v in flat if not isinstance(v, str)))}; "
                                f"BYTES data in JSON is strings (UTF-8 text)")
        array = np.empty(len(flat), np.object_)
        try:
            array[:] = [v.encode("utf-8") for v in flat]
        except UnicodeEncodeError:
            raise OipError(400, f"input {name!r} holds a lone UTF-16 surrogate, which is not text; send UTF-8 "
                                f"text") from None
        return array.reshape(shape)
    bad = [v for v in flat if type(v) is not int or not _INT32[0] <= v <= _INT32[1]]
    if bad:
        raise OipError(400, f"input {name!r} holds {bad[0]!r}; INT32 data is JSON integers from {_INT32[0]} to "
                            f"{_INT32[1]}")
    return np.array(flat, NUMPY[kind]).reshape(shape)


def _flatten(data, shape: list, name: str) -> list:
    if not isinstance(data, list):
        raise OipError(400, f"data of input {name!r} is a JSON {_kind(data)}; send a JSON array of its elements")
    flat, level = data, 0
    while any(isinstance(v, list) for v in flat):
        level += 1
        if level >= max(len(shape), 1) or not all(isinstance(v, list) for v in flat):
            raise OipError(400, f"data of input {name!r} nests deeper than its shape {shape} or mixes arrays and "
                                f"elements; send the elements flat (row-major) or nested as the shape")
        flat = [v for row in flat for v in row]
    return flat


def response(parsed: Parsed, outputs: Mapping[str, np.ndarray], version: str) -> Tuple[bytes, dict]:
    """(body, headers) of a successful inference: outputs asked for as binary follow the JSON part, whose length
    the Inference-Header-Content-Length header gives."""
    model = parsed.request.model
    entries, blobs = [], []
    for name, binary in parsed.sent(outputs):
        array, kind = outputs[name], model.output_type(name)
        entry = {"name": name, "datatype": kind, "shape": list(array.shape)}
        if binary:
            blobs.append(raw.encode(kind, array))
            entry["parameters"] = {"binary_data_size": len(blobs[-1])}
        elif kind == "BYTES":
            entry["data"] = [v.decode("utf-8") for v in array.reshape(-1)]
        else:
            entry["data"] = array.reshape(-1).tolist()
        entries.append(entry)
    message = {"model_name": model.name, "model_version": version, "outputs": entries}
    if parsed.id is not None:
        message["id"] = parsed.id
    head = json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    if not blobs:
        return head, {"Content-Type": "application/json"}
    return head + b"".join(blobs), {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(head))}


def error_response(error: OipError, request_id: Optional[str] = None) -> Tuple[int, bytes, dict]:
    """(status, body, headers) of a refused request; the request's ID in the body when given."""
    headers = {"Content-Type": "application/json"}
    if error.retry_after is not None:
        headers["Retry-After"] = str(error.retry_after)
    body = {"error": error.message, **({"request_id": request_id} if request_id else {})}
    return error.status, json.dumps(body, ensure_ascii=False).encode("utf-8"), headers
