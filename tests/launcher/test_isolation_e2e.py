"""Isolation end to end: ``aiswarm launch`` with four real CLIs on a git repository, a worktree per attempt.

One swarm (a broker process, the scripted model, ``aiswarm launch --agents 4`` with two qwen-code and two
gemini-cli agents) works on one repository, the user's checkout; the tests run in order and each leaves the
checkout clean for the next. Isolation is on by default because the launch runs more than one agent.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from aiswarm_server.models import MergeState, Task
from tests.launcher.conftest import LaunchedSwarm, LaunchSwarm, poll

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

AGENTS = ("qwen-1", "gemini-1", "qwen-2", "gemini-2")
TASK_WAIT = 300.0
SETTLED = (MergeState.MERGED, MergeState.CONFLICT, MergeState.MANUAL, MergeState.DISCARDED)
Swarm = LaunchedSwarm


def git(repo: Path, *args: str) -> str:
    """Run git as the user would in their checkout; its stdout without the final newline."""
    done = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True)
    return done.stdout.rstrip("\n")


def wait_settled(swarm: Swarm, ids: list[int], timeout: float = TASK_WAIT) -> list[Task]:
    """Wait until every task finished and its merge (if it had one) is settled."""

    def settled() -> list[Task] | None:
        swarm.check_alive()
        tasks = [swarm.task(i) for i in ids]
        done = all(
            t.status.is_terminal and (t.merge_state is None or t.merge_state in SETTLED) for t in tasks
        )
        return tasks if done else None

    try:
        return poll(settled, timeout, f"tasks {ids} to finish and merge", every=1.0)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{swarm.tail()}") from None


def agent_logs(swarm: Swarm) -> str:
    """Every agent's log."""
    return "\n".join(
        swarm.agent_log(a).read_text(errors="replace") for a in AGENTS if swarm.agent_log(a).exists()
    )


def checkout_status(swarm: Swarm) -> list[str]:
    """``git status --porcelain`` of the user's checkout."""
    done = subprocess.run(["git", "status", "--porcelain"], cwd=swarm.workdir, capture_output=True, text=True)
    return done.stdout.splitlines()


def task_commits(swarm: Swarm, task_id: int) -> list[str]:
    """The commits on the user's branch whose message names the task."""
    return git(swarm.workdir, "log", "--format=%H", f"--grep=^aiswarm task {task_id}:").split()


def worktrees_left(swarm: Swarm) -> list[str]:
    """Task worktrees git or the home still has."""
    listed = git(swarm.workdir, "worktree", "list", "--porcelain")
    in_git = [line for line in listed.splitlines() if line.startswith("worktree ")][1:]
    on_disk = [p.name for p in (swarm.home / "worktrees").glob("*/task-*")]
    return in_git + on_disk


def write_task(path: str, content: str, **extra: Any) -> dict[str, Any]:
    """A task in the scripted model's grammar that writes ``content`` to ``path``."""
    return {"title": f"write {path}", "prompt": f"WRITE {path}\n```\n{content}\n```\n", **extra}


