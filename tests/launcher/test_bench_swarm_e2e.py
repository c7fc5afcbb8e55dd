"""The benchmark's swarm section measures what it says: real gemini agents, cold and warm, against the scripted model.

No speed is asserted (that is the benchmark's job): only that every task is done, every number is there and the
warm runs were warm.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from aiswarm_server.bench.swarm import SwarmPlan, measure_swarm
from aiswarm_server.bench.targets import judge
from tests.clis import InstalledClis

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]


def test_the_swarm_section_times_cold_and_warm_gemini_tasks_and_four_agents_draining(
    clis: InstalledClis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AISWARM_TEST_CLI_DIR", str(clis.prefix))
    monkeypatch.setenv("AISWARM_HOME", str(tmp_path / "user-home"))  # no aiswarm-installed CLIs are looked at
    results = asyncio.run(measure_swarm(tmp_path / "swarm", SwarmPlan(("gemini", "opencode"), 2, 4)))
    gemini = results["clis"]["gemini"]
    for mode in ("cold", "warm"):
        section = gemini[mode]
        assert section["completed"] == section["tasks"] == 2, section
        assert (
            section["dispatch"]["n"] == 2
            and 0 < section["dispatch"]["p50_ms"] <= section["end_to_end"]["p50_ms"]
        )
        assert section["requests_per_task"].get("work") == 1.0, section  # one WRITE per task
    assert gemini["cold"]["warm_runs"] == 0
    assert gemini["warm"]["warm_runs"] >= 1
    assert results["clis"]["opencode"]["cold"]["completed"] == 2
    assert "skipped" in results["clis"]["opencode"]["warm"]
    throughput = results["throughput"]
    assert throughput["completed"] == throughput["tasks"] == 4 and throughput["tasks_per_minute"] > 0
    assert [t for t in judge({**_floor(), "swarm": results}) if t["target"].startswith("swarm: gemini warm")]


def _floor() -> dict[str, object]:
    """The smallest no-op floor ``judge`` divides by (the swarm targets do not use it)."""
    run = {"sequential": {"p50_ms": 1.0, "p99_ms": 1.0}, "concurrent": {"calls_per_s": 1.0}}
    return {"floor": {"noop_raw": run}}
