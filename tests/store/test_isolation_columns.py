"""Isolation fields on tasks (migrations 0004 and 0006), in every store (the ``store`` fixture): recorded at submit,
updated under the fence."""

from __future__ import annotations

import pytest

from aiswarm_server.models import Isolation, IsolationUpdate, MergeState, NewTask, TaskStatus
from aiswarm_server.store import Store

pytestmark = pytest.mark.anyio
NOW = 1_000_000.0


async def test_a_submit_records_isolation_files_base_and_target(store: Store) -> None:
    spec = NewTask(
        title="t",
        prompt="p",
        working_dir="/repo",
        isolation=Isolation.WORKTREE,
        files=["src/app.py", "tests/*.py"],
        base_commit="a" * 40,
        target_branch="main",
    )
    (created, plain) = (await store.create_tasks([spec, NewTask(title="u", prompt="p")], NOW)).created
    for task in (created, await store.get_task(created.id)):
        assert task is not None
        assert (task.isolation, task.files, task.base_commit, task.target_branch) == (
            Isolation.WORKTREE,
            ["src/app.py", "tests/*.py"],
            "a" * 40,
            "main",
        )
        assert task.merge_state is None and task.branch is None and task.conflict_files == []
    assert (plain.isolation, plain.files, plain.base_commit) == (Isolation.AUTO, [], None)


async def test_isolation_updates_need_the_current_fence_and_leave_unset_fields_alone(store: Store) -> None:
    (task,) = (await store.create_tasks([NewTask(title="t", prompt="p", base_commit="b" * 40)], NOW)).created
    claim = (await store.claim("w", None, NOW, 30)).claim
    assert claim is not None
    fence = claim.fence_token
    started = IsolationUpdate(
        branch="aiswarm/task-1", workspace="/wt/task-1-1", merge_state=MergeState.PENDING
    )
    updated = await store.update_isolation(task.id, fence, started, NOW + 1)
    assert (
        updated is not None
        and updated.workspace == "/wt/task-1-1"
        and updated.merge_state is MergeState.PENDING
    )
    assert (
        await store.update_isolation(task.id, fence + 1, IsolationUpdate(workspace="/stale"), NOW + 2) is None
    )
    assert await store.update_isolation(task.id + 99, None, IsolationUpdate(workspace="/x"), NOW + 2) is None
    conflict = IsolationUpdate(
        merge_state=MergeState.CONFLICT, merge_detail="conflicts in a.txt", conflict_files=["a.txt"]
    )
    after = await store.update_isolation(task.id, None, conflict, NOW + 3)
    assert after is not None
    assert (after.merge_state, after.conflict_files, after.branch, after.workspace) == (
        MergeState.CONFLICT,
        ["a.txt"],
        "aiswarm/task-1",
        "/wt/task-1-1",
    )
    assert after.status is TaskStatus.CLAIMED and after.updated_at == NOW + 3


async def test_a_deferred_task_waits_holding_no_agent_until_its_wait_is_ended(store: Store) -> None:
    (task, resolver) = (
        await store.create_tasks(
            [
                NewTask(title="t", prompt="p", files=["src/"], base_commit="c" * 40),
                NewTask(title="r", prompt="p", resolves=1, base_commit="c" * 40),
            ],
            NOW,
        )
    ).created
    assert resolver.resolves == task.id and task.resolves is None
    claim = (await store.claim("w", task.id, NOW, 30)).claim
    assert claim is not None
    assert [t.id for t in await store.isolation_holders()] == [task.id]  # claimed, with declared files
    deferred = (await store.defer("w", task.id, claim.fence_token, "task #9 holds src/", NOW + 1)).task
    assert deferred is not None and deferred.waiting and deferred.claimed_by is None
    assert deferred.progress == "waiting: task #9 holds src/" and deferred.failures == 0
    assert (await store.get_agent("w")).current_task_id is None  # type: ignore[union-attr]
    assert [t.id for t in await store.waiting_tasks(10)] == [task.id]
    assert await store.isolation_holders() == []
    assert (await store.claim("v", task.id, NOW + 2, 30)).claim is None  # blocked: not claimable
    change = await store.end_waits([task.id, resolver.id], NOW + 3)
    assert [t.id for t in change.claimable] == [task.id]  # only what was waiting
    again = (await store.claim("v", task.id, NOW + 4, 30)).claim
    assert again is not None and again.fence_token == claim.fence_token + 1
    held = await store.get_task(task.id)
    assert held is not None and held.waited_on == "task #9 holds src/" and held.claimed_at == NOW + 4
    assert [a.outcome.value for a in held.attempts] == ["released", "running"]
    assert await store.waiting_tasks(10) == []
