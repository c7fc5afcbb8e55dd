"""What both stores share below the rules: rows to models, JSON text, and the numbered migrations.

A row is a ``sqlite3.Row`` or an ``asyncpg.Record``: both are read by column name. The one difference between the
dialects here is how a list of labels comes back (JSON text in SQLite, ``text[]`` in PostgreSQL).
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any, Protocol

from aiswarm_server.models import (
    Agent,
    AgentState,
    AgentStatus,
    Attempt,
    AttemptOutcome,
    Event,
    EventKind,
    Identity,
    OnUnanswered,
    Question,
    QuestionStatus,
    Role,
    Task,
    TaskStatus,
    UsageRecord,
)
from aiswarm_server.store.isolation import isolation_fields


class Row(Protocol):
    """A database row read by column name."""

    def __getitem__(self, key: str, /) -> Any: ...


def dumps(value: Any) -> str:
    """Compact JSON text, as both stores keep it."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def labels(value: str | list[str]) -> list[str]:
    """A persona's or task's capabilities: JSON text (SQLite) or an array (PostgreSQL)."""
    return json.loads(value) if isinstance(value, str) else list(value)


def task_from_row(
    row: Row, depends_on: list[int] | None = None, attempts: list[Attempt] | None = None
) -> Task:
    """A task row, with its dependencies and attempts when the caller read them."""
    return Task(
        id=row["id"],
        title=row["title"],
        prompt=row["prompt"],
        priority=row["priority"],
        persona=row["persona"],
        capabilities=labels(row["capabilities"]),
        depends_on=depends_on or [],
        working_dir=row["working_dir"],
        max_attempts=row["max_attempts"],
        timeout_seconds=row["timeout_seconds"],
        retry_delay_seconds=row["retry_delay_seconds"],
        retry_backoff=row["retry_backoff"],
        retry_at=row["retry_at"],
        status=TaskStatus(row["status"]),
        claimed_by=row["claimed_by"],
        fence_token=row["fence_token"],
        lease_expires_at=row["lease_expires_at"],
        claimed_at=row["claimed_at"],
        failures=row["failures"],
        progress=row["progress"],
        result=row["result"],
        data=json.loads(row["data"]) if row["data"] is not None else None,
        error=row["error"],
        submitted_by=row["submitted_by"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        finished_at=row["finished_at"],
        attempts=attempts or [],
        answer_within_seconds=row["answer_within_seconds"],
        on_unanswered=OnUnanswered(row["on_unanswered"]) if row["on_unanswered"] is not None else None,
        **isolation_fields(row, labels),
    )


def agent_from_row(row: Row) -> Agent:
    """An agent row."""
    return Agent(
        name=row["name"],
        cli=row["cli"],
        persona=row["persona"],
        capabilities=labels(row["capabilities"]),
        pid=row["pid"],
        status=AgentStatus(row["status"]),
        current_task_id=row["current_task_id"],
        cursor=row["cursor"],
        registered_at=row["registered_at"],
        last_seen_at=row["last_seen_at"],
        state=AgentState(row["state"]),
        state_reason=row["state_reason"],
        state_until=row["state_until"],
    )


USAGE_COLUMNS = (
    "task_id",
    "attempt",
    "agent",
    "cli",
    "provider",
    "model",
    "input_tokens",
    "output_tokens",
    "cached_tokens",
    "total_tokens",
    "requests",
    "recorded_at",
)
"""The columns of the ``usage`` table, in the order the stores write them."""


def usage_from_row(row: Row) -> UsageRecord:
    """A usage row."""
    return UsageRecord.model_validate({c: row[c] for c in USAGE_COLUMNS})


def event_from_row(row: Row) -> Event:
    """An event row."""
    return Event(
        id=row["id"],
        kind=EventKind(row["kind"]),
        agent=row["agent"],
        task_id=row["task_id"],
        detail=row["detail"],
        created_at=row["created_at"],
    )


def question_from_row(row: Row) -> Question:
    """A question row."""
    return Question(
        id=row["id"],
        task_id=row["task_id"],
        fence_token=row["fence_token"],
        agent=row["agent"],
        question=row["question"],
        options=labels(row["options"]),
        on_timeout=OnUnanswered(row["on_timeout"]),
        status=QuestionStatus(row["status"]),
        asked_at=row["asked_at"],
        deadline_at=row["deadline_at"],
        answer=row["answer"],
        answered_by=row["answered_by"],
        answered_at=row["answered_at"],
    )


def attempt_from_row(row: Row) -> Attempt:
    """An attempt row."""
    return Attempt(
        number=row["number"],
        agent=row["agent"],
        fence_token=row["fence_token"],
        claimed_at=row["claimed_at"],
        finished_at=row["finished_at"],
        outcome=AttemptOutcome(row["outcome"]),
        error=row["error"],
    )


def identity_from_row(row: Row) -> Identity:
    """Who a token row stands for."""
    return Identity(role=Role(row["role"]), agent=row["agent"], label=row["label"])


def migrations(package: str) -> list[tuple[int, str]]:
    """The numbered migrations (``0001_name.sql`` ...) shipped in ``package``, in order."""
    found: list[tuple[int, str]] = []
    for entry in resources.files(package).iterdir():
        if entry.name.endswith(".sql") and entry.name[:4].isdigit():
            found.append((int(entry.name[:4]), entry.read_text(encoding="utf-8")))
    return sorted(found)
