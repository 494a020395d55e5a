"""What replicas tell each other through the database (SPEC §9): small typed messages,
sent in the transaction that made the change they are about (store/notify.py), so a
replica hears of a change only once it is committed.

- :data:`WAKE` — jobs may be claimable now: a job was queued (submitted, requeued,
  refused, due) or a coalesce key was freed. Every replica's assigner looks.
- :class:`CancelOrder` — the runner holding an execution must stop it; the replica
  holding that session's stream tells the runner.
- :class:`RunnerDrained` — a runner was drained or undrained; the replica holding its
  stream tells it, and stops (or resumes) giving it work.
- :class:`SessionsEnded` — sessions were closed (an eviction, a runner that connected
  again elsewhere): a replica still holding one of their streams ends it.
- :data:`FLAVORS_CHANGED` — a flavor was added, enabled, disabled or deleted: every
  replica reads the flavors again before it admits the next job.

On SQLite nothing is sent: one process, and its in-process wake-ups already run.
Payloads are JSON, ``{"kind": ...}``; a replica ignores kinds it does not know, so a
newer replica may add some during a rolling upgrade.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection

from dispatcher.store import notify

log = logging.getLogger(__name__)

# Free text is cut so that a payload stays far below PostgreSQL's 8000-byte limit.
MAX_REASON_CHARS = 1000
# Sessions named in one SessionsEnded message (a runner has few open sessions).
MAX_SESSIONS = 200


@dataclass(frozen=True)
class Wake:
    """Jobs may be claimable now."""


WAKE = Wake()


@dataclass(frozen=True)
class FlavorsChanged:
    """The flavors admission keeps in memory are out of date."""


FLAVORS_CHANGED = FlavorsChanged()


@dataclass(frozen=True)
class CancelOrder:
    """Tell the runner holding ``execution_id`` (on session ``session_id``) to stop it."""

    session_id: int
    execution_id: int
    reason: str


@dataclass(frozen=True)
class RunnerDrained:
    runner: str
    draining: bool
    reason: str = ""


@dataclass(frozen=True)
class SessionsEnded:
    session_ids: tuple[int, ...]
    reason: str = ""


Message = Wake | CancelOrder | RunnerDrained | SessionsEnded | FlavorsChanged


def announce(conn: Connection, message: Message) -> None:
    """Tell every replica (this one too) about ``message`` when the caller's
    transaction commits; nothing when it rolls back. Repeats in one transaction are
    sent once. A wake-up reaches this replica's assigners at the commit even on SQLite,
    which sends no notifications."""
    notify.publish(conn, encode(message))
    if isinstance(message, Wake):
        notify.wake_here(conn)


def encode(message: Message) -> str:
    body: dict[str, Any]
    if isinstance(message, Wake):
        body = {"kind": "wake"}
    elif isinstance(message, FlavorsChanged):
        body = {"kind": "flavors"}
    elif isinstance(message, CancelOrder):
        body = {
            "kind": "cancel",
            "session": message.session_id,
            "execution": message.execution_id,
            "reason": message.reason[:MAX_REASON_CHARS],
        }
    elif isinstance(message, RunnerDrained):
        body = {
            "kind": "drain",
            "runner": message.runner,
            "draining": message.draining,
            "reason": message.reason[:MAX_REASON_CHARS],
        }
    else:
        if len(message.session_ids) > MAX_SESSIONS:
            raise ValueError(f"at most {MAX_SESSIONS} sessions per message")
        body = {
            "kind": "end",
            "sessions": list(message.session_ids),
            "reason": message.reason[:MAX_REASON_CHARS],
        }
    return json.dumps(body, separators=(",", ":"), sort_keys=True)


def decode(payload: str) -> Message | None:
    """The message in ``payload``; None (logged) for one this replica does not know."""
    try:
        body = json.loads(payload)
        kind = body["kind"]
        if kind == "wake":
            return WAKE
        if kind == "flavors":
            return FLAVORS_CHANGED
        if kind == "cancel":
            return CancelOrder(int(body["session"]), int(body["execution"]), str(body["reason"]))
        if kind == "drain":
            return RunnerDrained(str(body["runner"]), bool(body["draining"]), str(body["reason"]))
        if kind == "end":
            return SessionsEnded(tuple(int(s) for s in body["sessions"]), str(body["reason"]))
    except (ValueError, KeyError, TypeError):
        pass
    log.warning("ignoring a notification this replica does not understand: %.200r", payload)
    return None
