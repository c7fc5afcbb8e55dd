"""Circuits, the per-agent breaker and quota pools, on a fake clock."""

from __future__ import annotations

import calendar

from launcher.circuits import AgentBreaker, Circuits
from launcher.quota import QuotaPool


def test_an_open_circuit_is_probed_at_its_interval_and_closes_once() -> None:
    now = [100.0]
    circuits = Circuits(probe_seconds=30, clock=lambda: now[0])
    circuits.open("provider:openrouter", "key refused")
    assert circuits.blocking(["cli:qwen", "provider:openrouter"]) is not None
    assert not circuits.due("provider:openrouter")
    now[0] += 30
    assert circuits.due("provider:openrouter")
    assert not circuits.due("provider:openrouter"), "one probe per interval, whoever asks"
    assert circuits.close("provider:openrouter") and not circuits.close("provider:openrouter")
    assert circuits.blocking(["provider:openrouter"]) is None


def test_the_breaker_opens_after_n_failures_then_lets_one_run_through_and_doubles_its_wait() -> None:
    now = [0.0]
    breaker = AgentBreaker(threshold=3, base_seconds=10, clock=lambda: now[0])
    assert not breaker.failed("x") and not breaker.failed("x")
    assert breaker.failed("x") and breaker.is_open and breaker.remaining() == 10
    now[0] += 10
    assert breaker.half_open and not breaker.is_open
    assert breaker.failed("again") and breaker.remaining() == 20, "the half-open run failed: twice as long"
    now[0] += 20
    breaker.succeeded()
    assert not breaker.is_open and not breaker.half_open and breaker.consecutive_failures == 0


def test_a_daily_pool_is_spent_until_its_utc_reset_and_a_minute_pool_for_a_minute() -> None:
    noon = calendar.timegm((2027, 1, 15, 12, 0, 0)) * 1.0
    pool = QuotaPool("gemini-key", per_day=2, resets_at="08:00")
    pool.count(noon)
    assert pool.blocked_until(noon) is None
    pool.count(noon)
    assert pool.blocked_until(noon) == calendar.timegm((2027, 1, 16, 8, 0, 0))
    assert pool.blocked_until(calendar.timegm((2027, 1, 16, 8, 0, 0)) * 1.0) is None
    minute = QuotaPool("openrouter", per_minute=1)
    minute.count(noon)
    assert minute.blocked_until(noon + 59) == noon + 60 and minute.blocked_until(noon + 60) is None
