"""The use cases on the test's database (``db``: SQLite and PostgreSQL), as ``svc``. A
module that needs other rules defines its own ``svc``."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from dispatcher.store.database import Database
from tests.support.services import Services, services


@pytest.fixture
async def svc(db: Database) -> AsyncIterator[Services]:
    async with services(db) as built:
        yield built
