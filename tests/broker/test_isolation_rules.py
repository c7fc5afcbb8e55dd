"""The broker's isolation rules on a real SQLite file and real git repositories: what a submit records, who
may record an attempt's worktree, and the merge queue behind merge_task."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest

from aiswarm_server.broker import Broker
from aiswarm_server.errors import InvalidRequest, StaleClaim
from aiswarm_server.models import Isolation, IsolationUpdate, MergeState, TaskRequest, TaskStatus
from launcher.isolation.worktrees import Worktrees
from tests.broker_harness import FakeClock
from tests.conftest import PRIMARY, worker

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
    (root / "src").mkdir(parents=True)
    run_git(root, "init", "-q", "-b", "main")
    (root / "a.txt").write_text("alpha\n")
    run_git(root, "add", "-A")
    run_git(root, "commit", "-q", "-m", "initial")
    return root


async def submit(broker: Broker, directory: Path | None, **kwargs: object) -> int:
    spec = TaskRequest(title="t", prompt="do it", working_dir=str(directory) if directory else None, **kwargs)  # type: ignore[arg-type]
    return (await broker.submit_tasks(PRIMARY, [spec])).tasks[0].id


async def test_a_submit_in_a_checkout_records_the_submitters_head_and_branch(
    abroker: Broker, repo: Path
) -> None:
    task_id = await submit(abroker, repo / "src", files=["app.py", "tests/"])
    task = (await abroker.get_task(task_id)).task
    assert task.base_commit == run_git(repo, "rev-parse", "HEAD") and task.target_branch == "main"
    assert task.files == ["app.py", "tests/"] and task.isolation is Isolation.AUTO


async def test_no_git_is_recorded_outside_a_checkout_or_with_isolation_off(
    abroker: Broker, repo: Path, tmp_path: Path
) -> None:
    for task_id in (
        await submit(abroker, tmp_path),
        await submit(abroker, None),
        await submit(abroker, repo, isolation=Isolation.NONE),
    ):
        task = (await abroker.get_task(task_id)).task
        assert (task.base_commit, task.target_branch) == (None, None)


@pytest.mark.parametrize("entry", ["/etc/passwd", "../outside", "a/../../b", ""])
async def test_declared_files_must_stay_inside_the_working_dir(
    abroker: Broker, repo: Path, entry: str
) -> None:
    with pytest.raises(InvalidRequest, match="relative to working_dir"):
        await submit(abroker, repo, files=[entry])


async def test_only_the_current_fence_records_an_attempts_worktree(abroker: Broker, repo: Path) -> None:
    task_id = await submit(abroker, repo)
    claim = await abroker.claim_task(worker("w"), None)
    assert claim.fence_token is not None
    update = IsolationUpdate(
        branch=f"aiswarm/task-{task_id}", workspace=str(repo), merge_state=MergeState.PENDING
    )
    recorded = await abroker.record_isolation(task_id, claim.fence_token, update)
    assert recorded.task.merge_state is MergeState.PENDING
    with pytest.raises(StaleClaim, match="stale"):
        await abroker.record_isolation(
            task_id, claim.fence_token + 1, IsolationUpdate(workspace="/elsewhere")
        )


async def test_merge_task_merges_a_completed_tasks_branch_and_refuses_what_it_cannot(
    abroker: Broker, repo: Path
) -> None:
    first = await submit(abroker, repo)
    dependent = (
        (
            await abroker.submit_tasks(
                PRIMARY, [TaskRequest(title="d", prompt="do", working_dir=str(repo), depends_on=[first])]
            )
        )
        .tasks[0]
        .id
    )
    claim = await abroker.claim_task(worker("w"), first)
    assert claim.fence_token is not None
    with pytest.raises(InvalidRequest, match="did not run in a worktree"):
        await abroker.merge_task(first)
    ctx_head = run_git(repo, "rev-parse", "HEAD")
    worktrees = Worktrees(abroker.settings.home)
    worktree, _ = await worktrees.create(
        checkout=repo, common_dir=repo / ".git", task_id=first, fence=claim.fence_token, base=ctx_head
    )
    await abroker.record_isolation(
        first, claim.fence_token, IsolationUpdate(branch=worktree.branch, merge_state=MergeState.PENDING)
    )
    with pytest.raises(InvalidRequest, match="only a completed task"):
        await abroker.merge_task(first)
    (worktree.path / "a.txt").write_text("alpha, by the task\n")
    await worktrees.commit(worktree, "edit a")
    await worktrees.discard(worktree)
    await abroker.report_task_completion(worker("w"), first, claim.fence_token, success=True, result="ok")  # type: ignore[arg-type]
    waits = await abroker.claim_task(worker("v"), dependent)
    assert not waits.claimed and f"task #{first}" in waits.message  # its dependency's work is not merged
    # a conflict does not hold up dependents (they run on the target as it is), but it blocks their merge
    await abroker.record_isolation(first, None, IsolationUpdate(merge_state=MergeState.CONFLICT))
    await abroker.sweep()
    dep_claim = await abroker.claim_task(worker("v"), dependent)
    assert dep_claim.fence_token is not None
    await abroker.record_isolation(
        dependent, dep_claim.fence_token, IsolationUpdate(merge_state=MergeState.MANUAL)
    )
    await abroker.report_task_completion(
        worker("v"), dependent, dep_claim.fence_token, success=True, result="ok"
    )  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest, match=f"merge_task {first}"):
        await abroker.merge_task(dependent)
    merged = (await abroker.merge_task(first)).task
    assert merged.merge_state is MergeState.MERGED and "fast-forward" in (merged.merge_detail or ""), merged
    assert (repo / "a.txt").read_text() == "alpha, by the task\n"
    assert "Merged onto main" in (await abroker.get_task(first)).message
    with pytest.raises(InvalidRequest, match="merged already"):
        await abroker.merge_task(first)
    discarded = (await abroker.merge_task(dependent, discard=True)).task
    assert discarded.merge_state is MergeState.DISCARDED


# --- waiting without an agent, and the primary told of the merge --------------------------------------------


async def test_a_task_whose_declared_files_overlap_a_running_one_waits_without_an_agent_until_it_is_merged(
    abroker: Broker, repo: Path, clock: FakeClock
) -> None:
    first = await submit(abroker, repo, files=["src/"])
    later = await submit(abroker, repo / "src", files=["app.py"])
    held = await abroker.claim_task(worker("w1"), first)
    assert held.fence_token is not None
    clock.advance(5)
    refused = await abroker.claim_task(worker("w2"), later)
    assert not refused.claimed and f"task #{first}" in refused.message and "src/app.py" in refused.message
    waiting = (await abroker.get_task(later)).task
    assert (
        waiting.status is TaskStatus.BLOCKED and waiting.waiting and f"#{first}" in (waiting.waited_on or "")
    )
    assert (waiting.progress or "").startswith(f"waiting: task #{first}")
    assert "holding no agent" in (await abroker.get_task(later)).message
    assert waiting.failures == 0 and [a.outcome.value for a in waiting.attempts] == ["released"]
    assert (await abroker.agent_status(worker("w2"))).current_task is None  # its agent is free for other work
    await abroker.sweep()
    assert (await abroker.get_task(later)).task.status is TaskStatus.BLOCKED
    await abroker.record_isolation(first, held.fence_token, IsolationUpdate(merge_state=MergeState.PENDING))
    await abroker.report_task_completion(worker("w1"), first, held.fence_token, success=True, result="ok")
    await abroker.sweep()
    assert (await abroker.get_task(later)).task.status is TaskStatus.BLOCKED  # completed, not merged yet
    await abroker.record_isolation(first, None, IsolationUpdate(merge_state=MergeState.MERGED))
    assert (await abroker.get_task(later)).task.status is TaskStatus.PENDING  # the merge ended the wait
    clock.advance(100)
    runs = await abroker.claim_task(worker("w2"), later)
    assert runs.claimed and runs.lease_expires_at is not None and runs.lease_expires_at > clock() + 30
    task = (await abroker.get_task(later)).task
    assert task.claimed_at == clock() and task.failures == 0 and task.waited_on  # its timeout starts now


async def test_disjoint_files_other_repositories_and_later_claims_do_not_wait(
    abroker: Broker, repo: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other"
    other.mkdir()
    run_git(other, "init", "-q", "-b", "main")
    (other / "x.txt").write_text("x\n")
    run_git(other, "add", "-A")
    run_git(other, "commit", "-q", "-m", "initial")
    first = await submit(abroker, repo, files=["src/**"])
    disjoint = await submit(abroker, repo, files=["docs/*.md", "a.txt"])
    elsewhere = await submit(abroker, other, files=["src/"])
    assert (await abroker.claim_task(worker("w1"), first)).claimed
    assert (await abroker.claim_task(worker("w2"), disjoint)).claimed
    assert (await abroker.claim_task(worker("w3"), elsewhere)).claimed


async def test_wait_for_tasks_ends_when_the_merge_is_settled_and_names_a_conflict(
    abroker: Broker, repo: Path
) -> None:
    task_id = await submit(abroker, repo)
    held = await abroker.claim_task(worker("w"), task_id)
    assert held.fence_token is not None
    update = IsolationUpdate(branch="aiswarm/x/task-1", merge_state=MergeState.PENDING)
    await abroker.record_isolation(task_id, held.fence_token, update)
    await abroker.report_task_completion(worker("w"), task_id, held.fence_token, success=True, result="ok")
    waiting = asyncio.create_task(abroker.wait_for_tasks([task_id], "all", 60))
    await asyncio.sleep(0.3)
    assert not waiting.done()  # completed, but its work is still on its way back
    early = await abroker.wait_for_tasks([task_id], "all", 0)
    assert not early.done and f"waiting for the merge queue: [{task_id}]" in early.message
    conflict = IsolationUpdate(
        merge_state=MergeState.CONFLICT,
        merge_detail="the task's changes conflict with main in shared.txt",
        conflict_files=["shared.txt"],
    )
    await abroker.record_isolation(task_id, None, conflict)
    reply = await asyncio.wait_for(waiting, 10)
    assert reply.done and reply.finished == [task_id]
    assert f"Task #{task_id} is conflicting (shared.txt)" in reply.message
    assert "aiswarm/x/task-1 is kept" in reply.message
    await abroker.record_isolation(task_id, None, IsolationUpdate(merge_state=MergeState.MANUAL))
    manual = await abroker.wait_for_tasks([task_id], "all", 0)
    assert f"Task #{task_id} is waiting for merge on branch aiswarm/x/task-1" in manual.message


# --- a conflict resubmitted once as a task that resolves it -------------------------------------------------


async def run_isolated(broker: Broker, task_id: int, agent: str, text: str) -> None:
    """What the launcher does for one isolated attempt that writes ``text`` to a.txt, up to the merge queue."""
    held = await broker.claim_task(worker(agent), task_id)
    assert held.fence_token is not None, held.message
    task = (await broker.get_task(task_id)).task
    worktrees = Worktrees(broker.settings.home)
    base = task.base_commit or ""
    if task.resolves is not None:
        base = run_git(Path(task.working_dir or ""), "rev-parse", "main")
    worktree, _ = await worktrees.create(
        checkout=Path(task.working_dir or ""),
        common_dir=Path(task.working_dir or "") / ".git",
        task_id=task_id,
        fence=held.fence_token,
        base=base,
    )
    if task.resolves is not None:
        original = (await broker.get_task(task.resolves)).task
        assert await worktrees.bring_in(worktree, original.branch or "") == ("a.txt",)
        assert "<<<<<<<" in (worktree.path / "a.txt").read_text()  # the conflict is there to resolve
    (worktree.path / "a.txt").write_text(text)
    await worktrees.commit(worktree, task.title)
    await worktrees.discard(worktree)
    update = IsolationUpdate(branch=worktree.branch, merge_state=MergeState.PENDING)
    await broker.record_isolation(task_id, held.fence_token, update)
    await broker.report_task_completion(worker(agent), task_id, held.fence_token, success=True, result="ok")


async def conflicting_pair(broker: Broker, repo: Path) -> tuple[int, int]:
    """Two tasks that change a.txt from the same base: the first merged, the second conflicting."""
    broker.settings.resolve_conflicts = True
    first, second = await submit(broker, repo), await submit(broker, repo)
    await run_isolated(broker, first, "w1", "alpha, as the first task has it\n")
    assert (await broker.merge_task(first)).task.merge_state is MergeState.MERGED
    await run_isolated(broker, second, "w2", "alpha, as the second task has it\n")
    return first, second


async def test_a_conflict_is_resubmitted_once_and_the_resolution_landing_resolves_the_original(
    abroker: Broker, repo: Path
) -> None:
    _, second = await conflicting_pair(abroker, repo)
    conflicting = (await abroker.merge_task(second)).task
    assert conflicting.merge_state is MergeState.CONFLICT and conflicting.conflict_files == ["a.txt"]
    [resolver] = (await abroker.list_tasks(TaskStatus.PENDING, 10)).tasks
    assert f"task #{resolver.id} resolves it" in (conflicting.merge_detail or "")
    assert resolver.resolves == second and resolver.isolation is Isolation.WORKTREE
    assert "- a.txt" in resolver.prompt and conflicting.branch and conflicting.branch in resolver.prompt
    assert resolver.persona is None  # no live implementer agent: any agent may take it
    told = await abroker.wait_for_tasks([second], "all", 0)
    assert f"Task #{second} is conflicting (a.txt)" in told.message
    again = (await abroker.merge_task(second)).task  # the primary retries before resolving: no second round
    assert again.merge_state is MergeState.CONFLICT
    assert [t.id for t in (await abroker.list_tasks(TaskStatus.PENDING, 10)).tasks] == [resolver.id]
    await run_isolated(abroker, resolver.id, "w3", "alpha, as both tasks have it\n")
    merged = (await abroker.merge_task(resolver.id)).task
    assert merged.merge_state is MergeState.MERGED, merged.merge_detail
    assert (repo / "a.txt").read_text() == "alpha, as both tasks have it\n"
    original = (await abroker.get_task(second)).task
    assert original.merge_state is MergeState.RESOLVED and f"task #{resolver.id}" in (
        original.merge_detail or ""
    )
    assert run_git(repo, "branch", "--list", conflicting.branch) == ""  # nothing kept any more
    assert run_git(repo, "status", "--porcelain") == ""


async def test_a_resolution_that_conflicts_again_is_not_resubmitted(abroker: Broker, repo: Path) -> None:
    _, second = await conflicting_pair(abroker, repo)
    await abroker.merge_task(second)
    [resolver] = (await abroker.list_tasks(TaskStatus.PENDING, 10)).tasks
    await run_isolated(abroker, resolver.id, "w3", "alpha, as both tasks have it\n")
    (repo / "a.txt").write_text("alpha, as the user has it now\n")
    run_git(repo, "commit", "-q", "-am", "the user moved on again")
    again = (await abroker.merge_task(resolver.id)).task
    assert again.merge_state is MergeState.CONFLICT
    assert (await abroker.list_tasks(TaskStatus.PENDING, 10)).tasks == []
    assert (await abroker.get_task(second)).task.merge_state is MergeState.CONFLICT


async def test_conflicts_are_not_resubmitted_unless_asked(abroker: Broker, repo: Path) -> None:
    _, second = await conflicting_pair(abroker, repo)
    abroker.settings.resolve_conflicts = False
    assert (await abroker.merge_task(second)).task.merge_state is MergeState.CONFLICT
    assert (await abroker.list_tasks(TaskStatus.PENDING, 10)).tasks == []
