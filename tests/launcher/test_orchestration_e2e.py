"""Workflows and A2A on real CLIs: qwen-code as the implementer and gemini-cli as the reviewer, the scripted model.

The flows are the ones in ``examples/``: a review loop the reviewer approves, and one it never approves. An
``a2a-sdk`` client hands the swarm a task that a real CLI does.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from a2a.client import ClientConfig, create_client
from a2a.helpers.proto_helpers import get_artifact_text
from a2a.types import Message, Part, Role, SendMessageRequest, StreamResponse, TaskState

from aiswarm_server.broker_client import BrokerClient
from aiswarm_server.models import Task
from tests.launcher.conftest import LaunchedSwarm, LaunchSwarm

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]
ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
SECRET = "gateway-secret-e2e-51d0"


AGENTS = ("qwen-1", "gemini-1")
Swarm = LaunchedSwarm


def run_flow(swarm: Swarm, flow: Path) -> tuple[int, dict[str, Any]]:
    """``aiswarm run FLOW --json``; returns the exit code and the summary."""
    done = subprocess.run(
        [sys.executable, "-m", "aiswarm_server", "run", str(flow), "--json", "--dir", str(swarm.workdir)],
        capture_output=True,
        text=True,
        env={**swarm.env, "AISWARM_URL": swarm.broker.url},
        timeout=600,
    )
    assert done.stdout.strip(), f"{done.stderr}\n{swarm.launcher_log.read_text()[-3000:]}"
    return done.returncode, json.loads(done.stdout)


@pytest.fixture(scope="module")
def swarm(launch_swarm: LaunchSwarm, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Swarm]:
    """``aiswarm launch --cli qwen,gemini --persona implementer,reviewer`` against a broker and the scripted model."""
    port_file = tmp_path_factory.mktemp("a2a") / "remote-port"
    remote = subprocess.Popen(
        [sys.executable, "-m", "tests.a2a.remote_agent", "--port-file", str(port_file)], cwd=ROOT
    )
    try:
        while not (port_file.exists() and port_file.read_text()):
            assert remote.poll() is None, "the remote A2A agent did not start"
            time.sleep(0.05)
        command = json.dumps([sys.executable, "-m", "tests.gateway.upstream_server"])
        config = (
            f'[mcp_servers.files]\ncommand = {command}\ncwd = "{ROOT}"\n'
            'env = { UPSTREAM_TOKEN = "${TEST_UPSTREAM_SECRET}" }\n'
            f'[a2a_agents.shouter]\nurl = "http://127.0.0.1:{port_file.read_text()}"\npersona = "shouter"\n'
            'token_env = "SHOUTER_TOKEN"\n'
        )
        swarm = launch_swarm(
            cli="qwen,gemini",
            agents=AGENTS,
            args=("--persona", "implementer,reviewer"),
            broker_env={"TEST_UPSTREAM_SECRET": SECRET},
            launcher_env={"SHOUTER_TOKEN": "remote-secret"},
            config=config,
            name="flow",
        )
        yield swarm
        swarm.stop()  # before the remote agent it forwards to
    finally:
        remote.terminate()
        remote.wait(10)


def _delegate(swarm: Swarm, title: str, prompt: str, **fields: Any) -> Task:
    """Submit one task as the primary and wait (as the primary) until it is done; the task read in full."""

    async def run() -> Task:
        async with BrokerClient(swarm.broker.url, swarm.broker.primary_token) as primary:
            reply = await primary.submit_task(title, prompt, **fields)
            task_id = reply.tasks[0].id
            while not (await primary.wait_for_tasks([task_id], timeout_seconds=30)).done:
                pass
            return (await primary.get_task(task_id)).task

    return asyncio.run(run())


def test_a_reviewed_flow_completes_on_real_clis_and_a_rerun_submits_nothing(swarm: Swarm) -> None:
    code, summary = run_flow(swarm, EXAMPLES / "review-loop.yaml")
    assert code == 0, summary
    steps = {s["key"]: s for s in summary["steps"]}
    assert steps["module"]["outcome"] == "completed" and steps["module"]["reviews"] == 1
    assert steps["module"]["detail"] == "approved in review round 1"
    assert (swarm.workdir / "greeting.py").read_text().startswith("def greet(name: str) -> str:")
    assert (swarm.workdir / "NOTES.md").exists()

    code, again = run_flow(swarm, EXAMPLES / "review-loop.yaml")
    assert code == 0 and all(s["reused"] for s in again["steps"])
    assert [s["task_ids"] for s in again["steps"]] == [s["task_ids"] for s in summary["steps"]]


def test_a_reviewer_that_never_approves_ends_review_exhausted_on_real_clis(swarm: Swarm) -> None:
    code, summary = run_flow(swarm, EXAMPLES / "review-exhausted.yaml")
    assert code == 1
    steps = {s["key"]: s for s in summary["steps"]}
    assert steps["parser"]["outcome"] == "review_exhausted" and steps["parser"]["reviews"] == 2
    assert len(steps["parser"]["task_ids"]) == 4  # write, review, fix, review
    assert "must reject empty input" in steps["parser"]["detail"]
    assert steps["release"]["outcome"] == "skipped" and not (swarm.workdir / "RELEASE.md").exists()


def test_an_a2a_client_hands_the_swarm_a_task_that_a_real_cli_does(swarm: Swarm) -> None:
    async def send() -> list[StreamResponse]:
        token = swarm.broker.primary_token
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=120) as http:
            client = await create_client(swarm.broker.base, ClientConfig(httpx_client=http))
            request = SendMessageRequest(
                message=Message(
                    role=Role.ROLE_USER,
                    message_id=str(uuid.uuid4()),
                    parts=[Part(text="WRITE from-a2a.txt\n```\nhanded over by A2A\n```")],
                ),
                metadata={"persona": "implementer", "working_dir": str(swarm.workdir)},
            )
            try:
                return [event async for event in client.send_message(request)]
            finally:
                await client.close()

    events = asyncio.run(send())
    states = [e.status_update.status.state for e in events if e.HasField("status_update")]
    assert states[-1] == TaskState.TASK_STATE_COMPLETED, events
    notes = [
        p.text for e in events if e.HasField("status_update") for p in e.status_update.status.message.parts
    ]
    assert any("claimed by qwen-1" in note for note in notes)
    artifact = next(e.artifact_update.artifact for e in events if e.HasField("artifact_update"))
    assert get_artifact_text(artifact) == "Wrote from-a2a.txt"
    assert (swarm.workdir / "from-a2a.txt").read_text() == "handed over by A2A\n"


def test_a_real_cli_calls_an_upstream_mcp_tool_through_the_gateway(swarm: Swarm) -> None:
    task = _delegate(
        swarm,
        "Call the upstream echo tool",
        'CALL files__echo {"text": "through the gateway"}\nCALL files__has_credential',
        persona="implementer",
        working_dir=str(swarm.workdir),
    )
    assert task.status.value == "completed", (task.error, swarm.launcher_log.read_text()[-3000:])
    result = task.result or ""  # the CLI hands the scripted model the tool's structured answer
    assert 'files__echo: {"result":"echo: through the gateway"}' in result
    assert 'files__has_credential: {"result":"yes"}' in result  # the upstream got the broker-kept credential
    for path in (swarm.home / "agents").rglob("*"):
        if path.is_file():
            assert SECRET not in path.read_text(errors="replace"), path


def test_launch_forwards_a_task_for_a_remote_persona_to_its_a2a_agent(swarm: Swarm) -> None:
    task = _delegate(swarm, "Shout", "forwarded by the launcher", persona="shouter")
    assert task.status.value == "completed", (task.error, swarm.launcher_log.read_text()[-3000:])
    assert task.result == "FORWARDED BY THE LAUNCHER" and task.attempts[-1].agent == "a2a-shouter"
