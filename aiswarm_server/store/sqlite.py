"""The SQLite store: the embedded default, owned by one broker process.

Each store method below is its transaction's body: ``@writes`` / ``@reads`` (:mod:`.sqlite_database`) run it
inside ``BEGIN IMMEDIATE`` / ``BEGIN`` ... ``COMMIT`` on the store's connection (``db``), on the event loop or on
the store's thread. One writer at a time is SQLite's own lock order. The decisions and the messages agents read
come from :mod:`.rules`.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from typing_extensions import override

from aiswarm_server.errors import StaleClaim
from aiswarm_server.models import (
    GONE_AGENT_STATUSES,
    AgentState,
    AttemptOutcome,
    EventKind,
    OnUnanswered,
    QuestionStatus,
    TaskChange,
    TaskStatus,
    UsageRecord,
)
from aiswarm_server.store import rows, rules
from aiswarm_server.store.base import AgentPoll, AgentProfile, ClaimResult, QuestionResult, Store, StoreStats
from aiswarm_server.store.isolation import submitted_values, update_assignments
from aiswarm_server.store.rows import (
    USAGE_COLUMNS,
    Row,
    agent_from_row,
    dumps,
    event_from_row,
    identity_from_row,
    question_from_row,
    task_from_row,
    usage_from_row,
)
from aiswarm_server.store.sqlite_database import Db, SqliteDatabase, migrations, reads, writes

__all__ = ["SqliteStore", "migrations"]

if TYPE_CHECKING:
    from aiswarm_server.models import Agent, Identity, IsolationUpdate, NewQuestion, NewTask, Question, Task

# A task fits an agent when its persona is unset or the agent's, and its capabilities are a subset of the agent's.
_FITS = """
    (t.persona IS NULL OR t.persona = :persona)
    AND (t.capabilities = '[]' OR NOT EXISTS (
        SELECT 1 FROM json_each(t.capabilities) AS need
        WHERE need.value NOT IN (SELECT value FROM json_each(:capabilities))))
"""

# Pending tasks in claim order come from the partial index: left to itself, the planner picks
# tasks_by_status and sorts every pending task on each claim (262 µs against 49 µs per claim with
# 1,000 pending, measured).
_PENDING = "tasks AS t INDEXED BY tasks_pending"

_CLAIM_SET = """
    status = 'claimed', claimed_by = :agent, fence_token = fence_token + 1, claimed_at = :now,
    deadline_at = :now + timeout_seconds, lease_expires_at = MIN(:now + :lease, :now + timeout_seconds),
    progress = NULL, updated_at = :now
"""

_CLAIM_NEXT = f"""
UPDATE tasks SET {_CLAIM_SET}
WHERE id = (SELECT t.id FROM {_PENDING} WHERE t.status = 'pending' AND {_FITS} ORDER BY t.priority DESC, t.id LIMIT 1)
RETURNING *
"""

_CLAIM_ONE = f"UPDATE tasks SET {_CLAIM_SET} WHERE id = :task_id AND status = 'pending' RETURNING *"

_INSERT_TASK = """
INSERT INTO tasks (title, prompt, priority, persona, capabilities, working_dir, max_attempts, timeout_seconds,
                   status, error, submitted_by, created_at, updated_at, finished_at, retry_delay_seconds, retry_backoff)
VALUES (:title, :prompt, :priority, :persona, :capabilities, :working_dir, :max_attempts, :timeout_seconds,
        :status, :error, :submitted_by, :now, :now, :finished_at, :retry_delay_seconds, :retry_backoff)
