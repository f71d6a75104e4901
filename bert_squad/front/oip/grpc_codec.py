"""The protocol's gRPC form: ModelInferRequest to a models.Request and outputs to a ModelInferResponse, and an
OipError's status as a gRPC status code (the message is the same as over REST); no I/O here.

BYTES inputs arrive in contents.bytes_contents or length-prefixed in raw_input_contents (tritonclient.grpc's
form); outputs go in raw_output_contents, the only form tritonclient.grpc reads for numeric outputs.
"""
from __future__ import annotations

from typing import Mapping

import grpc
import numpy as np

from bert_squad.front.statuses import GRPC_CODE

from . import raw
from .models import NUMPY, Model, OipError, Parsed, check_count, find_model, to_request
from .stubs import pb

_CONTENTS = {"BYTES": "bytes_contents", "INT32": "int_contents"}  # InferTensorContents field of each input type


def status_code(error: OipError) -> grpc.StatusCode:
    return GRPC_CODE.get(error.status, grpc.StatusCode.INTERNAL)


def parse_infer(message, table: Mapping[str, Model], served: str) -> Parsed:
    """The inference request of a ModelInferRequest (model and version from the message), or OipError."""
    model = find_model(table, message.model_name, message.model_version, served)
    blobs = message.raw_input_contents
    if blobs and len(blobs) != len(message.inputs):
        raise OipError(400, f"raw_input_contents has {len(blobs)} entries for {len(message.inputs)} inputs; send "
                            f"one per input, in the order of inputs")
    if not message.inputs:
        raise OipError(400, f"the request has no inputs; model {model.name!r} takes "
                            f"{', '.join(t.name for t in model.inputs)}")
    tensors = {}
    for index, entry in enumerate(message.inputs):
        tensor = model.input(entry.name)
        if entry.name in tensors:
            raise OipError(400, f"input {entry.name!r} is sent twice; send each input once")
        shape = list(entry.shape)
        if any(d < 0 for d in shape):
            raise OipError(400, f"input {entry.name!r} has shape {shape}; a shape is a list of integers >= 0")
        tensor.check(entry.datatype, shape)
        values = getattr(entry.contents, _CONTENTS[tensor.datatype])
        if blobs:
            if entry.HasField("contents"):
                raise OipError(400, f"input {entry.name!r} has contents while the request uses raw_input_contents; "
                                    f"send every input one way")
            tensors[entry.name] = raw.decode(tensor.datatype, blobs[index], entry.name, shape)
        else:
            check_count(entry.name, shape, len(values))
            array = np.empty(len(values), np.object_) if tensor.datatype == "BYTES" else None
            if array is not None:
                array[:] = list(values)
            else:
                array = np.array(values, NUMPY[tensor.datatype])
            tensors[entry.name] = array.reshape(shape)
    requested = [output.name for output in message.outputs]
    names = model.output_names(requested or None)
    return Parsed(to_request(model, tensors), message.id or None, [(name, True) for name in names])


def response(parsed: Parsed, outputs: Mapping[str, np.ndarray], version: str):
    """The ModelInferResponse of a successful inference."""
    model = parsed.request.model
    message = pb.ModelInferResponse(model_name=model.name, model_version=version, id=parsed.id or "")
    for name, _ in parsed.sent(outputs):
        kind = model.output_type(name)
        message.outputs.add(name=name, datatype=kind, shape=list(outputs[name].shape))
        message.raw_output_contents.append(raw.encode(kind, outputs[name]))
    return message


def model_metadata(model: Model, version: str):
    def tensors(specs):
        return [pb.ModelMetadataResponse.TensorMetadata(name=t.name, datatype=t.datatype, shape=list(t.shape))
                for t in specs]

    return pb.ModelMetadataResponse(name=model.name, versions=[version], platform=model.metadata(version)["platform"],
                                    inputs=tensors(model.inputs), outputs=tensors(model.outputs))
