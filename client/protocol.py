"""MindSpore Serving's gRPC wire format, without mindspore_serving and without generated code.

The messages of ms_service.proto are built at import time from a FileDescriptorProto, in a private descriptor
pool, so the same code runs on protobuf 3.20 (next to the server) and on current protobuf (no generated
`_pb2` module pins a protobuf version). tests/test_client_protocol.py checks these messages against
ms_service.proto and against the server's own descriptor.
"""
from __future__ import annotations

from typing import Union

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from .errors import InvalidResponse, RequestError, ServerUnavailable

PACKAGE = "mindspore.serving.proto"
PREDICT_PATH = f"/{PACKAGE}.MSService/Predict"

# Serving's status codes (mindspore_serving ccsrc/common/status.h) as sent in ErrorMsg.error_code.
INVALID_INPUTS = 2
WORKER_UNAVAILABLE = 4  # the worker process is (re)starting
SERVABLE_UNAVAILABLE = 5  # no worker serves the servable right now: (re)starting, or not deployed
RETRYABLE_CODES = (WORKER_UNAVAILABLE, SERVABLE_UNAVAILABLE)
# Serving's text for a full queue (--max-queued-requests): the clients retry it with backoff, REST answers 429.
SERVER_BUSY = "enqueued requests count exceeds the limit"

# The bert_squad front door's request ID: an HTTP header (any case) and a gRPC metadata key (lower case, as gRPC
# keys are). The server reads and sends it (bert_squad/front/access.py); the REST client reads it into its errors.
REQUEST_ID_HEADER = "x-request-id"
# The model version that answered a request (it changes when the server switches versions): a response header of
# MindSpore Serving's REST API and trailing metadata of its gRPC API at the bert_squad front door.
MODEL_VERSION_HEADER = "x-model-version"

# Serving refuses messages above 512 MB; the gRPC default receive limit (4 MB) is too small for long contexts
# and for the logits of many windows.
MAX_MESSAGE_BYTES = 512 * 1024 * 1024

_F = descriptor_pb2.FieldDescriptorProto
_DTYPES = ("MS_UNKNOWN", "MS_BOOL", "MS_INT8", "MS_UINT8", "MS_INT16", "MS_UINT16", "MS_INT32", "MS_UINT32",
           "MS_INT64", "MS_UINT64", "MS_FLOAT16", "MS_FLOAT32", "MS_FLOAT64", "MS_STRING", "MS_BYTES")
MS_STRING = _DTYPES.index("MS_STRING")
MS_BYTES = _DTYPES.index("MS_BYTES")
NUMPY_DTYPES = {
    _DTYPES.index(name): np.dtype(kind).newbyteorder("<")
    for name, kind in [("MS_BOOL", np.bool_), ("MS_INT8", np.int8), ("MS_UINT8", np.uint8), ("MS_INT16", np.int16),
                       ("MS_UINT16", np.uint16), ("MS_INT32", np.int32), ("MS_UINT32", np.uint32),
                       ("MS_INT64", np.int64), ("MS_UINT64", np.uint64), ("MS_FLOAT16", np.float16),
                       ("MS_FLOAT32", np.float32), ("MS_FLOAT64", np.float64)]
}


def _field(name: str, number: int, kind: int, type_name: str | None = None, repeated: bool = False,
           oneof_index: int | None = None) -> _F:
    field = _F(name=name, number=number, type=kind, label=_F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL)
    if type_name:
        field.type_name = f".{PACKAGE}.{type_name}"
    if oneof_index is not None:
        field.oneof_index = oneof_index
    return field


def _map_entry(name: str, value_type: str) -> descriptor_pb2.DescriptorProto:
    entry = descriptor_pb2.DescriptorProto(name=name, field=[
        _field("key", 1, _F.TYPE_STRING), _field("value", 2, _F.TYPE_MESSAGE, value_type)])
    entry.options.map_entry = True
    return entry


