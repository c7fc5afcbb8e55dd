"""The launcher's side of isolation against a real broker process: an attempt's worktree from claim to merge, a
stale attempt discarded, and work a crashed launcher left landed at the next start."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from aiswarm_server.broker_client import BrokerClient
from aiswarm_server.models import MergeState
from launcher.isolation.attempt import TaskIsolation
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
