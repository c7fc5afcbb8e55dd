"""Where a task's directory sits in git: its checkout, the repository it belongs to, and the submitter's HEAD."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from launcher.isolation.git import git


def home_tag(home: Path) -> str:
    """A short tag unique to one aiswarm home (a hash of where it is), part of every branch it makes.

    Two homes (two brokers) working on one repository both have a task 7; their branches must not meet.
    """
    return hashlib.sha256(str(home.expanduser().resolve()).encode()).hexdigest()[:8]


def task_branch_prefix(tag: str) -> str:
    """What every task branch of the home tagged ``tag`` starts with: ``aiswarm/<tag>/task-``."""
    return f"aiswarm/{tag}/task-"


def task_branch(task_id: int, tag: str) -> str:
    """The branch a task's work lands on: ``aiswarm/<home tag>/task-<id>``."""
    return f"{task_branch_prefix(tag)}{task_id}"


@dataclass(frozen=True)
class GitContext:
    """A directory inside a git checkout, as the submitter left it.

    ``checkout`` is the top of the working tree the directory is in (the user's checkout, or one of their own
    linked worktrees), ``common_dir`` the repository shared by all its worktrees, ``subdir`` the directory
    relative to ``checkout`` (``.`` at the top), ``head`` the commit checked out and ``branch`` the branch
    (None on a detached HEAD).
    """

    checkout: Path
    common_dir: Path
    subdir: str
    head: str
    branch: str | None


async def git_context(directory: Path) -> GitContext | None:
    """The git context of ``directory``; None outside a repository, in a bare one, or before its first commit."""
    if not directory.is_dir():
        return None
    found = await git(
        "rev-parse",
        "--path-format=absolute",
        "--show-toplevel",
        "--git-common-dir",
        cwd=directory,
        check=False,
    )
    lines = found.lines()
    if not found.ok or len(lines) != 2:
        return None
    checkout, common_dir = Path(lines[0]).resolve(), Path(lines[1]).resolve()
    head = await git("rev-parse", "--verify", "-q", "HEAD^{commit}", cwd=directory, check=False)
    if not head.ok:
        return None
    branch = await git("symbolic-ref", "-q", "--short", "HEAD", cwd=directory, check=False)
    subdir = directory.resolve().relative_to(checkout).as_posix()
    return GitContext(
        checkout=checkout,
        common_dir=common_dir,
        subdir=subdir,
        head=head.stdout.strip(),
        branch=branch.stdout.strip() or None,
    )


async def branch_tip(cwd: Path, branch: str) -> str | None:
    """The commit ``branch`` points at, or None when there is no such branch."""
    found = await git("rev-parse", "--verify", "-q", f"refs/heads/{branch}^{{commit}}", cwd=cwd, check=False)
    return found.stdout.strip() if found.ok else None


def repository_key(common_dir: Path) -> str:
    """A directory name for a repository: its name and a hash of where it is (``app-3f2a9c01d2``)."""
    path = common_dir.resolve()
    name = path.parent.name if path.name == ".git" else path.name.removesuffix(".git")
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "repository"
    return f"{safe}-{hashlib.sha256(str(path).encode()).hexdigest()[:10]}"
