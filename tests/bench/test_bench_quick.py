"""The benchmark's quick mode as a smoke test: the measurement is correct (no thresholds are asserted)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from aiswarm_server.bench import render, run_bench

SECTIONS = (
    "meta",
    "floor",
    "wakeup",
    "wakeup_legacy",
    "lifecycle",
    "scale",
    "scale_legacy",
    "store",
    "cli_start",
    "targets",
)


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    return run_bench(quick=True, json_out=out, swarm=False), out  # the swarm section: tests/launcher


@pytest.mark.slow
def test_quick_bench_writes_json_with_every_section(quick_results: tuple[dict[str, Any], Path]) -> None:
    results, out = quick_results
    written = json.loads(out.read_text())
    assert set(SECTIONS) <= set(written)
    assert written["targets"] == results["targets"]
    assert all(t["result"] in ("PASS", "MISS") for t in written["targets"])


@pytest.mark.slow
def test_floor_latencies_are_positive_and_counts_add_up(quick_results: tuple[dict[str, Any], Path]) -> None:
    floor = quick_results[0]["floor"]
    for key in (
        "noop_raw",
        "noop_raw_again",
        "noop_sdk",
        "noop_raw_legacy",
        "broker_get_agent_status",
        "broker_update_heartbeat",
    ):
        for mode in ("sequential", "concurrent"):
            row = floor[key][mode]
            assert row["n"] == row["calls"] > 0
            assert 0 < row["p50_ms"] <= row["p99_ms"] <= row["max_ms"]
            assert row["calls_per_s"] > 0
    assert floor["noop_raw"]["concurrent"]["clients"] == 16


@pytest.mark.slow
@pytest.mark.parametrize("key", ["wakeup", "wakeup_legacy"])
def test_every_wakeup_trial_is_timed_without_errors(
    quick_results: tuple[dict[str, Any], Path], key: str
) -> None:
    wakeups = quick_results[0][key]
    assert [int(k) for k in wakeups] == list(quick_results[0]["meta"]["plan"]["parked_counts"])
    for section in wakeups.values():
        assert section["error_count"] == 0 and section["timeouts"] == 0
        assert section["wake"]["n"] >= 5
        assert 0 < section["wake"]["p50_ms"] <= section["wake"]["p99_ms"]
        assert section["submit_rtt"]["n"] == section["wake"]["n"]


@pytest.mark.slow
def test_every_lifecycle_task_is_completed_exactly_once(quick_results: tuple[dict[str, Any], Path]) -> None:
    lifecycle = quick_results[0]["lifecycle"]
    for section in lifecycle.values():
        assert section["completed"] == section["tasks"]
        assert section["claimed_twice"] == 0
        assert section["all_submitted_completed"]
        assert section["tasks_per_s"] > 0
    drain = lifecycle["drain"]
    assert drain["calls"] == 2 * drain["tasks"] + drain["agents"]  # each agent's last claim finds nothing
    e2e = lifecycle["end_to_end"]
    assert e2e["calls"] >= 4 * e2e["tasks"]


@pytest.mark.slow
@pytest.mark.parametrize("key", ["scale", "scale_legacy"])
def test_every_parked_agent_wakes_and_completes_once(
    quick_results: tuple[dict[str, Any], Path], key: str
) -> None:
    scale = quick_results[0][key]
    assert scale["all_parked"] and scale["all_woke"] and scale["all_done"]
    assert scale["woke"] == scale["completed"] == scale["agents"]
    assert scale["completed_twice"] == 0 and scale["all_submitted_completed"]
    assert scale["error_count"] == 0
    assert scale["time_to_wake_all_s"] > 0
    assert scale["fds"]["parked"] >= scale["fds"]["before"] + scale["agents"], scale["fds"]


@pytest.mark.slow
def test_store_variants_run_the_same_statements(quick_results: tuple[dict[str, Any], Path]) -> None:
    store = quick_results[0]["store"]
    counts = store["statements_per_lifecycle"]
    assert counts["store"] == counts["plain"]
    for variant in ("store", "store_threaded", "plain"):
        assert store[variant]["lifecycles"] > 0
    assert store["store_vs_plain"] > 0


@pytest.mark.slow
def test_render_prints_every_target(
    quick_results: tuple[dict[str, Any], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from rich.console import Console

    render(quick_results[0], Console(width=200, force_terminal=False))
    printed = capsys.readouterr().out
    assert printed.count("PASS") + printed.count("MISS") == len(quick_results[0]["targets"])


@pytest.mark.slow
def test_cli_start_up_is_timed_for_each_command(quick_results: tuple[dict[str, Any], Path]) -> None:
    cli = quick_results[0]["cli_start"]
    assert "error" not in cli
    for command in ("--version", "status --help", "status"):
        wall, cpu = cli[command]["wall"], cli[command]["cpu"]
        assert wall["n"] == cpu["n"] == cli["runs"]
        assert 0 < cpu["p50_ms"] <= cpu["max_ms"] and 0 < wall["p50_ms"] <= wall["max_ms"]
