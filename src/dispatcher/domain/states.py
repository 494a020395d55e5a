"""Job states and the transition table (SPEC §4).

The table is the only statement of which moves are legal. Each named transition is
applied by the store as a compare-and-set on (job id, expected from-states, current
execution id), so a late message about an old execution never changes a job.

Who moves a job out of each state:
- NOTICED: the scheduler, when the job becomes runnable (``queue``) or its original with
  the same dedupe key ends well (``duplicate``); the deadline sweep (``expire``); an
  operator (``cancel``, ``delete``).
- QUEUED: the scheduler, binding it to a runner session (``claim``) or holding it back
  again (``hold``: back-off, flavor disabled); the deadline sweep; an operator.
- BUILDING: the runner holding it (``succeed``/``fail``/``retry``/``doom``/``refuse``/
  ``confirm_cancel``); the dispatcher when the execution is lost (``reclaim``/``doom``)
  or runs too long (``time_out``); for distributor executions, the dispatcher on the
  backend's word (the same moves, and ``reject`` when it refuses the job for good).
- Terminal states: nobody.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class JobState(enum.StrEnum):
    NOTICED = "NOTICED"
    QUEUED = "QUEUED"
    BUILDING = "BUILDING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    IRRECOVERABLE = "IRRECOVERABLE"
    CANCELLED = "CANCELLED"
    NOT_FOR_US = "NOT_FOR_US"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset(
    {
        JobState.SUCCEEDED,
        JobState.FAILED,
        JobState.IRRECOVERABLE,
        JobState.CANCELLED,
        JobState.NOT_FOR_US,
    }
)
WAITING_STATES = frozenset({JobState.NOTICED, JobState.QUEUED})


class OnLostPolicy(enum.StrEnum):
    """What a BUILDING job does when its execution is lost (SPEC §5.7)."""

    REQUEUE = "REQUEUE"
    IRRECOVERABLE = "IRRECOVERABLE"
    REQUEUE_UNTIL_COMMITTED = "REQUEUE_UNTIL_COMMITTED"


# Jobs that never mark a commit point behave as REQUEUE; jobs that do are never run
# twice past their irreversible step. That is the safe choice for build work.
DEFAULT_ON_LOST = OnLostPolicy.REQUEUE_UNTIL_COMMITTED


class Outcome(enum.StrEnum):
    """How one execution ended."""

    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    IRRECOVERABLE = "IRRECOVERABLE"
    CANCELLED = "CANCELLED"
    LOST = "LOST"


@dataclass(frozen=True)
class Transition:
    """A named, legal move of a job from one of ``sources`` to ``target``."""

    name: str
    sources: frozenset[JobState]
    target: JobState
    # The event kind written with the move.
    event: str
    # Whether the move ends the current execution (and so needs its id to match).
    ends_execution: bool = False


def _t(
    name: str, sources: set[JobState], target: JobState, event: str, *, ends: bool = False
) -> Transition:
    return Transition(name, frozenset(sources), target, event, ends)


_S = JobState

SUBMIT_QUEUED = _t("submit", set(), _S.QUEUED, "submitted")
SUBMIT_NOTICED = _t("submit", set(), _S.NOTICED, "submitted")
SUBMIT_NOT_FOR_US = _t("submit", set(), _S.NOT_FOR_US, "not-for-us")
# A submission whose dedupe key names a job that already ended well takes its status.
SUBMIT_DUPLICATE_SUCCEEDED = _t("submit", set(), _S.SUCCEEDED, "duplicate")
SUBMIT_DUPLICATE_IRRECOVERABLE = _t("submit", set(), _S.IRRECOVERABLE, "duplicate")
QUEUE = _t("queue", {_S.NOTICED}, _S.QUEUED, "queued")
HOLD = _t("hold", {_S.QUEUED}, _S.NOTICED, "held")
# A job waiting behind its dedupe original takes the original's terminal status.
DUPLICATE_SUCCEEDED = _t("duplicate", {_S.NOTICED}, _S.SUCCEEDED, "duplicate")
DUPLICATE_IRRECOVERABLE = _t("duplicate", {_S.NOTICED}, _S.IRRECOVERABLE, "duplicate")
EXPIRE = _t("expire", {_S.NOTICED, _S.QUEUED}, _S.FAILED, "expired")
CLAIM = _t("claim", {_S.QUEUED}, _S.BUILDING, "started")
SUCCEED = _t("succeed", {_S.BUILDING}, _S.SUCCEEDED, "finished", ends=True)
FAIL = _t("fail", {_S.BUILDING}, _S.FAILED, "failed", ends=True)
# A runner-reported failure with attempts left: wait out the retry delay.
RETRY = _t("retry", {_S.BUILDING}, _S.NOTICED, "retry-scheduled", ends=True)
TIME_OUT = _t("time_out", {_S.BUILDING}, _S.FAILED, "timed-out", ends=True)
DOOM = _t("doom", {_S.BUILDING}, _S.IRRECOVERABLE, "irrecoverable", ends=True)
RECLAIM = _t("reclaim", {_S.BUILDING}, _S.QUEUED, "reclaimed", ends=True)
REFUSE = _t("refuse", {_S.BUILDING}, _S.QUEUED, "refused", ends=True)
CANCEL_WAITING = _t("cancel", {_S.NOTICED, _S.QUEUED}, _S.CANCELLED, "cancelled")
# An operator takes a pending job that never started out of the queue (Admin DeleteJob).
# A terminal state rather than a deleted row: history, watch cursors and idempotency
# keys stay whole; the retention sweep removes the row with the other finished jobs.
DELETE = _t("delete", {_S.NOTICED, _S.QUEUED}, _S.CANCELLED, "deleted")
CONFIRM_CANCEL = _t("confirm_cancel", {_S.BUILDING}, _S.CANCELLED, "cancelled", ends=True)
# A distributor's permanent refusal to run the job (SPEC §7): it never will.
REJECT = _t("reject", {_S.BUILDING}, _S.NOT_FOR_US, "rejected", ends=True)

TRANSITIONS: tuple[Transition, ...] = (
    SUBMIT_QUEUED,
    SUBMIT_NOTICED,
    SUBMIT_NOT_FOR_US,
    SUBMIT_DUPLICATE_SUCCEEDED,
    SUBMIT_DUPLICATE_IRRECOVERABLE,
    QUEUE,
    HOLD,
    DUPLICATE_SUCCEEDED,
    DUPLICATE_IRRECOVERABLE,
    EXPIRE,
    CLAIM,
    SUCCEED,
    FAIL,
    RETRY,
    TIME_OUT,
    DOOM,
    RECLAIM,
    REFUSE,
    CANCEL_WAITING,
    CONFIRM_CANCEL,
    REJECT,
    DELETE,
)

# Every (from, to) pair the table allows; None stands for "no job yet".
LEGAL_MOVES: frozenset[tuple[JobState | None, JobState]] = frozenset(
    (source, t.target) for t in TRANSITIONS for source in (t.sources or {None})
)

OUTCOME_TRANSITIONS: dict[Outcome, Transition] = {
    Outcome.SUCCEEDED: SUCCEED,
    Outcome.FAILED: FAIL,
    Outcome.IRRECOVERABLE: DOOM,
}


# The status a later job with the same dedupe key takes from an original that ended so.
DUPLICATE_OF_STATE: dict[JobState, tuple[Transition, Transition]] = {
    _S.SUCCEEDED: (SUBMIT_DUPLICATE_SUCCEEDED, DUPLICATE_SUCCEEDED),
    _S.IRRECOVERABLE: (SUBMIT_DUPLICATE_IRRECOVERABLE, DUPLICATE_IRRECOVERABLE),
}

# States of a job that still counts as work to do (pressure, dedupe, schedules).
UNFINISHED_STATES = frozenset({JobState.NOTICED, JobState.QUEUED, JobState.BUILDING})


def lost_transition(policy: OnLostPolicy, committed: bool) -> Transition:
    """The move for a BUILDING job whose execution is lost."""
    if policy is OnLostPolicy.REQUEUE:
        return RECLAIM
    if policy is OnLostPolicy.IRRECOVERABLE:
        return DOOM
    return DOOM if committed else RECLAIM
