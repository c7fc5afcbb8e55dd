"""The tasks' isolation columns (migrations 0004 and 0006), mapped the same way by every store."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiswarm_server.models import Isolation, IsolationUpdate, MergeState, NewTask

SUBMITTED_COLUMNS = ("isolation", "files", "base_commit", "target_branch", "resolves")
"""What a submit records, written right after the task's row when it differs from the defaults."""


def isolation_fields(row: Any, as_list: Callable[[Any], list[str]]) -> dict[str, Any]:
    """The Task fields held in a task row's isolation columns; ``as_list`` decodes the store's list columns."""
    state = row["merge_state"]
    return {
        "isolation": Isolation(row["isolation"]),
        "files": as_list(row["files"]),
        "base_commit": row["base_commit"],
        "target_branch": row["target_branch"],
        "branch": row["branch"],
        "workspace": row["workspace"],
        "merge_state": MergeState(state) if state is not None else None,
        "merge_detail": row["merge_detail"],
        "conflict_files": as_list(row["conflict_files"]),
        "diff_stat": row["diff_stat"],
        "waited_on": row["waited_on"],
        "resolves": row["resolves"],
    }


def submitted_values(spec: NewTask) -> tuple[str, list[str], str | None, str | None, int | None]:
    """The values of :data:`SUBMITTED_COLUMNS` for a new task."""
    return spec.isolation.value, list(spec.files), spec.base_commit, spec.target_branch, spec.resolves


def update_assignments(update: IsolationUpdate) -> list[tuple[str, Any]]:
    """The (column, value) pairs an update sets: its fields that are not None, enums as their text."""
    pairs: list[tuple[str, Any]] = []
    for name, value in update.model_dump(mode="json").items():
        if value is not None:
            pairs.append((name, value))
    return pairs
