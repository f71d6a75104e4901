"""MindSpore Serving's REST API, translated to and from its gRPC Predict messages; no I/O here.

The front door (bert_squad/front/http.py) takes `POST /model/<name>[/version/<n>]:<method>` with
`{"instances": [{input: value, ...}, ...]}` and forwards it to Serving's master over gRPC. Values follow
Serving 2.0.2's REST rules (read from its r2.0 source, http_process.cc), so existing clients keep working:
a JSON string is a string scalar, an integer an int32 scalar, a float a float32 scalar, a bool a bool
scalar, a nested list a tensor of that shape (all leaves of one JSON type; strings: one item only), and
`{"b64": ..., "type": ..., "shape": [...]}` raw bytes (type "bytes" by default, "str" for text, or a numeric
type whose little-endian data the bytes are). Replies are written the way Serving's nlohmann::json dump()
writes them (compact, keys sorted, shortest round-trip floats, NaN as null), byte for byte for good requests.

What differs is whole-request failure: Serving answered HTTP 200 {"error_msg": ...} (or nothing, for some
malformed base64); here every such failure is a RestError with a real status code and a message saying
what was wrong.
"""
from __future__ import annotations

import base64
import binascii
import functools
import json
import math
import re
import struct
from decimal import Decimal
from typing import Any, Optional, Tuple

import numpy as np

from bert_squad_client import protocol

PATH = re.compile(r"/model/(?P<name>[^/:]+)(?:/version/(?P<version>[^/:]+))?:(?P<method>[^/:]+)")
_BY_DTYPE = {dtype.newbyteorder("="): code for code, dtype in protocol.NUMPY_DTYPES.items()}
_CODE = {  # Serving's REST type names -> data type codes of ms_service.proto
    **{name: _BY_DTYPE[np.dtype(name)] for name in ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16",
                                                     "uint32", "uint64", "float16", "float32", "float64")},
    "fp16": _BY_DTYPE[np.dtype("float16")], "fp32": _BY_DTYPE[np.dtype("float32")],
    "fp64": _BY_DTYPE[np.dtype("float64")], "str": protocol.MS_STRING, "bytes": protocol.MS_BYTES}
_INT32, _FLOAT32 = _CODE["int32"], _CODE["float32"]
_BOOL, _FLOAT16 = _CODE["bool"], _CODE["float16"]
INT32_RANGE = (-2**31, 2**31 - 1)
STAGE_FAILED = 3  # Serving's error code when a stage raised for an instance ("Call Function ... Failed")
NOT_AVAILABLE = "servable is not available"  # Serving's text while no worker serves the servable
METHOD_NOT_AVAILABLE = "method is not available"
EXAMPLE = '{"instances": [{"question": "Who?", "context": "..."}]}'


class RestError(Exception):
    """A whole request refused or failed: HTTP `status`, the reason, and Retry-After seconds when retrying helps."""

    def __init__(self, status: int, message: str, retry_after: Optional[int] = None):
        super().__init__(message)
        self.status, self.message, self.retry_after = status, message, retry_after

    def body(self, request_id: Optional[str] = None) -> bytes:
        """MindSpore Serving's error body, with the front door's request ID beside it when given."""
        return dumps({"error_msg": self.message, **({"request_id": request_id} if request_id else {})})


