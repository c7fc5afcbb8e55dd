"""Workflows and A2A on real CLIs: qwen-code as the implementer and gemini-cli as the reviewer, the scripted model.

The flows are the ones in ``examples/``: a review loop the reviewer approves, and one it never approves. An
``a2a-sdk`` client hands the swarm a task that a real CLI does.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from a2a.client import ClientConfig, create_client
from a2a.helpers.proto_helpers import get_artifact_text
from a2a.types import Message, Part, Role, SendMessageRequest, StreamResponse, TaskState

from aiswarm_server.broker_client import BrokerClient
from launcher.scripted_model import ScriptedModelServer
from tests.broker_harness import BrokerProcess
from tests.clis import InstalledClis
from tests.launcher.conftest import started_by

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]
ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
SECRET = "gateway-secret-e2e-51d0"


@dataclass
class Swarm:
    """A broker, the scripted model and a launcher with an implementer and a reviewer."""

    broker: BrokerProcess
    home: Path
    workdir: Path
    env: dict[str, str]
    launcher_log: Path

    def run_flow(self, flow: Path) -> tuple[int, dict[str, Any]]:
        """``aiswarm run FLOW --json``; returns the exit code and the summary."""
        done = subprocess.run(
            [sys.executable, "-m", "aiswarm_server", "run", str(flow), "--json", "--dir", str(self.workdir)],
            capture_output=True,
            text=True,
            env={**self.env, "AISWARM_URL": self.broker.url},
            timeout=600,
        )
        assert done.stdout.strip(), f"{done.stderr}\n{self.launcher_log.read_text()[-3000:]}"
        return done.returncode, json.loads(done.stdout)


@pytest.fixture(scope="module")
def swarm(clis: InstalledClis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Swarm]:
    """``aiswarm launch --cli qwen,gemini --persona implementer,reviewer`` against a broker and the scripted model."""
    root = tmp_path_factory.mktemp("flow")
    home, workdir, user_home = root / "home", root / "work", root / "user"
    for d in (workdir, user_home):
        d.mkdir()
    home.mkdir(parents=True)
    port_file = root / "remote-port"
    remote = subprocess.Popen(
        [sys.executable, "-m", "tests.a2a.remote_agent", "--port-file", str(port_file)], cwd=ROOT
    )
    while not (port_file.exists() and port_file.read_text()):
        assert remote.poll() is None, "the remote A2A agent did not start"
        time.sleep(0.05)
    command = json.dumps([sys.executable, "-m", "tests.gateway.upstream_server"])
    (home / "config.toml").write_text(
        f'[mcp_servers.files]\ncommand = {command}\ncwd = "{ROOT}"\n'
        'env = { UPSTREAM_TOKEN = "${TEST_UPSTREAM_SECRET}" }\n'
        f'[a2a_agents.shouter]\nurl = "http://127.0.0.1:{port_file.read_text()}"\npersona = "shouter"\n'
        'token_env = "SHOUTER_TOKEN"\n'
    )
    broker = BrokerProcess(home, {"AISWARM_LEASE_SECONDS": "120", "TEST_UPSTREAM_SECRET": SECRET}).start()
    model = ScriptedModelServer().start()
    env = {
        **os.environ,
        "PATH": clis.path_env(),
        "HOME": str(user_home),
        "AISWARM_HOME": str(home),
        "NO_COLOR": "1",
        "SHOUTER_TOKEN": "remote-secret",
    }
    env.pop("AISWARM_TOKEN", None)
    launcher_log = root / "launcher.log"
    with open(launcher_log, "wb") as out:
        launcher = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "aiswarm_server",
                "launch",
                "--agents",
                "2",
                "--cli",
                "qwen,gemini",
                "--persona",
                "implementer,reviewer",
                "--url",
                broker.url,
                "--model-endpoint",
                model.url,
                "--dir",
                str(workdir),
                "--no-ui",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
    try:
        yield Swarm(broker, home, workdir, env, launcher_log)
    finally:
        if launcher.poll() is None:
            launcher.send_signal(signal.SIGINT)
            try:
                launcher.wait(30)
            except subprocess.TimeoutExpired:
                launcher.kill()
                launcher.wait()
        broker_pid = broker.process.pid if broker.process else None
        for proc in started_by(home):
            if proc.pid != broker_pid:
                proc.kill()
        model.stop()
        broker.stop()
        remote.terminate()
        remote.wait(10)


def test_a_reviewed_flow_completes_on_real_clis_and_a_rerun_submits_nothing(swarm: Swarm) -> None:
    code, summary = swarm.run_flow(EXAMPLES / "review-loop.yaml")
    assert code == 0, summary
    steps = {s["key"]: s for s in summary["steps"]}
    assert steps["module"]["outcome"] == "completed" and steps["module"]["reviews"] == 1
    assert steps["module"]["detail"] == "approved in review round 1"
    assert (swarm.workdir / "greeting.py").read_text().startswith("def greet(name: str) -> str:")
    assert (swarm.workdir / "NOTES.md").exists()

    code, again = swarm.run_flow(EXAMPLES / "review-loop.yaml")
    assert code == 0 and all(s["reused"] for s in again["steps"])
    assert [s["task_ids"] for s in again["steps"]] == [s["task_ids"] for s in summary["steps"]]


def test_a_reviewer_that_never_approves_ends_review_exhausted_on_real_clis(swarm: Swarm) -> None:
    code, summary = swarm.run_flow(EXAMPLES / "review-exhausted.yaml")
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
    async def run() -> Any:
        async with BrokerClient(swarm.broker.url, swarm.broker.primary_token) as primary:
            reply = await primary.submit_task(
                "Call the upstream echo tool",
                'CALL files__echo {"text": "through the gateway"}\nCALL files__has_credential',
                persona="implementer",
                working_dir=str(swarm.workdir),
            )
            task_id = reply.tasks[0].id
            while not (await primary.wait_for_tasks([task_id], timeout_seconds=30)).done:
                pass
            return (await primary.get_task(task_id)).task

    task = asyncio.run(run())
    assert task.status.value == "completed", (task.error, swarm.launcher_log.read_text()[-3000:])
    result = task.result or ""  # the CLI hands the scripted model the tool's structured answer
    assert 'files__echo: {"result":"echo: through the gateway"}' in result
    assert 'files__has_credential: {"result":"yes"}' in result  # the upstream got the broker-kept credential
    for path in (swarm.home / "agents").rglob("*"):
        if path.is_file():
            assert SECRET not in path.read_text(errors="replace"), path


def test_launch_forwards_a_task_for_a_remote_persona_to_its_a2a_agent(swarm: Swarm) -> None:
    async def run() -> Any:
        async with BrokerClient(swarm.broker.url, swarm.broker.primary_token) as primary:
            reply = await primary.submit_task("Shout", "forwarded by the launcher", persona="shouter")
            task_id = reply.tasks[0].id
            while not (await primary.wait_for_tasks([task_id], timeout_seconds=30)).done:
                pass
            return (await primary.get_task(task_id)).task

    task = asyncio.run(run())
    assert task.status.value == "completed", (task.error, swarm.launcher_log.read_text()[-3000:])
    assert task.result == "FORWARDED BY THE LAUNCHER" and task.attempts[-1].agent == "a2a-shouter"
