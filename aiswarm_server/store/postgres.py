"""The PostgreSQL store: the scale-out backend that several broker processes (or hosts) can share.

Same operations and the same rules (:mod:`.rules`) as :mod:`aiswarm_server.store.sqlite`; what differs is how
concurrent writers are kept apart. SQLite runs one writer at a time; here every store method is one transaction
at READ COMMITTED on a pooled connection, and the rows a transition depends on are locked explicitly:

* claims take the next pending task with ``FOR UPDATE SKIP LOCKED`` (claimers queue on nothing);
* an agent's row is locked before the task it holds (``agent → task`` everywhere), so a report, a claim and a
  sweep of the same agent run one after another; the sweeper skips an agent that is busy right now;
* an agent's events are appended under its row lock, so its event ids are committed in order and a cursor
  never steps over an event that commits later;
* dependency cascades lock the dependent rows before re-checking them, so two dependencies completing at once
  cannot both decide "the other one is not done yet".

Each store method below is its transaction's body: ``@writes`` / ``@reads`` (:mod:`.postgres_database`) run it on
a pooled connection (``db``), retry it on a detected deadlock and, for a write that returns a TaskChange, NOTIFY the
other brokers on commit (:mod:`.postgres_notify`, which also holds the listening side).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from typing_extensions import override

from aiswarm_server.errors import StaleClaim, StoreUnavailable
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
from aiswarm_server.store.postgres_database import Db, PostgresDatabase, Row, migrations, reads, writes
from aiswarm_server.store.postgres_notify import ChangeListener
from aiswarm_server.store.rows import (
    USAGE_COLUMNS,
    agent_from_row,
    dumps,
    event_from_row,
    identity_from_row,
    question_from_row,
    task_from_row,
    usage_from_row,
)

if TYPE_CHECKING:
    from aiswarm_server.models import Agent, Identity, IsolationUpdate, NewQuestion, NewTask, Question, Task

__all__ = ["PostgresStore", "migrations"]

# A task fits an agent when its persona is unset or the agent's, and its capabilities are a subset of the agent's.
# $persona / $capabilities are numbered per statement: see each use.
_CLAIM_SET = """
    status = 'claimed', claimed_by = $1::text, fence_token = fence_token + 1, claimed_at = $2::float8,
    deadline_at = $2::float8 + timeout_seconds,
    lease_expires_at = LEAST($2::float8 + $3::float8, $2::float8 + timeout_seconds),
    progress = NULL, updated_at = $2::float8
"""


def _claim_and_start(where: str) -> str:
    """One statement: claim the task ``where`` picks, open its attempt, mark the agent busy with it."""
    return f"""
WITH claimed AS (UPDATE tasks SET {_CLAIM_SET} WHERE {where} RETURNING *),
     attempt AS (
         INSERT INTO attempts (task_id, number, agent, fence_token, claimed_at, outcome)
         SELECT c.id, COALESCE((SELECT MAX(a.number) FROM attempts AS a WHERE a.task_id = c.id), 0) + 1,
                $1::text, c.fence_token, $2::float8, 'running'
         FROM claimed AS c),
     busy AS (UPDATE agents SET status = 'busy', current_task_id = c.id FROM claimed AS c WHERE agents.name = $1::text)
SELECT * FROM claimed
"""


# A claimer passes over pending rows another transaction is claiming instead of queueing behind it.
_CLAIM_NEXT = _claim_and_start(
    """status = 'pending' AND id = (
    SELECT t.id FROM tasks AS t
    WHERE t.status = 'pending' AND (t.persona IS NULL OR t.persona = $4::text) AND t.capabilities <@ $5::text[]
    ORDER BY t.priority DESC, t.id LIMIT 1 FOR UPDATE SKIP LOCKED)"""
)

_CLAIM_ONE = _claim_and_start("id = $4::bigint AND status = 'pending'")

_INSERT_TASK = """
INSERT INTO tasks (title, prompt, priority, persona, capabilities, working_dir, max_attempts, timeout_seconds,
                   status, error, submitted_by, created_at, updated_at, finished_at, retry_delay_seconds, retry_backoff)
