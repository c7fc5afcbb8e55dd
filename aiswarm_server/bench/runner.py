"""``run_bench``: start the servers, run every section in order, judge the targets, write JSON."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from aiswarm_server import __version__
from aiswarm_server.bench import floor, load
from aiswarm_server.bench.cli_start import measure_cli_start
from aiswarm_server.bench.processes import BenchBroker, NoopServer
from aiswarm_server.bench.rawmcp import LEGACY_PROTOCOL_VERSION, PROTOCOL_VERSION, Protocol
from aiswarm_server.bench.store import measure_store
from aiswarm_server.bench.swarm import SwarmPlan, measure_swarm
from aiswarm_server.bench.targets import judge

# The parked agents' protocol per section: 2026-07-28 (the Python SDK's) and 2025-11-25 (gemini-cli's, qwen-code's).
WAKEUP_SECTIONS: dict[str, Protocol] = {"wakeup": PROTOCOL_VERSION, "wakeup_legacy": LEGACY_PROTOCOL_VERSION}
SCALE_SECTIONS: dict[str, Protocol] = {"scale": PROTOCOL_VERSION, "scale_legacy": LEGACY_PROTOCOL_VERSION}


@dataclass(frozen=True)
class Plan:
    """How much of everything to do. ``quick`` keeps the whole run under ~30 s on an idle machine."""

    floor_seconds: float
    floor_max_calls: int
    parked_counts: tuple[int, ...]
    wake_trials: int
    wake_seconds: float
    lifecycle_agents: int
    drain_tasks: int
    end_to_end_tasks: int
    scale_agents: int
    store_seconds: float
    agents_per_process: int
    cli_runs: int

    @classmethod
    def for_mode(cls, quick: bool) -> Plan:
        if quick:
            return cls(1.0, 300, (1, 10, 50), 10, 3.0, 16, 100, 40, 50, 1.0, 500, 3)
        return cls(5.0, 3000, (1, 100, 1000), 200, 40.0, 16, 600, 300, 1000, 6.0, 250, 15)

    def processes_for(self, agents: int) -> int:
        return max(1, -(-agents // self.agents_per_process))


def run_bench(quick: bool, json_out: Path | None, *, swarm: bool = True) -> dict[str, Any]:
    """Run the benchmark (``quick``: small counts for CI; ``swarm``: the real CLIs' section too) and return the
    results; write them to ``json_out``."""
    results = asyncio.run(_run(Plan.for_mode(quick), quick, swarm))
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return results


async def _run(plan: Plan, quick: bool, swarm: bool) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="aiswarm-bench-"))
    started = time.time()
    results: dict[str, Any] = {"meta": _meta(quick, plan)}
    try:
        with NoopServer(workdir / "noop") as noop:
            floor_results: dict[str, Any] = {
                "noop_raw": await floor.measure_raw(
                    noop.port, ["-"] * floor.CONCURRENCY, "ping", plan.floor_seconds, plan.floor_max_calls
                ),
                "noop_sdk": await floor.measure_sdk_noop(noop.port, plan.floor_seconds, plan.floor_max_calls),
                "noop_raw_legacy": await floor.measure_raw(
                    noop.port,
                    ["-"] * floor.CONCURRENCY,
                    "ping",
                    plan.floor_seconds,
                    plan.floor_max_calls,
                    LEGACY_PROTOCOL_VERSION,
                ),
            }
            results["floor"] = floor_results
            floor_results["noop_server_rss_mb"] = round(noop.rss_bytes() / 2**20, 1)

            home = workdir / "broker"
            names = [f"bench-{i:04d}" for i in range(max(plan.scale_agents, *plan.parked_counts))]
            with BenchBroker(home) as broker:
                results["meta"]["broker_idle_rss_mb"] = round(broker.rss_bytes() / 2**20, 1)
                agents = await load.issue_tokens(broker, names)
                lifecycle = agents[: plan.lifecycle_agents]
                tokens = [t for _, t in lifecycle]
                for _, token in lifecycle:  # register, so the status calls find an agent
                    await load.call_once(broker.port, token, "register_agent", {"cli": "bench"})
                results["floor"]["broker_get_agent_status"] = await floor.measure_raw(
                    broker.port, tokens, "get_agent_status", plan.floor_seconds, plan.floor_max_calls
                )
                results["floor"]["broker_update_heartbeat"] = await floor.measure_raw(
                    broker.port, tokens, "update_heartbeat", plan.floor_seconds, plan.floor_max_calls
                )
                results["lifecycle"] = {
                    "drain": await load.with_timeout(
                        load.measure_drain(broker, lifecycle, plan.drain_tasks), 600
                    ),
                    "end_to_end": await load.with_timeout(
                        load.measure_end_to_end(broker, lifecycle, plan.end_to_end_tasks), 600
                    ),
                }
                for key, protocol in WAKEUP_SECTIONS.items():
                    results[key] = {}
                    for count in plan.parked_counts:
                        results[key][str(count)] = await load.with_timeout(
                            load.measure_wakeups(
                                broker,
                                agents[:count],
                                plan.wake_trials,
                                plan.wake_seconds,
                                plan.processes_for(count),
                                protocol,
                            ),
                            600,
                        )
                results["meta"]["broker_cpu_seconds_first_process"] = round(broker.cpu_seconds(), 1)
                results["cli_start"] = await asyncio.to_thread(measure_cli_start, home, plan.cli_runs)
            # A fresh broker process on the same home (tokens kept) per protocol, so memory is measured from a
            # clean start.
            for key, protocol in SCALE_SECTIONS.items():
                with BenchBroker(home) as broker:
                    await load.call_once(broker.port, agents[0][1], "get_agent_status")
                    results[key] = await load.with_timeout(
                        load.measure_scale(
                            broker,
                            agents[: plan.scale_agents],
                            plan.processes_for(plan.scale_agents),
                            protocol,
                        ),
                        600,
                    )
            results["floor"]["noop_raw_again"] = await floor.measure_raw(
                noop.port, ["-"] * floor.CONCURRENCY, "ping", plan.floor_seconds, plan.floor_max_calls
            )
        results["store"] = await measure_store(workdir / "store", plan.store_seconds, 1_000_000)
        if swarm:
            results["swarm"] = await load.with_timeout(
                measure_swarm(workdir / "swarm", SwarmPlan.for_mode(quick)), 3600
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    results["meta"]["seconds"] = round(time.time() - started, 1)
    results["meta"]["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    results["targets"] = judge(results)
    return results


def _meta(quick: bool, plan: Plan) -> dict[str, Any]:
    return {
        "aiswarm": __version__,
        "mode": "quick" if quick else "full",
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "cpu_percent_before": psutil.cpu_percent(interval=0.5),
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "plan": plan.__dict__,
    }