RETURNING *
"""

_CLAIMABLE_FOR = f"""
SELECT t.* FROM {_PENDING} WHERE t.status = 'pending' AND {_FITS} ORDER BY t.priority DESC, t.id LIMIT :limit
"""


class SqliteStore(SqliteDatabase, Store):
    """The store on SQLite (see :class:`SqliteDatabase` for the file, the durability and where transactions run).

    Each method below is its transaction's body; SQLite's single writer is the lock order.
    """

    shared_between_processes = False

    # agents -------------------------------------------------------------------------------------------------
    @override
    @writes
    def _register_agent(self, db: Db, name: str, profile: AgentProfile, now: float) -> Agent:
        _touch_agent(db, name, now)
        row = db.execute(
            "UPDATE agents SET cli = ?, persona = ?, capabilities = ?, pid = ? WHERE name = ? RETURNING *",
            (profile.cli, profile.persona, dumps(profile.capabilities), profile.pid, name),
        ).fetchone()
        return agent_from_row(row)

    @override
    @reads
    def get_agent(self, db: Db, name: str) -> Agent | None:
        row = db.execute("SELECT * FROM agents WHERE name = ?", (name,)).fetchone()
        return agent_from_row(row) if row else None

    @override
    @reads
    def list_agents(self, db: Db) -> list[Agent]:
        return [agent_from_row(r) for r in db.execute("SELECT * FROM agents ORDER BY name")]

    @override
    @writes
    def set_agent_state(
        self, db: Db, names: Sequence[str], state: AgentState, reason: str, until: float | None
    ) -> list[Agent]:
        found = db.execute(
            "UPDATE agents SET state = ?, state_reason = ?, state_until = ? "
            "WHERE name IN (SELECT value FROM json_each(?)) RETURNING *",
            (state.value, reason, until, json.dumps(list(names))),
        ).fetchall()
        return sorted((agent_from_row(r) for r in found), key=lambda a: a.name)

    @override
    @writes
    def record_usage(self, db: Db, record: UsageRecord) -> None:
        values = record.model_dump()
        db.execute(
            f"INSERT INTO usage ({', '.join(USAGE_COLUMNS)}) VALUES ({', '.join(':' + c for c in USAGE_COLUMNS)})",
            {c: values[c] for c in USAGE_COLUMNS},
        )

    @override
    @reads
    def list_usage(self, db: Db, since: float) -> list[UsageRecord]:
        query = f"SELECT {', '.join(USAGE_COLUMNS)} FROM usage WHERE recorded_at >= ? ORDER BY id"
        return [usage_from_row(r) for r in db.execute(query, (since,))]

    @override
    @writes
    def save_quota_pool(self, db: Db, name: str, state: dict[str, Any], now: float) -> None:
        db.execute(
            "INSERT INTO quota_pools (name, state, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at",
            (name, json.dumps(state), now),
        )

    @override
    @reads
    def list_quota_pools(self, db: Db) -> dict[str, dict[str, Any]]:
        return {r["name"]: json.loads(r["state"]) for r in db.execute("SELECT name, state FROM quota_pools")}

    @override
    @writes
    def mark_agents_offline(self, db: Db, names: Sequence[str]) -> list[Agent]:
        rows = db.execute(
            "UPDATE agents SET status = 'offline' WHERE name IN (SELECT value FROM json_each(?)) RETURNING *",
            (dumps(list(names)),),
        ).fetchall()
        return sorted((agent_from_row(r) for r in rows), key=lambda a: a.name)

    @override
    @writes
    def poll_agent(
        self, db: Db, name: str, ack_cursor: int | None, now: float, claimable_limit: int = 3
    ) -> AgentPoll:
        row = _touch_agent(db, name, now)
        cursor = max(0, row["cursor"] if ack_cursor is None else ack_cursor)
        if cursor > row["cursor"]:
            # A cursor past the newest event would hide future events: clamp it.
            newest = db.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0]
            cursor = min(cursor, newest)
        if cursor > row["cursor"]:
            row = db.execute(
                "UPDATE agents SET cursor = ? WHERE name = ? RETURNING *", (cursor, name)
            ).fetchone()
        agent = agent_from_row(row)
        events = [
            event_from_row(r)
            for r in db.execute(
                "SELECT * FROM events WHERE agent = ? AND id > ? ORDER BY id LIMIT 50", (name, cursor)
            )
        ]
        claimable: list[Task] = []
        if agent.current_task_id is None:
            params = {
                "persona": agent.persona,
                "capabilities": dumps(agent.capabilities),
                "limit": claimable_limit,
            }
            claimable = [task_from_row(r) for r in db.execute(_CLAIMABLE_FOR, params)]
        return AgentPoll(agent=agent, cursor=cursor, events=events, claimable=claimable)

    @override
    @writes
    def heartbeat(self, db: Db, name: str, now: float, lease: float) -> tuple[Agent, Task | None]:
        row = _touch_agent(db, name, now)
        return agent_from_row(row), _renew_current(db, name, now, lease)

    # tasks --------------------------------------------------------------------------------------------------
    @override
    @writes
    def create_tasks(self, db: Db, tasks: Sequence[NewTask], now: float) -> TaskChange:
        change = TaskChange()
        for spec in tasks:
            deps = sorted({*spec.depends_on, *(change.created[i].id for i in spec.depends_on_batch)})
            found = []
            if deps:
                found = db.execute(
                    "SELECT id, status FROM tasks WHERE id IN (SELECT value FROM json_each(?))",
                    (dumps(deps),),
                ).fetchall()
            status, error = rules.status_from_dependencies([(r["id"], r["status"]) for r in found])
            values = {
                "title": spec.title, "prompt": spec.prompt, "priority": spec.priority, "persona": spec.persona,
                "capabilities": dumps(sorted(set(spec.capabilities))), "working_dir": spec.working_dir,
                "max_attempts": spec.max_attempts, "timeout_seconds": spec.timeout_seconds,
                "status": status.value, "error": error, "submitted_by": spec.submitted_by, "now": now,
                "finished_at": now if status.is_terminal else None,
                "retry_delay_seconds": spec.retry_delay_seconds, "retry_backoff": spec.retry_backoff,
            }  # fmt: skip
            row = db.execute(_INSERT_TASK, values).fetchone()
            if spec.records_isolation:
                isolation, files, base_commit, target_branch, resolves = submitted_values(spec)
                row = db.execute(
                    "UPDATE tasks SET isolation = ?, files = ?, base_commit = ?, target_branch = ?, resolves = ? "
                    "WHERE id = ? RETURNING *",
                    (isolation, dumps(files), base_commit, target_branch, resolves, row["id"]),
                ).fetchone()
            if spec.records_question_policy:
                row = db.execute(
                    "UPDATE tasks SET answer_within_seconds = ?, on_unanswered = ? WHERE id = ? RETURNING *",
                    (
                        spec.answer_within_seconds,
                        spec.on_unanswered.value if spec.on_unanswered else None,
                        row["id"],
                    ),
                ).fetchone()
            db.executemany(
                "INSERT INTO task_deps (task_id, depends_on) VALUES (?, ?)", [(row["id"], d) for d in deps]
            )
            rules.record_created(change, task_from_row(row, depends_on=deps))
        return change

    @override
    @reads
    def get_task(self, db: Db, task_id: int, with_attempts: bool = True) -> Task | None:
        return _task(db, task_id, with_attempts)

    @override
    @reads
    def get_tasks(self, db: Db, task_ids: Sequence[int]) -> list[Task]:
        found = {
            r["id"]: r
            for r in db.execute(
                "SELECT * FROM tasks WHERE id IN (SELECT value FROM json_each(?))", (dumps(list(task_ids)),)
            )
        }
        return _with_open_questions(
            db, [task_from_row(found[i], _task_deps(db, i)) for i in task_ids if i in found], found.values()
        )

    @override
    @reads
    def list_tasks(self, db: Db, status: TaskStatus | None, limit: int, offset: int = 0) -> list[Task]:
        if status is None:
            found = db.execute("SELECT * FROM tasks ORDER BY id DESC LIMIT ? OFFSET ?", (limit, offset))
        else:
            found = db.execute(
                "SELECT * FROM tasks WHERE status = ? ORDER BY id DESC LIMIT ? OFFSET ?",
                (status.value, limit, offset),
            )
        listed = found.fetchall()
        return _with_open_questions(db, [task_from_row(r) for r in listed], listed)

    @override
    @reads
    def missing_tasks(self, db: Db, task_ids: Sequence[int]) -> list[int]:
        if not task_ids:
            return []
        found = {
            r[0]
            for r in db.execute(
                "SELECT id FROM tasks WHERE id IN (SELECT value FROM json_each(?))", (dumps(list(task_ids)),)
            )
        }
        return [i for i in task_ids if i not in found]

    @override
    @writes
    def claim(self, db: Db, agent: str, task_id: int | None, now: float, lease: float) -> ClaimResult:
        me = _touch_agent(db, agent, now)
        held_id = me["current_task_id"]
        if held_id is not None:
            held = db.execute("SELECT * FROM tasks WHERE id = ?", (held_id,)).fetchone()
            if held is not None and held["status"] == "claimed" and held["claimed_by"] == agent:
                if task_id is not None and task_id != held_id:
                    return ClaimResult(None, rules.already_holding(held_id, held["title"]))
                task = _renew_current(db, agent, now, lease) or task_from_row(held)
                return ClaimResult(rules.claim_of(task, now, reclaimed=True))
            _free_agent(db, agent, held_id)  # stale pointer (e.g. the task was cancelled or requeued)
        params = {
            "agent": agent,
            "now": now,
            "lease": lease,
            "persona": me["persona"],
            "capabilities": me["capabilities"],
            "task_id": task_id,
        }
        if task_id is None:
            row = db.execute(_CLAIM_NEXT, params).fetchone()
            if row is None:
                return ClaimResult(None, rules.NOTHING_TO_CLAIM)
        else:
            current = db.execute(
                f"SELECT t.*, ({_FITS}) AS fits FROM tasks AS t WHERE t.id = :task_id", params
            ).fetchone()
            if current is None:
                raise rules.unknown_task_to_claim(task_id)
            refused = rules.why_not_claimable(
                task_id,
                current["status"],
                current["claimed_by"],
                fits=bool(current["fits"]),
                persona=current["persona"],
                capabilities=rows.labels(current["capabilities"]),
            )
            if refused:
                return ClaimResult(None, refused)
            row = db.execute(_CLAIM_ONE, params).fetchone()
        _start_attempt(db, row, agent, now)
        return ClaimResult(rules.claim_of(task_from_row(row), now))

    @override
    @writes
    def renew(
        self, db: Db, agent: str, task_id: int, fence: int, now: float, lease: float, progress: str | None
    ) -> Task:
        _touch_agent(db, agent, now)
        _held(db, agent, task_id, fence)
        row = db.execute(
            """UPDATE tasks SET lease_expires_at = MIN(MAX(COALESCE(lease_expires_at, 0), :now + :lease), deadline_at), updated_at = :now,
                   progress = COALESCE(:progress, progress)
               WHERE id = :id RETURNING *""",
            {"now": now, "lease": lease, "id": task_id, "progress": progress},
        ).fetchone()
        return task_from_row(row)

    @override
    @writes
    def _complete(
        self, db: Db, agent: str, task_id: int, fence: int, report: rules.Report, now: float
    ) -> TaskChange:
        _touch_agent(db, agent, now)
        change = TaskChange()
        try:
            row = _held(db, agent, task_id, fence)
        except StaleClaim:
            done = db.execute(
                "SELECT outcome FROM attempts WHERE task_id = ? AND fence_token = ? AND agent = ?",
                (task_id, fence, agent),
            ).fetchone()
            if done is not None and rules.is_repeated(report, done["outcome"]):
                change.task = _task(db, task_id, False)
                return change
            raise
        if report.success:
            _end_attempt(db, task_id, fence, AttemptOutcome.COMPLETED, None, now, row["question_id"])
            _free_agent(db, agent, task_id)
            updated = db.execute(
                """UPDATE tasks SET status = 'completed', result = ?, data = ?, error = NULL, lease_expires_at = NULL,
                       updated_at = ?, finished_at = ? WHERE id = ? RETURNING *""",
                (report.result, dumps(report.data) if report.data is not None else None, now, now, task_id),
            ).fetchone()
            change.task = task_from_row(updated)
            change.finished.append(task_id)
            _unblock_dependents(db, task_id, now, change)
        else:
            if report.result is not None:
                db.execute("UPDATE tasks SET result = ? WHERE id = ?", (report.result, task_id))
            _requeue_or_bury(db, row, AttemptOutcome.FAILED, report.failure, now, change, report.retryable)
        return change

    @override
    @writes
    def release(
        self, db: Db, agent: str, task_id: int, fence: int | None, reason: str, now: float
    ) -> TaskChange:
        row = db.execute("SELECT * FROM tasks WHERE id = ?", (task_id,)).fetchone()
        if row is None:
            raise rules.unknown_task_released(task_id)
        row = _held(db, agent, task_id, row["fence_token"] if fence is None else fence)
        change = TaskChange()
        _requeue_or_bury(db, row, AttemptOutcome.RELEASED, reason, now, change)
        return change

    @override
    @writes
    def update_isolation(
        self, db: Db, task_id: int, fence: int | None, update: IsolationUpdate, now: float
    ) -> Task | None:
        pairs = update_assignments(update)
        sets = "".join(f"{column} = ?, " for column, _ in pairs)  # column names are IsolationUpdate's fields
        values = [dumps(v) if isinstance(v, list) else v for _, v in pairs]
        updated = db.execute(
            f"UPDATE tasks SET {sets}updated_at = ? WHERE id = ? AND (? IS NULL OR fence_token = ?) RETURNING id",
            (*values, now, task_id, fence, fence),
        ).fetchone()
        return _task(db, task_id, True) if updated else None

    @override
    @writes
    def defer(self, db: Db, agent: str, task_id: int, fence: int, reason: str, now: float) -> TaskChange:
        _held(db, agent, task_id, fence)
        _end_attempt(db, task_id, fence, AttemptOutcome.RELEASED, f"waiting: {reason}", now)
        _free_agent(db, agent, task_id)
        updated = db.execute(
            """UPDATE tasks SET status = 'blocked', claimed_by = NULL, lease_expires_at = NULL, claimed_at = NULL,
                   deadline_at = NULL, retry_at = NULL, waited_on = ?, progress = ?, updated_at = ?
               WHERE id = ? RETURNING *""",
            (reason, f"waiting: {reason}", now, task_id),
        ).fetchone()
        change = TaskChange()
        change.task = task_from_row(updated, _task_deps(db, task_id))
        return change

    @override
    @reads
    def waiting_tasks(self, db: Db, limit: int) -> list[Task]:
        found = db.execute(
            "SELECT * FROM tasks WHERE status = 'blocked' AND waited_on IS NOT NULL AND retry_at IS NULL "
            "ORDER BY id LIMIT ?",
            (limit,),
        )
        return [task_from_row(r, _task_deps(db, r["id"])) for r in found]

    @override
    @writes
    def end_waits(self, db: Db, task_ids: Sequence[int], now: float) -> TaskChange:
        change = TaskChange()
        found = db.execute(
            """UPDATE tasks SET status = 'pending', progress = NULL, updated_at = ?
               WHERE id IN (SELECT value FROM json_each(?))
                 AND status = 'blocked' AND waited_on IS NOT NULL AND retry_at IS NULL RETURNING *""",
            (now, dumps(list(task_ids))),
        )
        change.claimable.extend(task_from_row(r) for r in found)
        return change

    @override
    @reads
    def isolation_holders(self, db: Db) -> list[Task]:
        found = db.execute(
            """SELECT * FROM tasks WHERE status = 'claimed' AND files != '[]'
               UNION ALL
               SELECT * FROM tasks WHERE merge_state = 'pending' AND status = 'completed' AND files != '[]'"""
        )
        return [task_from_row(r) for r in found]

    @override
    @writes
    def cancel(self, db: Db, task_id: int, reason: str, now: float) -> TaskChange:
        row = db.execute("SELECT * FROM tasks WHERE id = ?", (task_id,)).fetchone()
        if row is None:
            raise rules.unknown_task_cancelled(task_id)
        change = TaskChange()
        status = TaskStatus(row["status"])
        if status.is_terminal:
            change.task = task_from_row(row, _task_deps(db, task_id))
            return change
        holder = row["claimed_by"] if status is TaskStatus.CLAIMED else None
        if holder:
            _end_attempt(
                db, task_id, row["fence_token"], AttemptOutcome.CANCELLED, reason, now, row["question_id"]
            )
            _free_agent(db, holder, task_id)
            _append_event(db, holder, EventKind.TASK_CANCELLED, task_id, reason, now)
            change.notified_agents.append(holder)
        updated = db.execute(
            """UPDATE tasks SET status = 'cancelled', error = ?, lease_expires_at = NULL, updated_at = ?,
                   finished_at = ? WHERE id = ? RETURNING *""",
            (reason, now, now, task_id),
        ).fetchone()
        change.task = task_from_row(updated, _task_deps(db, task_id))
        change.finished.append(task_id)
        _fail_dependents(db, task_id, TaskStatus.CANCELLED, now, change)
        return change

    @override
    @writes
    def sweep(
        self,
        db: Db,
        now: float,
        agent_lost_before: float,
        keep_alive: Sequence[str] = (),
        lease: float = 300.0,
    ) -> TaskChange:
        change = TaskChange()
        # Questions first: one that lets its worker continue renews the lease before the leases are looked at.
        overdue = db.execute(
            "SELECT * FROM questions WHERE status = 'open' AND deadline_at <= ? ORDER BY deadline_at", (now,)
        ).fetchall()
        for found in overdue:
            _expire_question(db, question_from_row(found), now, lease, change)
        # Agents parked in a wait are alive without being written to every second (1,000 parked agents made
        # that a 1,000-row write per sweep); only the silent ones are looked at.
        silent = db.execute(
            "SELECT name FROM agents WHERE status NOT IN ('lost', 'offline') AND last_seen_at < ?",
            (agent_lost_before,),
        ).fetchall()
        alive = set(keep_alive)
        lost_names = [r["name"] for r in silent if r["name"] not in alive]
        if lost_names:
            db.execute(
                "UPDATE agents SET status = 'lost' WHERE name IN (SELECT value FROM json_each(?))",
                (dumps(lost_names),),
            )
        for name in lost_names:
            claimed = db.execute("SELECT * FROM tasks WHERE status = 'claimed' AND claimed_by = ?", (name,))
            for row in claimed.fetchall():
                message = rules.agent_lost(name)
                _append_event(db, name, EventKind.LEASE_LOST, row["id"], message, now)
                _requeue_or_bury(db, row, AttemptOutcome.AGENT_LOST, message, now, change)
        expired = db.execute(
            "SELECT * FROM tasks WHERE status = 'claimed' AND lease_expires_at <= ? ORDER BY lease_expires_at",
            (now,),
        ).fetchall()
        for row in expired:
            holder = row["claimed_by"]
            message = rules.lease_lost(holder, row["timeout_seconds"], row["deadline_at"], now)
            _append_event(db, holder, EventKind.LEASE_LOST, row["id"], message, now)
            change.notified_agents.append(holder)
            _requeue_or_bury(db, row, AttemptOutcome.EXPIRED, message, now, change)
        due = db.execute(
            """UPDATE tasks SET status = 'pending', retry_at = NULL, updated_at = :now
               WHERE retry_at <= :now AND status = 'blocked' RETURNING *""",
            {"now": now},
        ).fetchall()
        change.claimable.extend(task_from_row(r) for r in due)
        return change

    # questions ----------------------------------------------------------------------------------------------
    @override
    @writes
    def ask_question(
        self, db: Db, agent: str, task_id: int, fence: int, asked: NewQuestion, now: float, lease: float
    ) -> QuestionResult:
        _touch_agent(db, agent, now)
        row = _held(db, agent, task_id, fence)
        latest = db.execute(
            "SELECT * FROM questions WHERE task_id = ? AND fence_token = ? ORDER BY id DESC LIMIT 1",
            (task_id, fence),
        ).fetchone()
        again = rules.asked_again(asked, question_from_row(latest) if latest else None)
        if again is not None:
            return QuestionResult(again, TaskChange())
        on_timeout, within = rules.question_policy(asked, row["answer_within_seconds"], row["on_unanswered"])
        deadline = rules.question_deadline(now, within, row["deadline_at"])
        found = db.execute(
            """INSERT INTO questions (task_id, fence_token, agent, question, options, on_timeout, asked_at, deadline_at)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING *""",
            (
                task_id,
                fence,
                agent,
                asked.question,
                dumps(asked.options),
                on_timeout.value,
                now,
                deadline,
            ),
        ).fetchone()
        held_until = rules.lease_while_asking(now, lease, deadline, row["deadline_at"])
        db.execute(
            "UPDATE tasks SET question_id = ?, lease_expires_at = ?, updated_at = ? WHERE id = ?",
            (found["id"], held_until, now, task_id),
        )
        return QuestionResult(question_from_row(found), TaskChange(questions=[task_id]))

    @override
    @writes
    def answer_question(
        self, db: Db, task_id: int, answer: str, answered_by: str, now: float, lease: float
    ) -> QuestionResult:
        row = db.execute("SELECT * FROM tasks WHERE id = ?", (task_id,)).fetchone()
        if row is None:
            raise rules.unknown_task_answered(task_id)
        found = None
        if row["question_id"] is not None:
            found = db.execute(
                """UPDATE questions SET status = 'answered', answer = ?, answered_by = ?, answered_at = ?
                   WHERE id = ? AND status = 'open' RETURNING *""",
                (answer, answered_by, now, row["question_id"]),
            ).fetchone()
        if found is None:
            latest = db.execute(
                "SELECT * FROM questions WHERE task_id = ? ORDER BY id DESC LIMIT 1", (task_id,)
            ).fetchone()
            raise rules.no_open_question(
                task_id, row["status"], question_from_row(latest) if latest else None
            )
        question = question_from_row(found)
        db.execute(
            """UPDATE tasks SET question_id = NULL, updated_at = :now,
                   lease_expires_at = MIN(MAX(COALESCE(lease_expires_at, 0), :now + :lease), deadline_at)
               WHERE id = :id""",
            {"now": now, "lease": lease, "id": task_id},
        )
        _append_event(db, question.agent, EventKind.QUESTION_ANSWERED, task_id, answer, now)
        return QuestionResult(question, TaskChange(notified_agents=[question.agent], questions=[task_id]))

    @override
    @reads
    def get_question(self, db: Db, question_id: int) -> Question | None:
        found = db.execute("SELECT * FROM questions WHERE id = ?", (question_id,)).fetchone()
        return question_from_row(found) if found else None

    @override
    @reads
    def next_lease_expiry(self, db: Db) -> float | None:
        return db.execute("SELECT MIN(lease_expires_at) FROM tasks WHERE status = 'claimed'").fetchone()[0]

    @override
    @reads
    def pending_tasks(self, db: Db, limit: int) -> list[Task]:
        found = db.execute(
            f"SELECT t.* FROM {_PENDING} WHERE t.status = 'pending' ORDER BY t.priority DESC, t.id LIMIT ?",
            (limit,),
        )
        return [task_from_row(r) for r in found]

    # tokens -------------------------------------------------------------------------------------------------
    @override
    @writes
    def add_token(self, db: Db, token_hash: str, identity: Identity, now: float) -> None:
        db.execute(
            "INSERT INTO tokens (token_hash, role, agent, label, created_at) VALUES (?, ?, ?, ?, ?)",
            (token_hash, identity.role.value, identity.agent, identity.label, now),
        )

    @override
    @reads
    def find_token(self, db: Db, token_hash: str) -> Identity | None:
        row = db.execute(
            "SELECT role, agent, label FROM tokens WHERE token_hash = ? AND revoked_at IS NULL", (token_hash,)
        ).fetchone()
        return identity_from_row(row) if row else None

    @override
    @writes
    def revoke_tokens(
        self, db: Db, *, agent: str | None = None, token_hash: str | None = None, now: float
    ) -> int:
        by, key = ("token_hash", token_hash) if token_hash is not None else ("agent", agent)
        return db.execute(
            f"UPDATE tokens SET revoked_at = ? WHERE {by} = ? AND revoked_at IS NULL", (now, key)
        ).rowcount

    @override
    @reads
    def list_tokens(self, db: Db) -> list[tuple[str, Identity, float, float | None]]:
        return [
            (
                r["token_hash"],
                identity_from_row(r),
                r["created_at"],
                r["revoked_at"],
            )
            for r in db.execute("SELECT * FROM tokens ORDER BY created_at")
        ]

    @override
    @reads
    def stats(self, db: Db) -> StoreStats:
        tasks = {r[0]: r[1] for r in db.execute("SELECT status, COUNT(*) FROM tasks GROUP BY status")}
        agents = {r[0]: r[1] for r in db.execute("SELECT status, COUNT(*) FROM agents GROUP BY status")}
        events = db.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0]
        return StoreStats(tasks=tasks, agents=agents, events=events)


# --------------------------------------------------------------------------------------------------------------
# Steps of the transactions above; each runs inside the caller's BEGIN ... COMMIT.
# --------------------------------------------------------------------------------------------------------------


def _touch_agent(db: Db, name: str, now: float) -> sqlite3.Row:
    """Mark the agent seen (creating it on first contact); a lost agent that speaks again is back.

    ``last_seen_at`` is kept to ``rules.SEEN_RESOLUTION_SECONDS``.
    """
    row = db.execute("SELECT * FROM agents WHERE name = ?", (name,)).fetchone()
    if (
        row is not None
        and row["status"] not in GONE_AGENT_STATUSES
        and now - row["last_seen_at"] < rules.SEEN_RESOLUTION_SECONDS
    ):
        return row
    row = db.execute(
        """UPDATE agents SET last_seen_at = :now,
               status = CASE WHEN status IN ('lost', 'offline') THEN
                   (CASE WHEN current_task_id IS NULL THEN 'idle' ELSE 'busy' END) ELSE status END
           WHERE name = :name RETURNING *""",
        {"now": now, "name": name},
    ).fetchone()
    if row is None:
        row = db.execute(
            "INSERT INTO agents (name, registered_at, last_seen_at) VALUES (?, ?, ?) RETURNING *",
            (name, now, now),
        ).fetchone()
    return row


def _append_event(db: Db, agent: str, kind: EventKind, task_id: int | None, detail: str, now: float) -> None:
    db.execute(
        "INSERT INTO events (agent, kind, task_id, detail, created_at) VALUES (?, ?, ?, ?, ?)",
        (agent, kind.value, task_id, detail, now),
    )


def _renew_current(db: Db, agent: str, now: float, lease: float) -> Task | None:
    row = db.execute(
        """UPDATE tasks SET lease_expires_at = MIN(MAX(COALESCE(lease_expires_at, 0), :now + :lease), deadline_at), updated_at = :now
           WHERE status = 'claimed' AND claimed_by = :agent AND deadline_at > :now RETURNING *""",
        {"now": now, "lease": lease, "agent": agent},
    ).fetchone()
    return task_from_row(row) if row else None


def _task_deps(db: Db, task_id: int) -> list[int]:
    found = db.execute("SELECT depends_on FROM task_deps WHERE task_id = ? ORDER BY depends_on", (task_id,))
    return [r[0] for r in found]


def _task(db: Db, task_id: int, with_attempts: bool) -> Task | None:
    row = db.execute("SELECT * FROM tasks WHERE id = ?", (task_id,)).fetchone()
    if row is None:
        return None
    attempts = None
    if with_attempts:
        found = db.execute("SELECT * FROM attempts WHERE task_id = ? ORDER BY number", (task_id,))
        attempts = [rows.attempt_from_row(r) for r in found]
    task = task_from_row(row, _task_deps(db, task_id), attempts)
    if with_attempts:
        asked = db.execute("SELECT * FROM questions WHERE task_id = ? ORDER BY id", (task_id,))
        task.questions = [question_from_row(r) for r in asked]
        task.question = next((q for q in task.questions if q.status is QuestionStatus.OPEN), None)
    elif row["question_id"] is not None:
        _with_open_questions(db, [task], [row])
    return task


def _with_open_questions(db: Db, tasks: list[Task], found: Iterable[sqlite3.Row]) -> list[Task]:
    """Set each task's open question; the questions table is read only when a row points at one."""
    ids = [r["question_id"] for r in found if r["question_id"] is not None]
    if not ids:
        return tasks
    open_questions = {
        q.task_id: q
        for q in map(
            question_from_row,
            db.execute(
                "SELECT * FROM questions WHERE id IN (SELECT value FROM json_each(?)) AND status = 'open'",
                (dumps(ids),),
            ),
        )
    }
    for task in tasks:
        task.question = open_questions.get(task.id)
    return tasks


