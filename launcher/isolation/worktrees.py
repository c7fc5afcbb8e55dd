"""A git worktree per task attempt, outside the user's checkout, under the aiswarm home.

Layout: ``<home>/worktrees/<repository key>/`` holds, for one repository, a file ``repository`` naming its git
directory, the lock every change to the repository's worktrees and ``aiswarm/*`` branches is made under, and one
worktree per live attempt, ``task-<id>-<fence>/``, next to its record ``task-<id>-<fence>.json``. The branch is
``aiswarm/task-<id>``, started from a recorded base commit; a new attempt of the same task discards the earlier
attempt's worktree and starts the branch again from the base, so nothing a stale attempt did survives.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import re
import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from launcher.isolation.git import GitError, commit_identity, git
from launcher.isolation.include import read_include, seed_worktree
from launcher.isolation.repository import home_tag, repository_key, task_branch, task_branch_prefix

_ATTEMPT = re.compile(r"^task-(?P<task>\d+)-(?P<fence>\d+)$")


@dataclass(frozen=True)
class Worktree:
    """One task attempt's worktree: where it is, its branch, the commit it started from, what was brought over."""

    task_id: int
    fence: int
    path: Path
    branch: str
    base: str
    common_dir: Path
    checkout: Path
    seeded: tuple[str, ...] = ()

    def directory(self, subdir: str) -> Path:
        """The worktree's counterpart of the checkout's ``subdir`` (``.`` is the top)."""
        return self.path if subdir in ("", ".") else self.path / subdir

    def to_json(self) -> str:
        """The record kept next to the worktree."""
        data = asdict(self)
        data.update(path=str(self.path), common_dir=str(self.common_dir), checkout=str(self.checkout))
        data["seeded"] = list(self.seeded)
        return json.dumps(data, indent=1)

    @classmethod
    def from_json(cls, text: str) -> Worktree:
        """Read a record written by :meth:`to_json`."""
        data = json.loads(text)
        return cls(
            task_id=int(data["task_id"]),
            fence=int(data["fence"]),
            path=Path(data["path"]),
            branch=str(data["branch"]),
            base=str(data["base"]),
            common_dir=Path(data["common_dir"]),
            checkout=Path(data["checkout"]),
            seeded=tuple(str(p) for p in data.get("seeded", [])),
        )


@dataclass(frozen=True)
class Commit:
    """The task's branch after its work was committed: its tip and what it changed since the base."""

    head: str
    committed: bool
    files: tuple[str, ...]
    diff_stat: str


class RepositoryLock:
    """An exclusive ``flock`` on one repository's directory in the home, across every process and task.

    Taken by polling with ``LOCK_NB`` so that a cancelled waiter leaves nothing behind holding the lock.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    @contextlib.asynccontextmanager
    async def held(self) -> AsyncIterator[None]:
        """Hold the lock for the ``async with`` block."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            delay = 0.01
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    await asyncio.sleep(delay)
                    delay = min(0.2, delay * 2)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock


