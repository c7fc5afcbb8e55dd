"""The launcher's side of isolation against a real broker process: an attempt's worktree from claim to merge, a
stale attempt discarded, and work a crashed launcher left landed at the next start."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from aiswarm_server.broker_client import BrokerClient
from aiswarm_server.models import MergeState
from launcher.isolation.attempt import MergeMode, TaskIsolation, prune_orphans
from launcher.isolation.hook import MergeHook, MergeHookError
from launcher.isolation.worktrees import Worktrees
from tests.broker_harness import BrokerProcess

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def git_identity(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path / "no-global-gitconfig"))
    for key in ("GIT_AUTHOR_NAME", "GIT_COMMITTER_NAME"):
        monkeypatch.setenv(key, "Test User")
    for key in ("GIT_AUTHOR_EMAIL", "GIT_COMMITTER_EMAIL"):
        monkeypatch.setenv(key, "user@example.test")


def run_git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    run_git(root, "init", "-q", "-b", "main")
    (root / "a.txt").write_text("alpha\n")
    run_git(root, "add", "-A")
    run_git(root, "commit", "-q", "-m", "initial")
    return root


@pytest.fixture
async def admin(live_broker: BrokerProcess) -> AsyncIterator[BrokerClient]:
    async with BrokerClient(live_broker.url, live_broker.admin_token) as client:
        yield client


async def worker_client(broker: BrokerProcess, admin: BrokerClient, name: str) -> BrokerClient:
    token = (await admin.issue_agent_token(name)).token
    client = BrokerClient(broker.url, token)
    await client.__aenter__()
    await client.register_agent(cli="test")
    return client


def isolation(broker: BrokerProcess) -> TaskIsolation:
    return TaskIsolation(Worktrees(broker.home), isolate_by_default=True, note=lambda agent, line: None)


async def submit(admin: BrokerClient, repo: Path, path: str) -> int:
    reply = await admin.submit_task(f"write {path}", f"write {path}", working_dir=str(repo))
    return reply.tasks[0].id


async def test_an_attempt_works_in_its_worktree_and_lands_on_the_users_branch(
    live_broker: BrokerProcess, admin: BrokerClient, repo: Path
) -> None:
    task_id = await submit(admin, repo, "b.txt")
    worker = await worker_client(live_broker, admin, "iso-1")
    try:
        claim = await worker.claim_task(task_id)
        assert claim.fence_token is not None
        workspace = await isolation(live_broker).prepare("iso-1", admin, worker, task_id, claim.fence_token)
        assert workspace is not None and workspace.worktree is not None and workspace.directory is not None
        again = await worker.claim_task(task_id)  # what the CLI sees: the worktree as its working_dir
        assert again.task is not None and again.task.working_dir == str(workspace.directory)
        (workspace.directory / "b.txt").write_text("beta\n")
        await worker.report_task_completion(task_id, claim.fence_token, success=True, result="ok")
        await isolation(live_broker).finish("iso-1", admin, workspace, claim.fence_token)
    finally:
        await worker.__aexit__(None, None, None)
    task = (await admin.get_task(task_id)).task
    assert task.merge_state is MergeState.MERGED and task.diff_stat and "1 file changed" in task.diff_stat
    assert (repo / "b.txt").read_text() == "beta\n"
    assert not workspace.worktree.path.exists()
    assert run_git(repo, "log", "-1", "--format=%s") == f"aiswarm task {task_id}: write b.txt"


async def test_a_stale_attempt_is_discarded_and_never_merged(
    live_broker: BrokerProcess, admin: BrokerClient, repo: Path
) -> None:
    task_id = await submit(admin, repo, "c.txt")
    first = await worker_client(live_broker, admin, "iso-2")
    second = await worker_client(live_broker, admin, "iso-3")
    try:
        claim = await first.claim_task(task_id)
        assert claim.fence_token is not None
        stale = await isolation(live_broker).prepare("iso-2", admin, first, task_id, claim.fence_token)
        assert stale is not None and stale.directory is not None and stale.worktree is not None
        (stale.directory / "c.txt").write_text("from the stale attempt\n")
        await admin.release_task("iso-2", task_id, "lease lost (test)")
        retry = await second.claim_task(task_id)
        assert retry.fence_token is not None and retry.fence_token != claim.fence_token
        fresh = await isolation(live_broker).prepare("iso-3", admin, second, task_id, retry.fence_token)
        assert fresh is not None and fresh.directory is not None
        assert not stale.worktree.path.exists() and not (fresh.directory / "c.txt").exists()
        await isolation(live_broker).finish(
            "iso-2", admin, stale, claim.fence_token
        )  # the stale launcher ends
        assert (await admin.get_task(task_id)).task.merge_state is MergeState.PENDING
        (fresh.directory / "c.txt").write_text("from the retry\n")
        await second.report_task_completion(task_id, retry.fence_token, success=True, result="ok")
        await isolation(live_broker).finish("iso-3", admin, fresh, retry.fence_token)
    finally:  # clients close in the reverse order of opening (their task groups nest)
        await second.__aexit__(None, None, None)
        await first.__aexit__(None, None, None)
    assert (await admin.get_task(task_id)).task.merge_state is MergeState.MERGED
    assert (repo / "c.txt").read_text() == "from the retry\n"
    assert run_git(repo, "log", "--format=%s", f"--grep=aiswarm task {task_id}:").count("\n") == 0


async def test_work_a_crashed_launcher_left_is_landed_at_the_next_start(
    live_broker: BrokerProcess, admin: BrokerClient, repo: Path
) -> None:
    task_id = await submit(admin, repo, "d.txt")
    worker = await worker_client(live_broker, admin, "iso-4")
    try:
        claim = await worker.claim_task(task_id)
        assert claim.fence_token is not None
        workspace = await isolation(live_broker).prepare("iso-4", admin, worker, task_id, claim.fence_token)
        assert workspace is not None and workspace.directory is not None and workspace.worktree is not None
        (workspace.directory / "d.txt").write_text("delta\n")
        await worker.report_task_completion(task_id, claim.fence_token, success=True, result="ok")
    finally:
        await worker.__aexit__(None, None, None)
    # the launcher died here: nothing committed, nothing merged; the next launch of the same agent recovers it
    orphan = Worktrees(live_broker.home).repository_dir(repo / ".git") / "task-999-1"
    run_git(repo, "worktree", "add", "-q", "--detach", str(orphan))
    removed = await isolation(live_broker).recover(admin, {"iso-4"})
    assert orphan in removed and not orphan.exists() and not workspace.worktree.path.exists()
    task = (await admin.get_task(task_id)).task
    assert task.merge_state is MergeState.MERGED, task.merge_detail
    assert (repo / "d.txt").read_text() == "delta\n"


async def run_to_landing(
    broker: BrokerProcess,
    admin: BrokerClient,
    repo: Path,
    agent: str,
    path: str,
    text: str,
    iso: TaskIsolation,
) -> int:
    """One task through an isolated attempt that writes ``text`` to ``path``, completed and landed by ``iso``."""
    task_id = await submit(admin, repo, path)
    await land(broker, admin, task_id, agent, path, text, iso)
    return task_id


async def land(
    broker: BrokerProcess,
    admin: BrokerClient,
    task_id: int,
    agent: str,
    path: str,
    text: str,
    iso: TaskIsolation,
) -> None:
    """``agent`` claims the submitted task, writes ``text`` to ``path`` in its isolated attempt and completes it;
    ``iso`` lands it."""
    worker = await worker_client(broker, admin, agent)
    try:
        claim = await worker.claim_task(task_id)
        assert claim.fence_token is not None
        workspace = await iso.prepare(agent, admin, worker, task_id, claim.fence_token)
        assert workspace is not None and workspace.directory is not None
        (workspace.directory / path).write_text(text)
        await worker.report_task_completion(task_id, claim.fence_token, success=True, result="ok")
        await iso.finish(agent, admin, workspace, claim.fence_token)
    finally:
        await worker.__aexit__(None, None, None)


HOOK_SCRIPT = """#!/bin/sh
# a pull-request hook: records what it was given, says what it opened
printf '%s|%s|%s|%s|%s|%s\\n' "$AISWARM_BRANCH" "$AISWARM_TASK_ID" "$AISWARM_TASK_TITLE" \\
  "$AISWARM_TARGET_BRANCH" "$AISWARM_REPOSITORY" "$1" >> "$(dirname "$0")/calls.txt"