def _expire_question(db: Db, question: Question, now: float, lease: float, change: TaskChange) -> None:
    """Close a question whose deadline passed: its worker continues on its own judgement, or the attempt fails."""
    db.execute("UPDATE questions SET status = 'expired' WHERE id = ?", (question.id,))
    row = db.execute(
        "UPDATE tasks SET question_id = NULL WHERE id = ? AND question_id = ? RETURNING *",
        (question.task_id, question.id),
    ).fetchone()
    change.questions.append(question.task_id)
    change.notified_agents.append(question.agent)
    if question.on_timeout is OnUnanswered.CONTINUE:
        _append_event(
            db,
            question.agent,
            EventKind.QUESTION_EXPIRED,
            question.task_id,
            rules.unanswered_continue(question),
            now,
        )
        db.execute(
            """UPDATE tasks SET lease_expires_at = MIN(MAX(COALESCE(lease_expires_at, 0), :now + :lease), deadline_at)
               WHERE id = :id AND status = 'claimed' AND fence_token = :fence""",
            {"now": now, "lease": lease, "id": question.task_id, "fence": question.fence_token},
        )
        return
    failure = rules.unanswered_fail(question)
    _append_event(db, question.agent, EventKind.QUESTION_EXPIRED, question.task_id, failure, now)
    if row is not None and rules.holds(
        question.agent,
        question.fence_token,
        status=row["status"],
        claimed_by=row["claimed_by"],
        fence_token=row["fence_token"],
    ):
        _requeue_or_bury(db, row, AttemptOutcome.UNANSWERED, failure, now, change, retryable=False)


