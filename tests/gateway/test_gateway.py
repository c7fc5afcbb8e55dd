"""The MCP gateway in a real broker process: upstream servers written with the SDK, worker and primary clients."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from aiswarm_server.broker_client import BrokerClient
from launcher.adapters import get_adapter
from launcher.adapters.base import AgentSpec
from tests.broker_harness import BrokerProcess

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parents[2]
SECRET = "upstream-secret-7f3a9c"

READONLY = """---
name: readonly
description: Reads, never deletes
deny_tools: ["files__delete_*"]
---
You read things.
"""


@pytest.fixture(scope="module")
def http_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port_file = tmp_path_factory.mktemp("upstream") / "port"
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.gateway.upstream_server", "--http", "--port-file", str(port_file)],
        cwd=ROOT,
        env={**os.environ, "UPSTREAM_TOKEN": SECRET},
    )
    deadline = time.monotonic() + 60
    while not (port_file.exists() and port_file.read_text()):
        assert process.poll() is None and time.monotonic() < deadline, "the HTTP upstream did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port_file.read_text()}/mcp"
    process.terminate()
    process.wait(10)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory, http_upstream: str) -> Iterator[BrokerProcess]:
    home = tmp_path_factory.mktemp("gateway") / "home"
    (home / "personas").mkdir(parents=True)
    (home / "personas" / "readonly.md").write_text(READONLY)
    command = json.dumps([sys.executable, "-m", "tests.gateway.upstream_server"])
    (home / "config.toml").write_text(
        f"""
[mcp_servers.files]
command = {command}
cwd = "{ROOT}"
env = {{ UPSTREAM_TOKEN = "${{TEST_UPSTREAM_SECRET}}" }}

[mcp_servers.web]
url = "{http_upstream}"
headers = {{ Authorization = "Bearer ${{TEST_UPSTREAM_SECRET}}" }}
roles = ["primary"]

[mcp_servers.broken]
command = ["/nonexistent/mcp-server"]
"""
    )
    process = BrokerProcess(home, {"TEST_UPSTREAM_SECRET": SECRET}).start()
    yield process
    process.stop()


@contextlib.asynccontextmanager
async def mcp_client(url: str, token: str) -> AsyncIterator[Client]:
    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60) as http,
        Client(streamable_http_client(url, http_client=http), cache=None) as client,
    ):
        yield client


async def worker_token(broker: BrokerProcess, name: str, persona: str | None) -> str:
    async with BrokerClient(broker.url, broker.admin_token) as admin:
        token = (await admin.issue_agent_token(name)).token
    async with BrokerClient(broker.url, token) as worker:
        await worker.register_agent(cli="test", persona=persona)
    return token


async def tool_names(client: Client) -> set[str]:
    return {t.name for t in (await client.list_tools()).tools}


def text_of(result: Any) -> str:
    return " ".join(getattr(block, "text", "") for block in result.content)


async def wait_until_listed(client: Client, name: str) -> None:
    deadline = time.monotonic() + 60
    while name not in await tool_names(client):
        assert time.monotonic() < deadline, f"{name} never listed"
        await __import__("asyncio").sleep(0.2)


async def test_a_worker_calls_an_upstream_tool_under_its_prefixed_name(broker: BrokerProcess) -> None:
    async with mcp_client(broker.url, await worker_token(broker, "gw-worker", None)) as worker:
        await wait_until_listed(worker, "files__echo")
        names = await tool_names(worker)
        assert {"files__echo", "files__pid", "files__delete_everything", "claim_task"} <= names
        assert not any(n.startswith("web__") for n in names)  # web is for the primary only
        result = await worker.call_tool("files__echo", {"text": "hello"})
        assert not result.is_error and text_of(result) == "echo: hello"
        credential = await worker.call_tool("files__has_credential", {})
        assert text_of(credential) == "yes"  # the broker passed ${TEST_UPSTREAM_SECRET} to the upstream


async def test_the_primary_reaches_an_http_upstream_with_the_broker_kept_credential(
    broker: BrokerProcess,
) -> None:
    async with mcp_client(broker.url, broker.primary_token) as primary:
        await wait_until_listed(primary, "web__echo")
        assert text_of(await primary.call_tool("web__has_credential", {})) == "yes"
        assert "submit_task" in await tool_names(primary)


async def test_a_persona_deny_list_hides_a_tool_and_refuses_its_call(broker: BrokerProcess) -> None:
    async with mcp_client(broker.url, await worker_token(broker, "gw-reader", "readonly")) as reader:
        await wait_until_listed(reader, "files__echo")
        assert "files__delete_everything" not in await tool_names(reader)
        refused = await reader.call_tool("files__delete_everything", {})
        assert refused.is_error and "not available to you" in text_of(refused)


async def test_progress_of_an_upstream_call_reaches_the_caller(broker: BrokerProcess) -> None:
    seen: list[tuple[float, float | None, str | None]] = []

    async def progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))

    async with mcp_client(broker.url, await worker_token(broker, "gw-progress", None)) as worker:
        await wait_until_listed(worker, "files__count")
        result = await worker.call_tool("files__count", {"steps": 3}, progress_callback=progress)
    assert text_of(result) == "counted to 3"
    assert [s[0] for s in seen] == [1, 2, 3] and seen[-1][2] == "step 3"


async def test_an_upstream_killed_mid_run_is_restarted_and_the_next_call_succeeds(
    broker: BrokerProcess,
) -> None:
    async with mcp_client(broker.url, await worker_token(broker, "gw-killer", None)) as worker:
        await wait_until_listed(worker, "files__pid")
        first = int(text_of(await worker.call_tool("files__pid", {})))
        os.kill(first, signal.SIGKILL)
        during = await worker.call_tool(
            "files__pid", {}
        )  # may reach the dead process: a clear error, no hang
        if during.is_error:
            assert "stopped answering during the call" in text_of(during) and "restarted" in text_of(during)
        after = await worker.call_tool("files__pid", {})
        assert not after.is_error, text_of(after)
        assert int(text_of(after)) != first


async def test_an_upstream_that_cannot_start_gives_a_clear_error_at_once(broker: BrokerProcess) -> None:
    async with mcp_client(broker.url, broker.primary_token) as primary:
        started = time.monotonic()
        deadline = started + 60
        while True:
            result = await primary.call_tool("broken__anything", {})
            if "keeps restarting" in text_of(result) or time.monotonic() > deadline:
                break
        assert result.is_error and "the MCP server 'broken' is not available" in text_of(result)
        quick = time.monotonic()
        await primary.call_tool("broken__anything", {})
        assert time.monotonic() - quick < 5  # refused at once, not after a wait


def test_the_upstream_credential_never_reaches_a_worker_config_home(
    broker: BrokerProcess, tmp_path: Path
) -> None:
    for cli in ("qwen", "gemini", "opencode"):
        spec = AgentSpec(
            name=f"gw-{cli}",
            cli=cli,
            token="worker-token",
            broker_url=broker.url,
            aiswarm_home=broker.home,
            user_home=tmp_path,
        )
        home = get_adapter(cli).prepare_agent_home(spec, env={"TEST_UPSTREAM_SECRET": SECRET})
        for path in home.root.rglob("*"):
            if path.is_file():
                assert SECRET not in path.read_text(errors="replace"), path
        assert SECRET not in json.dumps(home.env)
