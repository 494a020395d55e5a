"""Tokens (SPEC §8, §11): create one (its secret shown once), list them, delete one, and
verify a presented secret.

Verified tokens are remembered for ``cache_seconds`` so that a busy runner does not
cost a database read per call. A token in use is read again in the background once
half of that time has passed, so that no call waits for the read. Deleting a token
forgets it here at once and tells the ``on_deleted`` listeners (the API layer cuts the
token's open streams); other replicas stop accepting it at most ``cache_seconds`` after
their last read of it, and re-check open streams on their own (see ``existing``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from sqlalchemy import Connection

from dispatcher.domain import tokens as rules
from dispatcher.domain.errors import InvalidInput, NotFound, Unauthenticated
from dispatcher.domain.tokens import Role, Token
from dispatcher.lifecycle.context import Context
from dispatcher.store import tokens as store

log = logging.getLogger(__name__)


def _anyone(token: Token) -> None:
    pass


@dataclass(frozen=True)
class CreatedToken:
    token: Token
    # The only time anyone sees it: only its hash is kept.
    secret: str


@dataclass
class _Remembered:
    token: Token
    secret_hash: str
    until: float
    refreshing: bool = False


@dataclass
class Tokens:
    ctx: Context
    cache_seconds: float = 2.0
    monotonic: Callable[[], float] = time.monotonic
    # Called with a token's id once it is deleted through this replica.
    on_deleted: list[Callable[[int], None]] = field(default_factory=list)
    _cache: dict[int, _Remembered] = field(default_factory=dict)
    _refreshes: set[asyncio.Task[None]] = field(default_factory=set)

    async def create(self, name: str, role: Role) -> CreatedToken:
        rules.check_name(name)
        random_part = rules.new_random_part()
        secret_hash = rules.hash_secret(random_part)
        token = await self.ctx.db.run(
            lambda conn: store.insert_token(conn, name, role, secret_hash, self.ctx.clock.now())
        )
        return CreatedToken(token, rules.compose(token.id, random_part))

    async def list(self) -> list[Token]:
        return await self.ctx.db.run(store.list_tokens)

    async def delete(self, name: str) -> Token:
        if not name:
            raise InvalidInput("name is required: the token's name (see ListTokens)")
        token = await self.ctx.db.run(lambda conn: store.delete_token(conn, name))
        if token is None:
            raise NotFound(f"no token is named {name!r}")
        self.forget(token.id)
        return token

    def forget(self, token_id: int) -> None:
        """Stop trusting a token on this replica (it was deleted, here or elsewhere)."""
        self._cache.pop(token_id, None)
        for listener in self.on_deleted:
            listener(token_id)

    async def verify(self, secret: str, may: Callable[[Token], None] = _anyone) -> Token:
        """The token whose secret this is; Unauthenticated when none is. ``may`` raises
        when the token may not do what it asks, before its use is recorded, so that a
        refused call writes nothing."""
        token_id, random_part = rules.parse(secret)
        remembered = self._cache.get(token_id)
        now = self.monotonic()
        if remembered is not None and remembered.until > now:
            if not rules.matches(random_part, remembered.secret_hash):
                raise _unknown()
            may(remembered.token)
            if not remembered.refreshing and remembered.until - now < self.cache_seconds / 2:
                remembered.refreshing = True
                task = asyncio.create_task(self._refresh(token_id, random_part))
                self._refreshes.add(task)
                task.add_done_callback(self._refreshes.discard)
            return remembered.token

        found = await self._read(token_id, random_part, may)
        if found is None:
            self._cache.pop(token_id, None)
            raise _unknown()
        token, secret_hash = found
        self._remember(token, secret_hash, self.monotonic())
        return token

    async def _read(
        self, token_id: int, random_part: str, may: Callable[[Token], None]
    ) -> tuple[Token, str] | None:
        """The token and its hash when the secret matches, its use recorded (unless
        ``may`` refuses it first)."""

        def check(conn: Connection) -> tuple[Token, str] | None:
            found = store.token_with_hash(conn, token_id)
            if found is None or not rules.matches(random_part, found[1]):
                return None
            may(found[0])
            store.mark_used(conn, token_id, self.ctx.clock.now())
            return found

        return await self.ctx.db.run(check)

    def _remember(self, token: Token, secret_hash: str, read_at: float) -> None:
        if self.cache_seconds > 0:
            self._cache[token.id] = _Remembered(token, secret_hash, read_at + self.cache_seconds)

    async def _refresh(self, token_id: int, random_part: str) -> None:
        """Read a remembered token again: remembered anew while it exists (and its use
        recorded), forgotten at once when it is gone. A deleted token is thus trusted
        at most ``cache_seconds`` after the last read that found it."""
        asked_at = self.monotonic()
        before = self._cache.get(token_id)
        try:
            found = await self._read(token_id, random_part, _anyone)
        except Exception:
            # The database is unavailable: the entry expires as it would have, and the
            # next call after that reads (and reports) for itself.
            log.warning("token %d could not be read again; it expires as remembered", token_id)
            if before is not None:
                before.refreshing = False
            return
        if self._cache.get(token_id) is not before:
            return  # forgotten meanwhile (deleted here): what was read is older
        if found is None:
            self._cache.pop(token_id, None)
            return
        self._remember(*found, asked_at)

    async def settled(self) -> None:
        """Wait for the re-reads in flight: their records of use are written when it
        returns (a check that a call writes nothing starts from here)."""
        while self._refreshes:
            await asyncio.gather(*self._refreshes, return_exceptions=True)

    async def existing(self, token_ids: Iterable[int]) -> set[int]:
        """Which of these tokens still exist (read from the database, not remembered)."""
        wanted = sorted(set(token_ids))
        if not wanted:
            return set()
        return await self.ctx.db.run(lambda conn: store.existing_tokens(conn, wanted))


def _unknown() -> Unauthenticated:
    # Never say whether the id exists: that would help someone guessing secrets.
    return Unauthenticated(
        "the bearer token is unknown or was deleted; ask an admin for a new one "
        "(`dispatcher tokens create`)"
    )
