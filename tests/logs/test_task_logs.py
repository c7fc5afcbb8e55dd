"""JSON-lines logs that follow a task, and ``aiswarm logs --task N`` merging them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from aiswarm_server.broker_client import BrokerClient
from tests.broker_harness import BrokerProcess

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    process = BrokerProcess(tmp_path_factory.mktemp("logs") / "home", {"AISWARM_LOG_FORMAT": "json"}).start()
    yield process
    process.stop()


def aiswarm_logs(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aiswarm_server", "logs", *args],
        env={**os.environ, "AISWARM_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_a_retried_task_shows_both_attempts_from_two_agents_in_order(broker: BrokerProcess) -> None:
    async with (
        BrokerClient(broker.url, broker.admin_token) as admin,
        BrokerClient(broker.url, broker.primary_token) as primary,
    ):
        tokens = {name: (await admin.issue_agent_token(name)).token for name in ("log-a", "log-b")}
        task_id = (await primary.submit_task("Flaky", "Try twice.")).tasks[0].id
        await primary.submit_task("Unrelated", "Not in this story.")
        for name, success in (("log-a", False), ("log-b", True)):
            async with BrokerClient(broker.url, tokens[name]) as worker:
                await worker.register_agent(cli="qwen" if name == "log-a" else "gemini")
                claim = await worker.claim_task(task_id)
                assert claim.fence_token is not None
                if success:
                    await worker.report_progress(task_id, claim.fence_token, "halfway")
                await worker.report_task_completion(
                    task_id, claim.fence_token, success=success, result="done" if success else None,
                    error=None if success else "model timed out",
                )  # fmt: skip

    raw = aiswarm_logs(broker.home, "--task", str(task_id), "--json")
    assert raw.returncode == 0, raw.stderr
    lines = [json.loads(text) for text in raw.stdout.splitlines()]
    assert {line["task_id"] for line in lines} == {task_id}
    assert [line["ts"] for line in lines] == sorted(line["ts"] for line in lines)
    story = [(line.get("agent"), line.get("attempt"), line["message"].split(" ", 2)[2]) for line in lines]
    assert story == [
        (None, None, "submitted: 'Flaky' (pending, persona any)"),
        ("log-a", 1, "claimed by log-a"),
        ("log-a", 1, "reported by log-a; back in the queue"),
        ("log-b", 2, "claimed by log-b"),
        ("log-b", 2, "progress from log-b: halfway"),
        ("log-b", 2, "reported by log-b; now completed"),
    ]
    assert [line.get("cli") for line in lines[1:]] == ["qwen", "qwen", "gemini", "gemini", "gemini"]

    merged = aiswarm_logs(broker.home, "--task", str(task_id))
    assert merged.returncode == 0 and "claimed by log-b" in merged.stdout and "attempt=2" in merged.stdout

    nothing = aiswarm_logs(broker.home, "--task", "999")
    assert nothing.returncode == 1
    assert nothing.stderr.count("\n") == 1 and "AISWARM_LOG_FORMAT=json" in nothing.stderr
