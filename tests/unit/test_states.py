"""The transition table is the whole state machine; these are its invariants."""

from __future__ import annotations

import pytest

from dispatcher.domain.states import (
    LEGAL_MOVES,
    TERMINAL_STATES,
    TRANSITIONS,
    JobState,
    OnLostPolicy,
    lost_transition,
)


def test_terminal_states_never_change_again() -> None:
    for transition in TRANSITIONS:
        assert not transition.sources & TERMINAL_STATES, transition.name


def test_every_state_is_reachable_from_submission() -> None:
    reached = {target for source, target in LEGAL_MOVES if source is None}
    frontier = set(reached)
    while frontier:
        frontier = {t for s, t in LEGAL_MOVES if s in frontier} - reached
        reached |= frontier
    assert reached == set(JobState)


def test_only_moves_out_of_building_end_an_execution() -> None:
    for transition in TRANSITIONS:
        assert transition.ends_execution == (transition.sources == {JobState.BUILDING}), (
            transition.name
        )


@pytest.mark.parametrize(
    ("policy", "committed", "target"),
    [
        (OnLostPolicy.REQUEUE, False, JobState.QUEUED),
        (OnLostPolicy.REQUEUE, True, JobState.QUEUED),
        (OnLostPolicy.IRRECOVERABLE, False, JobState.IRRECOVERABLE),
        (OnLostPolicy.IRRECOVERABLE, True, JobState.IRRECOVERABLE),
        (OnLostPolicy.REQUEUE_UNTIL_COMMITTED, False, JobState.QUEUED),
        (OnLostPolicy.REQUEUE_UNTIL_COMMITTED, True, JobState.IRRECOVERABLE),
    ],
)
def test_lost_transition(policy: OnLostPolicy, committed: bool, target: JobState) -> None:
    transition = lost_transition(policy, committed)
    assert transition.sources == {JobState.BUILDING}
    assert transition.target is target
