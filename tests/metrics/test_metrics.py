"""/metrics after a small run on a real broker, read with prometheus_client's own parser."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from aiswarm_server.broker_client import BrokerClient
from tests.broker_harness import BrokerProcess

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    process = BrokerProcess(tmp_path_factory.mktemp("metrics") / "home").start()
    yield process
    process.stop()


def scrape(broker: BrokerProcess) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample, keyed by name and labels."""
    answer = httpx.get(broker.base + "/metrics", timeout=30)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_the_documented_series_count_a_small_run(broker: BrokerProcess) -> None:
    async with (
        BrokerClient(broker.url, broker.admin_token) as admin,
        BrokerClient(broker.url, broker.primary_token) as primary,
    ):
        token = (await admin.issue_agent_token("metrics-worker")).token
        async with BrokerClient(broker.url, token) as worker:
            registered = await worker.register_agent(cli="qwen", persona="reviewer")
            # A parked agent woken for a task: one wake-up-to-claim sample.
            wait = asyncio.create_task(worker.wait_for_next_event(registered.cursor, timeout_seconds=30))
            deadline = time.monotonic() + 30
            while value(scrape(broker), "aiswarm_parked_waits") < 1:
                assert time.monotonic() < deadline, "the worker's wait never parked"
                await asyncio.sleep(0.05)
            first = (
                (await primary.submit_task("Review A", "Review module a.", persona="reviewer")).tasks[0].id
            )
            woken = await wait
            assert [e.task_id for e in woken.events] == [first]
            claim = await worker.claim_task(first)
            assert claim.fence_token is not None
            await worker.report_task_completion(first, claim.fence_token, success=True, result="ok")

            # A task that fails once, is requeued, then completes: two claims.
            second = (
                (await primary.submit_task("Review B", "Review module b.", persona="reviewer")).tasks[0].id
            )
            claim = await worker.claim_task(second)
            assert claim.fence_token is not None
            await worker.report_task_completion(second, claim.fence_token, success=False, error="flaky")
            claim = await worker.claim_task(second)
            assert claim.fence_token is not None
            await worker.report_task_completion(second, claim.fence_token, success=True, result="ok")

            # A failure that waits out a retry delay (blocked) is a failed attempt too.
            later = {
                "title": "Later",
                "prompt": "Retry in an hour.",
                "persona": "reviewer",
                "retry_delay_seconds": 3600,
            }
            delayed = (await primary.submit_tasks([later])).tasks[0].id
            claim = await worker.claim_task(delayed)
            assert claim.fence_token is not None
            await worker.report_task_completion(delayed, claim.fence_token, success=False, error="busy")
            # The same report again (a retry after a lost answer) is answered, not counted twice.
            await worker.report_task_completion(delayed, claim.fence_token, success=False, error="busy")

            # A task with one attempt that fails: dead.
            third = (
                (await primary.submit_task("Doomed", "Fail.", persona="reviewer", max_attempts=1)).tasks[0].id
            )
            claim = await worker.claim_task(third)
            assert claim.fence_token is not None
            await worker.report_task_completion(third, claim.fence_token, success=False, error="no")

            # A task cancelled before anyone took it, with a dependent that fails with it.
            fourth = (await primary.submit_task("Unwanted", "Never mind.")).tasks[0].id
            await primary.submit_task("After unwanted", "Then this.", depends_on=[fourth])
            await primary.cancel_task(fourth)

        # The launcher reports each CLI run's model usage.
        await admin.record_model_usage(
            agent="metrics-worker", cli="qwen", provider="127.0.0.1", requests=3, input_tokens=100,
            output_tokens=20, task_id=first,
        )  # fmt: skip

    deadline = time.monotonic() + 30
    while True:  # the dependent's failure is counted after a store read of its own
        samples = scrape(broker)
        if value(samples, "aiswarm_tasks_finished_total", status="failed", persona="none", cli="none") == 1:
            break
        assert time.monotonic() < deadline, "the dependent's failure was never counted"
        await asyncio.sleep(0.05)

    assert value(samples, "aiswarm_info", version="0.1.0") == 1
    assert value(samples, "aiswarm_tasks_submitted_total", persona="reviewer") == 4
    assert value(samples, "aiswarm_tasks_submitted_total", persona="none") == 2
    assert (
        value(samples, "aiswarm_tasks_finished_total", status="completed", persona="reviewer", cli="qwen")
        == 2
    )
    assert value(samples, "aiswarm_tasks_finished_total", status="dead", persona="reviewer", cli="qwen") == 1
    assert value(samples, "aiswarm_tasks_finished_total", status="cancelled", persona="none", cli="none") == 1
    assert (
        value(samples, "aiswarm_attempts_ended_total", outcome="completed", persona="reviewer", cli="qwen")
        == 2
    )
    assert (
        value(samples, "aiswarm_attempts_ended_total", outcome="failed", persona="reviewer", cli="qwen") == 3
    )
    assert value(samples, "aiswarm_task_queued_seconds_count", persona="reviewer") == 4
    assert (
        value(
            samples, "aiswarm_task_running_seconds_count", outcome="completed", persona="reviewer", cli="qwen"
        )
        == 2
    )
    assert value(samples, "aiswarm_task_claims_count", status="completed") == 2
    assert value(samples, "aiswarm_task_claims_sum", status="completed") == 3  # 1 + 2 claims
    assert value(samples, "aiswarm_task_claims_sum", status="cancelled") == 0
    assert value(samples, "aiswarm_wakeup_to_claim_seconds_count", cli="qwen") == 1
    assert value(samples, "aiswarm_tasks", status="completed") == 2
    assert value(samples, "aiswarm_tasks", status="dead") == 1
    assert value(samples, "aiswarm_tasks", status="cancelled") == 1
    assert value(samples, "aiswarm_tasks", status="failed") == 1
    assert value(samples, "aiswarm_tasks", status="blocked") == 1
    assert value(samples, "aiswarm_agents", status="idle") == 1
    assert value(samples, "aiswarm_model_requests_total", cli="qwen", provider="127.0.0.1") == 3
    assert value(samples, "aiswarm_model_tokens_total", cli="qwen", provider="127.0.0.1", kind="input") == 100
    assert value(samples, "aiswarm_model_tokens_total", cli="qwen", provider="127.0.0.1", kind="output") == 20
