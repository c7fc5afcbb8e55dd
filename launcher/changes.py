"""Whether a run changed the files its task declared: a fingerprint taken before the CLI starts and after it exits.

Only where the answer is certain: the task declared the files it changes (``files`` when submitted) and its
directory is in a git work tree. The fingerprint is the checked-out commit plus, for every file git knows under
the declared paths or globs (tracked, untracked and ignored: ``git ls-files --cached --others``), its size and
modification time, so any write, new file, deletion or commit shows, even one that leaves the content as it was
(a retried attempt rewriting what an earlier one wrote). Without declared files, or outside git, nothing is
guessed: the run is judged by its exit and its answer alone.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from launcher.isolation.git import git

Fingerprint = tuple[str, frozenset[tuple[str, int, int]]]
"""The checked-out commit, and (path, size, mtime in ns) of each file under the declared paths (-1s: missing)."""


@dataclass(frozen=True)
class DeclaredFiles:
    """The declared files of one task in its directory, and their fingerprint before the run."""

    directory: Path
    pathspecs: tuple[str, ...]
    before: Fingerprint

    @classmethod
    async def watch(cls, directory: Path, declared: Sequence[str]) -> DeclaredFiles | None:
        """The fingerprint of ``declared`` in ``directory`` now; None when no answer would be certain (nothing
        declared, not a git work tree, or git refuses the paths)."""
        pathspecs = tuple(entry.strip() for entry in declared if entry.strip())
        if not pathspecs:
            return None
        try:
            inside = await git("rev-parse", "--is-inside-work-tree", cwd=directory, check=False)
            if not inside.ok or inside.stdout.strip() != "true":
                return None
            before = await _fingerprint(directory, pathspecs)
        except OSError:  # the directory is gone
            return None
        return None if before is None else cls(directory, pathspecs, before)

    async def changed(self) -> bool | None:
        """Whether anything under the declared paths changed since :meth:`watch` (None: git cannot tell now)."""
        try:
            after = await _fingerprint(self.directory, self.pathspecs)
        except OSError:
            return None
        return None if after is None else after != self.before


async def _fingerprint(directory: Path, pathspecs: tuple[str, ...]) -> Fingerprint | None:
    head = await git("rev-parse", "--verify", "-q", "HEAD", cwd=directory, check=False)
    listed = await git("ls-files", "-z", "--cached", "--others", "--", *pathspecs, cwd=directory, check=False)
    if not listed.ok:
        return None
    # a declared directory may hold thousands of files: stat them off the loop
    return head.stdout.strip(), await asyncio.to_thread(_stats, directory, set(listed.entries()))


def _stats(directory: Path, paths: set[str]) -> frozenset[tuple[str, int, int]]:
    files: set[tuple[str, int, int]] = set()
    for path in paths:
        try:
            found = os.stat(directory / path)
        except OSError:
            files.add((path, -1, -1))
        else:
            files.add((path, found.st_size, found.st_mtime_ns))
    return frozenset(files)
