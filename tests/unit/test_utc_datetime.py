"""Times on SQLite: the text written is the text SQLAlchemy's DateTime writes, so files
written before and after read and sort the same; what is read back is aware UTC."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import DateTime
from sqlalchemy.dialects import sqlite

from dispatcher.store.tables import UtcDateTime

DIALECT = sqlite.dialect()
GENERIC = DateTime().dialect_impl(DIALECT)


@pytest.mark.parametrize(
    "moment",
    [
        datetime(2026, 11, 23, 9, 5, 1, 7, tzinfo=UTC),
        datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=timezone(timedelta(hours=-7))),
    ],
)
def test_sqlite_text_is_the_generic_text_and_reads_back(moment: datetime) -> None:
    ours = UtcDateTime().bind_processor(DIALECT)(moment)
    generic = GENERIC.bind_processor(DIALECT)(moment.astimezone(UTC).replace(tzinfo=None))
    assert ours == generic
    read = UtcDateTime().result_processor(DIALECT, None)(ours)
    assert read == moment
    assert read.tzinfo is UTC


def test_text_without_fractions_reads_back() -> None:
    read = UtcDateTime().result_processor(DIALECT, None)("2026-11-23 09:05:01")
    assert read == datetime(2026, 11, 23, 9, 5, 1, tzinfo=UTC)


def test_a_naive_time_is_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        UtcDateTime().bind_processor(DIALECT)(datetime(2026, 1, 1))


def test_each_text_reads_as_its_own_time_whatever_was_read_before() -> None:
    read = UtcDateTime().result_processor(DIALECT, None)
    texts = ["2026-11-23 09:05:01.000007", "2026-11-23 09:05:01.000007", "2026-11-23 09:05:02"]
    times = [read(t) for t in [*texts, None, texts[0], texts[2], texts[2]]]
    first = datetime(2026, 11, 23, 9, 5, 1, 7, tzinfo=UTC)
    second = datetime(2026, 11, 23, 9, 5, 2, tzinfo=UTC)
    assert times == [first, first, second, None, first, second, second]


def test_each_time_writes_as_its_own_text_whatever_was_written_before() -> None:
    write = UtcDateTime().bind_processor(DIALECT)
    now = datetime(2026, 11, 23, 9, 5, 1, 7, tzinfo=UTC)
    other = datetime(2026, 11, 23, 2, 5, 1, 7, tzinfo=timezone(timedelta(hours=-7)))
    written = [write(t) for t in [now, now, other, None, now]]
    assert written == [
        "2026-11-23 09:05:01.000007",
        "2026-11-23 09:05:01.000007",
        "2026-11-23 09:05:01.000007",
        None,
        "2026-11-23 09:05:01.000007",
    ]
    with pytest.raises(ValueError, match="naive"):
        write(datetime(2026, 1, 1))
    assert write(now + timedelta(seconds=1)) == "2026-11-23 09:05:02.000007"