@pytest.fixture(scope="module")
def swarm(launch_swarm: LaunchSwarm, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Swarm]:
    """The user's repository (branch main), a broker, the scripted model and ``aiswarm launch --agents 4``."""
    root = tmp_path_factory.mktemp("isolation")
    repo, user_home = root / "project", root / "user"
    for d in (repo, user_home):
        d.mkdir()
    git_env = {"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": str(user_home / ".gitconfig")}
    os.environ.update(git_env)  # this test process's own git commands
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.name", "The User")
    git(repo, "config", "user.email", "user@example.test")
    (repo / "shared.txt").write_text("original line\n")
    (repo / "notes.txt").write_text("the user's notes\n")
    (repo / ".gitignore").write_text("node_modules/\n")
    (repo / "node_modules").mkdir()
    (repo / "node_modules" / "dep.js").write_text("module.exports = 1;\n")
    (repo / ".worktreeinclude").write_text("node_modules\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "initial")
    yield launch_swarm(
        cli="qwen:2,gemini:2",
        agents=AGENTS,
        args=("--cool-down", "20"),
        broker_env=git_env,
        launcher_env=git_env,
        workdir=repo,
        name="isolation-launch",
    )


def test_four_tasks_on_four_agents_all_merge_onto_the_users_branch(swarm: Swarm) -> None:
    swarm.wait_parked()
    base = git(swarm.workdir, "rev-parse", "HEAD")
    ids = swarm.submit_specs([write_task(f"four/part{i}.txt", f"part {i}") for i in range(4)])
    tasks = wait_settled(swarm, ids)
    assert [t.status.value for t in tasks] == ["completed"] * 4, swarm.tail()
    assert [t.merge_state for t in tasks] == [MergeState.MERGED] * 4, [t.merge_detail for t in tasks]
    assert {t.attempts[-1].agent for t in tasks} == set(AGENTS)  # one task per agent, in parallel
    for i, task in enumerate(tasks):
        assert (swarm.workdir / f"four/part{i}.txt").read_text() == f"part {i}\n"
        assert task.branch and task.branch.endswith(f"/task-{task.id}") and task.base_commit == base
        assert task.diff_stat and "1 file changed" in task.diff_stat
        assert len(task_commits(swarm, task.id)) == 1
    assert checkout_status(swarm) == []  # the merged changes are committed; nothing else changed
    assert git(swarm.workdir, "rev-list", "--merges", "HEAD") == ""  # linear: fast-forwards and rebases
    assert git(swarm.workdir, "rev-list", "--count", f"{base}..HEAD") == "4"
    assert worktrees_left(swarm) == []
    assert git(swarm.workdir, "branch", "--list", "aiswarm/*") == ""
    assert (swarm.workdir / "node_modules" / "dep.js").is_file()  # linked into worktrees, never removed


def test_two_tasks_on_the_same_lines_one_merges_one_conflicts_and_the_users_edit_survives(
    swarm: Swarm,
) -> None:
    swarm.wait_parked()
    (swarm.workdir / "notes.txt").write_text("the user's notes, edited and not committed\n")
    ids = swarm.submit_specs(
        [
            write_task("shared.txt", "changed by the first task"),
            write_task("shared.txt", "changed by the second"),
        ]
    )
    tasks = wait_settled(swarm, ids)
    assert [t.status.value for t in tasks] == ["completed"] * 2, swarm.tail()
    states = sorted(t.merge_state or "" for t in tasks)
    assert states == [MergeState.CONFLICT, MergeState.MERGED], [t.merge_detail for t in tasks]
    merged = next(t for t in tasks if t.merge_state is MergeState.MERGED)
    conflict = next(t for t in tasks if t.merge_state is MergeState.CONFLICT)
    assert conflict.conflict_files == ["shared.txt"] and "shared.txt" in (conflict.merge_detail or "")
    assert conflict.branch and git(swarm.workdir, "branch", "--list", conflict.branch).strip() != ""
    assert git(swarm.workdir, "show", f"{conflict.branch}:shared.txt") == "changed by the second" or (
        merged.id > conflict.id
    )
    winner = "changed by the first task" if merged.id == ids[0] else "changed by the second"
    assert (swarm.workdir / "shared.txt").read_text() == winner + "\n"
    assert (swarm.workdir / "notes.txt").read_text() == "the user's notes, edited and not committed\n"
    assert checkout_status(swarm) == [" M notes.txt"]
    assert worktrees_left(swarm) == []
    git(swarm.workdir, "checkout", "-q", "--", "notes.txt")
    git(swarm.workdir, "branch", "-D", "-q", conflict.branch)


def _cwd(process: psutil.Process) -> Path | None:
    try:
        return Path(process.cwd())
    except psutil.Error:
        return None


def test_a_worker_killed_mid_task_leaves_no_worktree_and_the_retry_merges_once(swarm: Swarm) -> None:
    swarm.wait_parked()
    [task_id] = swarm.submit_specs([write_task("killed/result.txt", "survived")])
    holder: str = poll(lambda: swarm.task(task_id).claimed_by, 60, "the task to be reserved")
    fault = swarm.model.inject_fault(status=None, delay_seconds=300, agent=holder)
    try:
        first_fence = swarm.task(task_id).fence_token
        first = poll(
            lambda: list((swarm.home / "worktrees").glob(f"*/task-{task_id}-{first_fence}")), 60, "worktree"
        )
        # the CLI working in the worktree, not the agent's warm CLI for the launch directory (the pool kills that one)
        cli: psutil.Process = poll(
            lambda: next((p for p in swarm.cli_processes(holder) if _cwd(p) == first[0].resolve()), None),
            60,
            f"{holder}'s CLI to start in the task's worktree",
        )
        cli.kill()
        [task] = wait_settled(swarm, [task_id])
    finally:
        swarm.model.clear_faults(fault_id=fault)
    assert task.status.value == "completed" and task.merge_state is MergeState.MERGED, swarm.tail()
    assert task.fence_token != first_fence and not first[0].exists()
    assert (swarm.workdir / "killed/result.txt").read_text() == "survived\n"
    assert len(task_commits(swarm, task_id)) == 1
    assert f"task #{task_id}: worktree discarded, never merged" in agent_logs(swarm)
    assert worktrees_left(swarm) == [] and checkout_status(swarm) == []


def test_a_dependent_task_starts_from_its_dependencys_merged_changes(swarm: Swarm) -> None:
    swarm.wait_parked()
    ids = swarm.submit_specs(
        [
            {**write_task("deps/api.txt", "def api(): ..."), "key": "api"},
            {**write_task("deps/use.txt", "api()"), "depends_on": ["api"]},
        ]
    )
    api, use = wait_settled(swarm, ids)
    assert (api.merge_state, use.merge_state) == (MergeState.MERGED, MergeState.MERGED), swarm.tail()
    [api_commit] = task_commits(swarm, api.id)
    [use_commit] = task_commits(swarm, use.id)
    assert git(swarm.workdir, "rev-parse", f"{use_commit}^") == api_commit  # built on top of the merged api
    assert "fast-forward" in (use.merge_detail or "")  # its worktree already had the dependency's change
    assert git(swarm.workdir, "show", f"{use_commit}:deps/api.txt") == "def api(): ..."


def test_overlapping_declared_files_serialize_and_disjoint_ones_run_in_parallel(swarm: Swarm) -> None:
    swarm.wait_parked()
    [first] = swarm.submit_specs([write_task("overlap/a.txt", "first", files=["overlap/"])])
    holder: str = poll(lambda: swarm.task(first).claimed_by, 60, "the first task to be reserved")
    fault = swarm.model.inject_fault(status=None, delay_seconds=15, agent=holder, count=1)
    try:
        poll(lambda: swarm.cli_process(holder), 60, f"{holder}'s CLI to start")
        later, disjoint = swarm.submit_specs(
            [
                write_task("overlap/b.txt", "later", files=["overlap/b.txt"]),
                write_task("elsewhere/c.txt", "disjoint", files=["elsewhere/*.txt"]),
            ]
        )
        waiting = poll(
            lambda: (swarm.task(later).progress or "").startswith("waiting: task #"),
            60,
            "the later task to wait",
        )
        assert waiting and f"#{first}" in (swarm.task(later).progress or "")
        held_back = swarm.task(later)
        # it waits without an agent: its claim was handed back, no failure counted, its agent free for other work
        assert held_back.status.value == "blocked" and held_back.claimed_by is None, held_back
        assert held_back.failures == 0 and held_back.attempts[-1].outcome.value == "released"
        tasks = wait_settled(swarm, [first, later, disjoint])
    finally:
        swarm.model.clear_faults(fault_id=fault)
    assert [t.merge_state for t in tasks] == [MergeState.MERGED] * 3, [t.merge_detail for t in tasks]
    assert f"#{first}" in (tasks[1].waited_on or "") and tasks[2].waited_on is None
    assert tasks[1].attempts[-1].outcome.value == "completed"
    logs = agent_logs(swarm)
    [first_commit] = task_commits(swarm, first)
    started = re.search(rf"task #{later}: worktree \S+ on \S+ from ([0-9a-f]+)", logs)
    assert started, logs[-3000:]
    base = git(swarm.workdir, "rev-parse", started.group(1))
    ancestor = subprocess.run(["git", "merge-base", "--is-ancestor", first_commit, base], cwd=swarm.workdir)
    assert ancestor.returncode == 0, "the later task did not start from the first one's merged work"
    assert worktrees_left(swarm) == [] and checkout_status(swarm) == []


def test_worktrees_command_lists_and_prunes(swarm: Swarm) -> None:
    listed = subprocess.run(
        [sys.executable, "-m", "aiswarm_server", "worktrees", "--url", swarm.broker.url],
        env=swarm.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    assert "no task worktrees" in listed.stdout
    pruned = subprocess.run(
        [sys.executable, "-m", "aiswarm_server", "worktrees", "--prune", "--url", swarm.broker.url],
        env=swarm.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert pruned.returncode == 0, pruned.stderr
