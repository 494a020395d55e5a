"""The one error tree of dispatcher.

Each class says what kind of problem the caller has; ``api/errors.py`` maps the
kinds to gRPC status codes in one table. Messages are written for the person who
will read them: they name the field or the limit, and never carry SQL or a trace.
"""

from __future__ import annotations


class DispatcherError(Exception):
    """Base of every error dispatcher raises on purpose."""


class InvalidInput(DispatcherError):
    """The request itself is wrong; the same request will never succeed."""


class NotFound(DispatcherError):
    """The named object does not exist."""


class Conflict(DispatcherError):
    """The request is valid but the object's current state does not allow it."""


class AlreadyExists(Conflict):
    """An object with that name exists already."""


class StaleExecution(Conflict):
    """A message about an execution that is not (or no longer) its job's current one."""


class Unauthenticated(DispatcherError):
    """The caller did not prove who it is: no token, or one that is unknown or deleted."""


class PermissionDenied(DispatcherError):
    """The caller is known but may not do this."""


class LimitExceeded(DispatcherError):
    """A configured limit (size, count) was exceeded; the message names it."""


class Unavailable(DispatcherError):
    """Try again later: the dispatcher or its database is not ready."""
