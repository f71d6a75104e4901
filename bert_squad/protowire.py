"""The top level of a protobuf message, walked on the wire format without parsing it: whether a MindIR file is
whole (versions.py) and which servable a forwarded PredictRequest names and how many instances it holds (the gRPC
front door, server/serving_grpc.py), both without reading what they do not need."""
from __future__ import annotations

from typing import Iterator, Tuple

LENGTH_DELIMITED = 2  # bytes, strings, messages


class WireError(ValueError):
    """Not a whole protobuf message: a field runs past the end, or a wire type protobuf 3 does not use."""


def fields(data) -> Iterator[Tuple[int, int, int, int]]:
    """(field number, wire type, start, end) of each top-level field of `data` (bytes, or an mmap); start..end is
    the value (for a length-delimited field, its payload). Raises WireError where the message is not whole."""
    at, size = 0, len(data)
    while at < size:
        key, at = varint(data, at)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            start = at
            _, at = varint(data, at)
        elif wire_type == 1 or wire_type == 5:
            start, at = at, at + (8 if wire_type == 1 else 4)
        elif wire_type == LENGTH_DELIMITED:
            length, start = varint(data, at)
            at = start + length
        else:  # groups (3, 4) are proto2 only; 6 and 7 do not exist
            raise WireError(f"wire type {wire_type} of field {number}")
        if at > size:
            raise WireError(f"field {number} runs past the end of the message")
        yield number, wire_type, start, at


def varint(data, at: int) -> Tuple[int, int]:
    """The varint at `at` and the position after it."""
    value = shift = 0
    while True:
        if at >= len(data) or shift > 63:
            raise WireError("a varint runs past the end of the message, or past 64 bits")
        byte = data[at]
        value |= (byte & 0x7F) << shift
        at, shift = at + 1, shift + 7
        if byte < 0x80:
            return value, at
