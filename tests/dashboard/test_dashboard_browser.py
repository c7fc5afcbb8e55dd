"""The dashboard in a real headless Chromium (Debian's package, driven by Playwright) against a real broker.

A task submitted from the CLI moves pending -> running -> completed on the open board without a reload while a
worker (this test, through the broker's worker tools) claims and completes it; its page shows the attempt and
the result; another task is cancelled from its page and the broker records it; worker tokens and no token are
refused; a prompt with markup shows as text. Screenshots of the board and a task page go to
``$AISWARM_TEST_ARTIFACTS`` (default: a temporary ``artifacts`` directory).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright

from aiswarm_server.broker_client import BrokerClient
from aiswarm_server.models import Task
from tests.broker_harness import BrokerProcess

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
UI_TIMEOUT_MS = 60_000  # generous: two cores shared with other test runs
expect.set_options(timeout=UI_TIMEOUT_MS)
HOSTILE_PROMPT = "Summarise <script>window.__pwned = 1</script><b>this</b> & that"


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    process = BrokerProcess(tmp_path_factory.mktemp("ui") / "home").start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(
            "no /usr/bin/chromium: install Debian's package with `apt-get install -y chromium` (.ci/run does)"
        )
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = os.environ.get("AISWARM_TEST_ARTIFACTS")
    path = Path(where) if where else tmp_path_factory.mktemp("artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


def cli_submit(broker: BrokerProcess, title: str, prompt: str) -> int:
    """``aiswarm submit --json`` as a user would type it, in a project directory; the new task's id."""
    project = broker.home.parent / "project"
    project.mkdir(exist_ok=True)
    done = subprocess.run(
        [sys.executable, "-m", "aiswarm_server", "submit", title, "--prompt", prompt, "--json"],
        env={**os.environ, "AISWARM_HOME": str(broker.home)},
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return int(json.loads(done.stdout)["id"])


def broker_call(url: str, token: str, call: str, **arguments: object) -> Any:
    """One call of a broker tool through a real MCP client (on its own thread: Playwright's loop owns this one)."""

    async def run() -> Any:
        async with BrokerClient(url, token) as client:
            return await getattr(client, call)(**arguments)

    with ThreadPoolExecutor(1) as thread:
        return thread.submit(asyncio.run, run()).result()


def get_task(broker: BrokerProcess, task_id: int) -> Task:
    return broker_call(broker.url, broker.admin_token, "get_task", task_id=task_id).task


def log_in(page: Page, base: str, token: str) -> None:
    page.goto(base + "/ui")
    expect(page).to_have_url(base + "/ui/login")
    page.fill("#token", token)
    page.click("button[type=submit]")


def card(page: Page, status: str, task_id: int) -> Locator:
    return page.locator(f'.column[data-status="{status}"] [data-task-id="{task_id}"]')


def test_no_token_and_worker_token_are_refused(broker: BrokerProcess, browser: Browser) -> None:
    worker_token = broker_call(broker.url, broker.admin_token, "issue_agent_token", agent="ui-refused").token
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(UI_TIMEOUT_MS)
    page.goto(broker.base + "/ui")
    expect(page).to_have_url(broker.base + "/ui/login")
    assert page.request.get(broker.base + "/ui/api/board").status == 401

    log_in(page, broker.base, worker_token)
    expect(page.locator("#login-error")).to_contain_text("worker tokens cannot open the dashboard")
    assert not [c for c in context.cookies() if c.get("name") == "aiswarm_session"]
    for path in ("/ui/api/board", "/ui/api/agents", "/ui"):
        answer = httpx.get(broker.base + path, headers={"authorization": f"Bearer {worker_token}"})
        assert answer.status_code == 403, path
    context.close()


def test_a_cli_task_moves_across_the_live_board_and_one_is_cancelled_from_its_page(
    broker: BrokerProcess, browser: Browser, artifacts: Path
) -> None:
    worker_token: str = broker_call(
        broker.url, broker.admin_token, "issue_agent_token", agent="ui-worker"
    ).token
    broker_call(broker.url, worker_token, "register_agent", cli="scripted", persona=None)
    context = browser.new_context(viewport={"width": 1500, "height": 900})
    page = context.new_page()
    page.set_default_timeout(UI_TIMEOUT_MS)
    log_in(page, broker.base, broker.primary_token)
    expect(page).to_have_url(broker.base + "/ui")
    expect(page.locator("#live")).to_have_text("live")
    session = next(c for c in context.cookies() if c.get("name") == "aiswarm_session")
    assert session.get("httpOnly") and session.get("sameSite") == "Strict"
    page.evaluate("window.__sameDocument = true")  # gone if the page reloads

    task_id = cli_submit(broker, "Write the release notes", "List what changed since 0.1, one line each.")
    expect(card(page, "pending", task_id)).to_be_visible()

    claim = broker_call(broker.url, worker_token, "claim_task", task_id=task_id)
    fence: int = claim.fence_token
    expect(card(page, "claimed", task_id)).to_be_visible()
    expect(page.locator('#agents tr[data-agent="ui-worker"]')).to_contain_text(f"running task #{task_id}")

    broker_call(
        broker.url,
        worker_token,
        "report_task_completion",
        task_id=task_id,
        fence_token=fence,
        success=True,
        result="- faster claims\n- a dashboard",
    )
    expect(card(page, "completed", task_id)).to_be_visible()
    assert page.evaluate("window.__sameDocument") is True

    later = [
        cli_submit(broker, title, f"{title}: report what you find.")
        for title in ("Review the parser", "Add tests for the store", "Profile the sweeper")
    ]
    running = broker_call(broker.url, worker_token, "claim_task", task_id=later[0])
    broker_call(
        broker.url,
        worker_token,
        "report_progress",
        task_id=later[0],
        fence_token=running.fence_token,
        message="40% read the grammar, writing notes",
    )
    expect(card(page, "claimed", later[0])).to_contain_text("writing notes")
    page.screenshot(path=str(artifacts / "dashboard-board.png"), full_page=True)

    page.click(f'[data-task-id="{task_id}"]')
    expect(page).to_have_url(f"{broker.base}/ui/tasks/{task_id}")
    expect(page.locator("#task-status")).to_have_text("completed")
    expect(page.locator("#task-prompt")).to_have_text("List what changed since 0.1, one line each.")
    expect(page.locator("#task-result")).to_have_text("- faster claims\n- a dashboard")
    expect(page.locator("#task-attempts li").first).to_contain_text("attempt 1: completed")
    expect(page.locator("#task-attempts li").first).to_contain_text("by ui-worker")
    page.screenshot(path=str(artifacts / "dashboard-task.png"), full_page=True)

    hostile = cli_submit(broker, "Summarise the thread", HOSTILE_PROMPT)
    page.goto(f"{broker.base}/ui/tasks/{hostile}")
    expect(page.locator("#task-prompt")).to_have_text(HOSTILE_PROMPT)
    assert page.locator("#task-prompt b").count() == 0
    assert page.locator("#task-prompt script").count() == 0
    assert page.evaluate("window.__pwned") is None

    page.on("dialog", lambda dialog: dialog.accept())
    page.click("#action-cancel")
    expect(page.locator("#task-status")).to_have_text("cancelled")
    recorded = get_task(broker, hostile)
    assert recorded.status.value == "cancelled"
    assert "dashboard" in (recorded.error or "")
    context.close()
