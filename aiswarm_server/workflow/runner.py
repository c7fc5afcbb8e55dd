"""Run a workflow through the broker: submit what is ready, follow it live, drive review loops, keep a record.

The broker holds the tasks and their dependencies; this runner adds what a task DAG alone cannot say: a review
loop (implement -> review -> fix, at most N reviews) whose next task depends on the previous verdict. Each step's
tasks are written to a record file after every change, so a re-run skips the steps that completed (and whose
definition did not change) and follows the ones still running instead of submitting them again.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, Field, ValidationError

from aiswarm_server.broker_calls import BrokerCallError
from aiswarm_server.models import Task, TaskStatus
from aiswarm_server.replies import SubmitReply, TaskReply, WaitTasksReply
from aiswarm_server.workflow.spec import Step, Workflow

POLL_SECONDS = 2


class StepOutcome(StrEnum):
    """How a step of the workflow ended."""

    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    REVIEW_EXHAUSTED = "review_exhausted"  # the last allowed review still asked for changes
    SKIPPED = "skipped"  # a dependency did not complete


class TaskRole(StrEnum):
    """What a broker task does for its step."""

    WORK = "work"
    REVIEW = "review"
    FIX = "fix"


class StepTask(BaseModel):
    """One broker task submitted for a step."""

    id: int
    role: TaskRole
    round: int = 0


class StepState(BaseModel):
    """Where one step stands; written to the record file."""

    fingerprint: str
    tasks: list[StepTask] = Field(default_factory=list)
    outcome: StepOutcome | None = None
    final_task: int | None = None  # the task dependents wait for, once known
    reviews: int = 0
    detail: str = ""
    reused: bool = Field(default=False, exclude=True)


class FlowRecord(BaseModel):
    """What a workflow's runs submitted, per step key."""

    name: str
    steps: dict[str, StepState] = Field(default_factory=dict)


class PrimaryBroker(Protocol):
    """The broker calls the runner makes (every :class:`~aiswarm_server.broker_calls.BrokerCalls` provides them)."""

    async def submit_tasks(self, tasks: list[dict[str, Any]]) -> SubmitReply:
        """Submit tasks in one batch."""
        ...

    async def get_task(self, task_id: int) -> TaskReply:
        """Look at one task."""
        ...

    async def wait_for_tasks(
        self, task_ids: list[int], mode: Any = "all", timeout_seconds: int | None = None
    ) -> WaitTasksReply:
        """Wait for tasks to finish."""
        ...


@dataclass(frozen=True)
class StepResult:
    """One line of a run's summary."""

    key: str
    title: str
    outcome: StepOutcome
    reviews: int
    task_ids: list[int]
    detail: str
    reused: bool


@dataclass(frozen=True)
class FlowSummary:
    """How a run ended, step by step."""

    name: str
    steps: list[StepResult]

    @property
    def succeeded(self) -> bool:
        """Whether every step completed."""
        return all(step.outcome is StepOutcome.COMPLETED for step in self.steps)

    def as_dict(self) -> dict[str, Any]:
        """The summary as plain JSON data."""
        return {
            "name": self.name,
            "succeeded": self.succeeded,
            "steps": [
                {
                    "key": s.key,
                    "title": s.title,
                    "outcome": s.outcome.value,
                    "reviews": s.reviews,
                    "task_ids": s.task_ids,
                    "detail": s.detail,
                    "reused": s.reused,
                }
                for s in self.steps
            ],
        }


_APPROVE = re.compile(r"^\W*(approved?|lgtm|accept(ed)?)\b", re.IGNORECASE)
_CHANGES = re.compile(r"^\W*(request(ed)?[ _-]changes|changes|reject(ed)?)\b", re.IGNORECASE)


def review_verdict(task: Task) -> tuple[bool, str]:
    """Whether a finished review task approved the work, and what it said.

    ``data.verdict`` (``approve`` / ``changes``) decides if present, else the first words of the result
    (``APPROVE`` ..., ``CHANGES: ...``, ``request changes``). A review without a recognisable verdict counts as
    asking for changes, so an unclear reviewer cannot pass work it did not approve.
    """
    said = (task.result or "").strip()
    data = task.data or {}
    verdict = data.get("verdict")
    if isinstance(verdict, str):
        feedback = str(data.get("feedback") or said)
        if _APPROVE.match(verdict):
            return True, feedback
        if _CHANGES.match(verdict):
            return False, feedback
    if _APPROVE.match(said):
        return True, said
    if _CHANGES.match(said):
        return False, said
    return False, f"the reviewer gave no verdict (approve / changes); it said: {said[:500] or 'nothing'}"


