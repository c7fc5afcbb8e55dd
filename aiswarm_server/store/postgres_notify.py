"""How brokers sharing one PostgreSQL database hear each other's changes: NOTIFY on commit, LISTEN in the background.

A commit that makes tasks claimable, finishes tasks or gives agents events NOTIFYs one channel per aiswarm schema
with ids and agent names (:func:`change_payloads`), inside its transaction, so PostgreSQL delivers it on commit and
never before. Every broker LISTENs on that channel (:class:`ChangeListener`), skips its own notifications, re-reads
the tasks named (the database is the truth) and hands the change to the service's wake-up step.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import asyncpg

from aiswarm_server.models import TaskChange, TaskStatus
from aiswarm_server.store.rows import dumps

if TYPE_CHECKING:
    from aiswarm_server.store.postgres import PostgresStore

#: PostgreSQL refuses NOTIFY payloads of 8000 bytes or more.
NOTIFY_LIMIT = 7900
#: How often the listening connection is checked when nothing arrives.
LISTENER_CHECK_SECONDS = 10.0
log = logging.getLogger("aiswarm.store")

Connection = Any  # asyncpg.Connection (asyncpg ships no type information)


def channel_for(schema: str) -> str:
    """The NOTIFY channel of one aiswarm schema (several may share a database; channel names stop at 63 bytes)."""
    channel = f"aiswarm.{schema}"
    if len(channel.encode()) > 63:
        channel = "aiswarm." + hashlib.sha256(schema.encode()).hexdigest()[:32]
    return channel


def change_payloads(origin: str, change: TaskChange, limit: int = NOTIFY_LIMIT) -> list[str]:
    """The NOTIFY payloads announcing ``change``: ids and agent names, never whole tasks.

    ``{"o": origin, "c": [claimable ids], "f": [finished ids], "a": [agents with new events], "q": [tasks whose
    question was asked or closed]}``. When that does not
    fit one payload, ``"c": true`` asks listeners to re-read the pending queue instead, and the finished ids and
    agent names are spread over as many payloads as they need (watchers of a finished task must still hear of it).
    """
    claimable = [t.id for t in change.claimable]
    finished = list(dict.fromkeys([*change.finished, *([change.task.id] if change.task else [])]))
    agents = list(dict.fromkeys(change.notified_agents))
    asked = list(dict.fromkeys(change.questions))
    note: dict[str, Any] = {"o": origin, "c": claimable, "f": finished, "a": agents}
    if asked:
        note["q"] = asked
    whole = dumps(note)
    if len(whole.encode()) <= limit:
        return [whole]
    payloads: list[str] = []
    current: dict[str, Any] = {"o": origin, "c": bool(claimable), "f": [], "a": [], "q": []}
    size = len(dumps(current).encode())
    items = [*(("f", i) for i in finished), *(("a", a) for a in agents), *(("q", i) for i in asked)]
    for key, item in items:
        cost = len(dumps(item).encode()) + 1
        if size + cost > limit:
            payloads.append(dumps(current))
            current = {"o": origin, "c": False, "f": [], "a": [], "q": []}
            size = len(dumps(current).encode())
        current[key].append(item)
        size += cost
    payloads.append(dumps(current))
    return payloads


async def announce(db: Connection, channel: str, origin: str, change: TaskChange) -> None:
    """NOTIFY the other brokers of ``change``, inside the transaction: PostgreSQL delivers it on commit only."""
    if not (change.claimable or change.finished or change.notified_agents or change.questions):
        return
    for payload in change_payloads(origin, change):
        await db.execute("SELECT pg_notify($1, $2)", channel, payload)


async def close_quietly(con: Connection) -> None:
    """Close a connection that may already be broken, without waiting long or raising."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(con.close(), 2.0)
    if not con.is_closed():
        con.terminate()