def file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    """ms_service.proto as a FileDescriptorProto (the subset MSService.Predict uses)."""
    msg = descriptor_pb2.DescriptorProto
    messages = [
        msg(name="PredictRequest", field=[
            _field("servable_spec", 1, _F.TYPE_MESSAGE, "ServableSpec"),
            _field("instances", 2, _F.TYPE_MESSAGE, "Instance", repeated=True)]),
        msg(name="ErrorMsg", field=[
            _field("error_code", 1, _F.TYPE_INT64),
            _field("error_msg", 2, _F.TYPE_BYTES)]),
        msg(name="PredictReply", field=[
            _field("servable_spec", 1, _F.TYPE_MESSAGE, "ServableSpec"),
            _field("instances", 3, _F.TYPE_MESSAGE, "Instance", repeated=True),
            _field("error_msg", 4, _F.TYPE_MESSAGE, "ErrorMsg", repeated=True)]),
        msg(name="Instance", field=[
            _field("items", 1, _F.TYPE_MESSAGE, "Instance.ItemsEntry", repeated=True),
            _field("output_buffers", 2, _F.TYPE_MESSAGE, "Instance.OutputBuffersEntry", repeated=True)],
            nested_type=[_map_entry("ItemsEntry", "Tensor"), _map_entry("OutputBuffersEntry", "ShmTensorData")]),
        msg(name="TensorShape", field=[_field("dims", 1, _F.TYPE_INT64, repeated=True)]),
        msg(name="ShmTensorData", field=[
            _field("memory_key", 1, _F.TYPE_STRING),
            _field("bytes_size", 2, _F.TYPE_UINT64),
            _field("data_offset", 3, _F.TYPE_UINT64),
            _field("data_size", 4, _F.TYPE_UINT64)]),
        msg(name="Tensor", field=[
            _field("shape", 1, _F.TYPE_MESSAGE, "TensorShape"),
            _field("dtype", 2, _F.TYPE_ENUM, "DataType"),
            _field("data", 3, _F.TYPE_BYTES, oneof_index=0),
            _field("shm_data", 5, _F.TYPE_MESSAGE, "ShmTensorData", oneof_index=0),
            _field("bytes_val", 4, _F.TYPE_BYTES, repeated=True)],
            oneof_decl=[descriptor_pb2.OneofDescriptorProto(name="tensor_data")]),
        msg(name="ServableSpec", field=[
            _field("name", 1, _F.TYPE_STRING),
            _field("method_name", 2, _F.TYPE_STRING),
            _field("version_number", 3, _F.TYPE_UINT64)]),
    ]
    data_type = descriptor_pb2.EnumDescriptorProto(name="DataType", value=[
        descriptor_pb2.EnumValueDescriptorProto(name=name, number=number) for number, name in enumerate(_DTYPES)])
    service = descriptor_pb2.ServiceDescriptorProto(name="MSService", method=[descriptor_pb2.MethodDescriptorProto(
        name="Predict", input_type=f".{PACKAGE}.PredictRequest", output_type=f".{PACKAGE}.PredictReply")])
    return descriptor_pb2.FileDescriptorProto(name="bert_squad_client/ms_service.proto", package=PACKAGE,
                                              syntax="proto3", message_type=messages, enum_type=[data_type],
                                              service=[service])


def _message_classes() -> dict:
    pool = descriptor_pool.DescriptorPool()  # private: never clashes with mindspore_serving's own registration
    pool.Add(file_descriptor())
    if hasattr(message_factory, "GetMessageClass"):  # protobuf >= 4.21
        make = message_factory.GetMessageClass
    else:  # protobuf 3.20
        make = message_factory.MessageFactory(pool).GetPrototype
    names = ("PredictRequest", "PredictReply", "Tensor", "ServableSpec")
    return {name: make(pool.FindMessageTypeByName(f"{PACKAGE}.{name}")) for name in names}


_CLASSES = _message_classes()
ServableSpec = _CLASSES["ServableSpec"]
PredictRequest = _CLASSES["PredictRequest"]
PredictReply = _CLASSES["PredictReply"]
Tensor = _CLASSES["Tensor"]

Value = Union[str, np.ndarray]


def metadata_value(metadata, key: str) -> str | None:
    """The value of `key` in a call's metadata ((key, value) pairs, keys lower-case), when there is one."""
    return next((value for name, value in metadata or () if name == key), None)


def request_id(metadata) -> str | None:
    """The request ID in a call's trailing metadata, when the server sent one."""
    return metadata_value(metadata, REQUEST_ID_HEADER)