def _start_attempt(db: Db, task: sqlite3.Row, agent: str, now: float) -> None:
    number = db.execute(
        "SELECT COALESCE(MAX(number), 0) + 1 FROM attempts WHERE task_id = ?", (task["id"],)
    ).fetchone()[0]
    db.execute(
        "INSERT INTO attempts (task_id, number, agent, fence_token, claimed_at, outcome) VALUES (?, ?, ?, ?, ?, 'running')",
        (task["id"], number, agent, task["fence_token"], now),
    )
    db.execute("UPDATE agents SET status = 'busy', current_task_id = ? WHERE name = ?", (task["id"], agent))


def _end_attempt(
    db: Db,
    task_id: int,
    fence: int,
    outcome: AttemptOutcome,
    error: str | None,
    now: float,
    question_id: int | None = None,
) -> None:
    """End the attempt under ``fence``; the question it left open (``question_id``, the task row's) closes with
    it, since nobody is left to read its answer. No statement for a task without one: this is the hot path."""
    db.execute(
        "UPDATE attempts SET outcome = ?, error = ?, finished_at = ? WHERE task_id = ? AND fence_token = ?",
        (outcome.value, error, now, task_id, fence),
    )
    if question_id is not None:
        db.execute(
            "UPDATE questions SET status = 'withdrawn' WHERE id = ? AND status = 'open'", (question_id,)
        )
        db.execute("UPDATE tasks SET question_id = NULL WHERE id = ?", (task_id,))