VALUES ($1, $2, $3, $4, $5::text[], $6, $7, $8, $9, $10, $11, $12, $12, $13, $14, $15)
RETURNING *
"""

_CLAIMABLE_FOR = """
SELECT t.* FROM tasks AS t
WHERE t.status = 'pending' AND (t.persona IS NULL OR t.persona = $1::text) AND t.capabilities <@ $2::text[]
ORDER BY t.priority DESC, t.id LIMIT $3::int
"""


class PostgresStore(PostgresDatabase, Store):
    """The store on PostgreSQL (see :class:`PostgresDatabase`); several broker processes may share one database.

    ``url`` is a ``postgresql://`` URL; query parameters that are not connection options become server settings,
    so ``?search_path=team_a`` keeps one swarm's tables in schema ``team_a``. Commits are durable
    (``synchronous_commit`` is the server's: on by default). Each method below is its transaction's body.
    """

    shared_between_processes = True

    # changes across broker processes ----------------------------------------------------------------------------
    @override
    async def watch_changes(self, apply: Callable[[TaskChange], None]) -> None:
        if self._pool is None:
            raise StoreUnavailable("open the store before watching it")
        self._listener = ChangeListener(self, apply)
        await self._listener.start()

    @reads
    async def changes_since(self, db: Db, since: float) -> TaskChange:
        """What other brokers may have announced since ``since``: the pending queue, tasks finished, agents with
        events (re-announced after a gap in listening)."""
        finished = await db.fetch(
            "SELECT id FROM tasks WHERE finished_at >= $1::float8 ORDER BY id LIMIT 10000", since
        )
        agents = await db.fetch("SELECT DISTINCT agent FROM events WHERE created_at >= $1::float8", since)
        return TaskChange(
            claimable=await _pending(db, 100),
            finished=[r["id"] for r in finished],
            notified_agents=[r["agent"] for r in agents],
        )

    # agents -------------------------------------------------------------------------------------------------
    @override
    @writes
    async def _register_agent(self, db: Db, name: str, profile: AgentProfile, now: float) -> Agent:
        await _touch_agent(db, name, now)
        row = await db.fetchrow(
            "UPDATE agents SET cli = $2, persona = $3, capabilities = $4::text[], pid = $5 WHERE name = $1 RETURNING *",
            name,
            profile.cli,
            profile.persona,
            profile.capabilities,
            profile.pid,
        )
        return agent_from_row(row)

    @override
    @reads
    async def get_agent(self, db: Db, name: str) -> Agent | None:
        row = await db.fetchrow("SELECT * FROM agents WHERE name = $1", name)
        return agent_from_row(row) if row else None

    @override
    @reads
    async def list_agents(self, db: Db) -> list[Agent]:
        return [agent_from_row(r) for r in await db.fetch("SELECT * FROM agents ORDER BY name")]

    @override
    @writes
    async def set_agent_state(
        self, db: Db, names: Sequence[str], state: AgentState, reason: str, until: float | None
    ) -> list[Agent]:
        found = await db.fetch(
            "UPDATE agents SET state = $1, state_reason = $2, state_until = $3 "
            "WHERE name = ANY($4::text[]) RETURNING *",
            state.value,
            reason,
            until,
            list(names),
        )
        return sorted((agent_from_row(r) for r in found), key=lambda a: a.name)

    @override
    @writes
    async def record_usage(self, db: Db, record: UsageRecord) -> None:
        values = record.model_dump()
        placeholders = ", ".join(f"${i}" for i in range(1, len(USAGE_COLUMNS) + 1))
        await db.execute(
            f"INSERT INTO usage ({', '.join(USAGE_COLUMNS)}) VALUES ({placeholders})",
            *(values[c] for c in USAGE_COLUMNS),
        )

    @override
    @reads
    async def list_usage(self, db: Db, since: float) -> list[UsageRecord]:
        query = f"SELECT {', '.join(USAGE_COLUMNS)} FROM usage WHERE recorded_at >= $1 ORDER BY id"
        return [usage_from_row(r) for r in await db.fetch(query, since)]

    @override
    @writes
    async def save_quota_pool(self, db: Db, name: str, state: dict[str, Any], now: float) -> None:
        await db.execute(
            "INSERT INTO quota_pools (name, state, updated_at) VALUES ($1, $2::jsonb, $3) "
            "ON CONFLICT (name) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at",
            name,
            json.dumps(state),
            now,
        )

    @override
    @reads
    async def list_quota_pools(self, db: Db) -> dict[str, dict[str, Any]]:
        found = await db.fetch("SELECT name, state::text AS state FROM quota_pools")
        return {r["name"]: json.loads(r["state"]) for r in found}

    @override
    @writes
    async def mark_agents_offline(self, db: Db, names: Sequence[str]) -> list[Agent]:
        rows = await db.fetch(
            "UPDATE agents SET status = 'offline' WHERE name = ANY($1::text[]) RETURNING *", list(names)
        )
        return sorted((agent_from_row(r) for r in rows), key=lambda a: a.name)

    @override
    @writes
    async def poll_agent(
        self, db: Db, name: str, ack_cursor: int | None, now: float, claimable_limit: int = 3
    ) -> AgentPoll:
        row = await _touch_agent(db, name, now)
        cursor = max(0, row["cursor"] if ack_cursor is None else ack_cursor)
        if cursor > row["cursor"]:
            # A cursor past the newest event would hide future events: clamp it.
            cursor = min(cursor, await db.fetchval("SELECT COALESCE(MAX(id), 0) FROM events"))
        if cursor > row["cursor"]:
            row = await db.fetchrow("UPDATE agents SET cursor = $2 WHERE name = $1 RETURNING *", name, cursor)
        agent = agent_from_row(row)
        events = await db.fetch(
            "SELECT * FROM events WHERE agent = $1 AND id > $2 ORDER BY id LIMIT 50", name, cursor
        )
        claimable: list[Task] = []
        if agent.current_task_id is None:
            found = await db.fetch(_CLAIMABLE_FOR, agent.persona, agent.capabilities, claimable_limit)
            claimable = [task_from_row(r) for r in found]
        return AgentPoll(
            agent=agent, cursor=cursor, events=[event_from_row(e) for e in events], claimable=claimable
        )

    @override
    @writes
    async def heartbeat(self, db: Db, name: str, now: float, lease: float) -> tuple[Agent, Task | None]:
        row = await _touch_agent(db, name, now)
        return agent_from_row(row), await _renew_current(db, name, now, lease)

    # tasks --------------------------------------------------------------------------------------------------
    @override
    @writes
    async def create_tasks(self, db: Db, tasks: Sequence[NewTask], now: float) -> TaskChange:
        change = TaskChange()
        for spec in tasks:
            deps = sorted({*spec.depends_on, *(change.created[i].id for i in spec.depends_on_batch)})
            found: list[Row] = []
            if deps:
                # FOR SHARE: a dependency completing right now commits first (and is read as completed), or waits
                # for this insert, so its cascade sees the new dependent. Either way the task is not left blocked.
                found = await db.fetch(
                    "SELECT id, status FROM tasks WHERE id = ANY($1::bigint[]) ORDER BY id FOR SHARE", deps
                )
            status, error = rules.status_from_dependencies([(r["id"], r["status"]) for r in found])
            values = (
                spec.title, spec.prompt, spec.priority, spec.persona, sorted(set(spec.capabilities)),
                spec.working_dir, spec.max_attempts, spec.timeout_seconds, status.value, error, spec.submitted_by,
                now, now if status.is_terminal else None, spec.retry_delay_seconds, spec.retry_backoff,
            )  # fmt: skip
            row = await db.fetchrow(_INSERT_TASK, *values)
            if spec.records_isolation:
                row = await db.fetchrow(
                    "UPDATE tasks SET isolation = $1, files = $2::text[], base_commit = $3, target_branch = $4, "
                    "resolves = $5 WHERE id = $6 RETURNING *",
                    *submitted_values(spec),
                    row["id"],
                )
            if spec.records_question_policy:
                row = await db.fetchrow(
                    "UPDATE tasks SET answer_within_seconds = $1, on_unanswered = $2 WHERE id = $3 RETURNING *",
                    spec.answer_within_seconds,
                    spec.on_unanswered.value if spec.on_unanswered else None,
                    row["id"],
                )
            if deps:
                insert_deps = "INSERT INTO task_deps (task_id, depends_on) SELECT $1, unnest($2::bigint[])"
                await db.execute(insert_deps, row["id"], deps)
            rules.record_created(change, task_from_row(row, depends_on=deps))
        return change

    @override
    @reads
    async def get_task(self, db: Db, task_id: int, with_attempts: bool = True) -> Task | None:
        return await _task(db, task_id, with_attempts)

    @override
    @reads
    async def get_tasks(self, db: Db, task_ids: Sequence[int]) -> list[Task]:
        found = {
            r["id"]: r
            for r in await db.fetch("SELECT * FROM tasks WHERE id = ANY($1::bigint[])", list(task_ids))
        }
        deps: dict[int, list[int]] = {}
        for r in await db.fetch(
            "SELECT task_id, depends_on FROM task_deps WHERE task_id = ANY($1::bigint[]) ORDER BY depends_on",
            list(found),
        ):
            deps.setdefault(r["task_id"], []).append(r["depends_on"])
        tasks = [task_from_row(found[i], deps.get(i, [])) for i in task_ids if i in found]
        return await _with_open_questions(db, tasks, found.values())

    @override
    @reads
    async def list_tasks(self, db: Db, status: TaskStatus | None, limit: int, offset: int = 0) -> list[Task]:
        if status is None:
            found = await db.fetch("SELECT * FROM tasks ORDER BY id DESC LIMIT $1 OFFSET $2", limit, offset)
        else:
            found = await db.fetch(
                "SELECT * FROM tasks WHERE status = $1 ORDER BY id DESC LIMIT $2 OFFSET $3",
                status.value,
                limit,
                offset,
            )
        return await _with_open_questions(db, [task_from_row(r) for r in found], found)

    @override
    @reads
    async def missing_tasks(self, db: Db, task_ids: Sequence[int]) -> list[int]:
        if not task_ids:
            return []
        found = {
            r["id"]
            for r in await db.fetch("SELECT id FROM tasks WHERE id = ANY($1::bigint[])", list(task_ids))
        }
        return [i for i in task_ids if i not in found]

    @override
    @writes
    async def claim(self, db: Db, agent: str, task_id: int | None, now: float, lease: float) -> ClaimResult:
        me = await _touch_agent(db, agent, now)
        held_id = me["current_task_id"]
        if held_id is not None:
            held = await db.fetchrow("SELECT * FROM tasks WHERE id = $1 FOR UPDATE", held_id)
            if held is not None and held["status"] == "claimed" and held["claimed_by"] == agent:
                if task_id is not None and task_id != held_id:
                    return ClaimResult(None, rules.already_holding(held_id, held["title"]))
                task = await _renew_current(db, agent, now, lease) or task_from_row(held)
                return ClaimResult(rules.claim_of(task, now, reclaimed=True))
            await _free_agent(db, agent, held_id)  # stale pointer (e.g. the task was cancelled or requeued)
        if task_id is None:
            row = await db.fetchrow(_CLAIM_NEXT, agent, now, lease, me["persona"], me["capabilities"])
            if row is None:
                return ClaimResult(None, rules.NOTHING_TO_CLAIM)
        else:
            current = await db.fetchrow(
                """SELECT t.*, ((t.persona IS NULL OR t.persona = $2::text) AND t.capabilities <@ $3::text[]) AS fits
                   FROM tasks AS t WHERE t.id = $1 FOR UPDATE""",
                task_id,
                me["persona"],
                me["capabilities"],
            )
            if current is None:
                raise rules.unknown_task_to_claim(task_id)
            labels = rows.labels(current["capabilities"])
            why = rules.why_not_claimable(
                task_id,
                current["status"],
                current["claimed_by"],
                fits=current["fits"],
                persona=current["persona"],
                capabilities=labels,
            )
            if why is not None:
                return ClaimResult(None, why)
            row = await db.fetchrow(_CLAIM_ONE, agent, now, lease, task_id)
        return ClaimResult(rules.claim_of(task_from_row(row), now))

    @override
    @writes
    async def renew(
        self, db: Db, agent: str, task_id: int, fence: int, now: float, lease: float, progress: str | None
    ) -> Task:
        await _touch_agent(db, agent, now)
        await _held(db, agent, task_id, fence)
        row = await db.fetchrow(
            """UPDATE tasks SET lease_expires_at = LEAST(GREATEST(COALESCE(lease_expires_at, 0), $2::float8 + $3::float8), deadline_at), updated_at = $2::float8,
                   progress = COALESCE($4, progress)
               WHERE id = $1 RETURNING *""",
            task_id,
            now,
            lease,
            progress,
        )
        return task_from_row(row)

    @override
    @writes
    async def _complete(
        self, db: Db, agent: str, task_id: int, fence: int, report: rules.Report, now: float
    ) -> TaskChange:
        await _touch_agent(db, agent, now)
        change = TaskChange()
        try:
            row = await _held(db, agent, task_id, fence)
        except StaleClaim:
            done = await db.fetchval(
                "SELECT outcome FROM attempts WHERE task_id = $1 AND fence_token = $2 AND agent = $3",
                task_id,
                fence,
                agent,
            )
            if done is not None and rules.is_repeated(report, done):
                change.task = await _task(db, task_id, False)
                return change
            raise
        if report.success:
            # One statement: end the attempt, free the agent, record the result.
            updated = await db.fetchrow(
                """WITH ended AS (
                       UPDATE attempts SET outcome = 'completed', error = NULL, finished_at = $3::float8
                       WHERE task_id = $4 AND fence_token = $5),
                   freed AS (
                       UPDATE agents SET current_task_id = NULL,
                           status = CASE WHEN status IN ('lost', 'offline') THEN status ELSE 'idle' END
                       WHERE name = $6 AND current_task_id = $4)
                   UPDATE tasks SET status = 'completed', result = $1, data = $2::json, error = NULL,
                       lease_expires_at = NULL, updated_at = $3::float8, finished_at = $3::float8
                   WHERE id = $4 RETURNING *""",
                report.result,
                dumps(report.data) if report.data is not None else None,
                now,
                task_id,
                fence,
                agent,
            )
            await _close_question(db, task_id, row["question_id"])
            change.task = task_from_row(updated)
            change.finished.append(task_id)
            await _unblock_dependents(db, task_id, now, change)
        else:
            if report.result is not None:
                await db.execute("UPDATE tasks SET result = $1 WHERE id = $2", report.result, task_id)
            await _requeue_or_bury(
                db, row, AttemptOutcome.FAILED, report.failure, now, change, report.retryable
            )
        return change

    @override
    @writes
    async def release(
        self, db: Db, agent: str, task_id: int, fence: int | None, reason: str, now: float
    ) -> TaskChange:
        await _lock_agent(db, agent)
        row = await db.fetchrow("SELECT fence_token FROM tasks WHERE id = $1", task_id)
        if row is None:
            raise rules.unknown_task_released(task_id)
        held = await _held(db, agent, task_id, row["fence_token"] if fence is None else fence)
        change = TaskChange()
        await _requeue_or_bury(db, held, AttemptOutcome.RELEASED, reason, now, change)
        return change

    @override
    @writes
    async def update_isolation(
        self, db: Db, task_id: int, fence: int | None, update: IsolationUpdate, now: float
    ) -> Task | None:
        pairs = update_assignments(update)
        # column names are IsolationUpdate's fields; list values go to the text[] columns
        sets = "".join(
            f"{column} = ${i}{'::text[]' if isinstance(value, list) else ''}, "
            for i, (column, value) in enumerate(pairs, start=4)
        )
        updated = await db.fetchval(
            f"UPDATE tasks SET {sets}updated_at = $1 WHERE id = $2 AND ($3::bigint IS NULL OR fence_token = $3) "
            "RETURNING id",
            now,
            task_id,
            fence,
            *(value for _, value in pairs),
        )
        return await _task(db, task_id, True) if updated is not None else None

    @override
    @writes
    async def defer(
        self, db: Db, agent: str, task_id: int, fence: int, reason: str, now: float
    ) -> TaskChange:
        await _lock_agent(db, agent)
        await _held(db, agent, task_id, fence)
        await _end_attempt(db, task_id, fence, AttemptOutcome.RELEASED, f"waiting: {reason}", now)
        await _free_agent(db, agent, task_id)
        updated = await db.fetchrow(
            """UPDATE tasks SET status = 'blocked', claimed_by = NULL, lease_expires_at = NULL, claimed_at = NULL,
                   deadline_at = NULL, retry_at = NULL, waited_on = $1, progress = $2, updated_at = $3
               WHERE id = $4 RETURNING *""",
            reason,
            f"waiting: {reason}",
            now,
            task_id,
        )
        change = TaskChange()
        change.task = task_from_row(updated, await _task_deps(db, task_id))
        return change

    @override
    @reads
    async def waiting_tasks(self, db: Db, limit: int) -> list[Task]:
        found = await db.fetch(
            "SELECT * FROM tasks WHERE status = 'blocked' AND waited_on IS NOT NULL AND retry_at IS NULL "
            "ORDER BY id LIMIT $1",
            limit,
        )
        return [task_from_row(r, await _task_deps(db, r["id"])) for r in found]

    @override
    @writes
    async def end_waits(self, db: Db, task_ids: Sequence[int], now: float) -> TaskChange:
        change = TaskChange()
        found = await db.fetch(
            """UPDATE tasks SET status = 'pending', progress = NULL, updated_at = $1
               WHERE id = ANY($2::bigint[])
                 AND status = 'blocked' AND waited_on IS NOT NULL AND retry_at IS NULL RETURNING *""",
            now,
            list(task_ids),
        )
        change.claimable.extend(task_from_row(r) for r in found)
        return change

    @override
    @reads
    async def isolation_holders(self, db: Db) -> list[Task]:
        found = await db.fetch(
            """SELECT * FROM tasks WHERE status = 'claimed' AND files <> '{}'
               UNION ALL
               SELECT * FROM tasks WHERE merge_state = 'pending' AND status = 'completed' AND files <> '{}'"""
        )
        return [task_from_row(r) for r in found]

    @override
    @writes
    async def cancel(self, db: Db, task_id: int, reason: str, now: float) -> TaskChange:
        # Lock the holder before the task (agent, then task, as everywhere); if the task changed hands in between,
        # look again.
        while True:
            peek = await db.fetchrow("SELECT status, claimed_by FROM tasks WHERE id = $1", task_id)
            if peek is None:
                raise rules.unknown_task_cancelled(task_id)
            expected = peek["claimed_by"] if peek["status"] == "claimed" else None
            if expected is not None:
                await _lock_agent(db, expected)
            row = await db.fetchrow("SELECT * FROM tasks WHERE id = $1 FOR UPDATE", task_id)
            if (row["claimed_by"] if row["status"] == "claimed" else None) == expected:
                break
        change = TaskChange()
        status = TaskStatus(row["status"])
        if status.is_terminal:
            change.task = task_from_row(row, await _task_deps(db, task_id))
            return change
        holder = row["claimed_by"] if status is TaskStatus.CLAIMED else None
        if holder:
            await _end_attempt(
                db, task_id, row["fence_token"], AttemptOutcome.CANCELLED, reason, now, row["question_id"]
            )
            await _free_agent(db, holder, task_id)
            await _append_event(db, holder, EventKind.TASK_CANCELLED, task_id, reason, now)
            change.notified_agents.append(holder)
        updated = await db.fetchrow(
            """UPDATE tasks SET status = 'cancelled', error = $1, lease_expires_at = NULL, updated_at = $2,
                   finished_at = $2 WHERE id = $3 RETURNING *""",
            reason,
            now,
            task_id,
        )
        change.task = task_from_row(updated, await _task_deps(db, task_id))
        change.finished.append(task_id)
        await _fail_dependents(db, task_id, TaskStatus.CANCELLED, now, change)
        return change

    @override
    @writes
    async def sweep(
        self,
        db: Db,
        now: float,
        agent_lost_before: float,
        keep_alive: Sequence[str] = (),
        lease: float = 300.0,
    ) -> TaskChange:
        """Several brokers may sweep at once: each lost agent, expired lease and overdue question is handled by
        exactly one."""
        change = TaskChange()
        # Questions first: one that lets its worker continue renews the lease before the leases are looked at.
        overdue = await db.fetch(
            "SELECT id, agent, task_id FROM questions WHERE status = 'open' AND deadline_at <= $1::float8 "
            "ORDER BY deadline_at",
            now,
        )
        for found in overdue:
            # Agent, task, question: the lock order of every other call. A busy agent is left to the next sweep.
            if not await _lock_agent(db, found["agent"], skip_locked=True):
                continue
            await db.execute("SELECT 1 FROM tasks WHERE id = $1 FOR UPDATE", found["task_id"])
            still = await db.fetchrow(
                "SELECT * FROM questions WHERE id = $1 AND status = 'open' FOR UPDATE", found["id"]
            )
            if still is not None:
                await _expire_question(db, question_from_row(still), now, lease, change)
        alive = list(keep_alive)
        if alive:
            # Agents parked on this broker are alive, but other brokers judge them by last_seen_at: refresh it once
            # they are halfway to the cut-off (one write per agent per half period, not one per sweep).
            await db.execute(
                """UPDATE agents SET last_seen_at = $1::float8
                   WHERE name = ANY($2::text[]) AND status NOT IN ('lost', 'offline') AND last_seen_at < $3::float8""",
                now,
                alive,
                (now + agent_lost_before) / 2,
            )
        # A concurrent sweep waits on these rows, re-checks their status, and leaves them to this one.
        lost = await db.fetch(
            """UPDATE agents SET status = 'lost'
               WHERE status NOT IN ('lost', 'offline') AND last_seen_at < $1::float8 AND NOT (name = ANY($2::text[]))
               RETURNING name""",
            agent_lost_before,
            alive,
        )
        for name in sorted(r["name"] for r in lost):
            for row in await db.fetch(
                "SELECT * FROM tasks WHERE status = 'claimed' AND claimed_by = $1 FOR UPDATE SKIP LOCKED",
                name,
            ):
                message = rules.agent_lost(name)
                await _append_event(db, name, EventKind.LEASE_LOST, row["id"], message, now)
                await _requeue_or_bury(db, row, AttemptOutcome.AGENT_LOST, message, now, change)
        expired = await db.fetch(
            """SELECT * FROM tasks WHERE status = 'claimed' AND lease_expires_at <= $1::float8
               ORDER BY lease_expires_at FOR UPDATE SKIP LOCKED""",
            now,
        )
        for row in expired:
            holder = row["claimed_by"]
            # Its agent is in the middle of a call (a report may be about to land): leave it to the next sweep
            # rather than wait on the agent's lock while holding the task's (the reverse of everyone else's order).
            if holder is None or not await _lock_agent(db, holder, skip_locked=True):
                continue
            message = rules.lease_lost(holder, row["timeout_seconds"], row["deadline_at"], now)
            await _append_event(db, holder, EventKind.LEASE_LOST, row["id"], message, now)
            change.notified_agents.append(holder)
            await _requeue_or_bury(db, row, AttemptOutcome.EXPIRED, message, now, change)
        # A concurrent sweep waits on these rows, re-checks the status, and leaves them to this one.
        due = await db.fetch(
            """UPDATE tasks SET status = 'pending', retry_at = NULL, updated_at = $1::float8
               WHERE retry_at <= $1::float8 AND status = 'blocked' RETURNING *""",
            now,
        )
        change.claimable.extend(task_from_row(r) for r in due)
        return change

    # questions ----------------------------------------------------------------------------------------------
    @override
    @writes
    async def ask_question(
        self, db: Db, agent: str, task_id: int, fence: int, asked: NewQuestion, now: float, lease: float
    ) -> QuestionResult:
        await _touch_agent(db, agent, now)
        row = await _held(db, agent, task_id, fence)
        latest = await db.fetchrow(
            "SELECT * FROM questions WHERE task_id = $1 AND fence_token = $2 ORDER BY id DESC LIMIT 1",
            task_id,
            fence,
        )
        again = rules.asked_again(asked, question_from_row(latest) if latest else None)
        if again is not None:
            return QuestionResult(again, TaskChange())
        on_timeout, within = rules.question_policy(asked, row["answer_within_seconds"], row["on_unanswered"])
        deadline = rules.question_deadline(now, within, row["deadline_at"])
        found = await db.fetchrow(
            """INSERT INTO questions (task_id, fence_token, agent, question, options, on_timeout, asked_at, deadline_at)
               VALUES ($1, $2, $3, $4, $5::text[], $6, $7, $8) RETURNING *""",
            *(task_id, fence, agent, asked.question, asked.options, on_timeout.value, now, deadline),
        )
        held_until = rules.lease_while_asking(now, lease, deadline, row["deadline_at"])
        await db.execute(
            "UPDATE tasks SET question_id = $1, lease_expires_at = $2, updated_at = $3 WHERE id = $4",
            *(found["id"], held_until, now, task_id),
        )
        return QuestionResult(question_from_row(found), TaskChange(questions=[task_id]))

    @override
    @writes
    async def answer_question(
        self, db: Db, task_id: int, answer: str, answered_by: str, now: float, lease: float
    ) -> QuestionResult:
        # Lock the asker before the task (agent, then task, then question); if the question changed in between,
        # look again.
        while True:
            peek = await db.fetchrow(
                "SELECT t.status, t.question_id, q.agent FROM tasks AS t "
                "LEFT JOIN questions AS q ON q.id = t.question_id WHERE t.id = $1",
                task_id,
            )
            if peek is None:
                raise rules.unknown_task_answered(task_id)
            if peek["agent"] is not None:
                await _lock_agent(db, peek["agent"])
            row = await db.fetchrow("SELECT * FROM tasks WHERE id = $1 FOR UPDATE", task_id)
            if row["question_id"] == peek["question_id"]:
                break
        found = None
        if row["question_id"] is not None:
            found = await db.fetchrow(
                """UPDATE questions SET status = 'answered', answer = $1, answered_by = $2, answered_at = $3
                   WHERE id = $4 AND status = 'open' RETURNING *""",
                *(answer, answered_by, now, row["question_id"]),
            )
        if found is None:
            latest = await db.fetchrow(
                "SELECT * FROM questions WHERE task_id = $1 ORDER BY id DESC LIMIT 1", task_id
            )
            raise rules.no_open_question(
                task_id, row["status"], question_from_row(latest) if latest else None
            )
        question = question_from_row(found)
        await db.execute(
            """UPDATE tasks SET question_id = NULL, updated_at = $2::float8,
                   lease_expires_at = LEAST(GREATEST(COALESCE(lease_expires_at, 0), $2::float8 + $3::float8), deadline_at)
               WHERE id = $1""",
            *(task_id, now, lease),
        )
        await _append_event(db, question.agent, EventKind.QUESTION_ANSWERED, task_id, answer, now)
        return QuestionResult(question, TaskChange(notified_agents=[question.agent], questions=[task_id]))

    @override
    @reads
    async def get_question(self, db: Db, question_id: int) -> Question | None:
        found = await db.fetchrow("SELECT * FROM questions WHERE id = $1", question_id)
        return question_from_row(found) if found else None

    @override
    @reads
    async def next_lease_expiry(self, db: Db) -> float | None:
        return await db.fetchval("SELECT MIN(lease_expires_at) FROM tasks WHERE status = 'claimed'")

    @override
    @reads
    async def pending_tasks(self, db: Db, limit: int) -> list[Task]:
        return await _pending(db, limit)

    # tokens -------------------------------------------------------------------------------------------------
    @override
    @writes
    async def add_token(self, db: Db, token_hash: str, identity: Identity, now: float) -> None:
        await db.execute(
            "INSERT INTO tokens (token_hash, role, agent, label, created_at) VALUES ($1, $2, $3, $4, $5)",
            token_hash,
            identity.role.value,
            identity.agent,
            identity.label,
            now,
        )

    @override
    @reads
    async def find_token(self, db: Db, token_hash: str) -> Identity | None:
        row = await db.fetchrow(
            "SELECT role, agent, label FROM tokens WHERE token_hash = $1 AND revoked_at IS NULL", token_hash
        )
        return identity_from_row(row) if row else None

    @override
    @writes
    async def revoke_tokens(
        self, db: Db, *, agent: str | None = None, token_hash: str | None = None, now: float
    ) -> int:
        by, key = ("token_hash", token_hash) if token_hash is not None else ("agent", agent)
        status = await db.execute(
            f"UPDATE tokens SET revoked_at = $1 WHERE {by} = $2 AND revoked_at IS NULL", now, key
        )
        return int(status.split()[-1])  # "UPDATE <count>"

    @override
    @reads
    async def list_tokens(self, db: Db) -> list[tuple[str, Identity, float, float | None]]:
        found = await db.fetch("SELECT * FROM tokens ORDER BY created_at")
        return [
            (
                r["token_hash"],
                identity_from_row(r),
                r["created_at"],
                r["revoked_at"],
            )
            for r in found
        ]

    @override
    @reads
    async def stats(self, db: Db) -> StoreStats:
        tasks = {r[0]: r[1] for r in await db.fetch("SELECT status, COUNT(*) FROM tasks GROUP BY status")}
        agents = {r[0]: r[1] for r in await db.fetch("SELECT status, COUNT(*) FROM agents GROUP BY status")}
        events = await db.fetchval("SELECT COALESCE(MAX(id), 0) FROM events")
        return StoreStats(tasks=tasks, agents=agents, events=events)


# --------------------------------------------------------------------------------------------------------------
# Steps of the transactions above; each runs inside the caller's transaction, on its connection.
# --------------------------------------------------------------------------------------------------------------


async def _touch_agent(db: Db, name: str, now: float) -> Row:
    """Lock the agent's row and mark it seen (creating it on first contact); a lost agent that speaks is back.

    ``last_seen_at`` is kept to ``rules.SEEN_RESOLUTION_SECONDS``. The lock orders this call after any other
    transaction about the same agent (a report, a claim, an event appended for it).
    """
    row = await db.fetchrow("SELECT * FROM agents WHERE name = $1 FOR UPDATE", name)
    if (
        row is not None
        and row["status"] not in GONE_AGENT_STATUSES
        and now - row["last_seen_at"] < rules.SEEN_RESOLUTION_SECONDS
    ):
        return row
    if row is None:
        row = await db.fetchrow(
            """INSERT INTO agents (name, registered_at, last_seen_at) VALUES ($1, $2::float8, $2::float8)
               ON CONFLICT (name) DO NOTHING RETURNING *""",
            name,
            now,
        )
        if row is not None:
            return row
        # Another broker created it a moment ago: update that row instead (the UPDATE waits for its lock).
    return await db.fetchrow(
        """UPDATE agents SET last_seen_at = $2::float8,
               status = CASE WHEN status IN ('lost', 'offline') THEN
                   (CASE WHEN current_task_id IS NULL THEN 'idle' ELSE 'busy' END) ELSE status END
           WHERE name = $1 RETURNING *""",
        name,
        now,
    )


async def _lock_agent(db: Db, name: str, *, skip_locked: bool = False) -> bool:
    """Lock an agent's row (before any task it holds: the lock order is agent, then task)."""
    suffix = " SKIP LOCKED" if skip_locked else ""
    return await db.fetchval(f"SELECT true FROM agents WHERE name = $1 FOR UPDATE{suffix}", name) is not None


async def _append_event(
    db: Db, agent: str, kind: EventKind, task_id: int | None, detail: str, now: float
) -> None:
    # Under the agent's row lock: its events then commit in id order, so a cursor never passes one still in flight.
    await _lock_agent(db, agent)
    await db.execute(
        "INSERT INTO events (agent, kind, task_id, detail, created_at) VALUES ($1, $2, $3, $4, $5)",
        agent,
        kind.value,
        task_id,
        detail,
        now,
    )


async def _renew_current(db: Db, agent: str, now: float, lease: float) -> Task | None:
    row = await db.fetchrow(
        """UPDATE tasks SET lease_expires_at = LEAST(GREATEST(COALESCE(lease_expires_at, 0), $2::float8 + $3::float8), deadline_at), updated_at = $2::float8
           WHERE status = 'claimed' AND claimed_by = $1 AND deadline_at > $2::float8 RETURNING *""",
        agent,
        now,
        lease,
    )
    return task_from_row(row) if row else None


async def _pending(db: Db, limit: int) -> list[Task]:
    found = await db.fetch(
        "SELECT * FROM tasks WHERE status = 'pending' ORDER BY priority DESC, id LIMIT $1::int", limit
    )
    return [task_from_row(r) for r in found]


async def _task_deps(db: Db, task_id: int) -> list[int]:
    found = await db.fetch("SELECT depends_on FROM task_deps WHERE task_id = $1 ORDER BY depends_on", task_id)
    return [r[0] for r in found]


async def _task(db: Db, task_id: int, with_attempts: bool) -> Task | None:
    row = await db.fetchrow("SELECT * FROM tasks WHERE id = $1", task_id)
    if row is None:
        return None
    attempts = None
    if with_attempts:
        found = await db.fetch("SELECT * FROM attempts WHERE task_id = $1 ORDER BY number", task_id)
        attempts = [rows.attempt_from_row(r) for r in found]
    task = task_from_row(row, await _task_deps(db, task_id), attempts)
    if with_attempts:
        asked = await db.fetch("SELECT * FROM questions WHERE task_id = $1 ORDER BY id", task_id)
        task.questions = [question_from_row(r) for r in asked]
        task.question = next((q for q in task.questions if q.status is QuestionStatus.OPEN), None)
    elif row["question_id"] is not None:
        await _with_open_questions(db, [task], [row])
    return task


async def _with_open_questions(db: Db, tasks: list[Task], found: Iterable[Row]) -> list[Task]:
    """Set each task's open question; the questions table is read only when a row points at one."""
    ids = [r["question_id"] for r in found if r["question_id"] is not None]
    if not ids:
        return tasks
    asked = await db.fetch("SELECT * FROM questions WHERE id = ANY($1::bigint[]) AND status = 'open'", ids)
    open_questions = {q.task_id: q for q in map(question_from_row, asked)}
    for task in tasks:
        task.question = open_questions.get(task.id)
    return tasks


async def _expire_question(db: Db, question: Question, now: float, lease: float, change: TaskChange) -> None:
    """Close a question whose deadline passed (its agent, task and row locked): its worker continues on its own
    judgement, or the attempt fails."""
    await db.execute("UPDATE questions SET status = 'expired' WHERE id = $1", question.id)
    row = await db.fetchrow(
        "UPDATE tasks SET question_id = NULL WHERE id = $1 AND question_id = $2 RETURNING *",
        question.task_id,
        question.id,
    )
    change.questions.append(question.task_id)
    change.notified_agents.append(question.agent)
    if question.on_timeout is OnUnanswered.CONTINUE:
        detail = rules.unanswered_continue(question)
        await _append_event(db, question.agent, EventKind.QUESTION_EXPIRED, question.task_id, detail, now)
        await db.execute(
            """UPDATE tasks SET lease_expires_at = LEAST(GREATEST(COALESCE(lease_expires_at, 0),
                   $2::float8 + $3::float8), deadline_at)
               WHERE id = $1 AND status = 'claimed' AND fence_token = $4""",
            *(question.task_id, now, lease, question.fence_token),
        )
        return
    failure = rules.unanswered_fail(question)
    await _append_event(db, question.agent, EventKind.QUESTION_EXPIRED, question.task_id, failure, now)
    if row is not None and rules.holds(
        question.agent,
        question.fence_token,
        status=row["status"],
        claimed_by=row["claimed_by"],
        fence_token=row["fence_token"],
    ):
        await _requeue_or_bury(db, row, AttemptOutcome.UNANSWERED, failure, now, change, retryable=False)


async def _end_attempt(
    db: Db,
    task_id: int,
    fence: int,
    outcome: AttemptOutcome,
    error: str | None,
    now: float,
    question_id: int | None = None,
) -> None:
    await db.execute(
        "UPDATE attempts SET outcome = $1, error = $2, finished_at = $3 WHERE task_id = $4 AND fence_token = $5",
        outcome.value,
        error,
        now,
        task_id,
        fence,
    )
    await _close_question(db, task_id, question_id)


async def _close_question(db: Db, task_id: int, question_id: int | None) -> None:
    """The question an ending attempt left open (``question_id``, the task row's) closes with it: nobody is left
    to read its answer. No statement for a task without one: this is the hot path."""
    if question_id is not None:
        await db.execute(
            "UPDATE questions SET status = 'withdrawn' WHERE id = $1 AND status = 'open'", question_id
        )
        await db.execute("UPDATE tasks SET question_id = NULL WHERE id = $1", task_id)


async def _free_agent(db: Db, agent: str, task_id: int) -> None:
    await db.execute(
        """UPDATE agents SET current_task_id = NULL, status = CASE WHEN status IN ('lost', 'offline') THEN status ELSE 'idle' END
           WHERE name = $1 AND current_task_id = $2""",
        agent,
        task_id,
    )


async def _held(db: Db, agent: str, task_id: int, fence: int) -> Row:
    """The task row, locked, if ``agent`` holds it under ``fence``; otherwise raise the refusal that says why."""
    row = await db.fetchrow("SELECT * FROM tasks WHERE id = $1 FOR UPDATE", task_id)
    if row is None:
        raise rules.unknown_task_reported(task_id)
    task = {"status": row["status"], "claimed_by": row["claimed_by"], "fence_token": row["fence_token"]}
    if rules.holds(agent, fence, **task):
        return row
    outcome = await db.fetchval(
        "SELECT outcome FROM attempts WHERE task_id = $1 AND fence_token = $2 AND agent = $3",
        task_id,
        fence,
        agent,
    )
    raise rules.stale_report(agent, task_id, fence, **task, error=row["error"], attempt_outcome=outcome)


async def _unblock_dependents(db: Db, task_id: int, now: float, change: TaskChange) -> None:
    # Lock the dependents first, then re-check them in a new statement (a fresh snapshot at READ COMMITTED): of two
    # dependencies completing at once, the second to lock sees the first committed, so one of them unblocks.
    waiting = await db.fetch(
        """SELECT id FROM tasks WHERE status = 'blocked'
               AND id IN (SELECT task_id FROM task_deps WHERE depends_on = $1) ORDER BY id FOR UPDATE""",
        task_id,
    )
    if not waiting:
        return
    unblocked = await db.fetch(
        """UPDATE tasks SET status = 'pending', updated_at = $2::float8
           WHERE status = 'blocked' AND id IN (SELECT task_id FROM task_deps WHERE depends_on = $1)
             AND NOT EXISTS (SELECT 1 FROM task_deps AS d JOIN tasks AS dep ON dep.id = d.depends_on
                             WHERE d.task_id = tasks.id AND dep.status != 'completed')
           RETURNING *""",
        task_id,
        now,
    )
    change.claimable.extend(task_from_row(r) for r in unblocked)


async def _fail_dependents(db: Db, task_id: int, status: str, now: float, change: TaskChange) -> None:
    """A failed, dead or cancelled task fails everything waiting on it, transitively."""
    frontier = [(task_id, status)]
    while frontier:
        failed_id, failed_status = frontier.pop()
        failed = await db.fetch(
            """UPDATE tasks SET status = 'failed', error = $1, updated_at = $2::float8, finished_at = $2::float8
               WHERE status = 'blocked' AND id IN (SELECT task_id FROM task_deps WHERE depends_on = $3)
               RETURNING id""",
            rules.dependency_ended(failed_id, failed_status),
            now,
            failed_id,
        )
        change.finished.extend(r["id"] for r in failed)
        frontier.extend((r["id"], TaskStatus.FAILED) for r in failed)


async def _requeue_or_bury(
    db: Db, row: Row, ended: AttemptOutcome, why: str, now: float, change: TaskChange, retryable: bool = True
) -> None:
    """End the running attempt and put the task back in the queue, or end it, as :func:`rules.after_attempt` says."""
    task_id, agent = row["id"], row["claimed_by"]
    await _end_attempt(db, task_id, row["fence_token"], ended, why, now, row["question_id"])
    if agent:
        await _free_agent(db, agent, task_id)
    delay = rules.RetryDelay(row["retry_delay_seconds"], row["retry_backoff"])
    after = rules.after_attempt(
        ended, row["failures"], row["max_attempts"], why, retryable=retryable, delay=delay, now=now
    )
    ended_at = now if after.status.is_terminal else None
    updated = await db.fetchrow(
        """UPDATE tasks SET status = $1, failures = $2, error = $3, claimed_by = NULL, lease_expires_at = NULL,
               claimed_at = NULL, deadline_at = NULL, updated_at = $4, finished_at = $5, retry_at = $7
           WHERE id = $6 RETURNING *""",
        *(after.status.value, after.failures, after.error, now, ended_at, task_id, after.retry_at),
    )
    rules.record_requeue_or_end(change, task_from_row(updated))
    if after.status.is_terminal:
        await _fail_dependents(db, task_id, after.status, now, change)
