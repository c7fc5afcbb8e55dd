"""Hostile callers: no or wrong token, a worker reaching for another agent's task or the primary's tools, a primary
posing as a worker, foreign Host/Origin headers (DNS rebinding), leaked tokens, and binding beyond loopback."""

from __future__ import annotations

import asyncio
import os
import stat
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from aiswarm_server.auth import hash_token
from aiswarm_server.broker_client import BrokerCallError, BrokerClient
from aiswarm_server.replies import TaskReply
from tests.broker_harness import BrokerProcess
from tests.reliability.swarm import START_TIMEOUT

pytestmark = pytest.mark.anyio

LIST_TOOLS = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
JSON_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


@pytest.fixture(scope="module")
def broker_env() -> dict[str, str]:
    # Debug logging is the most talkative the broker gets: tokens must not appear even there.
    return {"AISWARM_LOG_LEVEL": "debug"}


async def test_no_wrong_or_revoked_token_gets_401_before_any_mcp(
    broker: BrokerProcess, admin: BrokerClient
) -> None:
    revoked = (await admin.issue_agent_token("revoked-1")).token
    await admin.revoke_agent_tokens("revoked-1")
    async with httpx.AsyncClient(timeout=30) as http:
        for value in (
            None,
            "Bearer",
            "Bearer nope",
            f"Bearer {broker.primary_token}x",
            f"Bearer {revoked}",
            f"Basic {broker.primary_token}",
            broker.primary_token,
        ):
            headers = dict(JSON_HEADERS)
            if value is not None:
                headers["Authorization"] = value
            reply = await http.post(broker.url, json=LIST_TOOLS, headers=headers)
            assert reply.status_code == 401, (value, reply.text)
            assert reply.headers["www-authenticate"].startswith("Bearer")
        for method in ("GET", "DELETE"):
            reply = await http.request(method, broker.url)
            assert reply.status_code == 401


async def test_a_worker_cannot_touch_another_agents_task(broker: BrokerProcess, admin: BrokerClient) -> None:
    owner_token = (await admin.issue_agent_token("owner-1")).token
    thief_token = (await admin.issue_agent_token("thief-1")).token
    task_id = (await admin.submit_task("mine", "p")).tasks[0].id
    async with BrokerClient(broker.url, owner_token) as owner, BrokerClient(broker.url, thief_token) as thief:
        claim = await owner.claim_task(task_id)
        fence = claim.fence_token
        assert claim.claimed and fence is not None
        stolen = await thief.claim_task(task_id)
        assert not stolen.claimed and "already claimed by owner-1" in stolen.message
        with pytest.raises(BrokerCallError, match="You do not hold task"):
            await thief.report_progress(task_id, fence, "mine now")
        with pytest.raises(BrokerCallError, match="You do not hold task"):
            await thief.report_task_completion(task_id, fence, success=True, result="stolen")
        with pytest.raises(BrokerCallError, match="You do not hold task"):
            await thief.report_task_completion(
                task_id, fence, success=False, error="sabotage", retryable=False
            )
        for tool, args in [
            ("cancel_task", {"task_id": task_id}),
            ("release_task", {"agent": "owner-1", "task_id": task_id}),
            ("submit_task", {"title": "t", "prompt": "p"}),
            ("issue_agent_token", {"agent": "owner-1"}),
        ]:
            with pytest.raises(BrokerCallError, match=r"Unknown tool|not found"):
                await thief.call(tool, TaskReply, **args)
        # The thief's heartbeat renews only its own (empty) hand.
        beat = await thief.update_heartbeat()
        assert beat.current_task_id is None
        task = (await admin.get_task(task_id)).task
        assert task.status == "claimed" and task.claimed_by == "owner-1" and task.fence_token == fence
        assert [a.agent for a in task.attempts] == ["owner-1"]
        await owner.report_task_completion(task_id, fence, success=True, result="mine")


