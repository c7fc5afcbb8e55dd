"""``.worktreeinclude``: the gitignored things a task's worktree gets from the user's checkout.

A fresh worktree holds only what git tracks, so a worker would reinstall ``node_modules`` or rebuild a
``.venv`` for every task. The file ``.worktreeinclude`` at the top of the checkout (tracked or not) lists what to
bring over, one entry a line::

    # what every task's worktree gets from this checkout
    node_modules
    .venv
    packages/*/node_modules
    copy .env
    copy build/cache

- An entry is a path or a glob relative to the top of the checkout (``*``, ``?`` and ``[...]`` within a name,
  ``**`` for any depth). Blank lines and lines starting with ``#`` are ignored (a ``#`` later in a line
  is part of the path).
- By default the worktree gets a **symlink** to the checkout's copy: instant, but shared, so what a task
  installs there changes yours. ``copy <entry>`` gives the worktree its own copy instead.
- Only paths that exist in the checkout and that git does not track are brought over (tracked files come with
  the checkout anyway). Entries that leave the checkout (absolute, ``..``) or name ``.git`` are skipped with a
  one-line note in the agent's log.
- What was brought over is never committed: the task's commit leaves those paths out.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from launcher.isolation.git import git

INCLUDE_FILE = ".worktreeinclude"


@dataclass(frozen=True)
class IncludeEntry:
    """One line of ``.worktreeinclude``: a path or glob, linked unless ``copy``."""

    pattern: str
    copy: bool = False


@dataclass(frozen=True)
class IncludeFile:
    """The entries of a ``.worktreeinclude`` and one note per line that was skipped."""

    entries: tuple[IncludeEntry, ...]
    problems: tuple[str, ...] = ()


def parse_include(text: str) -> IncludeFile:
    """Parse the text of a ``.worktreeinclude`` (see the module docstring for the format)."""
    entries: list[IncludeEntry] = []
    problems: list[str] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        copy = line.startswith("copy ")
        pattern = line.removeprefix("copy ").strip() if copy else line
        pattern = pattern.removeprefix("./").rstrip("/")
        parts = PurePosixPath(pattern).parts
        if not pattern or pattern.startswith("/") or ".." in parts or ".git" in parts:
            problems.append(
                f"{INCLUDE_FILE} line {number} ({line!r}) skipped: write a path inside the checkout, "
                "relative to its top, not in .git"
            )
            continue
        entries.append(IncludeEntry(pattern, copy))
    return IncludeFile(tuple(entries), tuple(problems))


def read_include(checkout: Path) -> IncludeFile:
    """The checkout's ``.worktreeinclude`` (empty when there is none)."""
    try:
        return parse_include((checkout / INCLUDE_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return IncludeFile(())
    except (OSError, UnicodeDecodeError) as exc:
        return IncludeFile((), (f"{INCLUDE_FILE} could not be read ({exc}); nothing was brought over",))


async def seed_worktree(checkout: Path, worktree: Path, include: IncludeFile) -> list[str]:
    """Link or copy ``include``'s untracked paths from ``checkout`` into ``worktree``; the paths brought over."""
    matches = await asyncio.to_thread(_matches, checkout, include)
    if not matches:
        return []
    tracked = await git("ls-files", "-z", "--", *(f":(literal){p}" for p in matches), cwd=checkout)
    tracked_paths = tracked.entries()
    seeded: list[str] = []
    for relative, copy in matches.items():
        if any(t == relative or t.startswith(relative + "/") for t in tracked_paths):
            continue
        target = worktree / relative
        if target.exists() or target.is_symlink():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        source = checkout / relative
        if copy:
            await asyncio.to_thread(_copy, source, target)
        else:
            os.symlink(source, target, target_is_directory=source.is_dir())
        seeded.append(relative)
    return seeded


def _matches(checkout: Path, include: IncludeFile) -> dict[str, bool]:
    """What the entries name in ``checkout`` (outside ``.git``), each with whether it is copied."""
    matches: dict[str, bool] = {}
    for entry in include.entries:
        for found in sorted(checkout.glob(entry.pattern)):
            relative = found.relative_to(checkout).as_posix()
            if ".git" not in PurePosixPath(relative).parts:
                matches.setdefault(relative, entry.copy)
    return matches


def _copy(source: Path, target: Path) -> None:
    """Copy a file or a whole directory, keeping symlinks as symlinks."""
    if source.is_dir() and not source.is_symlink():
        shutil.copytree(source, target, symlinks=True)
    else:
        shutil.copy2(source, target, follow_symlinks=False)
