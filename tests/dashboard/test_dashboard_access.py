"""The dashboard's JSON twins and actions over plain HTTP against a real broker: who may read, who may act, and
the cross-site checks a cookie login needs."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from aiswarm_server.broker_client import BrokerClient
from aiswarm_server.models import UsageRecord
from tests.broker_harness import BrokerProcess


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    process = BrokerProcess(tmp_path_factory.mktemp("ui-access") / "home").start()
    yield process
    process.stop()


def call(broker: BrokerProcess, token: str, tool: str, **arguments: Any) -> Any:
    async def run() -> Any:
        async with BrokerClient(broker.url, token) as client:
            return await getattr(client, tool)(**arguments)

    return asyncio.run(run())


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def logged_in(broker: BrokerProcess) -> tuple[httpx.Client, str]:
    """A client holding a session cookie from the login form, and the session's CSRF token."""
    client = httpx.Client(base_url=broker.base)
    answer = client.post("/ui/login", data={"token": broker.primary_token}, headers={"origin": broker.base})
    assert answer.status_code == 303 and answer.headers["location"] == "/ui"
    cookie = answer.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/ui" in cookie
    csrf = client.get("/ui/api/session").json()["csrf"]
    return client, csrf


def test_every_page_has_a_json_twin_for_admin_and_primary_tokens(broker: BrokerProcess) -> None:
    task_id = call(broker, broker.primary_token, "submit_task", title="Twin", prompt="Say <hi>.").tasks[0].id
    for token in (broker.primary_token, broker.admin_token):
        board = httpx.get(broker.base + "/ui/api/board", headers=bearer(token)).json()
        assert task_id in [t["id"] for t in board["columns"]["pending"]]
        assert board["counts"]["pending"] >= 1
        task = httpx.get(f"{broker.base}/ui/api/tasks/{task_id}", headers=bearer(token)).json()["task"]
        assert task["prompt"] == "Say <hi>."
        assert "agents" in httpx.get(broker.base + "/ui/api/agents", headers=bearer(token)).json()
        page = httpx.get(broker.base + "/ui", headers=bearer(token))
        assert page.status_code == 200 and "script-src 'self'" in page.headers["content-security-policy"]
    missing = httpx.get(broker.base + "/ui/api/tasks/999999", headers=bearer(broker.primary_token))
    assert missing.status_code == 404 and "does not exist" in missing.json()["error"]


def test_no_token_a_worker_token_and_a_foreign_host_are_refused(broker: BrokerProcess) -> None:
    assert httpx.get(broker.base + "/ui/api/board").status_code == 401
    page = httpx.get(broker.base + "/ui")
    assert page.status_code == 303 and page.headers["location"] == "/ui/login"
    worker = call(broker, broker.admin_token, "issue_agent_token", agent="access-worker").token
    refused = httpx.get(broker.base + "/ui/api/board", headers=bearer(worker))
    assert refused.status_code == 403 and "worker tokens cannot" in refused.json()["error"]
    login = httpx.post(broker.base + "/ui/login", data={"token": worker}, headers={"origin": broker.base})
    assert login.status_code == 403 and "set-cookie" not in login.headers
    rebound = httpx.get(
        broker.base + "/ui/api/board", headers={**bearer(broker.primary_token), "host": "evil.example"}
    )
    assert rebound.status_code == 421


def test_a_cookie_login_acts_only_with_its_csrf_token_and_from_its_own_origin(broker: BrokerProcess) -> None:
    task_id = call(broker, broker.primary_token, "submit_task", title="Victim", prompt="x").tasks[0].id
    client, csrf = logged_in(broker)
    try:
        assert client.get("/ui/api/board").status_code == 200
        cancel = f"/ui/api/tasks/{task_id}/cancel"
        no_csrf = client.post(cancel, json={})
        assert no_csrf.status_code == 403 and "CSRF" in no_csrf.json()["error"]
        foreign = client.post(
            cancel, json={}, headers={"x-aiswarm-csrf": csrf, "origin": "http://evil.example"}
        )
        assert foreign.status_code == 403 and "cross-site" in foreign.json()["error"]
        assert call(broker, broker.primary_token, "get_task", task_id=task_id).task.status.value == "pending"
        done = client.post(
            cancel, json={"reason": "not needed"}, headers={"x-aiswarm-csrf": csrf, "origin": broker.base}
        )
        assert done.status_code == 200, done.text
        assert call(broker, broker.primary_token, "get_task", task_id=task_id).task.error == "not needed"
        out = client.post("/ui/logout", headers={"origin": broker.base})
        assert out.status_code == 303
        assert client.get("/ui/api/board").status_code == 401
    finally:
        client.close()


def test_only_an_admin_or_primary_token_logs_in(broker: BrokerProcess) -> None:
    client = httpx.Client(base_url=broker.base)
    with client:
        token = call(broker, broker.admin_token, "issue_agent_token", agent="not-a-primary").token
        assert client.post("/ui/login", data={"token": token}).status_code == 403
        assert client.post("/ui/login", data={"token": "asw_p_made_up"}).status_code == 401