def model_version(text: str | None) -> int | None:
    """The model version that answered, from the MODEL_VERSION_HEADER's text (an HTTP header, or gRPC trailing
    metadata: see version_in); None when the server sent none (one older than the header) or not a version number."""
    if text is None:
        return None
    text = text.strip()
    return int(text) if text.isascii() and text.isdigit() else None


def version_in(metadata) -> int | None:
    """model_version() of a call's trailing metadata ((key, value) pairs)."""
    return model_version(metadata_value(metadata, MODEL_VERSION_HEADER))


def fill_tensor(tensor, value: Value) -> None:
    """Write one input value: a str as a one-item string tensor (what Serving expects for text), else an array."""
    if isinstance(value, str):
        tensor.dtype = MS_STRING
        tensor.shape.dims.append(1)
        tensor.bytes_val.append(value.encode("utf-8"))
        return
    array = np.asarray(value)
    for code, dtype in NUMPY_DTYPES.items():
        if array.dtype == dtype:
            tensor.dtype = code
            break
    else:
        raise TypeError(f"cannot send an array of dtype {array.dtype}")
    tensor.shape.dims.extend(array.shape)
    tensor.data = np.ascontiguousarray(array, dtype=NUMPY_DTYPES[tensor.dtype]).tobytes()


def read_tensor(tensor) -> Value:
    """One output value: str for a string tensor holding one item, else a numpy array of the tensor's shape."""
    if tensor.dtype in (MS_STRING, MS_BYTES):
        if len(tensor.bytes_val) != 1:
            raise InvalidResponse(f"expected one string in a string output, got {len(tensor.bytes_val)}")
        return tensor.bytes_val[0].decode("utf-8", errors="replace")
    if tensor.dtype not in NUMPY_DTYPES:
        raise InvalidResponse(f"output has unknown data type {tensor.dtype}")
    if tensor.WhichOneof("tensor_data") == "shm_data":
        raise InvalidResponse("server replied through shared memory, which only local Serving clients can read")
    dims = tuple(tensor.shape.dims)
    try:
        return np.frombuffer(tensor.data, dtype=NUMPY_DTYPES[tensor.dtype]).reshape(dims)
    except ValueError as error:
        raise InvalidResponse(f"output data does not fit its shape {dims}: {error}") from None


def make_request(servable: str, method: str, version: int, instances: list[dict[str, Value]]):
    request = PredictRequest()
    request.servable_spec.name = servable
    request.servable_spec.method_name = method
    request.servable_spec.version_number = version
    for inputs in instances:
        instance = request.instances.add()
        for name, value in inputs.items():
            fill_tensor(instance.items[name], value)
    return request


def read_reply(reply, count: int, method: str, request_id: str | None = None) -> list[dict[str, Value] | RequestError]:
    """Outputs of each instance, or a RequestError (numbered by its instance) for each instance that failed;
    `request_id`: the one the server gave the request (the front door's trailing metadata), for the errors.

    Raises ServerUnavailable when the server says its servable is (re)starting, RequestError when it refused the
    whole request, InvalidResponse when the reply does not have one entry per instance.
    """
    errors = [(int(e.error_code), e.error_msg.decode("utf-8", errors="replace")) for e in reply.error_msg]
    if errors and not reply.instances:  # the whole request failed
        code, text = errors[0]
        if code in RETRYABLE_CODES:
            raise ServerUnavailable(text)
        raise RequestError(text, code=code, method=method, request_id=request_id)
    if len(reply.instances) != count or len(errors) not in (0, count):
        raise InvalidResponse(f"reply has {len(reply.instances)} instances and {len(errors)} errors "
                              f"for {count} instances sent")
    if any(code in RETRYABLE_CODES for code, _ in errors):
        raise ServerUnavailable(next(text for code, text in errors if code in RETRYABLE_CODES))
    results: list[dict[str, Value] | RequestError] = []
    for index, instance in enumerate(reply.instances):
        if errors and errors[index][0] != 0:
            code, text = errors[index]
            results.append(RequestError(text, instance=index, code=code, method=method, request_id=request_id))
        else:
            results.append({name: read_tensor(tensor) for name, tensor in instance.items.items()})
    return results
