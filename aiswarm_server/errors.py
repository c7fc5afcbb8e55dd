"""Domain errors. Each message is written for the model that made the call: what happened, what to do."""

from __future__ import annotations


class BrokerError(Exception):
    """A refusal the caller can act on. ``str(error)`` is shown to the agent verbatim."""


class NotFound(BrokerError):
    """The task, agent or token named does not exist."""


class InvalidRequest(BrokerError):
    """The arguments break a rule (size limits, unknown dependency, bad persona ...)."""


class StaleClaim(BrokerError):
    """The caller's claim on a task is no longer valid (lease expired, fence superseded, not its task)."""


class TaskCancelled(StaleClaim):
    """The task was cancelled while the caller held it."""


class Forbidden(BrokerError):
    """The caller's role or identity does not allow this."""


class StoreUnavailable(BrokerError):
    """The database refused a write (disk full, read-only, locked, corrupt). Nothing was changed."""


class SchemaTooNew(Exception):
    """The database was written by a newer aiswarm; refusing to touch it."""