def _commented(text: str) -> str:
    return "\n".join(f"# {line}".rstrip() for line in text.strip().splitlines())


def _first_line(text: str | None, limit: int = 160) -> str:
    line = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


class FlowRunner:
    """Submits a workflow's steps as they become ready and follows them to the end."""

    def __init__(
        self,
        flow: Workflow,
        broker: PrimaryBroker,
        record_path: Path,
        base_dir: Path,
        *,
        on_event: Callable[[str], None] = lambda line: None,
        fresh: bool = False,
        poll_seconds: int = POLL_SECONDS,
    ) -> None:
        """``record_path`` keeps what earlier runs submitted; tasks work in ``base_dir`` unless a step says otherwise."""
        self.flow = flow
        self.broker = broker
        self.record_path = record_path
        self.base_dir = base_dir
        self.on_event = on_event
        self.fresh = fresh
        self.poll_seconds = poll_seconds
        self.record = FlowRecord(name=flow.name)
        self._seen: dict[int, tuple[str, str | None, str | None]] = {}

    # record --------------------------------------------------------------------------------------
    def _load_record(self) -> FlowRecord | None:
        if self.fresh or not self.record_path.exists():
            return None
        try:
            return FlowRecord.model_validate_json(self.record_path.read_text(encoding="utf-8"))
        except (OSError, ValidationError, ValueError):
            self.on_event(f"ignoring the unreadable record {self.record_path}: every step runs again")
            return None

    def _save(self) -> None:
        self.record_path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.record_path.with_suffix(".tmp")
        partial.write_text(json.dumps(self.record.model_dump(mode="json"), indent=2), encoding="utf-8")
        os.replace(partial, self.record_path)

    async def _carry_over(self) -> None:
        """Keep what an earlier run finished or still runs; start afresh what failed, changed or depends on redone work."""
        old = self._load_record()
        redone: set[str] = set()
        for step in self.flow.in_dependency_order():
            prev = old.steps.get(step.key) if old else None
            keep = (
                prev is not None
                and prev.fingerprint == step.fingerprint()
                and not redone.intersection(step.depends_on)
                and prev.outcome in (None, StepOutcome.COMPLETED)
                and bool(prev.tasks)
            )
            if keep and prev is not None:
                current = await self._task_or_none(prev.tasks[-1].id)
                if current is None or (
                    prev.outcome is StepOutcome.COMPLETED and current.status is not TaskStatus.COMPLETED
                ):
                    keep = False
            if keep and prev is not None:
                prev.reused = prev.outcome is StepOutcome.COMPLETED
                self.record.steps[step.key] = prev
                if prev.reused:
                    self.on_event(
                        f"{step.key}: completed in an earlier run (task #{prev.final_task}), skipped"
                    )
                else:
                    self.on_event(
                        f"{step.key}: still running from an earlier run (task #{prev.tasks[-1].id})"
                    )
            else:
                self.record.steps[step.key] = StepState(fingerprint=step.fingerprint())
                redone.add(step.key)

    async def _task_or_none(self, task_id: int) -> Task | None:
        try:
            return (await self.broker.get_task(task_id)).task
        except BrokerCallError:
            return None

    # running -------------------------------------------------------------------------------------
    async def run(self) -> FlowSummary:
        """Run the workflow to its end (every step completed, failed, skipped or out of review rounds)."""
        await self.start()
        return await self.follow()

    async def start(self) -> None:
        """Take over what earlier runs did and submit the steps that are ready."""
        await self._carry_over()
        self._save()
        self._skip_broken()
        await self._submit_ready()

    async def follow(self) -> FlowSummary:
        """Follow the submitted tasks, submitting reviews, fixes and newly ready steps, until the end."""
        while True:
            self._skip_broken()
            await self._submit_ready()
            current = self._current_tasks()
            if not current:
                break
            reply = await self.broker.wait_for_tasks(
                list(current), mode="any", timeout_seconds=self.poll_seconds
            )
            for task in reply.tasks:
                key = current.get(task.id)
                if key is None:
                    continue
                self._report_change(key, task)
                if task.status.is_terminal:
                    await self._advance(key, task)
            self._save()
        self._save()
        return self._summary()

    def _current_tasks(self) -> dict[int, str]:
        return {
            state.tasks[-1].id: key
            for key, state in self.record.steps.items()
            if state.outcome is None and state.tasks
        }

    def _skip_broken(self) -> None:
        for step in self.flow.in_dependency_order():
            state = self.record.steps[step.key]
            if state.outcome is not None or state.tasks:
                continue
            broken = [
                d
                for d in step.depends_on
                if self.record.steps[d].outcome not in (None, StepOutcome.COMPLETED)
            ]
            if broken:
                dep = self.record.steps[broken[0]]
                state.outcome = StepOutcome.SKIPPED
                state.detail = f"dependency {broken[0]!r} ended {dep.outcome.value if dep.outcome else '?'}"
                self.on_event(f"{step.key}: skipped, {state.detail}")

    async def _submit_ready(self) -> None:
        ready: list[Step] = []
        for step in self.flow.in_dependency_order():
            state = self.record.steps[step.key]
            deps_known = all(self.record.steps[d].final_task is not None for d in step.depends_on)
            if state.outcome is None and not state.tasks and deps_known:
                ready.append(step)
        if not ready:
            return
        specs = [
            self._task_spec(
                step,
                title=step.title,
                prompt=step.prompt,
                persona=self._persona(step),
                depends_on=[self.record.steps[d].final_task or 0 for d in step.depends_on],
                retry_of=step,
            )
            for step in ready
        ]
        reply = await self.broker.submit_tasks(specs)
        for step, task in zip(ready, reply.tasks, strict=True):
            state = self.record.steps[step.key]
            state.tasks.append(StepTask(id=task.id, role=TaskRole.WORK))
            if step.review is None:
                state.final_task = task.id
            self.on_event(f"{step.key}: submitted as task #{task.id}{self._persona_note(task.persona)}")
        self._save()

    async def _submit_one(self, step: Step, role: TaskRole, round_: int, spec: dict[str, Any]) -> None:
        reply = await self.broker.submit_tasks([spec])
        task = reply.tasks[0]
        self.record.steps[step.key].tasks.append(StepTask(id=task.id, role=role, round=round_))
        self._save()
        self.on_event(f"{step.key}: {role.value} round {round_} submitted as task #{task.id}")

    def _persona(self, step: Step) -> str | None:
        return step.persona or self.flow.defaults.persona

    @staticmethod
    def _persona_note(persona: str | None) -> str:
        return f" ({persona})" if persona else ""

    def _task_spec(
        self,
        step: Step,
        *,
        title: str,
        prompt: str,
        persona: str | None,
        depends_on: list[int],
        retry_of: Step | None,
    ) -> dict[str, Any]:
        defaults = self.flow.defaults
        retry = (retry_of.retry if retry_of is not None else None) or defaults.retry
        working = Path(step.working_dir) if step.working_dir else Path()
        directory = (self.base_dir / working).resolve() if not working.is_absolute() else working
        return {
            "title": title[:200],
            "prompt": prompt,
            "persona": persona,
            "capabilities": step.capabilities,
            "depends_on": depends_on,
            "priority": step.priority if step.priority is not None else defaults.priority,
            "working_dir": str(directory),
            "max_attempts": retry.attempts,
            "timeout_seconds": round(step.timeout or defaults.timeout),
            "retry_delay_seconds": retry.delay,
            "retry_backoff": retry.backoff,
        }

    def _report_change(self, key: str, task: Task) -> None:
        seen = (task.status.value, task.claimed_by, task.progress)
        before = self._seen.get(task.id)
        if before == seen:
            return
        self._seen[task.id] = seen
        if task.status is TaskStatus.CLAIMED and (before is None or before[1] != task.claimed_by):
            self.on_event(f"{key}: task #{task.id} claimed by {task.claimed_by}")
        if task.progress and (before is None or before[2] != task.progress):
            self.on_event(f"{key}: task #{task.id} progress: {_first_line(task.progress)}")
        if task.status is TaskStatus.BLOCKED and task.retry_at is not None:
            self.on_event(f"{key}: task #{task.id} failed ({_first_line(task.error)}); retrying later")

    async def _advance(self, key: str, task: Task) -> None:
        step = self.flow.step(key)
        state = self.record.steps[key]
        role = state.tasks[-1]
        if task.status is not TaskStatus.COMPLETED:
            dependency = (
                task.status is TaskStatus.FAILED
                and not task.attempts
                and (task.error or "").startswith("dependency #")
            )
            if dependency:
                state.outcome = StepOutcome.SKIPPED
            elif task.status is TaskStatus.CANCELLED:
                state.outcome = StepOutcome.CANCELLED
            else:
                state.outcome = StepOutcome.FAILED
            state.detail = f"task #{task.id} ended {task.status.value}: {_first_line(task.error)}"
            state.final_task = None
            self.on_event(f"{key}: {state.outcome.value}, {state.detail}")
            return
        review = step.review
        if review is None:
            self._finish(key, state, StepOutcome.COMPLETED, task, _first_line(task.result))
            return
        if role.role in (TaskRole.WORK, TaskRole.FIX):
            round_ = state.reviews + 1
            self.on_event(f"{key}: task #{task.id} completed; review round {round_} of {review.rounds}")
            prompt = f"{review.prompt.rstrip()}\n\n" + _commented(
                f"aiswarm review round {round_} of {review.rounds} for the task {step.title!r} "
                f"(task #{task.id}), which reported: {_first_line(task.result, 400) or 'nothing'}\n"
                "Report your verdict with report_task_completion: a result starting with APPROVE when the "
                "work is acceptable, or with CHANGES: followed by exactly what must change."
            )
            spec = self._task_spec(
                step,
                title=f"Review ({round_}/{review.rounds}): {step.title}",
                prompt=prompt,
                persona=review.persona,
                depends_on=[task.id],
                retry_of=None,
            )
            await self._submit_one(step, TaskRole.REVIEW, round_, spec)
            return
        approved, feedback = review_verdict(task)
        state.reviews = role.round
        if approved:
            self._finish(key, state, StepOutcome.COMPLETED, task, f"approved in review round {role.round}")
            return
        if role.round >= review.rounds:
            self._finish(
                key,
                state,
                StepOutcome.REVIEW_EXHAUSTED,
                None,
                f"still asked for changes after {review.rounds} review round(s): {_first_line(feedback)}",
            )
            return
        self.on_event(f"{key}: review round {role.round} asked for changes: {_first_line(feedback)}")
        prompt = f"{step.prompt.rstrip()}\n\n" + _commented(
            f"aiswarm fix round {role.round}: this task was done before, and a review asked for changes. "
            f"Change the work so the review's points are addressed. The review said:\n{feedback}"
        )
        spec = self._task_spec(
            step,
            title=f"Fix ({role.round}): {step.title}",
            prompt=prompt,
            persona=review.fix_persona or self._persona(step),
            depends_on=[task.id],
            retry_of=step,
        )
        await self._submit_one(step, TaskRole.FIX, role.round, spec)

    def _finish(
        self, key: str, state: StepState, outcome: StepOutcome, task: Task | None, detail: str
    ) -> None:
        state.outcome = outcome
        state.detail = detail
        state.final_task = task.id if task is not None and outcome is StepOutcome.COMPLETED else None
        self.on_event(f"{key}: {outcome.value}, {detail}" if detail else f"{key}: {outcome.value}")

    def _summary(self) -> FlowSummary:
        results = []
        for step in self.flow.tasks:
            state = self.record.steps[step.key]
            results.append(
                StepResult(
                    key=step.key,
                    title=step.title,
                    outcome=state.outcome or StepOutcome.FAILED,
                    reviews=state.reviews,
                    task_ids=[t.id for t in state.tasks],
                    detail=state.detail,
                    reused=state.reused,
                )
            )
        return FlowSummary(name=self.flow.name, steps=results)
