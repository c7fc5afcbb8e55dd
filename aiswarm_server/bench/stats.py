"""Latency summaries and timed loops shared by every section of the benchmark."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of ``values`` (which must not be empty)."""
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered) + 0.5) - 1))
    return ordered[index]


def summarize(seconds: Sequence[float]) -> dict[str, Any]:
    """``n``, p50, p99, mean and max in milliseconds (zeros when there is nothing to summarize)."""
    if not seconds:
        return {"n": 0, "p50_ms": 0.0, "p99_ms": 0.0, "mean_ms": 0.0, "max_ms": 0.0}
    return {
        "n": len(seconds),
        "p50_ms": round(percentile(seconds, 0.50) * 1e3, 3),
        "p99_ms": round(percentile(seconds, 0.99) * 1e3, 3),
        "mean_ms": round(statistics.fmean(seconds) * 1e3, 3),
        "max_ms": round(max(seconds) * 1e3, 3),
    }


async def timed_calls(
    callers: Sequence[Callable[[], Awaitable[object]]], budget_seconds: float, max_calls: int
) -> dict[str, Any]:
    """Run each caller in its own loop, all at once, until ``max_calls`` calls or ``budget_seconds`` passed.

    Returns the latency summary plus ``calls``, ``seconds`` and ``calls_per_s`` over the whole run.
    """
    latencies: list[float] = []
    start = time.perf_counter()
    deadline = start + budget_seconds

    async def loop(call: Callable[[], Awaitable[object]]) -> None:
        while len(latencies) < max_calls and time.perf_counter() < deadline:
            began = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - began)

    await asyncio.gather(*(loop(c) for c in callers))
    elapsed = time.perf_counter() - start
    return {
        **summarize(latencies),
        "clients": len(callers),
        "calls": len(latencies),
        "seconds": round(elapsed, 3),
        "calls_per_s": round(len(latencies) / elapsed, 1) if elapsed > 0 else 0.0,
    }