if [ "$AISWARM_TASK_TITLE" = "write refused.txt" ]; then
  echo "pushing..."; echo "remote: permission denied" >&2; exit 3
fi
echo "pushing $AISWARM_BRANCH"
echo "https://forge.example.test/pulls/$AISWARM_TASK_ID"
"""


async def test_the_merge_hook_runs_instead_of_a_merge_and_its_output_or_failure_is_kept(
    live_broker: BrokerProcess, admin: BrokerClient, repo: Path, tmp_path: Path
) -> None:
    script = tmp_path / "hooks" / "open-pr.sh"
    script.parent.mkdir()
    script.write_text(HOOK_SCRIPT)
    script.chmod(0o755)
    hook = MergeHook(f"{script} {{title}}")
    iso = TaskIsolation(
        Worktrees(live_broker.home),
        isolate_by_default=True,
        merge_mode=MergeMode.HOOK,
        hook=hook,
        note=lambda agent, line: None,
    )
    head = run_git(repo, "rev-parse", "HEAD")
    proposed = await run_to_landing(live_broker, admin, repo, "iso-5", "p.txt", "pr\n", iso)
    task = (await admin.get_task(proposed)).task
    assert task.merge_state is MergeState.PROPOSED, task.merge_detail
    assert task.merge_detail == f"https://forge.example.test/pulls/{proposed}"
    assert run_git(repo, "rev-parse", "HEAD") == head and not (repo / "p.txt").exists()  # nothing merged
    assert (
        task.branch and run_git(repo, "show", f"{task.branch}:p.txt") == "pr"
    )  # the branch is kept for the PR
    calls = (script.parent / "calls.txt").read_text().splitlines()
    assert calls == [f"{task.branch}|{proposed}|write p.txt|main|{repo.resolve()}|write p.txt"]
    refused = await run_to_landing(live_broker, admin, repo, "iso-6", "refused.txt", "no\n", iso)
    failed = (await admin.get_task(refused)).task
    assert failed.merge_state is MergeState.HOOK_FAILED
    assert failed.merge_detail == "merge hook exited 3: remote: permission denied"
    assert failed.branch and run_git(repo, "branch", "--list", failed.branch) != ""
    waited = await admin.wait_for_tasks([proposed, refused], timeout_seconds=5)
    assert waited.done and "merge hook failed: merge hook exited 3" in waited.message


def test_a_merge_hook_naming_an_unknown_placeholder_is_refused_in_one_line() -> None:
    with pytest.raises(MergeHookError, match=r"\{pr_title\}; the placeholders are \{branch\}"):
        MergeHook("gh pr create --title {pr_title}")
    assert MergeHook("echo {branch} ${HOME}").command_for({"branch": "a b"}) == "echo 'a b' ${HOME}"


async def test_a_kept_conflicting_branch_outlives_clean_ups_until_it_is_discarded(
    live_broker: BrokerProcess, admin: BrokerClient, repo: Path
) -> None:
    iso = isolation(live_broker)
    task_id = await submit(admin, repo, "a.txt")
    worker = await worker_client(live_broker, admin, "iso-7")
    try:
        claim = await worker.claim_task(task_id)
        assert claim.fence_token is not None
        workspace = await iso.prepare("iso-7", admin, worker, task_id, claim.fence_token)
        assert workspace is not None and workspace.directory is not None
        (workspace.directory / "a.txt").write_text("alpha, by the task\n")
        (repo / "a.txt").write_text("alpha, by the user\n")
        run_git(repo, "commit", "-q", "-am", "the user moved on")
        await worker.report_task_completion(task_id, claim.fence_token, success=True, result="ok")
        await iso.finish("iso-7", admin, workspace, claim.fence_token)
    finally:
        await worker.__aexit__(None, None, None)
    task = (await admin.get_task(task_id)).task
    assert task.merge_state is MergeState.CONFLICT and task.conflict_files == ["a.txt"], task.merge_detail
    assert task.branch is not None
    # a crashed launcher's leftovers next to it; the next start and `aiswarm worktrees --prune` clean up
    orphan = Worktrees(live_broker.home).repository_dir(repo / ".git") / f"task-{task_id}-9"
    run_git(repo, "worktree", "add", "-q", "--detach", str(orphan))
    assert orphan in await iso.recover(admin, {"iso-7"})
    await prune_orphans(Worktrees(live_broker.home), admin)
    assert run_git(repo, "branch", "--list", task.branch) != ""  # kept: the conflict is not resolved yet
    discarded = (await admin.merge_task(task_id, discard=True)).task
    assert discarded.merge_state is MergeState.DISCARDED
    assert run_git(repo, "branch", "--list", task.branch) == ""


async def test_a_resolution_task_starts_with_the_conflict_markers_and_its_landing_resolves_the_original(
    repo: Path, tmp_path: Path
) -> None:
    broker = BrokerProcess(tmp_path / "home", {"AISWARM_RESOLVE_CONFLICTS": "1"}).start()
    try:
        async with BrokerClient(broker.url, broker.admin_token) as admin:
            iso = isolation(broker)
            first, second = await submit(admin, repo, "a.txt"), await submit(admin, repo, "a.txt")
            for task_id, agent, text in ((first, "r-1", "alpha one\n"), (second, "r-2", "alpha two\n")):
                await land(broker, admin, task_id, agent, "a.txt", text, iso)
            conflicting = (await admin.get_task(second)).task
            assert conflicting.merge_state is MergeState.CONFLICT, conflicting.merge_detail
            [resolver] = (await admin.list_tasks("pending", limit=10)).tasks
            assert resolver.resolves == second
            worker = await worker_client(broker, admin, "r-3")
            try:
                claim = await worker.claim_task(resolver.id)
                assert claim.fence_token is not None
                workspace = await iso.prepare("r-3", admin, worker, resolver.id, claim.fence_token)
                assert workspace is not None and workspace.directory is not None
                marked = (workspace.directory / "a.txt").read_text()
                assert "<<<<<<<" in marked and "alpha one" in marked and "alpha two" in marked
                (workspace.directory / "a.txt").write_text("alpha one and two\n")
                await worker.report_task_completion(resolver.id, claim.fence_token, success=True, result="ok")
                await iso.finish("r-3", admin, workspace, claim.fence_token)
            finally:
                await worker.__aexit__(None, None, None)
            assert (await admin.get_task(resolver.id)).task.merge_state is MergeState.MERGED
            original = (await admin.get_task(second)).task
            assert original.merge_state is MergeState.RESOLVED, original.merge_detail
    finally:
        broker.stop()
    assert (repo / "a.txt").read_text() == "alpha one and two\n"
    assert run_git(repo, "log", "--format=%s", "-3").splitlines() == [
        f"aiswarm task {resolver.id}: Resolve the merge conflict of task #{second}",
        f"aiswarm task {first}: write a.txt",
        "initial",
    ]
    assert (
        run_git(repo, "status", "--porcelain") == "" and run_git(repo, "branch", "--list", "aiswarm/*") == ""
    )
