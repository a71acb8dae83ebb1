"""The generated schema matches the specification of protocol release 91 exactly."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.descriptor import FileDescriptor
from google.protobuf.descriptor_pb2 import FieldDescriptorProto, FileDescriptorProto

from ctrader_twisted.messages import (
    OpenApiCommonMessages_pb2,
    OpenApiCommonModelMessages_pb2,
    OpenApiMessages_pb2,
    OpenApiModelMessages_pb2,
)

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT.parent / "shared" / "spec" / "openapi-messages.json"
FILES = {
    "OpenApiCommonModelMessages.proto": OpenApiCommonModelMessages_pb2.DESCRIPTOR,
    "OpenApiCommonMessages.proto": OpenApiCommonMessages_pb2.DESCRIPTOR,
    "OpenApiModelMessages.proto": OpenApiModelMessages_pb2.DESCRIPTOR,
    "OpenApiMessages.proto": OpenApiMessages_pb2.DESCRIPTOR,
}

_LABELS = {
    FieldDescriptorProto.LABEL_OPTIONAL: "optional",
    FieldDescriptorProto.LABEL_REQUIRED: "required",
    FieldDescriptorProto.LABEL_REPEATED: "repeated",
}
_TYPES = {
    value: name.removeprefix("TYPE_").lower() for name, value in FieldDescriptorProto.Type.items()
}


def _field(field: FieldDescriptorProto) -> dict[str, Any]:
    fact: dict[str, Any] = {
        "number": field.number,
        "name": field.name,
        "label": _LABELS[field.label],
        "type": _TYPES[field.type],
    }
    if field.type_name:
        fact["type_name"] = field.type_name.rsplit(".", 1)[-1]
    if field.HasField("default_value"):
        fact["default"] = field.default_value
    return fact


def _file(proto: FileDescriptorProto) -> dict[str, Any]:
    return {
        "imports": list(proto.dependency),
        "enums": {e.name: {v.name: v.number for v in e.value} for e in proto.enum_type},
        "messages": {m.name: [_field(f) for f in m.field] for m in proto.message_type},
    }


def _proto(descriptor: FileDescriptor) -> FileDescriptorProto:
    return FileDescriptorProto.FromString(descriptor.serialized_pb)


def generated_schema() -> dict[str, Any]:
    protos = [_proto(d) for d in FILES.values()]
    syntaxes = {p.syntax or "proto2" for p in protos}  # proto2 leaves the field unset
    assert len(syntaxes) == 1
    return {"syntax": syntaxes.pop(), "files": {p.name: _file(p) for p in protos}}


def test_counts() -> None:
    schema = generated_schema()["files"]
    assert sum(len(f["messages"]) for f in schema.values()) == 119
    assert sum(len(f["enums"]) for f in schema.values()) == 29
    assert generated_schema()["syntax"] == "proto2"


def test_schema_digest() -> None:
    canonical = json.dumps(generated_schema(), sort_keys=True).encode()
    digest = hashlib.sha256(canonical).hexdigest()
    assert digest == EXPECTED_DIGEST, "schema changed: check it against the specification"


@pytest.mark.skipif(not SPEC.exists(), reason="specification file not beside the project")
def test_matches_specification_exactly() -> None:
    spec = json.loads(SPEC.read_text())
    ours = generated_schema()
    assert ours["syntax"] == spec["syntax"]
    assert list(ours["files"]) == list(spec["files"])
    for name, facts in spec["files"].items():
        mine = ours["files"][name]
        assert mine["imports"] == facts["imports"], name
        assert mine["enums"] == facts["enums"], name
        assert list(mine["messages"]) == list(facts["messages"]), name
        for message, fields in facts["messages"].items():
            assert mine["messages"][message] == fields, message


# sha256 of the canonical schema facts, recorded when they matched the specification file;
# it guards the schema wherever that file is not at hand.
EXPECTED_DIGEST = "06ccb809da15d3fdfc0364568e3a6561bcfc355a0c02be658b11ee30783d423e"
