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
