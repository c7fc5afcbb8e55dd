"""One task attempt, isolated: what it waits for, the worktree it runs in, and what becomes of its work.

The supervisor calls :meth:`TaskIsolation.prepare` after it reserved a task and before it starts the CLI, and
:meth:`TaskIsolation.finish` when the CLI has exited. In between, the CLI works in the worktree: the broker hands
it the worktree's directory as the task's ``working_dir``.

- **Before**: the broker does not let a task run while a dependency's work is unmerged or a task claimed before
  it holds overlapping declared ``files``: the claim hands it back and it waits without an agent. Should a claim
  still get through (brokers sharing a database, a launch racing a merge), the attempt waits here, reporting why
  as progress, by the same rule (:func:`aiswarm_server.isolation.why_task_waits`).
- **Base**: the submitter's HEAD recorded at submit time; a task that waited, has dependencies or resolves a
  conflict starts from the target branch as it is then, so it sees what it followed. A conflict-resolution task
  (``resolves``) then has the conflicting branch brought in with its conflict markers left in the files.
- **After**: only the attempt whose fence completed the task commits; its worktree is removed (the branch keeps
  the work) and the broker's merge queue merges it (``auto``), keeps the branch for ``aiswarm merge``
  (``manual``), or the merge hook gets it (``hook``, e.g. to open a pull request). Any other attempt's worktree
  is discarded, never merged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from aiswarm_server.broker_calls import BrokerCallError, BrokerCalls
from aiswarm_server.broker_client import BrokerClient
from aiswarm_server.isolation import why_task_waits
from aiswarm_server.models import Isolation, MergeState, Task, TaskStatus
from launcher.isolation.git import GitError
from launcher.isolation.hook import MergeHook
from launcher.isolation.repository import branch_tip, git_context
from launcher.isolation.worktrees import Worktree, Worktrees

log = logging.getLogger("aiswarm.launcher")

POLL_SECONDS = 1.0
"""How often a waiting task re-reads the tasks it waits for (a few cheap broker reads)."""


class MergeMode(StrEnum):
    """What happens to a completed task's branch: merged at once, kept for ``aiswarm merge``, or handed to the
    merge hook (a pull-request flow: ``merge_hook`` in config.toml)."""

    AUTO = "auto"
    MANUAL = "manual"
    HOOK = "hook"


@dataclass(frozen=True)
class Workspace:
    """Where one attempt runs: its worktree, or (``worktree`` None) the task's own directory."""

    directory: Path | None
    worktree: Worktree | None = None