class ChangeListener:
    """LISTENs on the store's channel on a dedicated connection and hands other brokers' changes to ``apply``.

    If the listening connection drops, it is re-opened and everything that may have been missed meanwhile is
    re-announced: the pending queue, tasks finished and agents given events since shortly before the drop.
    """

    def __init__(self, store: PostgresStore, apply: Callable[[TaskChange], None]) -> None:
        self.store = store
        self.apply = apply
        self._notifications: asyncio.Queue[str] = asyncio.Queue()
        self._heard_at = time.time()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Listen; returns once listening, so nothing committed afterwards is missed."""
        con = await self._listen()
        self._heard_at = time.time()
        self._task = asyncio.create_task(self._listen_forever(con), name="aiswarm-pg-listener")

    async def stop(self) -> None:
        """Stop listening and close the listening connection."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _listen(self) -> Connection:
        try:
            con = await asyncpg.connect(self.store.url)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            raise self.store.unreachable(error) from error
        await con.add_listener(self.store.channel, self._on_notification)
        return con

    def _on_notification(self, _con: object, _pid: int, _channel: str, payload: str) -> None:
        self._notifications.put_nowait(payload)

    async def _listen_forever(self, con: Connection | None) -> None:
        where = self.store.where
        backoff = 0.1
        consumer = asyncio.create_task(self._consume_notifications(), name="aiswarm-pg-notifications")
        try:
            while True:
                if con is None:
                    try:
                        missed_since = self._heard_at - 2.0
                        con = await self._listen()
                        backoff = 0.1
                        log.warning("listening for other brokers' changes again at %s", where)
                        self.apply(await self.store.changes_since(missed_since))
                        self._heard_at = time.time()
                    except Exception as error:
                        log.warning("cannot listen at %s (%s); retrying in %.1f s", where, error, backoff)
                        if con is not None:
                            await close_quietly(con)
                            con = None
                        await asyncio.sleep(backoff)
                        backoff = min(backoff * 2, 5.0)
                        continue
                await self._until_lost(con)
                log.warning("lost the listening connection to %s; reconnecting", where)
                await close_quietly(con)
                con = None
        finally:
            consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await consumer
            if con is not None:
                await close_quietly(con)

    async def _until_lost(self, con: Connection) -> None:
        """Return when the listening connection is gone: closed by the server, or not answering a check."""
        lost = asyncio.Event()
        con.add_termination_listener(lambda _con: lost.set())
        while not con.is_closed():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(lost.wait(), LISTENER_CHECK_SECONDS)
                return
            try:
                await asyncio.wait_for(con.fetchval("SELECT 1"), LISTENER_CHECK_SECONDS)
                self._heard_at = time.time()
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
                return

    async def _consume_notifications(self) -> None:
        """Turn notifications into TaskChanges, a burst at a time (one re-read for many commits)."""
        while True:
            payloads = [await self._notifications.get()]
            while not self._notifications.empty():
                payloads.append(self._notifications.get_nowait())
            try:
                change = await self._rebuild(payloads)
            except (
                Exception
            ) as error:  # the database is away: the next notification or the sweeper catches up
                log.warning("could not read the changes other brokers announced: %s", error)
                continue
            if change is not None:
                self.apply(change)

    async def _rebuild(self, payloads: Sequence[str]) -> TaskChange | None:
        reread_pending = False
        claimable: list[int] = []
        finished: list[int] = []
        agents: list[str] = []
        asked: list[int] = []
        for payload in payloads:
            try:
                note = json.loads(payload)
                if note.get("o") == self.store.origin:
                    continue
                if note.get("c") is True:
                    reread_pending = True
                else:
                    claimable += [int(i) for i in note.get("c", [])]
                finished += [int(i) for i in note.get("f", [])]
                agents += [str(a) for a in note.get("a", [])]
                asked += [int(i) for i in note.get("q", [])]
            except (ValueError, TypeError, AttributeError):
                log.warning("ignoring a malformed notification on %s: %.200s", self.store.channel, payload)
        if not (reread_pending or claimable or finished or agents or asked):
            return None
        if reread_pending:
            pending = await self.store.pending_tasks(limit=100)
        elif claimable:
            tasks = await self.store.get_tasks(list(dict.fromkeys(claimable)))
            pending = [t for t in tasks if t.status is TaskStatus.PENDING]
        else:
            pending = []
        return TaskChange(
            claimable=pending,
            finished=list(dict.fromkeys(finished)),
            notified_agents=list(dict.fromkeys(agents)),
            questions=list(dict.fromkeys(asked)),
        )
