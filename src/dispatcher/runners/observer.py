"""What the hub tells an observer (the metrics) after each commit it caused. The hub
calls these on the event loop; an observer must return at once and never raise."""

from __future__ import annotations

from typing import Protocol

from dispatcher.domain.model import Assignment
from dispatcher.domain.states import Outcome


class HubObserver(Protocol):
    def assigned(self, assignment: Assignment) -> None:
        """A job was bound to a runner session (committed)."""

    def finished(self, execution_id: int, outcome: Outcome) -> None:
        """A runner's report ended an execution, and the job moved by it (committed)."""


class NoObserver:
    def assigned(self, assignment: Assignment) -> None:
        pass

    def finished(self, execution_id: int, outcome: Outcome) -> None:
        pass
