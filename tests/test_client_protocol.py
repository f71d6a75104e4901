"""The client's wire format: the messages it builds at import time match client/ms_service.proto, match the
installed MindSpore Serving's own descriptor field by field (py39 venv), and its bytes are read back by the
server's message classes. Plus: the package imports without MindSpore and Serving."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import descriptor_pb2

from bert_squad_client import InvalidResponse, RequestError, ServerUnavailable, protocol

PROTO = Path(__file__).resolve().parent.parent / "client" / "ms_service.proto"
F = descriptor_pb2.FieldDescriptorProto
SCALARS = {"string": F.TYPE_STRING, "bytes": F.TYPE_BYTES, "int64": F.TYPE_INT64, "uint64": F.TYPE_UINT64,
           "bool": F.TYPE_BOOL}


def parse_proto(text: str) -> dict:
    """The subset of .proto syntax ms_service.proto uses, as {message: {field: signature}}, enums, services."""
    text = re.sub(r"//[^\n]*", "", text)
    tokens = re.findall(r"[A-Za-z_][\w.]*|\d+|\"[^\"]*\"|[{}<>=;(),]", text)
    out = {"package": None, "messages": {}, "enums": {}, "services": {}}
    i = 0

    def take(expected=None):
        nonlocal i
        token = tokens[i]
        assert expected is None or token == expected, f"expected {expected!r}, got {token!r} at token {i}"
        i += 1
        return token

    while i < len(tokens):
        word = take()
        if word == "syntax":
            take("="), take(), take(";")
        elif word == "package":
            out["package"] = take()
            take(";")
        elif word == "enum":
            name = take()
            take("{")
            values = {}
            while tokens[i] != "}":
                value = take()
                take("=")
                values[value] = int(take())
                take(";")
            take("}")
            out["enums"][name] = values
        elif word == "service":
            name = take()
            take("{")
            methods = {}
            while tokens[i] != "}":
                take("rpc")
                method = take()
                take("(")
                request = take()
                take(")"), take("returns"), take("(")
                methods[method] = (request, take())
                take(")"), take("{"), take("}")
            take("}")
            out["services"][name] = methods
        elif word == "message":
            name = take()
            take("{")
            fields = {}
            oneof = None
            while True:
                token = take()
                if token == "}":
                    if oneof is None:
                        break
                    oneof = None
                    continue
                if token == "oneof":
                    oneof = take()
                    take("{")
                    continue
                label = "optional"
                if token == "repeated":
                    label, token = "repeated", take()
                if token == "map":
                    take("<")
                    key = take()
                    take(",")
                    kind = ("map", key, take())
                    take(">")
                    label = "repeated"
                else:
                    kind = token
                field = take()
                take("=")
                fields[field] = (int(take()), label, kind, oneof)
                take(";")
            out["messages"][name] = fields
        else:
            raise AssertionError(f"unexpected token {word!r}")
    return out


def normalize(file_proto: descriptor_pb2.FileDescriptorProto) -> dict:
    """A FileDescriptorProto in parse_proto's shape, so a .proto text and a descriptor can be compared."""
    package = "." + file_proto.package + "."
    enums = {e.name for e in file_proto.enum_type}

    def kind(field, nested):
        if field.type == F.TYPE_MESSAGE and field.type_name.rsplit(".", 1)[-1] in nested:
            entry = nested[field.type_name.rsplit(".", 1)[-1]]
            key, value = entry.field
            return ("map", kind(key, {}), kind(value, {}))
        if field.type in (F.TYPE_MESSAGE, F.TYPE_ENUM):
            name = field.type_name[len(package):] if field.type_name.startswith(package) else field.type_name
            assert (field.type == F.TYPE_ENUM) == (name in enums), name
            return name
        return next(name for name, code in SCALARS.items() if code == field.type)

    messages = {}
    for message in file_proto.message_type:
        nested = {n.name: n for n in message.nested_type if n.options.map_entry}
        assert len(nested) == len(message.nested_type), "only map entries may be nested"
        oneofs = [o.name for o in message.oneof_decl]
        messages[message.name] = {
            f.name: (f.number, "repeated" if f.label == F.LABEL_REPEATED else "optional", kind(f, nested),
                     oneofs[f.oneof_index] if f.HasField("oneof_index") else None)
            for f in message.field}
    return {"package": file_proto.package, "messages": messages,
            "enums": {e.name: {v.name: v.number for v in e.value} for e in file_proto.enum_type},
            "services": {s.name: {m.name: (m.input_type[len(package):], m.output_type[len(package):])
                                  for m in s.method} for s in file_proto.service}}


@pytest.mark.pure
def test_the_messages_the_client_builds_are_exactly_the_proto_file():
    assert normalize(protocol.file_descriptor()) == parse_proto(PROTO.read_text())


@pytest.mark.pure
def test_the_proto_parser_sees_a_changed_field_number():
    """Guards the test above: a one-character change of the .proto text must show up."""
    changed = PROTO.read_text().replace("bytes error_msg = 2;", "bytes error_msg = 3;")
    assert normalize(protocol.file_descriptor()) != parse_proto(changed)


def test_every_field_matches_the_installed_mindspore_serving_descriptor():
    ms_service_pb2 = pytest.importorskip("mindspore_serving.proto.ms_service_pb2")
    theirs = descriptor_pb2.FileDescriptorProto()
    ms_service_pb2.DESCRIPTOR.CopyToProto(theirs)
    theirs, ours = normalize(theirs), normalize(protocol.file_descriptor())
    assert ours["package"] == theirs["package"]
    assert ours["enums"] == theirs["enums"]
    assert ours["services"] == theirs["services"]
    for name, fields in ours["messages"].items():
        assert fields == theirs["messages"][name], name
    # the messages left out are the ones MSService.Predict never carries
    used = {"PredictRequest", "PredictReply", "ErrorMsg", "Instance", "Tensor", "TensorShape", "ShmTensorData",
            "ServableSpec"}
    assert set(ours["messages"]) == used