def dumps(value: Any) -> bytes:
    """JSON as nlohmann::json dump() writes it: compact, keys sorted, UTF-8 unescaped."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True,
                      allow_nan=False).encode("utf-8")


def parse_path(path: str) -> Tuple[str, int, str]:
    """(servable, version (0: newest), method) of a REST predict path, or RestError 404."""
    match = PATH.fullmatch(path)
    if not match:
        raise RestError(404, f"no {path}: predict paths are POST /model/<servable>[/version/<n>]:<method>, "
                             f"for example /model/bert_squad:predict")
    version = match["version"]
    if version is not None and not (version.isascii() and version.isdigit()):
        raise RestError(404, f"version {version!r} in {path} is not a number: use /version/<n>, n >= 1")
    return match["name"], int(version or 0), match["method"]


def _reject_constant(name: str):
    raise ValueError(f"{name} is not JSON (JSON has no NaN or Infinity)")


def parse_body(body: bytes, servable: str, version: int, method: str):
    """The PredictRequest of a REST body and its instance count, or RestError 400 saying what is wrong."""
    if not body:
        raise RestError(400, f"the request body is empty; send JSON such as {EXAMPLE}")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RestError(400, f"the request body is not valid UTF-8 (byte {e.start}); send JSON in UTF-8") from None
    try:
        message = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise RestError(400, f"the request body nests JSON too deeply to read; a request nests a few levels, such "
                             f"as {EXAMPLE}") from None
    except ValueError as e:
        raise RestError(400, f"the request body is not valid JSON ({e}); send JSON such as {EXAMPLE}") from None
    if not isinstance(message, dict):
        raise RestError(400, f"the request body is a JSON {json_type(message)}, not an object; send {EXAMPLE}")
    if "instances" not in message:
        raise RestError(400, f"the request has no 'instances' key; send {EXAMPLE}")
    instances = message["instances"]
    if isinstance(instances, dict):
        instances = [instances]
    if not isinstance(instances, list):
        raise RestError(400, f"'instances' is a JSON {json_type(instances)}; it must be a list of objects, "
                             f"one per instance: {EXAMPLE}")
    if not instances:
        raise RestError(400, "'instances' is an empty list; send at least one instance")
    request = protocol.PredictRequest()
    request.servable_spec.name, request.servable_spec.method_name = servable, method
    request.servable_spec.version_number = version
    for index, inputs in enumerate(instances):
        where = f"instance {index}"
        if not isinstance(inputs, dict) or not inputs:
            what = "an empty object" if isinstance(inputs, dict) else f"a JSON {json_type(inputs)}"
            raise RestError(400, f"{where} is {what}; each instance is an object of named inputs")
        instance = request.instances.add()
        for name, value in inputs.items():
            if not name:
                raise RestError(400, f"{where} has an input with an empty name")
            try:
                _fill(instance.items[_utf8(name, "an input name")], value, f"{where} input {name!r}")
            except RestError:
                raise
            except (ValueError, TypeError, OverflowError) as e:  # protobuf refusing a value, numpy overflow
                raise RestError(400, f"{where} input {name!r}: {e}") from None
    return request, len(instances)


def json_type(value) -> str:
    for kind, name in ((bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"), (list, "array"),
                       (dict, "object"), (type(None), "null")):
        if isinstance(value, kind):
            return name
    return type(value).__name__


def _utf8(text: str, what: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise RestError(400, f"{what} holds a lone UTF-16 surrogate ({text[e.start:e.end]!a}), which is not "
                             f"text; send UTF-8 text") from None
    return text


def _fill(tensor, value, where: str) -> None:
    if isinstance(value, dict):
        _fill_object(tensor, value, where)
    elif isinstance(value, list):
        _fill_array(tensor, value, where)
    elif isinstance(value, str):
        tensor.dtype = protocol.MS_STRING
        tensor.bytes_val.append(_utf8(value, where).encode("utf-8"))
    elif isinstance(value, bool):
        tensor.dtype, tensor.data = _BOOL, np.bool_(value).tobytes()
    elif isinstance(value, int):
        tensor.dtype, tensor.data = _INT32, _int32([value], where).tobytes()
    elif isinstance(value, float):
        tensor.dtype, tensor.data = _FLOAT32, np.float32(value).tobytes()
    else:
        raise RestError(400, f"{where} is null; send a string, number, boolean, list or {{\"b64\": ...}} object")


def _int32(values: list, where: str) -> np.ndarray:
    low, high = INT32_RANGE
    if any(v < low or v > high for v in values):
        raise RestError(400, f"{where} holds an integer outside int32 [{low}, {high}]; JSON integers are sent "
                             f"as int32 (use {{\"b64\": ..., \"type\": \"int64\"}} for wider values)")
    return np.array(values, dtype="<i4")


def _fill_object(tensor, value: dict, where: str) -> None:
    unknown = sorted(set(value) - {"b64", "type", "shape"})
    if unknown or "b64" not in value:
        raise RestError(400, f"{where} is an object {'with unknown keys ' + str(unknown) if unknown else 'without b64'}"
                             f"; an object value is {{\"b64\": BASE64, \"type\": TYPE, \"shape\": [...]}} "
                             f"(type and shape optional)")
    type_name = value.get("type", "bytes")
    if not isinstance(type_name, str) or type_name not in _CODE:
        raise RestError(400, f"{where} has type {type_name!r}; use one of {', '.join(sorted(_CODE))}")
    shape = value.get("shape", [])
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**31
                                              for d in shape):
        raise RestError(400, f"{where} has shape {shape!r}; a shape is a list of integers >= 0")
    data = _b64(value["b64"], where)
    count = math.prod(shape)
    code = _CODE[type_name]
    if code in (protocol.MS_STRING, protocol.MS_BYTES):
        if count != 1:
            raise RestError(400, f"{where}: a {type_name} value holds one item, but shape {shape} has {count}")
        tensor.dtype = code
        tensor.shape.dims.extend(shape)
        tensor.bytes_val.append(data)
        return
    size = protocol.NUMPY_DTYPES[code].itemsize * count
    if len(data) != size:
        raise RestError(400, f"{where}: b64 holds {len(data)} bytes, but {type_name} of shape {shape} takes "
                             f"{size}; send the tensor's little-endian data")
    tensor.dtype, tensor.data = code, data
    tensor.shape.dims.extend(shape)


def _b64(text, where: str) -> bytes:
    if not isinstance(text, str):
        raise RestError(400, f"{where}: b64 is a JSON {json_type(text)}; it must be a base64 string")
    if not text.isascii():
        bad = next(c for c in text if not c.isascii())
        raise RestError(400, f"{where}: b64 holds {bad!a}, which is not a base64 character (A-Z a-z 0-9 + / =)")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise RestError(400, f"{where}: b64 is not valid base64 ({e}); encode the bytes with standard base64, "
                             f"padded with = to a multiple of 4 characters") from None


def _fill_array(tensor, value: list, where: str) -> None:
    shape, leaf = [], value
    while isinstance(leaf, list):
        if not leaf:
            raise RestError(400, f"{where} is an empty list; a list value needs at least one element")
        shape.append(len(leaf))
        leaf = leaf[0]
    flat: list = []
    _flatten(value, shape, 0, flat, where)
    kind = type(leaf)
    if kind in (dict, str):
        if len(flat) != 1:
            raise RestError(400, f"{where} is a list of {len(flat)} {'strings' if kind is str else 'objects'}; "
                                 f"a text or bytes input holds exactly one")
        if kind is str:
            tensor.dtype = protocol.MS_STRING
            tensor.bytes_val.append(_utf8(leaf, where).encode("utf-8"))
        else:
            _fill_object(tensor, leaf, where)
            if tensor.dtype not in (protocol.MS_STRING, protocol.MS_BYTES):
                raise RestError(400, f"{where}: an object inside a list must be of type str or bytes")
            del tensor.shape.dims[:]
        tensor.shape.dims.extend(shape)
        return
    if not all(type(v) is kind for v in flat):
        raise RestError(400, f"{where} mixes element types; all elements of a list must be of one JSON type "
                             f"(integers, numbers with a decimal point, or booleans)")
    if kind is bool:
        tensor.dtype, tensor.data = _BOOL, np.array(flat, dtype=np.bool_).tobytes()
    elif kind is int:
        tensor.dtype, tensor.data = _INT32, _int32(flat, where).tobytes()
    elif kind is float:
        tensor.dtype, tensor.data = _FLOAT32, np.array(flat, dtype="<f4").tobytes()
    else:
        raise RestError(400, f"{where} holds null; list elements are numbers, booleans or one string")
    tensor.shape.dims.extend(shape)


def _flatten(value, shape: list, depth: int, out: list, where: str) -> None:
    if len(value) != shape[depth]:
        raise RestError(400, f"{where} is a ragged list: a list at depth {depth} has {len(value)} elements where "
                             f"the first has {shape[depth]}; a tensor's rows must all be the same length")
    if depth + 1 == len(shape):
        if any(isinstance(v, list) for v in value):
            raise RestError(400, f"{where} is a ragged list: lists nest deeper in some rows than in the first")
        out.extend(value)
        return
    for row in value:
        if not isinstance(row, list):
            raise RestError(400, f"{where} is a ragged list: a value at depth {depth} is not a list")
        _flatten(row, shape, depth + 1, out, where)


# ---------------------------------------------------------------- replies

def whole_request_error(code: int, message: str) -> RestError:
    """The status a whole-request failure reported by Serving gets."""
    if protocol.SERVER_BUSY in message:
        return RestError(429, message, retry_after=1)
    if METHOD_NOT_AVAILABLE in message:
        return RestError(404, message)
    if code in protocol.RETRYABLE_CODES or NOT_AVAILABLE in message:
        return RestError(503, message, retry_after=1)
    if code == protocol.INVALID_INPUTS:
        return RestError(400, message)
    return RestError(500, message)


def reply_body(reply, count: int) -> bytes:
    """Serving's REST reply for a PredictReply to `count` instances, or RestError for a whole-request failure."""
    errors = list(reply.error_msg)
    if errors and not reply.instances:
        code, message = int(errors[0].error_code), errors[0].error_msg.decode("utf-8", "replace")
        if code == STAGE_FAILED:  # the one instance's own error, written as Serving's REST server writes it
            return dumps({"error_msg": message})
        raise whole_request_error(code, message)
    if len(errors) not in (0, count) or len(reply.instances) != count:
        raise RestError(502, f"Serving's reply has {len(reply.instances)} instances and {len(errors)} errors for "
                             f"{count} instances sent")
    parts = []
    for index, instance in enumerate(reply.instances):
        if errors and errors[index].error_code != 0:
            parts.append(_encode({"error_msg": errors[index].error_msg.decode("utf-8", "replace")}))
        else:
            parts.append(_encode({name: _json_value(tensor) for name, tensor in instance.items.items()}))
    return ('{"instances":[' + ",".join(parts) + "]}").encode("utf-8")


