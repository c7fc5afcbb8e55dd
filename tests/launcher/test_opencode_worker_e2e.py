"""The supervisor's opencode worker gets its prompt on stdin, so quotes reach the model as written.

`opencode run` re-quotes a message argument holding a space and backslash-escapes its double quotes.
A real broker process, the real opencode binary, the scripted model (tracing every request) and the
supervisor in this process; the persona's instructions, which open the worker prompt, hold quotes.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from aiswarm_server.broker_client import BrokerClient
from launcher.agents import AgentPlan
from launcher.personas import Persona
from launcher.scripted_model import ScriptedModelServer
from launcher.scripted_model.app import TRACE_ENV
from launcher.supervisor import AgentState, LaunchConfig, Supervisor
from tests.broker_harness import BrokerProcess
from tests.clis import InstalledClis

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

QUOTED = "Say \"done\" only when it is done; a 'quote' and a \\backslash stay as written."
CONTENT = 'print("hello, \\"world\\"")'


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[BrokerProcess]:
    process = BrokerProcess(tmp_path / "home").start()
    try:
        yield process
    finally:
        process.stop()


def user_texts(trace: Path) -> list[str]:
    """Every user message opencode sent the model, as the model received it."""
    texts: list[str] = []
    for line in trace.read_text().splitlines():
        body = json.loads(line)["body"]
        for message in body.get("messages") or []:
            if message.get("role") != "user":
                continue
            content = message.get("content")
            parts = content if isinstance(content, list) else [{"text": content}]
            texts += [p.get("text") or "" for p in parts if isinstance(p, dict)]
    return texts


def test_opencode_worker_prompt_with_quotes_reaches_the_model_verbatim(
    broker: BrokerProcess, clis: InstalledClis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trace = tmp_path / "model-trace.jsonl"
    monkeypatch.setenv(TRACE_ENV, str(trace))
    monkeypatch.setenv("PATH", clis.path_env())
    model = ScriptedModelServer().start()
    user_home = tmp_path / "user"
    user_home.mkdir()
    workdir = tmp_path / "work"
    workdir.mkdir()
    persona = Persona(name="quoter", description="quotes", instructions=QUOTED)
    config = LaunchConfig(
        agents=[AgentPlan("opencode-1", "opencode", persona)],
        broker_url=broker.url,
        admin_token=broker.admin_token,
        home=broker.home,
        workdir=workdir,
        endpoint_url=model.url,
        task_timeout=240,
        base_env={**os.environ, "HOME": str(user_home)},
    )

    async def scenario() -> str:
        supervisor = Supervisor(config)
        run = asyncio.create_task(supervisor.run())
        try:
            async with BrokerClient(broker.url, broker.primary_token) as primary:
                async with asyncio.timeout(60):
                    while supervisor.views["opencode-1"].state is not AgentState.IDLE:  # noqa: ASYNC110
                        await asyncio.sleep(0.1)
                prompt = f"WRITE hello.py\n```\n{CONTENT}\n```\n"
                task_id = (
                    (await primary.submit_task("write hello.py", prompt, working_dir=str(workdir)))
                    .tasks[0]
                    .id
                )
                async with asyncio.timeout(300):
                    while not (await primary.wait_for_tasks([task_id], timeout_seconds=60)).done:
                        pass
                task = (await primary.get_task(task_id)).task
                return task.status.value
        finally:
            supervisor.stop()
            await asyncio.wait_for(run, 60)

    try:
        status = asyncio.run(scenario())
    finally:
        model.stop()
    log = (broker.home / "logs" / "opencode-1.log").read_text(errors="replace")
    assert status == "completed", log[-3000:]
    assert (workdir / "hello.py").read_text().rstrip("\n") == CONTENT
    texts = user_texts(trace)
    assert any(QUOTED in t for t in texts), f"the prompt was altered on its way: {texts!r}"
    assert not any('\\"done\\"' in t for t in texts)