def test_submit_release_and_requeue_from_the_dashboard(broker: BrokerProcess) -> None:
    headers = bearer(broker.primary_token)
    bad = httpx.post(broker.base + "/ui/api/tasks", json={"title": "x", "prompt": 5}, headers=headers)
    assert bad.status_code == 400 and "prompt" in bad.json()["error"] and "\n" not in bad.json()["error"]
    submitted = httpx.post(
        broker.base + "/ui/api/tasks",
        json={"title": "From the UI", "prompt": "Do one thing.", "persona": None},
        headers=headers,
    )
    assert submitted.status_code == 200, submitted.text
    task_id = submitted.json()["tasks"][0]["id"]
    worker = call(broker, broker.admin_token, "issue_agent_token", agent="ui-releaser").token
    fence = call(broker, worker, "claim_task", task_id=task_id).fence_token
    # The launcher keeps each agent's log in the home: a running task's page shows its last lines.
    (broker.home / "logs").mkdir(exist_ok=True)
    (broker.home / "logs" / "ui-releaser.log").write_text("".join(f"line {i}\n" for i in range(100)))
    page = httpx.get(f"{broker.base}/ui/api/tasks/{task_id}", headers=headers).json()
    assert page["log_tail"] == [f"line {i}" for i in range(60, 100)]
    assert page["usage"] is None
    for _ in range(2):
        usage = UsageRecord(agent="ui-releaser", cli="qwen", provider="login", requests=2, input_tokens=50,
                            output_tokens=5, total_tokens=55, task_id=task_id)  # fmt: skip
        call(broker, broker.admin_token, "record_usage", record=usage)
    page = httpx.get(f"{broker.base}/ui/api/tasks/{task_id}", headers=headers).json()
    assert page["usage"] == {"runs": 2, "requests": 4, "input_tokens": 100, "output_tokens": 10}
    released = httpx.post(f"{broker.base}/ui/api/tasks/{task_id}/release", json={}, headers=headers)
    assert released.status_code == 200 and released.json()["status"] == "pending"
    assert httpx.get(f"{broker.base}/ui/api/tasks/{task_id}", headers=headers).json()["log_tail"] is None
    again = httpx.post(f"{broker.base}/ui/api/tasks/{task_id}/release", json={}, headers=headers)
    assert again.status_code == 400 and "only a running task" in again.json()["error"]

    fence = call(broker, worker, "claim_task", task_id=task_id).fence_token
    call(
        broker,
        worker,
        "report_task_completion",
        task_id=task_id,
        fence_token=fence,
        success=False,
        error="cannot",
        retryable=False,
    )
    assert call(broker, broker.primary_token, "get_task", task_id=task_id).task.status.value == "failed"
    requeued = httpx.post(f"{broker.base}/ui/api/tasks/{task_id}/requeue", json={}, headers=headers)
    assert requeued.status_code == 200, requeued.text
    new = requeued.json()["tasks"][0]
    assert new["id"] != task_id and new["title"] == "From the UI" and new["status"] == "pending"
    twice = httpx.post(f"{broker.base}/ui/api/tasks/{new['id']}/requeue", json={}, headers=headers)
    assert twice.status_code == 400 and "only a dead or failed task" in twice.json()["error"]


def test_a_workers_question_is_on_the_board_and_answered_from_the_task_page(broker: BrokerProcess) -> None:
    headers = bearer(broker.primary_token)
    task_id = call(broker, broker.primary_token, "submit_task", title="Asks", prompt="Ask first.").tasks[0].id
    worker = call(broker, broker.admin_token, "issue_agent_token", agent="ui-asker").token
    fence = call(broker, worker, "claim_task", task_id=task_id).fence_token
    call(
        broker,
        worker,
        "ask_primary",
        task_id=task_id,
        fence_token=fence,
        question="Tabs or spaces?",
        wait_seconds=0,
    )

    board = httpx.get(f"{broker.base}/ui/api/board", headers=headers).json()
    cards = [card for column in board["columns"].values() for card in column if card["id"] == task_id]
    assert [card["question"] for card in cards] == ["Tabs or spaces?"]
    empty = httpx.post(f"{broker.base}/ui/api/tasks/{task_id}/answer", json={"answer": ""}, headers=headers)
    assert empty.status_code == 400 and "answer" in empty.json()["error"]
    answered = httpx.post(
        f"{broker.base}/ui/api/tasks/{task_id}/answer", json={"answer": "spaces"}, headers=headers
    )
    assert answered.status_code == 200, answered.text
    page = httpx.get(f"{broker.base}/ui/api/tasks/{task_id}", headers=headers).json()
    assert page["task"]["question"] is None
    assert [(q["status"], q["answer"]) for q in page["task"]["questions"]] == [("answered", "spaces")]
