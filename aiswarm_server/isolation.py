"""The broker's side of isolation: what a submit records about git, and the merge queue's one entry point.

The git work itself lives in ``launcher.isolation``; the broker runs on the same machine as the repositories
its tasks name, so the primary's ``merge_task`` tool and ``aiswarm merge`` merge in the broker process, through
the same per-repository lock as the launcher.
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from pathlib import Path

from aiswarm_server.errors import InvalidRequest
from aiswarm_server.models import Isolation, IsolationUpdate, MergeState, Task, TaskStatus

DECLARED_FILES_MAX = 100
DECLARED_FILE_MAX_CHARS = 500


def check_declared_files(files: Sequence[str]) -> list[str]:
    """The declared ``files`` of a submit, cleaned; refuses entries that are absolute or leave the directory."""
    if len(files) > DECLARED_FILES_MAX:
        raise InvalidRequest(
            f"files names {len(files)} entries; the limit is {DECLARED_FILES_MAX}: declare directories or globs "
            "(src/api/, tests/test_*.py) instead of every file."
        )
    cleaned: list[str] = []
    for entry in files:
        text = entry.strip()
        if not text or len(text) > DECLARED_FILE_MAX_CHARS or "\x00" in text:
            raise InvalidRequest(
                "each files entry is a path or glob relative to working_dir, e.g. src/app.py or tests/*.py."
            )
        if text.startswith("/") or posixpath.normpath(text).startswith(".."):
            raise InvalidRequest(
                f"files entry {text[:80]!r} must be relative to working_dir and stay inside it, e.g. src/app.py."
            )
        cleaned.append(text)
    return cleaned


async def submitter_git(working_dir: str | None, isolation: Isolation) -> tuple[str | None, str | None]:
    """The submitter's HEAD commit and branch for a task in ``working_dir`` (None, None outside git or when off)."""
    if working_dir is None or isolation is Isolation.NONE:
        return None, None
    from launcher.isolation.repository import git_context

    context = await git_context(Path(working_dir))
    if context is None:
        return None, None
    return context.head, context.branch


async def merge_task_branch(task: Task, dependencies: Sequence[Task], home: Path) -> IsolationUpdate:
    """Merge a completed task's branch onto its target; what to record. Refusals say what to do instead."""
    from launcher.isolation.merge import MergeOutcome, merge_task
    from launcher.isolation.repository import git_context
    from launcher.isolation.worktrees import Worktrees

    if task.merge_state is None:
        raise InvalidRequest(f"Task #{task.id} did not run in a worktree: its changes are already in place.")
    if task.status is not TaskStatus.COMPLETED:
        raise InvalidRequest(
            f"Task #{task.id} is {task.status.value}: only a completed task's branch is merged. "
            "Wait for it with wait_for_tasks."
        )
    if task.merge_state is MergeState.MERGED:
        raise InvalidRequest(f"Task #{task.id} is merged already ({task.merge_detail}).")
    if task.merge_state is MergeState.DISCARDED:
        raise InvalidRequest(f"Task #{task.id}'s work was discarded: nothing to merge.")
    unmerged = [
        d.id
        for d in dependencies
        if d.merge_state in (MergeState.PENDING, MergeState.MANUAL, MergeState.CONFLICT)
    ]
    if unmerged:
        raise InvalidRequest(
            f"Task #{task.id} depends on task(s) {unmerged}, which are not merged: merge them first "
            f"(merge_task {unmerged[0]})."
        )
    if task.target_branch is None:
        raise InvalidRequest(
            f"Task #{task.id} was submitted on a detached HEAD, so it has no branch to merge onto: "
            f"merge its branch {task.branch} yourself (git merge {task.branch})."
        )
    context = await git_context(Path(task.working_dir)) if task.working_dir else None
    if context is None:
        raise InvalidRequest(
            f"Task #{task.id}'s directory {task.working_dir} is no longer in a git repository; its branch cannot "
            "be merged from here."
        )
    result = await merge_task(
        Worktrees(home), common_dir=context.common_dir, task_id=task.id, target=task.target_branch
    )
    merged = result.outcome is MergeOutcome.MERGED
    return IsolationUpdate(
        merge_state=MergeState.MERGED if merged else MergeState.CONFLICT,
        merge_detail=result.reason,
        conflict_files=list(result.files) if not merged else [],
        diff_stat=result.diff_stat or None if merged else None,
    )


async def discard_task_branch(task: Task) -> IsolationUpdate:
    """Delete a finished task's kept branch (its work is dropped); what to record."""
    from launcher.isolation.repository import git_context
    from launcher.isolation.worktrees import delete_task_branch

    if task.merge_state is None or not task.status.is_terminal:
        raise InvalidRequest(f"Task #{task.id} has no kept branch to discard (it is {task.status.value}).")
    if task.merge_state is MergeState.MERGED:
        raise InvalidRequest(f"Task #{task.id} is merged already: there is nothing left to discard.")
    context = await git_context(Path(task.working_dir)) if task.working_dir else None
    if context is not None:
        await delete_task_branch(context.common_dir, task.id)
    return IsolationUpdate(merge_state=MergeState.DISCARDED, merge_detail=f"branch {task.branch} deleted")
