"""Hypothesis strategies for any protobuf request: random field values chosen from the
message's descriptor (extremes, odd Unicode, long strings, unknown enum numbers, bad
timestamps), or raw bytes that may not parse at all."""

from __future__ import annotations

from typing import Any

from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from hypothesis import strategies as st

INT32 = st.one_of(
    st.sampled_from([0, 1, -1, 2**31 - 1, -(2**31)]), st.integers(-(2**31), 2**31 - 1)
)
INT64 = st.one_of(
    st.sampled_from([0, 1, -1, 2**63 - 1, -(2**63)]), st.integers(-(2**63), 2**63 - 1)
)
UINT32 = st.integers(0, 2**32 - 1)
UINT64 = st.integers(0, 2**64 - 1)
TEXT = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", " ", "linux/x86_64", "a" * 129, "x" * 5000, "\x00", "é/ü", "../.."]),
    st.text(alphabet="abc019._:/=+-", min_size=1, max_size=20),
)
BYTES = st.one_of(st.binary(max_size=64), st.sampled_from([b"", b"\x00" * 3000]))

_SCALARS: dict[int, st.SearchStrategy[Any]] = {
    FieldDescriptor.TYPE_INT32: INT32,
    FieldDescriptor.TYPE_SINT32: INT32,
    FieldDescriptor.TYPE_SFIXED32: INT32,
    FieldDescriptor.TYPE_INT64: INT64,
    FieldDescriptor.TYPE_SINT64: INT64,
    FieldDescriptor.TYPE_SFIXED64: INT64,
    FieldDescriptor.TYPE_UINT32: UINT32,
    FieldDescriptor.TYPE_FIXED32: UINT32,
    FieldDescriptor.TYPE_UINT64: UINT64,
    FieldDescriptor.TYPE_FIXED64: UINT64,
    FieldDescriptor.TYPE_BOOL: st.booleans(),
    FieldDescriptor.TYPE_FLOAT: st.floats(allow_nan=True, width=32),
    FieldDescriptor.TYPE_DOUBLE: st.floats(allow_nan=True),
    FieldDescriptor.TYPE_STRING: TEXT,
    FieldDescriptor.TYPE_BYTES: BYTES,
    # Proto3 enums are open: any number arrives, named or not.
    FieldDescriptor.TYPE_ENUM: st.one_of(st.integers(0, 6), INT32),
}


def _value(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return messages(field.message_type, depth + 1)
    return _SCALARS[field.type]


def _is_map(field: FieldDescriptor) -> bool:
    return field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.GetOptions().map_entry


def _fill(message: Any, field: FieldDescriptor, value: Any) -> None:
    if _is_map(field):
        target = getattr(message, field.name)
        for key, item in value:
            target[key] = item
    elif field.is_repeated:
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            getattr(message, field.name).extend(value)
        else:
            getattr(message, field.name).extend(value)
    elif field.type == FieldDescriptor.TYPE_MESSAGE:
        getattr(message, field.name).CopyFrom(value)
    else:
        setattr(message, field.name, value)


def messages(descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Any]:
    """Messages of this type with a random subset of fields set to random values."""
    cls = message_factory.GetMessageClass(descriptor)
    if depth > 3:
        return st.just(cls())
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for field in descriptor.fields:
        if _is_map(field):
            entry = field.message_type
            pair = st.tuples(
                _value(entry.fields_by_name["key"], depth),
                _value(entry.fields_by_name["value"], depth),
            )
            fields[field.name] = st.lists(pair, max_size=4)
        elif field.is_repeated:
            fields[field.name] = st.one_of(
                st.lists(_value(field, depth), max_size=4),
                st.lists(_value(field, depth), min_size=60, max_size=70),
            )
        else:
            fields[field.name] = _value(field, depth)
    chosen = st.fixed_dictionaries({}, optional=fields)

    def build(values: dict[str, Any]) -> Any:
        message = cls()
        for name, value in values.items():
            field = descriptor.fields_by_name[name]
            if field.containing_oneof is not None and message.WhichOneof(
                field.containing_oneof.name
            ):
                continue
            try:
                _fill(message, field, value)
            except (ValueError, TypeError):
                continue  # a value this runtime refuses to even hold
        return message

    return chosen.map(build)


def payloads(descriptor: Descriptor) -> st.SearchStrategy[bytes]:
    """Serialized requests: mostly well-formed but wild, some plain random bytes."""
    return st.one_of(
        messages(descriptor).map(lambda m: m.SerializeToString()),
        messages(descriptor).map(lambda m: m.SerializeToString()),
        st.binary(max_size=256),
    )
