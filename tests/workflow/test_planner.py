"""``aiswarm plan``: the scripted model stands in for the planner's model; plans are validated, cached, submitted."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from aiswarm_server.broker_client import BrokerClient
from aiswarm_server.replies import UsageSummaryReply
from aiswarm_server.workflow.spec import load_workflow
from launcher.scripted_model import ScriptedModelServer
from tests.broker_harness import BrokerProcess
from tests.workflow.swarm import ScriptedWorker, working

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def model() -> Iterator[ScriptedModelServer]:
    server = ScriptedModelServer().start()
    yield server
    server.stop()


def aiswarm(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aiswarm_server", *args, "--home", str(home)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "AISWARM_URL": "http://127.0.0.1:9/mcp"},  # no broker: the plan needs none
    )


def test_a_plan_is_validated_written_and_an_identical_request_is_answered_from_the_cache(
    model: ScriptedModelServer, tmp_path: Path
) -> None:
    model.reset_stats()
    flow = tmp_path / "plan.yaml"
    request = "Add a greeting module with tests"
    first = aiswarm(
        "plan", request, "--endpoint", model.url + "/v1", "--write", str(flow), home=tmp_path / "h"
    )
    assert first.returncode == 0, first.stderr
    assert "plan: 2 task(s), valid" in first.stdout and "total_tokens" in first.stdout
    written = load_workflow(flow)
    assert [(s.key, s.persona, s.depends_on) for s in written.tasks] == [
        ("work", "implementer", []),
        ("review", "reviewer", ["work"]),
    ]
    assert written.tasks[0].prompt == request

    again = aiswarm("plan", request, "--endpoint", model.url + "/v1", home=tmp_path / "h")
    assert again.returncode == 0 and "from the cache" in again.stdout
    assert "not submitted: pass --yes" in again.stdout
    assert model.stats()["total"] == 1  # the second plan cost no model request


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (
            '{"name": "x", "tasks": [{"key": "a", "title": "A", "prompt": "p", "depends_on": ["a"]}]}',
            "depends on itself",
        ),
        ('{"name": "x", "tasks": [{"key": "a", "title": "A"}]}', "tasks[0] (key 'a').prompt: is required"),
        ("{not json", "the model's answer is not JSON"),
        ('["a", "b"]', "not a workflow object"),
    ],
)
def test_a_malformed_model_answer_is_refused_in_one_line(
    model: ScriptedModelServer, tmp_path: Path, answer: str, message: str
) -> None:
    request = f"Plan this:\n```json\n{answer}\n```"
    done = aiswarm("plan", request, "--endpoint", model.url + "/v1", "--yes", home=tmp_path / "h")
    assert done.returncode == 1
    assert message in done.stderr and done.stderr.strip().count("\n") == 0 and "Traceback" not in done.stderr
    assert not (tmp_path / "h" / "plans" / "cache").exists() or not any(
        (tmp_path / "h" / "plans" / "cache").iterdir()
    )


def test_no_endpoint_is_one_line_saying_where_to_set_it(tmp_path: Path) -> None:
    done = aiswarm("plan", "anything", home=tmp_path / "h")
    assert done.returncode == 1 and "pass --endpoint" in done.stderr and "[planner]" in done.stderr


async def test_a_confirmed_plan_is_submitted_and_run_by_the_swarm(
    model: ScriptedModelServer, tmp_path: Path
) -> None:
    broker = BrokerProcess(tmp_path / "home").start()
    try:
        impl = ScriptedWorker("plan-impl", "implementer", lambda task: (True, "done"))
        rev = ScriptedWorker("plan-rev", "reviewer", lambda task: (True, "APPROVE"))
        async with working(broker.url, broker.admin_token, impl, rev):
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "aiswarm_server", "plan", "Write the changelog", "--endpoint", model.url + "/v1",
                "--yes", "--json", "--dir", str(tmp_path), "--home", str(broker.home), "--url", broker.url,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            out, err = await asyncio.wait_for(process.communicate(), 120)
        assert process.returncode == 0, err.decode()
        summary = json.loads(out)
        assert summary["succeeded"] and [s["key"] for s in summary["steps"]] == ["work", "review"]
        assert [t.title for t in impl.done] == ["Write the changelog"]
        async with BrokerClient(broker.url, broker.admin_token) as admin:  # the planner's request is kept too
            planner = (await admin.call("usage_summary", UsageSummaryReply, by="agent")).rows
        assert [(row.key, row.requests) for row in planner] == [("planner", 1)]
    finally:
        broker.stop()