class Worktrees:
    """The worktrees under one aiswarm home, for every repository a task ran in."""

    def __init__(self, home: Path) -> None:
        self.root = home / "worktrees"
        self.tag = home_tag(home)

    def branch(self, task_id: int) -> str:
        """The branch of ``task_id`` in this home: ``aiswarm/<home tag>/task-<id>``."""
        return task_branch(task_id, self.tag)

    def repository_dir(self, common_dir: Path) -> Path:
        """This home's directory for the repository whose git directory is ``common_dir``."""
        return self.root / repository_key(common_dir)

    def lock(self, common_dir: Path) -> RepositoryLock:
        """The lock for changes to ``common_dir``'s worktrees, ``aiswarm/*`` branches and merges."""
        return RepositoryLock(self.repository_dir(common_dir) / "lock")

    def repositories(self) -> list[Path]:
        """The git directories of every repository this home has worktrees for."""
        found: list[Path] = []
        for named in sorted(self.root.glob("*/repository")):
            with contextlib.suppress(OSError):
                found.append(Path(named.read_text(encoding="utf-8").strip()))
        return found

    def records(self, common_dir: Path) -> list[Worktree]:
        """The attempts with a worktree record for ``common_dir``, by task and fence."""
        found: list[Worktree] = []
        for record in self.repository_dir(common_dir).glob("task-*.json"):
            with contextlib.suppress(OSError, ValueError, KeyError):
                found.append(Worktree.from_json(record.read_text(encoding="utf-8")))
        return sorted(found, key=lambda w: (w.task_id, w.fence))

    async def create(
        self, *, checkout: Path, common_dir: Path, task_id: int, fence: int, base: str
    ) -> tuple[Worktree, tuple[str, ...]]:
        """A fresh worktree for attempt ``fence`` of ``task_id``, on its branch reset to ``base``.

        Every earlier attempt's worktree of the task is discarded first (it is stale: never merged). Returns the
        worktree and the notes about ``.worktreeinclude`` lines that were skipped.
        """
        directory = self.repository_dir(common_dir)
        async with self.lock(common_dir).held():
            (directory / "repository").write_text(str(common_dir), encoding="utf-8")
            for earlier in self._attempts_of(common_dir, task_id):
                await self._remove(common_dir, earlier)
            path = directory / f"task-{task_id}-{fence}"
            branch = self.branch(task_id)
            await git("worktree", "add", "--quiet", "-B", branch, str(path), base, cwd=common_dir)
            include = read_include(checkout)
            seeded = await seed_worktree(checkout, path, include)
            worktree = Worktree(task_id, fence, path, branch, base, common_dir, checkout, tuple(seeded))
            _record_path(path).write_text(worktree.to_json(), encoding="utf-8")
        return worktree, include.problems

    async def commit(self, worktree: Worktree, title: str) -> Commit:
        """Commit whatever the attempt left uncommitted on its branch (not what was brought over).

        The message names the task and its title. A CLI that committed itself keeps its commits; the
        launcher's commit, if any, goes on top.
        """
        await git("add", "-A", cwd=worktree.path)
        if (
            worktree.seeded
        ):  # a linked directory is a symlink to git, which a "dir/" ignore rule does not match
            seeded = [f":(literal){p}" for p in worktree.seeded]
            await git("rm", "--cached", "-r", "-q", "--ignore-unmatch", "--", *seeded, cwd=worktree.path)
        staged = await git("diff", "--cached", "--quiet", cwd=worktree.path, check=False)
        committed = staged.returncode == 1
        if committed:
            summary = " ".join(title.split()) or "(untitled)"
            message = (
                f"aiswarm task {worktree.task_id}: {summary}\n\n"
                f"Committed by the aiswarm launcher for task {worktree.task_id} (attempt {worktree.fence})."
            )
            identity = await commit_identity(worktree.path)
            await git(*identity, "commit", "--quiet", "--no-verify", "-m", message, cwd=worktree.path)
        head = (await git("rev-parse", "HEAD", cwd=worktree.path)).stdout.strip()
        files, stat = await changes(worktree.path, worktree.base, head)
        return Commit(head, committed, files, stat)

    async def bring_in(self, worktree: Worktree, branch: str) -> tuple[str, ...]:
        """Bring ``branch``'s changes into the worktree uncommitted (a squash merge), the conflicts left in.

        For a task that resolves another task's conflict: the files that conflict carry git's conflict markers,
        and are returned; the launcher's commit after the run makes one ordinary commit on top of the base.
        """
        identity = await commit_identity(worktree.path)
        merged = await git(*identity, "merge", "--squash", "--quiet", branch, cwd=worktree.path, check=False)
        unmerged = await git("diff", "--name-only", "--diff-filter=U", "-z", cwd=worktree.path)
        if not merged.ok and not unmerged.entries():
            raise GitError(("merge", "--squash", branch), worktree.path, merged.returncode, merged.stderr)
        return tuple(unmerged.entries())

    async def discard(self, worktree: Worktree, *, delete_branch: bool = False) -> None:
        """Remove the attempt's worktree and record; with ``delete_branch``, its branch too (never merged)."""
        async with self.lock(worktree.common_dir).held():
            await self._remove(worktree.common_dir, worktree)
            if delete_branch:
                await delete_task_branch(worktree.common_dir, worktree.branch)

    async def prune(self, keep: Callable[[int, int], bool]) -> list[Path]:
        """Remove every attempt's worktree that ``keep(task_id, fence)`` does not keep, in every repository.

        Also removes what a crashed launcher left without a record and lets git forget worktrees whose directory
        is gone (``git worktree prune``). Branches stay: the caller decides about them. Returns what was removed.
        """
        removed: list[Path] = []
        for common_dir in self.repositories():
            directory = self.repository_dir(common_dir)
            if not common_dir.is_dir():
                shutil.rmtree(directory, ignore_errors=True)  # the repository itself is gone
                removed.append(directory)
                continue
            async with self.lock(common_dir).held():
                for worktree in self.records(common_dir):
                    if not keep(worktree.task_id, worktree.fence):
                        await self._remove(common_dir, worktree)
                        removed.append(worktree.path)
                for leftover in sorted(directory.iterdir()):
                    match = _ATTEMPT.match(leftover.name)
                    unrecorded = match is not None and not _record_path(leftover).exists()
                    if leftover.is_dir() and (unrecorded or leftover.name.startswith("merge-")):
                        await remove_worktree_dir(common_dir, leftover)
                        removed.append(leftover)
                await git("worktree", "prune", cwd=common_dir)
        return removed

    def _attempts_of(self, common_dir: Path, task_id: int) -> list[Worktree]:
        return [w for w in self.records(common_dir) if w.task_id == task_id]

    async def _remove(self, common_dir: Path, worktree: Worktree) -> None:
        """Remove one attempt's worktree directory and record; the caller holds the lock."""
        await remove_worktree_dir(common_dir, worktree.path)
        _record_path(worktree.path).unlink(missing_ok=True)