def _free_agent(db: Db, agent: str, task_id: int) -> None:
    db.execute(
        """UPDATE agents SET current_task_id = NULL, status = CASE WHEN status IN ('lost', 'offline') THEN status ELSE 'idle' END
           WHERE name = ? AND current_task_id = ?""",
        (agent, task_id),
    )


def _held(db: Db, agent: str, task_id: int, fence: int) -> sqlite3.Row:
    """The task row if ``agent`` holds it under ``fence``; otherwise raise the refusal that says what happened."""
    row = db.execute("SELECT * FROM tasks WHERE id = ?", (task_id,)).fetchone()
    if row is None:
        raise rules.unknown_task_reported(task_id)
    task = {"status": row["status"], "claimed_by": row["claimed_by"], "fence_token": row["fence_token"]}
    if rules.holds(agent, fence, **task):
        return row
    attempt = db.execute(
        "SELECT outcome FROM attempts WHERE task_id = ? AND fence_token = ? AND agent = ?",
        (task_id, fence, agent),
    ).fetchone()
    outcome = attempt["outcome"] if attempt else None
    raise rules.stale_report(agent, task_id, fence, **task, error=row["error"], attempt_outcome=outcome)


def _unblock_dependents(db: Db, task_id: int, now: float, change: TaskChange) -> None:
    found = db.execute(
        """UPDATE tasks SET status = 'pending', updated_at = :now
           WHERE status = 'blocked' AND id IN (SELECT task_id FROM task_deps WHERE depends_on = :id)
             AND NOT EXISTS (SELECT 1 FROM task_deps AS d JOIN tasks AS dep ON dep.id = d.depends_on
                             WHERE d.task_id = tasks.id AND dep.status != 'completed')
           RETURNING *""",
        {"now": now, "id": task_id},
    ).fetchall()
    change.claimable.extend(task_from_row(r) for r in found)