@pytest.mark.filterwarnings("ignore:`np.bool` is a deprecated alias:DeprecationWarning")  # in the official client
def test_requests_are_byte_compatible_with_the_official_client():
    ms_service_pb2 = pytest.importorskip("mindspore_serving.proto.ms_service_pb2")
    from mindspore_serving.client import Client as OfficialClient

    instances = [{"question": "Wer schrieb es? ✓", "context": "Ada schrieb es 1843.", "top_k": np.int32(3),
                  "max_answer_length": np.int32(30)},
                 {"input_ids": np.arange(5, dtype=np.int32), "mask": np.ones((2, 3), np.float32)}]
    official = OfficialClient("127.0.0.1:1", "bert_squad", "predict_with_options", version_number=2)
    expected = official._create_request(instances)  # what the server has always been sent
    ours = protocol.make_request("bert_squad", "predict_with_options", 2, instances)
    assert ms_service_pb2.PredictRequest.FromString(ours.SerializeToString()) == expected


def test_replies_built_by_the_server_classes_are_read():
    ms_service_pb2 = pytest.importorskip("mindspore_serving.proto.ms_service_pb2")
    reply = ms_service_pb2.PredictReply()
    good = reply.instances.add()
    good.items["answer"].dtype = ms_service_pb2.MS_STRING
    good.items["answer"].bytes_val.append("Ädä".encode())
    good.items["top_starts"].dtype = ms_service_pb2.MS_INT32
    good.items["top_starts"].shape.dims.append(2)
    good.items["top_starts"].data = np.array([4, 9], np.int32).tobytes()
    reply.instances.add()
    reply.error_msg.add(error_code=0)
    reply.error_msg.add(error_code=3, error_msg="question is empty".encode())
    outcomes = protocol.read_reply(protocol.PredictReply.FromString(reply.SerializeToString()), 2, "predict")
    assert outcomes[0]["answer"] == "Ädä"
    assert outcomes[0]["top_starts"].tolist() == [4, 9] and outcomes[0]["top_starts"].dtype == np.int32
    assert isinstance(outcomes[1], RequestError)
    assert (outcomes[1].instance, outcomes[1].code, outcomes[1].server_message) == (1, 3, "question is empty")


def _reply(errors=(), instances=0):
    reply = protocol.PredictReply()
    for _ in range(instances):
        reply.instances.add()
    for code, text in errors:
        reply.error_msg.add(error_code=code, error_msg=text.encode())
    return reply


@pytest.mark.pure
def test_whole_request_errors_are_request_errors_unless_the_servable_is_restarting():
    with pytest.raises(RequestError) as refused:
        protocol.read_reply(_reply([(2, "Cannot find input context")]), 1, "predict")
    assert refused.value.instance is None and "Cannot find input context" in str(refused.value)
    for code in (protocol.WORKER_UNAVAILABLE, protocol.SERVABLE_UNAVAILABLE):
        with pytest.raises(ServerUnavailable):
            protocol.read_reply(_reply([(code, "servable is not available")]), 3, "predict")


@pytest.mark.pure
def test_a_reply_with_the_wrong_number_of_instances_is_invalid():
    with pytest.raises(InvalidResponse, match="2 instances"):
        protocol.read_reply(_reply(instances=2), 3, "predict")


@pytest.mark.pure
def test_tensors_round_trip_with_their_dtype_and_shape():
    for value in (np.int32(7), np.arange(6, dtype=np.int64).reshape(2, 3), np.array([0.5, -1], np.float32),
                  np.array([True, False])):
        tensor = protocol.Tensor()
        protocol.fill_tensor(tensor, value)
        back = protocol.read_tensor(protocol.Tensor.FromString(tensor.SerializeToString()))
        assert back.dtype == value.dtype and back.shape == np.shape(value) and np.array_equal(back, value)
    tensor = protocol.Tensor()
    protocol.fill_tensor(tensor, "naïve 東京")
    assert protocol.read_tensor(tensor) == "naïve 東京"
    with pytest.raises(TypeError, match="dtype"):
        protocol.fill_tensor(protocol.Tensor(), np.array(["a"], dtype=object))


@pytest.mark.pure
def test_the_package_imports_without_mindspore_or_serving():
    code = ("import sys\n"
            "for name in ('mindspore', 'mindspore_serving', 'mindspore_lite', 'bert_squad'):\n"
            "    sys.modules[name] = None  # any import of them now fails\n"
            "import bert_squad_client, bert_squad_client.predict\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_a_call_the_server_cancelled_is_retryable_and_one_we_cancelled_is_not():
    """A server that stops cancels the calls in flight (status CANCELLED): they are asked again, like UNAVAILABLE.
    (A clean-clone CI run lost a batch run to this during a graceful server restart.)"""
    import grpc

    from bert_squad_client.client import _rpc_error

    class Status(grpc.RpcError):
        def __init__(self, code, details):
            self._code, self._details = code, details

        def code(self):
            return self._code

        def details(self):
            return self._details

    cancelled = _rpc_error(Status(grpc.StatusCode.CANCELLED, "Cancelled"), "predict")
    assert isinstance(cancelled, ServerUnavailable) and "cancelled the call to 'predict'" in str(cancelled)
    assert isinstance(_rpc_error(Status(grpc.StatusCode.UNAVAILABLE, "down"), "predict"), ServerUnavailable)
    refused = _rpc_error(Status(grpc.StatusCode.INVALID_ARGUMENT, "bad"), "predict")
    assert isinstance(refused, RequestError) and not isinstance(refused, ServerUnavailable)
