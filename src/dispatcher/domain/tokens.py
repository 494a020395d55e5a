"""Tokens and roles (SPEC §3, §11): who may call what, and the form of a secret.

A secret reads ``dsp_<id>_<random>``: the prefix lets secret scanners and people
recognise it, the id lets the server find the one row to check instead of hashing
against every row, and the random part carries 256 bits from ``secrets``.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

from dispatcher.domain.errors import InvalidInput, Unauthenticated

PREFIX = "dsp"
# 32 random bytes: 256 bits, as SPEC §2 asks of auth tokens.
SECRET_BYTES = 32
_SECRET = re.compile(rf"^{PREFIX}_([1-9][0-9]{{0,18}})_([A-Za-z0-9_-]{{43}})$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")


class Role(enum.StrEnum):
    """What a token may do. Each role reaches one service (README, "Tokens and roles")."""

    RUNNER = "runner"
    DISTRIBUTOR = "distributor"
    ADMIN = "admin"


@dataclass(frozen=True)
class Token:
    """A token as anyone may see it: never its secret, never its hash."""

    id: int
    name: str
    role: Role
    created_at: datetime
    last_used_at: datetime | None = None


def check_name(name: str) -> None:
    if not name:
        raise InvalidInput("name is required: a name for the token, e.g. the runner's host")
    if not _NAME.match(name):
        raise InvalidInput(
            f"name: {name[:40]!r} is not valid: up to 128 letters, digits and . _ : @ -, "
            "starting with a letter or digit"
        )


def new_random_part() -> str:
    return secrets.token_urlsafe(SECRET_BYTES)


def compose(token_id: int, random_part: str) -> str:
    return f"{PREFIX}_{token_id}_{random_part}"


def parse(secret: str) -> tuple[int, str]:
    """The id and the random part of a presented secret; Unauthenticated if malformed."""
    match = _SECRET.match(secret)
    if match is None:
        raise Unauthenticated(
            f"the bearer token is not a dispatcher token ({PREFIX}_<id>_<secret>); "
            "create one with `dispatcher tokens create`"
        )
    return int(match.group(1)), match.group(2)


def hash_secret(random_part: str) -> str:
    # A fast hash is enough here: the input is 256 bits from a CSPRNG, so there is no
    # dictionary to try and brute force is out of reach; a slow password hash (bcrypt,
    # argon2) would only add latency to every call.
    return hashlib.sha256(random_part.encode()).hexdigest()


def matches(random_part: str, stored_hash: str) -> bool:
    # Constant time, so the time a wrong guess takes says nothing about the right one.
    return hmac.compare_digest(hash_secret(random_part), stored_hash)