def _record_path(worktree_path: Path) -> Path:
    return worktree_path.with_name(worktree_path.name + ".json")


async def remove_worktree_dir(common_dir: Path, path: Path) -> None:
    """Remove a worktree git knows or a directory it forgot; symlinks inside are removed, never followed."""
    if path.exists() or path.is_symlink():
        removed = await git(
            "worktree", "remove", "--force", "--force", str(path), cwd=common_dir, check=False
        )
        if not removed.ok and path.exists():
            await asyncio.to_thread(shutil.rmtree, path, True)
    await git("worktree", "prune", cwd=common_dir, check=False)


async def delete_task_branch(common_dir: Path, branch: str) -> None:
    """Delete a task's branch if it exists (a branch checked out somewhere stays)."""
    await git("branch", "-D", "--quiet", branch, cwd=common_dir, check=False)


async def kept_branches(common_dir: Path, tag: str) -> list[str]:
    """The task branches of the home tagged ``tag`` in the repository (kept for a merge, or left by a conflict)."""
    if not common_dir.is_dir():
        return []
    listed = await git(
        "branch", "--list", "--format=%(refname:short)", f"{task_branch_prefix(tag)}*", cwd=common_dir
    )
    return listed.lines()


async def changes(cwd: Path, base: str, head: str) -> tuple[tuple[str, ...], str]:
    """The files changed from ``base`` to ``head`` and git's one-line summary (``2 files changed, ...``)."""
    names = await git("diff", "--name-only", "--no-renames", "-z", base, head, cwd=cwd)
    stat = await git("diff", "--shortstat", base, head, cwd=cwd)
    return tuple(names.entries()), stat.stdout.strip()


__all__ = [
    "Commit",
    "GitError",
    "RepositoryLock",
    "Worktree",
    "Worktrees",
    "changes",
    "delete_task_branch",
    "kept_branches",
    "remove_worktree_dir",
]