async def test_a_primary_cannot_act_as_a_worker(broker: BrokerProcess, admin: BrokerClient) -> None:
    task_id = (await admin.submit_task("for workers", "p")).tasks[0].id
    async with BrokerClient(broker.url, broker.primary_token) as primary:
        for tool in ("claim_task", "register_agent", "wait_for_next_event", "update_heartbeat"):
            with pytest.raises(BrokerCallError, match=r"Unknown tool|not found"):
                await primary.call(tool, TaskReply, task_id=task_id if tool == "claim_task" else None)
        for tool in ("issue_agent_token", "release_task", "broker_status", "list_tokens"):
            with pytest.raises(BrokerCallError, match=r"Unknown tool|not found"):
                await primary.call(tool, TaskReply, agent="x", task_id=task_id)
    assert (await admin.get_task(task_id)).task.status == "pending"


async def test_the_token_list_shows_fingerprints_to_the_admin_only(
    broker: BrokerProcess, admin: BrokerClient
) -> None:
    first = (await admin.issue_agent_token("listed-1")).token
    await admin.revoke_agent_tokens("listed-1")
    second = (await admin.issue_agent_token("listed-1")).token
    valid = await admin.list_tokens("listed-1")
    assert [t.fingerprint for t in valid.tokens] == [hash_token(second)[:12]]
    everything = await admin.list_tokens("listed-1", include_revoked=True)
    assert [(t.fingerprint, t.revoked_at is not None) for t in everything.tokens] == [
        (hash_token(first)[:12], True),
        (hash_token(second)[:12], False),
    ]
    assert first not in everything.model_dump_json() and second not in everything.model_dump_json()
    async with BrokerClient(broker.url, second) as worker:
        with pytest.raises(BrokerCallError, match=r"Unknown tool|not found"):
            await worker.list_tokens()


@pytest.mark.parametrize(
    "header",
    [
        {"Host": "evil.example"},
        {"Host": "evil.example:80"},
        {"Host": "127.0.0.1.evil.example"},
        {"Origin": "http://evil.example"},
        {"Origin": "http://127.0.0.1.evil.example:8765"},
        {"Origin": "null"},
    ],
)
async def test_foreign_host_or_origin_is_refused(broker: BrokerProcess, header: dict[str, str]) -> None:
    headers = {**JSON_HEADERS, "Authorization": f"Bearer {broker.primary_token}", **header}
    async with httpx.AsyncClient(timeout=30) as http:
        reply = await http.post(broker.url, json=LIST_TOOLS, headers=headers)
    assert reply.status_code in (400, 403, 421), reply.text
    assert "tools" not in reply.text


async def test_tokens_are_private_files_and_never_logged_or_returned(
    broker: BrokerProcess, admin: BrokerClient
) -> None:
    for name in ("admin.token", "primary.token"):
        mode = stat.S_IMODE(os.stat(broker.home / name).st_mode)
        assert mode == 0o600, (name, oct(mode))
    worker_token = (await admin.issue_agent_token("quiet-1")).token
    tokens = [broker.admin_token, broker.primary_token, worker_token]
    results: list[str] = []
    async with (
        BrokerClient(broker.url, worker_token) as worker,
        BrokerClient(broker.url, broker.primary_token) as primary,
    ):
        registered = await worker.register_agent(cli="quiet")
        task_id = (await primary.submit_task("quiet", "p")).tasks[0].id
        claim = await worker.claim_task(task_id)
        results += [registered.model_dump_json(), claim.model_dump_json()]
        results.append((await worker.wait_for_next_event(registered.cursor, 0)).model_dump_json())
        results.append((await worker.get_agent_status()).model_dump_json())
        done = await worker.report_task_completion(task_id, claim.fence_token or 0, success=True)
        results.append(done.model_dump_json())
        for call in (
            primary.get_task(task_id),
            primary.list_tasks(),
            primary.list_agents(),
            admin.broker_status(),
        ):
            reply: Any = await call
            results.append(reply.model_dump_json())
        for bad in (primary.get_task(999_999), worker.report_progress(task_id, 99, "x")):
            with pytest.raises(BrokerCallError) as refused:
                await bad
            results.append(str(refused.value))
    async with httpx.AsyncClient(timeout=30) as http:
        for token in tokens:
            reply = await http.post(
                broker.url, json=LIST_TOOLS, headers={**JSON_HEADERS, "Authorization": f"Bearer {token}x"}
            )
            results.append(reply.text)
        results.append((await http.get(broker.base + "/metrics")).text)
        results.append((await http.get(broker.base + "/health")).text)
    assert broker.log_path is not None
    log = broker.log_path.read_text(errors="replace")
    secrets = [*tokens, *(t[8:] for t in tokens)]  # also the random part without its prefix
    for secret in secrets:
        assert secret not in log, "a token appears in the broker's log"
        assert not [r for r in results if secret in r], "a token appears in a tool result"
    assert not [
        p for p in broker.home.glob("*.log") if any(s in p.read_text(errors="replace") for s in secrets)
    ]


