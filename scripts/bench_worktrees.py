"""How long a task's worktree takes to set up and remove, on a generated repository of 10,000 files.

    uv run python scripts/bench_worktrees.py [--files 10000] [--runs 7]

The repository has ``--files`` tracked files (100 per directory, a few hundred bytes each) and a gitignored
``node_modules`` of 5,000 files that ``.worktreeinclude`` links into every worktree. Each run creates a worktree
for a new task attempt (``git worktree add`` plus seeding, as the launcher does) and discards it; the medians are
printed, with the CPU time git used and the load average, next to the floor: a plain ``git worktree add`` of the
same commit (no branch reset, no seeding, no record) measured alternately in the same run, so the ratio holds on a
busy machine where the absolute figures do not. Everything lives in a temporary directory, removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from launcher.isolation.repository import git_context
from launcher.isolation.worktrees import Worktrees


def make_repository(root: Path, files: int) -> None:
    """A committed repository of ``files`` files and an ignored, linked ``node_modules``."""
    root.mkdir()
    for i in range(files):
        path = root / f"pkg{i // 100:03d}" / f"module{i % 100:03d}.py"
        path.parent.mkdir(exist_ok=True)
        path.write_text(f'"""Module {i}."""\n\nVALUE = {i}\n' + "# padding\n" * 20)
    for i in range(5000):
        path = root / "node_modules" / f"dep{i // 100:02d}" / f"index{i % 100:02d}.js"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"module.exports = {i};\n")
    (root / ".gitignore").write_text("node_modules/\n")
    (root / ".worktreeinclude").write_text("node_modules\n")
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "bench",
        "GIT_AUTHOR_EMAIL": "bench@localhost",
        "GIT_COMMITTER_NAME": "bench",
        "GIT_COMMITTER_EMAIL": "bench@localhost",
    }
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "generated"]):
        subprocess.run(["git", *args], cwd=root, check=True, env=env)


def children_cpu() -> float:
    """CPU seconds used so far by this process's finished children (the git commands)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


async def plain_add(root: Path, scratch: Path) -> float:
    """Wall seconds of a bare ``git worktree add --detach`` (the floor), removed again afterwards."""
    started = time.perf_counter()
    await asyncio.to_thread(
        subprocess.run, ["git", "worktree", "add", "-q", "--detach", str(scratch)], cwd=root, check=True
    )
    seconds = time.perf_counter() - started
    await asyncio.to_thread(
        subprocess.run, ["git", "worktree", "remove", "--force", str(scratch)], cwd=root, check=True
    )
    return seconds


async def measure(
    root: Path, home: Path, runs: int
) -> tuple[list[float], list[float], list[float], list[float]]:
    """Wall seconds per create, per discard and per plain ``git worktree add``, and git's CPU seconds per create."""
    context = await git_context(root)
    assert context is not None
    worktrees = Worktrees(home)
    creates: list[float] = []
    discards: list[float] = []
    cpu: list[float] = []
    floor: list[float] = []
    for task_id in range(1, runs + 1):
        floor.append(await plain_add(root, home / "plain"))
        cpu_before = children_cpu()
        started = time.perf_counter()
        worktree, _ = await worktrees.create(
            checkout=context.checkout,
            common_dir=context.common_dir,
            task_id=task_id,
            fence=1,
            base=context.head,
        )
        creates.append(time.perf_counter() - started)
        cpu.append(children_cpu() - cpu_before)
        assert worktree.seeded == ("node_modules",)
        started = time.perf_counter()
        await worktrees.discard(worktree, delete_branch=True)
        discards.append(time.perf_counter() - started)
    return creates, discards, cpu, floor


def main() -> None:
    """Generate the repository, measure, print the medians."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch) / "repository"
        make_repository(root, args.files)
        creates, discards, cpu, floor = asyncio.run(measure(root, Path(scratch) / "home", args.runs))
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"{args.files} tracked files, node_modules of 5,000 files linked, {args.runs} runs, load average {load}"
    )
    print(
        f"create: median {statistics.median(creates) * 1000:.0f} ms "
        f"(min {min(creates) * 1000:.0f}, max {max(creates) * 1000:.0f}); "
        f"git CPU time median {statistics.median(cpu) * 1000:.0f} ms"
    )
    print(
        f"plain git worktree add: median {statistics.median(floor) * 1000:.0f} ms "
        f"(min {min(floor) * 1000:.0f}); create / plain: {statistics.median(creates) / statistics.median(floor):.2f}"
    )
    print(
        f"discard: median {statistics.median(discards) * 1000:.0f} ms "
        f"(min {min(discards) * 1000:.0f}, max {max(discards) * 1000:.0f})"
    )


if __name__ == "__main__":
    main()