@dataclass
class TaskIsolation:
    """The launcher's side of isolation for every agent of one launch."""

    worktrees: Worktrees
    isolate_by_default: bool
    merge_mode: MergeMode = MergeMode.AUTO
    hook: MergeHook | None = None
    note: Callable[[str, str], None] = field(default=lambda agent, line: log.info("%s: %s", agent, line))

    def wants_worktree(self, task: Task) -> bool:
        """Whether ``task`` runs in a worktree: it was submitted from a git checkout and isolation is on for it."""
        if task.base_commit is None or task.isolation is Isolation.NONE:
            return False
        return task.isolation is Isolation.WORKTREE or self.isolate_by_default

    async def prepare(
        self, agent: str, admin: BrokerClient, worker: BrokerClient, task_id: int, fence: int
    ) -> Workspace | None:
        """Wait for what the task must follow, then give the attempt a fresh worktree.

        Returns the workspace (the task's own directory when it is not isolated), or None when the task was
        lost meanwhile (its lease passed to another attempt, or it was cancelled).
        """
        task = (await admin.get_task(task_id)).task
        if not self.wants_worktree(task) or task.working_dir is None:
            return Workspace(None)
        context = await git_context(Path(task.working_dir))
        if context is None:
            self.note(
                agent, f"task #{task_id}: {task.working_dir} is no longer in a git checkout; runs in place"
            )
            return Workspace(None)
        waited = await self._wait_for_predecessors(agent, admin, worker, task, fence)
        if waited is None:
            return None
        base = task.base_commit or context.head
        # what it waited for (or depends on, or resolves a conflict with) is on the target now, not at submit
        follows = waited or task.waited_on or task.depends_on or task.resolves is not None
        if follows and task.target_branch:
            base = await branch_tip(context.common_dir, task.target_branch) or base
        worktree, problems = await self.worktrees.create(
            checkout=context.checkout, common_dir=context.common_dir, task_id=task_id, fence=fence, base=base
        )
        for problem in problems:
            self.note(agent, problem)
        if task.resolves is not None:
            original = (await admin.get_task(task.resolves)).task
            if original.branch is None:
                raise GitError(
                    ("merge",), context.checkout, 1, f"task #{original.id} has no branch to resolve"
                )
            marked = await self.worktrees.bring_in(worktree, original.branch)
            self.note(
                agent,
                f"task #{task_id}: {original.branch} brought onto {base[:10]}; conflict markers in "
                f"{', '.join(marked) or 'no file'}",
            )
        directory = worktree.directory(context.subdir)
        directory.mkdir(parents=True, exist_ok=True)
        try:
            await admin.record_isolation(
                task_id,
                fence,
                branch=worktree.branch,
                workspace=str(directory),
                merge_state=MergeState.PENDING,
            )
        except BrokerCallError:  # the fence moved on while the worktree was made: this attempt is stale
            await self.worktrees.discard(worktree)
            return None
        self.note(agent, f"task #{task_id}: worktree {worktree.path} on {worktree.branch} from {base[:10]}")
        if waited:
            with contextlib.suppress(BrokerCallError):
                await worker.report_progress(task_id, fence, f"started on {worktree.branch} from {base[:10]}")
        return Workspace(directory, worktree)

    async def finish(self, agent: str, admin: BrokerClient, workspace: Workspace, fence: int) -> None:
        """Commit and merge the attempt's work if it completed the task under ``fence``; else discard it."""
        worktree = workspace.worktree
        if worktree is None:
            return
        task = (await admin.get_task(worktree.task_id)).task
        ours = task.fence_token == fence
        if not ours or task.status is not TaskStatus.COMPLETED:
            final = ours and task.status.is_terminal
            await self.worktrees.discard(worktree, delete_branch=final)
            if final:
                await admin.record_isolation(task.id, fence, merge_state=MergeState.DISCARDED)
            why = "it did not complete the task" if ours else "a newer attempt holds the task"
            self.note(agent, f"task #{task.id}: worktree discarded, never merged ({why})")
            return
        await self.land(agent, admin, task, worktree, fence)

    async def land(self, agent: str, admin: BrokerClient, task: Task, worktree: Worktree, fence: int) -> None:
        """Commit what the completing attempt left, drop its worktree, and merge or keep its branch."""
        commit = await self.worktrees.commit(worktree, task.title)
        await self.worktrees.discard(worktree)
        manual = self.merge_mode is MergeMode.MANUAL or task.target_branch is None
        state = MergeState.MANUAL if manual else MergeState.PENDING
        await admin.record_isolation(
            task.id,
            fence,
            merge_state=state,
            diff_stat=commit.diff_stat or "no changes",
            branch=worktree.branch,
        )
        self.note(
            agent, f"task #{task.id}: committed on {worktree.branch} ({commit.diff_stat or 'no changes'})"
        )
        if not manual:
            await self._merge_or_hand_over(agent, admin, task, worktree.branch, worktree.checkout, fence)

    async def _merge_or_hand_over(
        self, agent: str, admin: BrokerClient, task: Task, branch: str, checkout: Path, fence: int
    ) -> None:
        """Give a committed branch to the merge queue, or (``hook`` mode) to the merge hook instead."""
        if self.merge_mode is MergeMode.HOOK and self.hook is not None:
            outcome = await self.hook.run(task, branch, checkout)
            state = MergeState.PROPOSED if outcome.ok else MergeState.HOOK_FAILED
            await admin.record_isolation(task.id, fence, merge_state=state, merge_detail=outcome.detail)
            self.note(agent, f"task #{task.id}: merge hook: {state}: {outcome.detail}")
            return
        merged = (await admin.merge_task(task.id)).task
        self.note(agent, f"task #{task.id}: {merged.merge_state}: {merged.merge_detail}")

    async def recover(
        self, admin: BrokerClient, agents: set[str], busy: set[int] | None = None
    ) -> list[Path]:
        """Finish what a crashed launcher left, then remove every worktree no live attempt owns.

        A task one of ``agents`` completed whose work was never landed (the launcher died between the CLI's
        report and the merge) is landed now: committed from its worktree if that is still there, and merged.
        Only this launch's agents are recovered: their names are locked to it, so no other launcher is landing
        them; ``busy`` are the tasks this launch is working on right now. An attempt's worktree is live while its
        task is claimed under its fence, or completed and waiting for its launcher to land it.
        """
        busy = busy or set()
        tasks: dict[int, Task | None] = {}
        for common_dir in self.worktrees.repositories():
            for record in self.worktrees.records(common_dir):
                if record.task_id not in tasks:
                    try:
                        tasks[record.task_id] = (await admin.get_task(record.task_id)).task
                    except BrokerCallError:
                        tasks[record.task_id] = None
                task = tasks[record.task_id]
                if (
                    task is not None
                    and task.status is TaskStatus.COMPLETED
                    and task.fence_token == record.fence
                    and task.merge_state is MergeState.PENDING
                    and task.claimed_by in agents
                    and task.id not in busy
                ):
                    self.note(
                        task.claimed_by or "launcher", f"task #{task.id}: landing work a crash left behind"
                    )
                    await self.land(task.claimed_by or "launcher", admin, task, record, record.fence)
                    tasks[record.task_id] = None
        for task in (await admin.list_tasks(TaskStatus.COMPLETED.value, limit=500)).tasks:
            if (
                task.merge_state is MergeState.PENDING
                and task.claimed_by in agents
                and task.id not in tasks
                and task.id not in busy
            ):
                context = await git_context(Path(task.working_dir)) if task.working_dir else None
                checkout = context.checkout if context else Path(task.working_dir or ".")
                agent = task.claimed_by or "launcher"
                await self._merge_or_hand_over(
                    agent, admin, task, task.branch or "", checkout, task.fence_token
                )

        return await self.worktrees.prune(lambda task_id, fence: _live(tasks.get(task_id), fence))

    async def _wait_for_predecessors(
        self,
        agent: str,
        admin: BrokerClient,
        worker: BrokerClient,
        task: Task,
        fence: int,
    ) -> bool | None:
        """Wait while something the task must follow is unmerged; True if it waited, None if the task was lost."""
        waited = False
        told = ""
        while True:
            why = await self._blocker(admin, task)
            if why is None:
                return waited
            waited = True
            if why != told:
                self.note(agent, f"task #{task.id} waits: {why}")
                told = why
            try:
                await worker.report_progress(task.id, fence, f"waiting: {why}")
            except BrokerCallError:
                return None  # no longer ours: cancelled, or the lease went to another attempt
            await asyncio.sleep(POLL_SECONDS)

    async def _blocker(self, admin: BrokerClient, task: Task) -> str | None:
        """Why ``task`` cannot start yet, or None (the broker's rule; its claim normally answered it already)."""
        dependencies = [(await admin.get_task(d)).task for d in task.depends_on]
        holders: list[Task] = []
        if task.files:
            holders = (await admin.list_tasks(TaskStatus.CLAIMED.value, limit=500)).tasks
            completed = (await admin.list_tasks(TaskStatus.COMPLETED.value, limit=500)).tasks
            holders += [t for t in completed if t.merge_unsettled]
        return await why_task_waits(task, dependencies, holders)


def _live(task: Task | None, fence: int) -> bool:
    """Whether an attempt's worktree still has an owner: its task claimed under its fence, or completed and
    waiting for its launcher to land it."""
    if task is None or task.fence_token != fence:
        return False
    return task.status is TaskStatus.CLAIMED or (
        task.status is TaskStatus.COMPLETED and task.merge_state is MergeState.PENDING
    )


async def prune_orphans(worktrees: Worktrees, admin: BrokerCalls) -> list[Path]:
    """Remove every task worktree that no live attempt owns (``aiswarm worktrees --prune``)."""
    tasks: dict[int, Task | None] = {}
    for common_dir in worktrees.repositories():
        for record in worktrees.records(common_dir):
            if record.task_id not in tasks:
                try:
                    tasks[record.task_id] = (await admin.get_task(record.task_id)).task
                except BrokerCallError:
                    tasks[record.task_id] = None
    return await worktrees.prune(lambda task_id, fence: _live(tasks.get(task_id), fence))