async def test_binding_beyond_loopback_needs_allow_remote_and_still_needs_a_token(tmp_path: Path) -> None:
    env = {**os.environ, "AISWARM_HOME": str(tmp_path / "home")}
    refused = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "aiswarm_server", "serve", "--host", "0.0.0.0", "--port", "0",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        _out, err = await asyncio.wait_for(refused.communicate(), 240)
    finally:
        if refused.returncode is None:
            refused.kill()
            await refused.wait()
    # One message (the CLI's console may wrap it at 80 columns when stderr is not a terminal).
    message = " ".join(line.strip() for line in err.decode().splitlines() if line.strip())
    assert refused.returncode != 0
    assert message.startswith("error: ") and message.count("error:") == 1, message
    assert "refusing to bind to 0.0.0.0" in message and "--allow-remote" in message, message
    assert not (tmp_path / "home" / "aiswarm.db").exists(), "it refused before touching the home"

    remote = BrokerProcess(
        tmp_path / "remote", {"AISWARM_HOST": "0.0.0.0", "AISWARM_ALLOW_REMOTE": "1"}
    ).start(START_TIMEOUT)
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            anonymous = await http.post(remote.url, json=LIST_TOOLS, headers=JSON_HEADERS)
            assert anonymous.status_code == 401
            wrong = await http.post(
                remote.url, json=LIST_TOOLS, headers={**JSON_HEADERS, "Authorization": "Bearer x"}
            )
            assert wrong.status_code == 401
        async with BrokerClient(remote.url, remote.primary_token) as primary:
            assert "submit_task" in await primary.list_tool_names()
    finally:
        remote.stop()


async def test_an_oversized_body_is_refused_before_it_is_parsed(broker: BrokerProcess) -> None:
    """A body over AISWARM_MAX_REQUEST_BYTES (8 MiB by default) gets 413, sized or chunked; the broker stays up."""
    headers = {**JSON_HEADERS, "Authorization": f"Bearer {broker.primary_token}"}
    big = (
        b'{"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"pad": "'
        + b"x" * (9 * 2**20)
        + b'"}}'
    )

    async def chunked() -> AsyncIterator[bytes]:
        for start in range(0, len(big), 2**20):
            yield big[start : start + 2**20]

    async with httpx.AsyncClient(timeout=60) as http:
        sized = await http.post(broker.url, content=big, headers=headers)
        assert sized.status_code == 413, sized.text
        assert "AISWARM_MAX_REQUEST_BYTES" in sized.json()["error"]
        streamed = await http.post(broker.url, content=chunked(), headers=headers)
        assert streamed.status_code == 413, streamed.text
        small = (
            b'{"jsonrpc": "2.0", "id": 2, "method": "initialize", "params": {"protocolVersion": "2025-11-25",'
            b' "capabilities": {}, "clientInfo": {"name": "chunked", "version": "1"}}}'
        )

        async def one_chunk() -> AsyncIterator[bytes]:
            yield small

        listed = await http.post(broker.url, content=one_chunk(), headers=headers)
        assert listed.status_code == 200 and "serverInfo" in listed.text, listed.text
