"""The gRPC front door's reading of a forwarded request (bert_squad/front/serving_grpc.py): the servable spec and
the number of instances, read without parsing the instances, agree with protobuf's own parse, and anything that is
not a PredictRequest is refused (the server test of the path is in tests/test_access.py)."""
from __future__ import annotations

import pytest
from google.protobuf.message import DecodeError

from bert_squad.front.serving_grpc import read_head
from bert_squad_client import protocol

pytestmark = pytest.mark.pure


@pytest.mark.parametrize("count", [0, 1, 7, 300])
def test_the_head_matches_protobufs_parse(count):
    request = protocol.make_request("bert_squad", "predict_with_options", 4,
                                    [{"question": "Which capital?" * (i % 3 + 1), "context": "Paris." * 40}
                                     for i in range(count)])
    data = request.SerializeToString()
    spec, instances = read_head(data)
    parsed = protocol.PredictRequest.FromString(data)
    assert (spec.name, spec.method_name, spec.version_number, instances) == (
        parsed.servable_spec.name, parsed.servable_spec.method_name, parsed.servable_spec.version_number,
        len(parsed.instances))


def test_unknown_fields_are_skipped_and_the_spec_may_come_last():
    spec = protocol.ServableSpec(name="bert_squad", method_name="predict").SerializeToString()
    only_instance = protocol.make_request("x", "y", 0, [{"question": "q"}])
    only_instance.ClearField("servable_spec")
    varint_field, fixed64_field, fixed32_field = b"\x18\x96\x01", b"\x21" + bytes(8), b"\x2d" + bytes(4)
    data = (varint_field + fixed64_field + fixed32_field + only_instance.SerializeToString()
            + b"\x0a" + bytes([len(spec)]) + spec)
    head, instances = read_head(data)
    assert (head.name, head.method_name, instances) == ("bert_squad", "predict", 1)


@pytest.mark.parametrize("data", [b"\xff\xff\xff", b"\x0a\x05ab", b"\x12\x80", b"\x0b", b"\x80" * 11])
def test_what_is_not_a_predict_request_is_refused(data):
    with pytest.raises(DecodeError):
        read_head(data)