def _fail_dependents(db: Db, task_id: int, status: str, now: float, change: TaskChange) -> None:
    """A failed, dead or cancelled task fails everything waiting on it, transitively."""
    frontier = [(task_id, status)]
    while frontier:
        failed_id, failed_status = frontier.pop()
        failed = db.execute(
            """UPDATE tasks SET status = 'failed', error = :error, updated_at = :now, finished_at = :now
               WHERE status = 'blocked' AND id IN (SELECT task_id FROM task_deps WHERE depends_on = :id)
               RETURNING id""",
            {"error": rules.dependency_ended(failed_id, failed_status), "now": now, "id": failed_id},
        ).fetchall()
        change.finished.extend(r["id"] for r in failed)
        frontier.extend((r["id"], TaskStatus.FAILED) for r in failed)


def _requeue_or_bury(
    db: Db, row: Row, ended: AttemptOutcome, why: str, now: float, change: TaskChange, retryable: bool = True
) -> None:
    """End the running attempt and put the task back in the queue, or end it, as :func:`rules.after_attempt` says."""
    task_id, agent = row["id"], row["claimed_by"]
    _end_attempt(db, task_id, row["fence_token"], ended, why, now, row["question_id"])
    if agent:
        _free_agent(db, agent, task_id)
    delay = rules.RetryDelay(row["retry_delay_seconds"], row["retry_backoff"])
    after = rules.after_attempt(
        ended, row["failures"], row["max_attempts"], why, retryable=retryable, delay=delay, now=now
    )
    ended_at = now if after.status.is_terminal else None
    values = {"status": after.status.value, "failures": after.failures, "error": after.error}
    updated = db.execute(
        """UPDATE tasks SET status = :status, failures = :failures, error = :error, claimed_by = NULL,
               lease_expires_at = NULL, claimed_at = NULL, deadline_at = NULL, updated_at = :now, finished_at = :ended,
               retry_at = :retry_at
           WHERE id = :id RETURNING *""",
        {**values, "now": now, "ended": ended_at, "id": task_id, "retry_at": after.retry_at},
    ).fetchone()
    rules.record_requeue_or_end(change, task_from_row(updated))
    if after.status.is_terminal:
        _fail_dependents(db, task_id, after.status, now, change)
