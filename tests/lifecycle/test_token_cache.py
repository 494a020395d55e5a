"""The token cache: a token in use is read again in the background, so that no call
waits for the database, and a token deleted elsewhere is still refused in time."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from dispatcher.domain.errors import Unauthenticated
from dispatcher.domain.tokens import Role
from dispatcher.lifecycle.tokens import Tokens
from dispatcher.store import tokens as token_store
from tests.support.services import Services

CACHE = 2.0


class Monotonic:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def last_used(svc: Services, name: str) -> object:
    listed = await svc.ctx.db.run(token_store.list_tokens)
    return next(t.last_used_at for t in listed if t.name == name)


async def test_a_token_in_use_is_read_again_before_it_expires(svc: Services) -> None:
    clock = Monotonic()
    tokens = Tokens(svc.ctx, cache_seconds=CACHE, monotonic=clock)
    secret = (await tokens.create("ci", Role.ADMIN)).secret
    await tokens.verify(secret)
    first_use = await last_used(svc, "ci")

    # Past half its time a call is answered from memory and the token read again behind
    # it: its use recorded, its trust renewed from that read.
    clock.now = 1.5
    svc.clock.advance(timedelta(seconds=1.5))
    assert (await tokens.verify(secret)).name == "ci"
    await asyncio.gather(*tokens._refreshes)
    assert await last_used(svc, "ci") > first_use  # type: ignore[operator]

    # Deleted through another replica: trusted at most CACHE after the last read ...
    await svc.ctx.db.run(lambda conn: token_store.delete_token(conn, "ci"))
    clock.now = 3.0  # past the first read's expiry, within the second's
    assert (await tokens.verify(secret)).name == "ci"
    await asyncio.gather(*tokens._refreshes)
    # ... and the read that call started found it gone.
    clock.now = 3.1
    with pytest.raises(Unauthenticated):
        await tokens.verify(secret)


async def test_a_token_deleted_here_while_it_is_read_again_stays_forgotten(
    svc: Services,
) -> None:
    clock = Monotonic()
    tokens = Tokens(svc.ctx, cache_seconds=CACHE, monotonic=clock)
    secret = (await tokens.create("ci", Role.ADMIN)).secret
    await tokens.verify(secret)
    clock.now = 1.5
    await tokens.verify(secret)  # starts a read in the background
    await tokens.delete("ci")  # forgets it here at once
    await asyncio.gather(*tokens._refreshes)
    with pytest.raises(Unauthenticated):
        await tokens.verify(secret)
