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

RESOLVER_PERSONA = "implementer"
"""The persona a conflict-resolution task asks for, when an agent with it is live."""
WAIT_CHECK_LIMIT = 100
"""Waiting tasks the sweeper looks at per sweep."""
UNMERGED = (MergeState.PENDING, MergeState.MANUAL)
"""A dependency's merge states that keep its dependents waiting: its work is not on the target yet, but will be."""

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


def may_wait(task: Task) -> bool:
    """Whether ``task`` can have something to wait for: it was submitted in git and declares files or depends."""
    return task.base_commit is not None and bool(task.files or task.depends_on)


async def why_task_waits(task: Task, dependencies: Sequence[Task], holders: Sequence[Task]) -> str | None:
    """Why ``task`` must not run yet, or None when nothing is in its way.

    It waits while a dependency's work is not merged yet (``pending`` or ``manual``: its changes are not on the
    target), and while a task in the same repository whose declared files overlap its own holds them: claimed
    before it, or completed with its work not merged yet. ``holders`` are such tasks (:meth:`Store.isolation_holders`);
    a task claimed later never holds up one claimed earlier, so waits cannot form a cycle.
    """
    from launcher.isolation.files import first_overlap, normalize_declared
    from launcher.isolation.repository import git_context

    for other in dependencies:
        if other.merge_state in UNMERGED:
            return f"task #{other.id} ({other.title}), a dependency, is not merged yet ({other.merge_state})"
    if not task.files or task.working_dir is None:
        return None
    contexts: dict[str, tuple[Path, str] | None] = {}

    async def where(directory: str) -> tuple[Path, str] | None:
        if directory not in contexts:
            context = await git_context(Path(directory))
            contexts[directory] = (context.common_dir, context.subdir) if context else None
        return contexts[directory]

    mine = await where(task.working_dir)
    if mine is None:
        return None
    ours = [normalize_declared(f, mine[1]) for f in task.files]
    order = (task.claimed_at if task.status is TaskStatus.CLAIMED else float("inf"), task.id)
    for other in holders:
        if other.id == task.id or not other.files or other.working_dir is None:
            continue
        if other.status is TaskStatus.CLAIMED and ((other.claimed_at or 0.0), other.id) > order:
            continue  # claimed after this task: it waits for this one, not the other way round
        theirs_at = await where(other.working_dir)
        if theirs_at is None or theirs_at[0] != mine[0]:
            continue
        overlap = first_overlap(ours, [normalize_declared(f, theirs_at[1]) for f in other.files])
        if overlap is not None:
            state = "running" if other.status is TaskStatus.CLAIMED else "not merged yet"
            return (
                f"task #{other.id} ({other.title}, {state}) declares {overlap[1]}, which overlaps {overlap[0]}; "
                "this task runs once that one is merged"
            )
    return None


async def merge_task_branch(
    task: Task, dependencies: Sequence[Task], home: Path
) -> tuple[IsolationUpdate, bool]:
    """Merge a completed task's branch onto its target; what to record, and whether a conflict is one another
    task could resolve (the task's changes against the target's). Refusals say what to do instead."""
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
    if task.merge_state is MergeState.RESOLVED:
        raise InvalidRequest(f"Task #{task.id}'s work was merged by the task that resolved its conflict.")
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
    update = IsolationUpdate(
        merge_state=MergeState.MERGED if merged else MergeState.CONFLICT,
        merge_detail=result.reason,
        conflict_files=list(result.files) if not merged else [],
        diff_stat=result.diff_stat or None if merged else None,
    )
    return update, result.resolvable


def resolution_prompt(task: Task) -> str:
    """What the task that resolves ``task``'s conflict is told."""
    files = "\n".join(f"- {f}" for f in task.conflict_files)
    return (
        f"Task #{task.id} ({task.title}) was done on branch {task.branch}, but its changes conflict with "
        f"{task.target_branch}, which moved on meanwhile. Your working directory is {task.target_branch} as it "
        f"is now, with task #{task.id}'s changes brought in; git left conflict markers (<<<<<<<, =======, "
        f">>>>>>>) in these files:\n{files}\n\nResolve every conflict so that both sides' intent survives: keep "
        f"what {task.target_branch} changed and redo task #{task.id}'s change on top of it, then remove every "
        f"marker. Do not commit: the launcher commits your work. Task #{task.id}'s request was:\n\n{task.prompt}"
    )


async def task_branch_deleted(task: Task) -> None:
    """Delete ``task``'s kept branch, if it has one and its repository is still there."""
    from launcher.isolation.repository import git_context
    from launcher.isolation.worktrees import delete_task_branch

    context = await git_context(Path(task.working_dir)) if task.working_dir else None
    if context is not None and task.branch is not None:
        await delete_task_branch(context.common_dir, task.branch)


async def discard_task_branch(task: Task) -> IsolationUpdate:
    """Delete a finished task's kept branch (its work is dropped); what to record."""

    if task.merge_state is None or not task.status.is_terminal:
        raise InvalidRequest(f"Task #{task.id} has no kept branch to discard (it is {task.status.value}).")
    if task.merge_state in (MergeState.MERGED, MergeState.RESOLVED):
        raise InvalidRequest(f"Task #{task.id} is merged already: there is nothing left to discard.")
    await task_branch_deleted(task)
    return IsolationUpdate(merge_state=MergeState.DISCARDED, merge_detail=f"branch {task.branch} deleted")
