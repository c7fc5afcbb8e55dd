"""The merge queue: a task's branch onto the branch its submitter was on, one merge at a time per repository.

History: the target branch only ever fast-forwards. When it has not moved since the task's base, the task's
commits land as they are; when it has, they are first rebased onto it (in a scratch worktree, never in the user's
checkout), so the history stays linear: one commit per task (plus any the worker made itself), no merge commits.

The user's own work is never touched. When the target branch is checked out (the user's checkout, or one of
their worktrees), that checkout is fast-forwarded with ``git merge --ff-only``, which updates its files too, but
only if none of the files the task changed has uncommitted changes there (staged, unstaged, untracked or
ignored); uncommitted edits to other files carry over untouched. Otherwise, or when the rebase conflicts, nothing
is changed anywhere: the result is a conflict naming the files, and the task's branch is kept.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from launcher.isolation.git import commit_identity, git, last_line
from launcher.isolation.repository import branch_tip
from launcher.isolation.worktrees import Worktrees, changes, delete_task_branch, remove_worktree_dir

_IN_PROGRESS = {
    "MERGE_HEAD": "a merge",
    "rebase-merge": "a rebase",
    "rebase-apply": "a rebase or am",
    "CHERRY_PICK_HEAD": "a cherry-pick",
    "REVERT_HEAD": "a revert",
}
_ATTEMPTS = 3
"""Merges retried when the user commits on the target branch between our check and our fast-forward."""


class MergeOutcome(StrEnum):
    """What one merge did."""

    MERGED = "merged"
    CONFLICT = "conflict"


@dataclass(frozen=True)
class MergeResult:
    """The outcome of merging one task's branch.

    ``files``: merged, the files the task changed; conflict, the files in the way. ``commit`` is the target's new
    tip when merged. ``reason`` is one line for the primary and the user. ``resolvable``: the conflict is between
    the task's changes and the target's (not the user's uncommitted work), so another task could resolve it.
    """

    outcome: MergeOutcome
    task_id: int
    branch: str
    target: str
    reason: str
    files: tuple[str, ...] = ()
    commit: str | None = None
    diff_stat: str = ""
    checkouts_updated: tuple[Path, ...] = field(default=())
    resolvable: bool = False


@dataclass(frozen=True)
class _Checkout:
    path: Path
    branch: str | None


class _Conflict(Exception):
    def __init__(self, reason: str, files: tuple[str, ...] = (), *, resolvable: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.files = files
        self.resolvable = resolvable


class _TargetMoved(Exception):
    pass


async def merge_task(worktrees: Worktrees, *, common_dir: Path, task_id: int, target: str) -> MergeResult:
    """Bring ``aiswarm/task-<task_id>`` onto ``target``, under the repository's lock (see the module docstring).

    The task's worktree must be gone (its work committed): a branch checked out in a worktree is not rebased.
    """
    branch = worktrees.branch(task_id)
    async with worktrees.lock(common_dir).held():
        for _ in range(_ATTEMPTS):
            try:
                return await _merge_once(worktrees, common_dir, task_id, branch, target)
            except _Conflict as conflict:
                return MergeResult(
                    MergeOutcome.CONFLICT,
                    task_id,
                    branch,
                    target,
                    conflict.reason,
                    conflict.files,
                    resolvable=conflict.resolvable,
                )
            except _TargetMoved:
                continue
        return MergeResult(
            MergeOutcome.CONFLICT,
            task_id,
            branch,
            target,
            f"{target} kept moving while {branch} was merged; run aiswarm merge {task_id} again",
        )


async def _merge_once(
    worktrees: Worktrees, common_dir: Path, task_id: int, branch: str, target: str
) -> MergeResult:
    target_tip = await branch_tip(common_dir, target)
    if target_tip is None:
        raise _Conflict(f"the target branch {target} does not exist any more; merge {branch} by hand")
    task_tip = await branch_tip(common_dir, branch)
    if task_tip is None:
        raise _Conflict(f"{branch} does not exist (discarded or merged already): nothing to merge")
    checkouts = await _checkouts(common_dir)
    if any(c.branch == branch for c in checkouts):
        raise _Conflict(f"{branch} is checked out in a worktree; remove it, then aiswarm merge {task_id}")
    fork = (await git("merge-base", target_tip, task_tip, cwd=common_dir)).stdout.strip()
    if fork == task_tip:
        await delete_task_branch(common_dir, branch)
        return MergeResult(
            MergeOutcome.MERGED,
            task_id,
            branch,
            target,
            f"nothing to merge: {target} already has it",
            (),
            target_tip,
        )
    new_tip = task_tip
    if fork != target_tip:
        new_tip = await _rebase(worktrees, common_dir, task_id, task_tip, target, target_tip)
        await git("update-ref", f"refs/heads/{branch}", new_tip, task_tip, cwd=common_dir)
    files, stat = await changes(common_dir, target_tip, new_tip)
    on_target = [c for c in checkouts if c.branch == target and c.path.is_dir()]
    if len(on_target) > 1:
        raise _Conflict(f"{target} is checked out in {len(on_target)} places; merge {branch} by hand")
    if on_target:
        await _fast_forward_checkout(on_target[0].path, target, target_tip, new_tip, files, task_id)
    else:
        # nobody has the target checked out: moving the ref changes no one's files
        moved = await git(
            "update-ref", f"refs/heads/{target}", new_tip, target_tip, cwd=common_dir, check=False
        )
        if not moved.ok:
            raise _TargetMoved
    await delete_task_branch(common_dir, branch)
    how = "fast-forward" if fork == target_tip else f"rebased onto {target_tip[:10]}, then fast-forward"
    return MergeResult(
        MergeOutcome.MERGED,
        task_id,
        branch,
        target,
        f"merged onto {target} ({how}): {stat or 'no file changes'}",
        files,
        new_tip,
        stat,
        tuple(c.path for c in on_target),
    )


async def _rebase(
    worktrees: Worktrees, common_dir: Path, task_id: int, task_tip: str, target: str, target_tip: str
) -> str:
    """The task's commits replayed onto ``target_tip`` in a scratch worktree; raises a conflict naming the files."""
    scratch = worktrees.repository_dir(common_dir) / f"merge-{task_id}"
    await remove_worktree_dir(common_dir, scratch)
    await git("worktree", "add", "--quiet", "--detach", str(scratch), task_tip, cwd=common_dir)
    try:
        identity = await commit_identity(scratch)
        rebased = await git(*identity, "rebase", "--quiet", target_tip, cwd=scratch, check=False)
        if not rebased.ok:
            unmerged = await git("diff", "--name-only", "--diff-filter=U", "-z", cwd=scratch, check=False)
            files = tuple(unmerged.entries())
            with contextlib.suppress(Exception):
                await git("rebase", "--abort", cwd=scratch, check=False)
            where = ", ".join(files) if files else last_line(rebased.stderr)
            raise _Conflict(
                f"the task's changes conflict with {target} ({target_tip[:10]}) in {where}; "
                f"its branch {worktrees.branch(task_id)} is kept",
                files,
                resolvable=bool(files),
            )
        return (await git("rev-parse", "HEAD", cwd=scratch)).stdout.strip()
    finally:
        await remove_worktree_dir(common_dir, scratch)


async def _fast_forward_checkout(
    checkout: Path, target: str, target_tip: str, new_tip: str, files: tuple[str, ...], task_id: int
) -> None:
    """Fast-forward the user's checkout of ``target``, or raise a conflict when their uncommitted work is in the way."""
    git_dir = Path((await git("rev-parse", "--absolute-git-dir", cwd=checkout)).stdout.strip())
    for marker, what in _IN_PROGRESS.items():
        if (git_dir / marker).exists():
            raise _Conflict(f"{what} is in progress in {checkout}; finish it, then aiswarm merge {task_id}")
    if files:
        status = await git(
            "status",
            "--porcelain=v1",
            "-z",
            "--untracked-files=all",
            "--ignored=matching",
            "--",
            *(f":(literal){f}" for f in files),
            cwd=checkout,
        )
        dirty = _status_paths(status.stdout)
        in_the_way = tuple(f for f in files if f in dirty)
        if in_the_way:
            raise _Conflict(
                f"your uncommitted changes in {checkout} touch {', '.join(in_the_way)}: commit or stash them, "
                f"then aiswarm merge {task_id}",
                in_the_way,
            )
    merged = await git("merge", "--ff-only", "--quiet", new_tip, cwd=checkout, check=False)
    if merged.ok:
        return
    if await branch_tip(checkout, target) != target_tip:
        raise _TargetMoved
    raise _Conflict(f"git refused to fast-forward {checkout}: {last_line(merged.stderr)}")


def _status_paths(porcelain_z: str) -> set[str]:
    """Every path named by ``git status --porcelain=v1 -z`` (both sides of a rename)."""
    entries = porcelain_z.split("\0")
    paths: set[str] = set()
    i = 0
    while i < len(entries):
        entry = entries[i]
        if len(entry) > 3:
            paths.add(entry[3:])
            if entry[0] in "RC":
                i += 1
                if i < len(entries) and entries[i]:
                    paths.add(entries[i])
        i += 1
    return paths


async def _checkouts(common_dir: Path) -> list[_Checkout]:
    """Every worktree of the repository and the branch it has checked out."""
    listed = await git("worktree", "list", "--porcelain", cwd=common_dir)
    found: list[_Checkout] = []
    path: Path | None = None
    branch: str | None = None
    for line in [*listed.stdout.splitlines(), ""]:
        if line.startswith("worktree "):
            path, branch = Path(line.removeprefix("worktree ")), None
        elif line.startswith("branch refs/heads/"):
            branch = line.removeprefix("branch refs/heads/")
        elif line == "bare":
            path = None
        elif not line and path is not None:
            found.append(_Checkout(path, branch))
            path = None
    return found
