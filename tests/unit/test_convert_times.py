"""Times and durations on the wire: built by hand for speed, they must equal what
protobuf's own FromDatetime/FromTimedelta give, for every value the store can hold."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given
from hypothesis import strategies as st

from dispatcher.api.convert import _dur, _ts

_ZONES = st.sampled_from(
    [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=8))]
)


@given(
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=_ZONES)
)
def test_a_time_is_the_timestamp_protobuf_makes(value: datetime) -> None:
    expected = Timestamp()
    expected.FromDatetime(value)
    assert _ts(value) == expected


@given(st.timedeltas(min_value=timedelta(days=-(10**6)), max_value=timedelta(days=10**6)))
def test_a_duration_is_the_duration_protobuf_makes(value: timedelta) -> None:
    expected = Duration()
    expected.FromTimedelta(value)
    assert _dur(value) == expected


def test_none_is_left_out() -> None:
    assert _ts(None) is None
    assert _dur(None) is None