def _encode(value) -> str:
    """JSON text of a reply value, floats as nlohmann::json writes them (json.dumps cannot be told how)."""
    if isinstance(value, float):
        return float_text(value)
    if isinstance(value, list):
        return "[" + ",".join(map(_encode, value)) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{_key(k)}:{_encode(v)}" for k, v in sorted(value.items())) + "}"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return _string(value)


def _string(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


@functools.lru_cache(maxsize=1024)
def _key(name: str) -> str:
    """An output name as JSON (the same few names in every reply)."""
    return _string(name)


def float_text(x: float) -> str:
    """A finite double as nlohmann::json (Grisu2) writes it. Python's repr is the same shortest round-trip
    text except (1) at an exact tie between two shortest candidates, which Grisu2 settles away from zero
    (repr: to even), and (2) from 1e15 to 1e16, which Grisu2 writes with an exponent."""
    text = repr(x)
    mantissa, e, exponent = text.partition("e")
    digits = mantissa.lstrip("-").replace(".", "").lstrip("0")
    if len(digits) >= 16:  # ties need (nearly) all 17 digits: shorter texts are the only candidate
        exact = Decimal(x)
        shown = Decimal(text)
        unit = Decimal(1).scaleb(shown.as_tuple().exponent)  # one unit in the last shown digit
        if exact != shown and abs(exact - shown) * 2 == unit:
            if abs(shown) < abs(exact):
                text = _bump_last_digit(mantissa) + e + exponent
    if not e and abs(x) >= 1e15:
        sign, body = ("-", text[1:]) if text.startswith("-") else ("", text)
        whole = body.split(".")[0]
        first, rest = whole[0], whole[1:].rstrip("0")
        text = f"{sign}{first}{'.' + rest if rest else ''}e+{len(whole) - 1:02d}"
    return text


def _bump_last_digit(mantissa: str) -> str:
    """The digit string one unit larger in magnitude in its last digit (no carry past a leading 9: repr kept)."""
    chars = list(mantissa)
    i = len(chars) - 1
    while i >= 0:
        if chars[i] == ".":
            i -= 1
            continue
        if chars[i] == "-":
            return mantissa
        if chars[i] != "9":
            chars[i] = str(int(chars[i]) + 1)
            return "".join(chars)
        chars[i] = "0"
        i -= 1
    return mantissa


def _json_value(tensor):
    dims = list(tensor.shape.dims) if len(tensor.shape.dims) else []
    scalar = _SCALARS.get(tensor.dtype) if not dims else None
    if scalar is not None and len(tensor.data) == scalar.size:  # the common case, without numpy
        value = scalar.unpack(tensor.data)[0]
        return None if isinstance(value, float) and not math.isfinite(value) else value
    if tensor.dtype in (protocol.MS_STRING, protocol.MS_BYTES):
        texts = [b.decode("utf-8", "replace") if tensor.dtype == protocol.MS_STRING
                 else {"b64": base64.b64encode(b).decode()} for b in tensor.bytes_val]
        if not texts:
            raise RestError(502, "Serving's reply holds a string output without a value")
        return texts[0] if not dims else _nest(texts, dims)
    dtype = protocol.NUMPY_DTYPES.get(tensor.dtype)
    if dtype is None:
        raise RestError(502, f"Serving's reply holds an output of unknown data type {tensor.dtype}")
    array = np.frombuffer(tensor.data, dtype=dtype)
    if tensor.dtype == _FLOAT16:
        array = array.astype(np.float32)  # Serving widens half floats to float before writing them
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        values = [None if not math.isfinite(v) else v for v in array.tolist()]  # nlohmann writes NaN as null
    else:
        values = array.tolist()
    if not dims:
        return values[0]
    return _nest(values, dims)


_SCALARS = {code: struct.Struct("<" + dtype.char) for code, dtype in protocol.NUMPY_DTYPES.items()}


def _nest(values: list, dims: list):
    """A flat list as nested lists of shape `dims`."""
    for size in reversed(dims[1:]):
        values = [values[i:i + size] for i in range(0, len(values), size)] if size else []
    return values
