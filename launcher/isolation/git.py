"""The real ``git`` binary, run as an asyncio subprocess: the only way this package touches a repository."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path

_INHERITED_REPOSITORY_VARIABLES = (
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_COMMON_DIR",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_NAMESPACE",
    "GIT_PREFIX",
)
"""Set when the launcher itself runs inside a git hook; they would point every command at the wrong repository."""


class GitError(Exception):
    """A git command failed; the message is one line: the command and git's own last words."""

    def __init__(self, args: tuple[str, ...], cwd: Path, returncode: int, stderr: str) -> None:
        super().__init__(f"git {' '.join(args[:3])} in {cwd} failed ({returncode}): {last_line(stderr)}")
        self.returncode = returncode
        self.stderr = stderr


@dataclass(frozen=True)
class GitResult:
    """What one git command printed, and its exit status."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        """True when git exited 0."""
        return self.returncode == 0

    def lines(self) -> list[str]:
        """The non-empty lines of stdout."""
        return [line for line in self.stdout.splitlines() if line]

    def entries(self) -> list[str]:
        """The NUL-separated entries of a ``-z`` output."""
        return [entry for entry in self.stdout.split("\0") if entry]


def git_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for git: this process's, without repository overrides, never prompting, C messages."""
    env = {k: v for k, v in os.environ.items() if k not in _INHERITED_REPOSITORY_VARIABLES}
    env.update({"GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C", "GIT_OPTIONAL_LOCKS": "0"})
    env.update(extra or {})
    return env


async def git(*args: str, cwd: Path, check: bool = True, env: dict[str, str] | None = None) -> GitResult:
    """Run ``git args`` in ``cwd``; raise :class:`GitError` on a non-zero exit when ``check``."""
    process = await asyncio.create_subprocess_exec(
        "git",
        *args,
        cwd=str(cwd),
        env=git_env(env),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    result = GitResult(
        process.returncode, out.decode("utf-8", "surrogateescape"), err.decode("utf-8", "replace")
    )
    if check and not result.ok:
        raise GitError(args, cwd, result.returncode, result.stderr)
    return result


_FALLBACK_IDENTITY = ("-c", "user.name=aiswarm", "-c", "user.email=aiswarm@localhost")


async def commit_identity(cwd: Path) -> tuple[str, ...]:
    """Nothing when git knows who commits in ``cwd``; else options for a neutral ``aiswarm`` identity."""
    committer = await git("var", "GIT_COMMITTER_IDENT", cwd=cwd, check=False)
    author = await git("var", "GIT_AUTHOR_IDENT", cwd=cwd, check=False)
    return () if committer.ok and author.ok else _FALLBACK_IDENTITY


def last_line(stderr: str) -> str:
    """Git's last words on stderr (its error message), or a placeholder."""
    return next((line.strip() for line in reversed(stderr.splitlines()) if line.strip()), "no message")
