"""Named queries about tokens. Rows hold a hash of each secret, never the secret."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from dispatcher.domain.errors import AlreadyExists
from dispatcher.domain.tokens import Role, Token
from dispatcher.store.tables import tokens

_T = tokens.c
_PUBLIC = (_T.id, _T.name, _T.role, _T.created_at, _T.last_used_at)


def _token(row: Any) -> Token:
    return Token(
        id=row.id,
        name=row.name,
        role=Role(row.role),
        created_at=row.created_at,
        last_used_at=row.last_used_at,
    )


def insert_token(conn: Connection, name: str, role: Role, secret_hash: str, now: datetime) -> Token:
    if conn.execute(select(_T.id).where(_T.name == name)).first() is not None:
        raise AlreadyExists(f"a token named {name!r} exists; delete it first or pick another name")
    try:
        token_id = conn.execute(
            insert(tokens).returning(_T.id),
            {"name": name, "role": role.value, "secret_hash": secret_hash, "created_at": now},
        ).scalar_one()
    except IntegrityError:
        # Another transaction took the name between the check and the insert.
        raise AlreadyExists(f"a token named {name!r} exists") from None
    return Token(id=int(token_id), name=name, role=role, created_at=now)


def token_with_hash(conn: Connection, token_id: int) -> tuple[Token, str] | None:
    row = conn.execute(select(*_PUBLIC, _T.secret_hash).where(_T.id == token_id)).first()
    if row is None:
        return None
    return _token(row), str(row.secret_hash)


def existing_tokens(conn: Connection, token_ids: list[int]) -> set[int]:
    return set(conn.execute(select(_T.id).where(_T.id.in_(token_ids))).scalars())


def mark_used(conn: Connection, token_id: int, now: datetime) -> None:
    conn.execute(update(tokens).where(_T.id == token_id).values(last_used_at=now))


def list_tokens(conn: Connection) -> list[Token]:
    return [_token(r) for r in conn.execute(select(*_PUBLIC).order_by(_T.name))]


def delete_token(conn: Connection, name: str) -> Token | None:
    row = conn.execute(select(*_PUBLIC).where(_T.name == name)).first()
    if row is None:
        return None
    conn.execute(delete(tokens).where(_T.id == row.id))
    return _token(row)
