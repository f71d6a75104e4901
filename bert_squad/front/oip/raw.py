"""Tensor data as raw bytes, the form both the REST binary tensor data extension and gRPC's raw_input_contents /
raw_output_contents use: little-endian, row-major; a BYTES element is a 4-byte little-endian length, then its
bytes."""
from __future__ import annotations

import struct
from math import prod
from typing import Sequence

import numpy as np

from .models import NUMPY, OipError, check_count

_LENGTH = struct.Struct("<I")


def decode(datatype: str, blob: bytes, name: str, shape: Sequence[int]) -> np.ndarray:
    """The tensor `blob` holds, shaped; 400 when its size does not add up."""
    if datatype != "BYTES":
        itemsize = NUMPY[datatype].itemsize
        if len(blob) != itemsize * prod(shape):
            raise OipError(400, f"input {name!r}: its binary data is {len(blob)} bytes, but {datatype} of shape "
                                f"{list(shape)} takes {itemsize * prod(shape)}; send {itemsize} little-endian bytes "
                                f"per element")
        return np.frombuffer(blob, NUMPY[datatype]).reshape(shape)
    elements, offset = [], 0
    view = memoryview(blob)
    while offset < len(blob):
        if offset + 4 > len(blob):
            raise OipError(400, f"input {name!r}: its binary data ends inside the 4-byte length of element "
                                f"{len(elements)}; send each BYTES element as a 4-byte little-endian length, then "
                                f"its bytes")
        (size,) = _LENGTH.unpack_from(blob, offset)
        if offset + 4 + size > len(blob):
            raise OipError(400, f"input {name!r}: element {len(elements)} says {size} bytes but only "
                                f"{len(blob) - offset - 4} follow; send each BYTES element as a 4-byte little-endian "
                                f"length, then exactly that many bytes")
        elements.append(bytes(view[offset + 4:offset + 4 + size]))
        offset += 4 + size
    check_count(name, shape, len(elements))
    array = np.empty(len(elements), np.object_)
    array[:] = elements
    return array.reshape(shape)


def encode(datatype: str, array: np.ndarray) -> bytes:
    if datatype != "BYTES":
        return np.ascontiguousarray(array, NUMPY[datatype]).tobytes()
    return b"".join(_LENGTH.pack(len(element)) + element for element in array.reshape(-1))
