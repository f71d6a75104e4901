"""Requests built at the wire level, for tests that send what a well-behaved client never would.

gRPC requests are PredictRequest protos made by hand (any dtype, any shape, raw bytes); REST
requests are raw bodies. Both calls return the reply in one shape: a str when Serving failed the
whole request, else a list with, per instance, a dict of outputs or {"error": message}.
"""
from __future__ import annotations

import http.client
import json
import ssl
from typing import Optional, Sequence, Union

import grpc
import numpy as np
from mindspore_serving.proto import ms_service_pb2 as pb
from mindspore_serving.proto import ms_service_pb2_grpc as pb_grpc

_DTYPES = {np.dtype(t): code for t, code in (
    (np.bool_, pb.MS_BOOL), (np.int8, pb.MS_INT8), (np.uint8, pb.MS_UINT8), (np.int16, pb.MS_INT16),
    (np.uint16, pb.MS_UINT16), (np.int32, pb.MS_INT32), (np.uint32, pb.MS_UINT32), (np.int64, pb.MS_INT64),
    (np.uint64, pb.MS_UINT64), (np.float16, pb.MS_FLOAT16), (np.float32, pb.MS_FLOAT32),
    (np.float64, pb.MS_FLOAT64))}
_NUMPY = {code: dtype for dtype, code in _DTYPES.items()}

Reply = Union[str, list]


def text(value: Union[str, bytes], dtype: int = pb.MS_STRING, dims: Sequence[int] = (1,)) -> pb.Tensor:
    """A string (MS_STRING) or bytes (MS_BYTES) tensor holding `value` as it is, valid UTF-8 or not."""
    tensor = pb.Tensor(dtype=dtype)
    tensor.shape.dims.extend(dims)
    tensor.bytes_val.append(value.encode() if isinstance(value, str) else value)
    return tensor


def array(value) -> pb.Tensor:
    """A numeric tensor of the array's own dtype and shape."""
    value = np.asarray(value)
    tensor = pb.Tensor(dtype=_DTYPES[value.dtype], data=value.tobytes())
    tensor.shape.dims.extend(value.shape)
    return tensor


def make_request(method: str, instances: Sequence[dict], servable: str = "bert_squad",
            version: int = 0) -> pb.PredictRequest:
    """A PredictRequest; instance values are pb.Tensor, str (a string tensor) or numpy arrays."""
    request = pb.PredictRequest()
    request.servable_spec.name, request.servable_spec.method_name = servable, method
    request.servable_spec.version_number = version
    for inputs in instances:
        instance = request.instances.add()
        for name, value in inputs.items():
            if isinstance(value, str):
                value = text(value)
            elif not isinstance(value, pb.Tensor):
                value = array(value)
            instance.items[name].CopyFrom(value)
    return request


def grpc_predict(address: str, method: str, instances: Sequence[dict], servable: str = "bert_squad",
                 version: int = 0, timeout: float = 120.0,
                 credentials: Optional[grpc.ChannelCredentials] = None) -> Reply:
    """One Predict call over a channel of its own."""
    options = [("grpc.max_send_message_length", 512 << 20), ("grpc.max_receive_message_length", 512 << 20)]
    channel = (grpc.secure_channel(address, credentials, options) if credentials
               else grpc.insecure_channel(address, options))
    request = make_request(method, instances, servable, version)
    with channel:
        reply = pb_grpc.MSServiceStub(channel).Predict(request, timeout=timeout)
    return read_reply(reply)


def read_reply(reply: pb.PredictReply) -> Reply:
    errors = [e.error_msg.decode(errors="replace") if e.error_code else None for e in reply.error_msg]
    if not reply.instances and errors:
        return errors[0] or "(empty reply)"
    results = []
    for i, instance in enumerate(reply.instances):
        if errors and errors[i] is not None:
            results.append({"error": errors[i]})
        else:
            results.append({name: _value(tensor) for name, tensor in instance.items.items()})
    return results


def _value(tensor: pb.Tensor):
    if tensor.dtype in (pb.MS_STRING, pb.MS_BYTES):
        return tensor.bytes_val[0].decode()
    value = np.frombuffer(tensor.data, _NUMPY[tensor.dtype]).reshape(tuple(tensor.shape.dims))
    return value.item() if value.ndim == 0 else value.tolist()


def rest_post(address: str, path: str, body: Union[dict, bytes], timeout: float = 120.0, scheme: str = "http",
              context: Optional[ssl.SSLContext] = None) -> dict:
    """POST `body` (a dict sent as JSON, or raw bytes) to a Serving REST path; its JSON reply as it is.

    http.client, not urllib: urllib sends "Connection: close", and Serving 2.0.2's REST server then
    leaves a request of several KB unanswered now and then (about 1 in 150 at 9 KB).
    """
    return json.loads(rest_exchange(address, path, body, timeout, scheme, context)[2])


def rest_exchange(address: str, path: str, body: Union[dict, bytes], timeout: float = 120.0, scheme: str = "http",
                  context: Optional[ssl.SSLContext] = None, method: str = "POST",
                  headers: Optional[dict] = None) -> "tuple[int, dict, bytes]":
    """One HTTP request; (status, headers with lower-case names, raw body) of the reply."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    host, port = address.rsplit(":", 1)
    connection = (http.client.HTTPSConnection(host, int(port), timeout=timeout, context=context) if scheme == "https"
                  else http.client.HTTPConnection(host, int(port), timeout=timeout))
    try:
        connection.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def rest_refusal(address: str, method: str, body: Union[dict, bytes], servable: str = "bert_squad",
                 version: Optional[int] = None, timeout: float = 120.0) -> "tuple[int, str]":
    """(HTTP status, error_msg) of a REST predict request refused as a whole."""
    path = f"/model/{servable}" + (f"/version/{version}" if version is not None else "") + f":{method}"
    status, _, data = rest_exchange(address, path, body, timeout)
    return status, json.loads(data)["error_msg"]


def rest_predict(address: str, method: str, body: Union[dict, bytes], servable: str = "bert_squad",
                 version: Optional[int] = None, timeout: float = 120.0, scheme: str = "http",
                 context: Optional[ssl.SSLContext] = None) -> Reply:
    """One REST predict call; `body` is a dict (sent as JSON) or raw bytes."""
    path = f"/model/{servable}" + (f"/version/{version}" if version is not None else "") + f":{method}"
    answer = rest_post(address, path, body, timeout, scheme, context)
    if "error_msg" in answer:
        return answer["error_msg"]
    return [{"error": r["error_msg"]} if "error_msg" in r else r for r in answer["instances"]]
