"""The targets (ratios within one run) and the rich table that shows results against them.

Every ratio divides by the **no-op floor measured with the same client**: the raw 2026-07-28 connection
calling ``ping`` on the no-op MCPServer (mean of the runs at the start and at the end of the benchmark); the
2025-11-25 wake-up sections divide by the same ping through that protocol's sessions (``noop_raw_legacy``).
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

WAKE_P50_RATIO = 1.5
WAKE_P99_RATIO = 5.0
LIFECYCLE_RATIO = 0.70
SCALE_RSS_MB = 150.0
SCALE_WAKE_ALL_S = 1.0
STORE_RATIO = 0.50
CLI_START_CPU_MS = 300.0  # the one absolute target: a person waits for it, whatever the broker's speed
WARM_DISPATCH_P50_S = 0.5
"""Submit -> the worker's first model request, p50, for a CLI started by the warm pool (seconds)."""


def noop_floor(results: dict[str, Any]) -> dict[str, float]:
    """p50/p99 (ms) sequential and calls/s with 16 connections, averaged over the two no-op runs."""
    runs = [results["floor"][k] for k in ("noop_raw", "noop_raw_again") if k in results["floor"]]
    return {
        "p50_ms": sum(r["sequential"]["p50_ms"] for r in runs) / len(runs),
        "p99_ms": sum(r["sequential"]["p99_ms"] for r in runs) / len(runs),
        "concurrent_calls_per_s": sum(r["concurrent"]["calls_per_s"] for r in runs) / len(runs),
    }


#: Result sections per protocol: (wake-up key, scale key, label suffix, no-op floor run).
PROTOCOL_SECTIONS = (
    ("wakeup", "scale", "", None),
    ("wakeup_legacy", "scale_legacy", " (2025-11-25)", "noop_raw_legacy"),
)


def _floor_p50(results: dict[str, Any], floor_key: str | None) -> float:
    if floor_key is None or floor_key not in results["floor"]:
        return noop_floor(results)["p50_ms"]
    p50: float = results["floor"][floor_key]["sequential"]["p50_ms"]
    return p50


def _target(
    name: str, value: float | None, limit: float, *, at_most: bool, unit: str = "x"
) -> dict[str, Any]:
    passed = value is not None and (value <= limit if at_most else value >= limit)
    return {
        "target": name,
        "value": None if value is None else round(value, 3),
        "limit": f"{'<=' if at_most else '>='} {limit}{unit}",
        "result": "PASS" if passed else "MISS",
    }


def judge(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target with its measured value and PASS/MISS."""
    base = noop_floor(results)
    judged: list[dict[str, Any]] = []
    for wake_key, _, suffix, floor_key in PROTOCOL_SECTIONS:
        floor_p50 = _floor_p50(results, floor_key)
        for count, section in results.get(wake_key, {}).items():
            wake = section.get("wake")
            p50 = wake["p50_ms"] / floor_p50 if wake and wake["n"] else None
            p99 = wake["p99_ms"] / floor_p50 if wake and wake["n"] else None
            judged.append(
                _target(f"wake-up p50 / no-op p50, {count} parked{suffix}", p50, WAKE_P50_RATIO, at_most=True)
            )
            judged.append(
                _target(f"wake-up p99 / no-op p50, {count} parked{suffix}", p99, WAKE_P99_RATIO, at_most=True)
            )
    for key, label in (("drain", "drain backlog"), ("end_to_end", "submit-wake-claim-complete")):
        section = results.get("lifecycle", {}).get(key, {})
        ratio = None
        if "tasks_per_s" in section:
            ratio = section["tasks_per_s"] * section["calls_per_task_ideal"] / base["concurrent_calls_per_s"]
        judged.append(
            _target(f"lifecycle {label}, 16 agents / same no-op calls", ratio, LIFECYCLE_RATIO, at_most=False)
        )
    for _, scale_key, suffix, _ in PROTOCOL_SECTIONS:
        if scale_key not in results:
            continue
        scale = results[scale_key]
        agents = scale.get("agents", 0)
        judged.append(
            _target(
                f"{agents} parked{suffix}: RSS above idle (MB)",
                scale.get("rss_above_idle_mb"),
                SCALE_RSS_MB,
                at_most=True,
                unit=" MB",
            )
        )
        woke_all = (
            scale.get("time_to_wake_all_s")
            if scale.get("all_woke") and not scale.get("error_count")
            else None
        )
        judged.append(
            _target(
                f"{agents} parked{suffix}: all woken, no errors (s)",
                woke_all,
                SCALE_WAKE_ALL_S,
                at_most=True,
                unit=" s",
            )
        )
    cli = results.get("cli_start", {})
    for command in ("--version", "status --help", "status"):
        cpu = cli.get(command, {}).get("cpu", {})
        judged.append(
            _target(
                f"aiswarm {command}: CPU p50 (ms)",
                cpu.get("p50_ms") if cpu.get("n") else None,
                CLI_START_CPU_MS,
                at_most=True,
                unit=" ms",
            )
        )
    store = results.get("store", {})
    judged.append(
        _target(
            "SqliteStore / plain sqlite3 lifecycles", store.get("store_vs_plain"), STORE_RATIO, at_most=False
        )
    )
    for cli, row in results.get("swarm", {}).get("clis", {}).items():
        dispatch = row.get("warm", {}).get("dispatch")
        if dispatch is not None:
            p50 = dispatch["p50_ms"] / 1e3 if dispatch["n"] else None
            judged.append(
                _target(
                    f"swarm: {cli} warm, submit -> first model request p50 (s)",
                    p50,
                    WARM_DISPATCH_P50_S,
                    at_most=True,
                    unit=" s",
                )
            )
    return judged


def render(results: dict[str, Any], console: Console | None = None) -> None:
    """Print the measurements and the targets as rich tables."""
    console = console or Console()
    meta = results["meta"]
    console.print(
        f"aiswarm bench ({meta['mode']}): {meta['cpus']} CPUs, load average {meta['load_average_before']} "
        f"before, {meta.get('load_average_after')} after, {meta.get('seconds')} s"
    )
    table = Table(title="Measurements")
    for column in ("what", "n", "p50 ms", "p99 ms", "rate", "notes"):
        table.add_column(column, justify="left" if column in ("what", "notes") else "right")
    floor = results["floor"]
    for key, label in (
        ("noop_raw", "no-op ping, raw client"),
        ("noop_raw_again", "no-op ping, raw client (end of run)"),
        ("noop_sdk", "no-op ping, mcp.Client"),
        ("noop_raw_legacy", "no-op ping, raw client, 2025-11-25"),
        ("broker_get_agent_status", "broker get_agent_status, raw"),
        ("broker_update_heartbeat", "broker update_heartbeat, raw"),
    ):
        if key not in floor:
            continue
        for mode in ("sequential", "concurrent"):
            row = floor[key][mode]
            table.add_row(
                f"{label}, {'1 client' if mode == 'sequential' else str(row['clients']) + ' clients'}",
                str(row["n"]),
                f"{row['p50_ms']:.2f}",
                f"{row['p99_ms']:.2f}",
                f"{row['calls_per_s']:.0f} calls/s",
                "",
            )
    for wake_key, _, suffix, _ in PROTOCOL_SECTIONS:
        for count, section in results.get(wake_key, {}).items():
            _wakeup_row(table, f"wake-up, {count} parked{suffix}", section)
    for key, label in (
        ("drain", "lifecycle: 16 agents drain backlog"),
        ("end_to_end", "lifecycle: submit+wake+claim+complete"),
    ):
        section = results.get("lifecycle", {}).get(key, {})
        if "tasks_per_s" not in section:
            table.add_row(label, "", "", "", "", section.get("error", ""))
            continue
        table.add_row(
            label,
            str(section["completed"]),
            "",
            "",
            f"{section['tasks_per_s']:.0f} tasks/s",
            f"{section['calls']} calls; twice-claimed {section['claimed_twice']}"
            + (f"; wasted claims {section['wasted_claims']}" if "wasted_claims" in section else ""),
        )
    for _, scale_key, suffix, _ in PROTOCOL_SECTIONS:
        _scale_row(table, results.get(scale_key, {}), suffix)
    cli = results.get("cli_start", {})
    for command in ("--version", "status --help", "status"):
        if command in cli:
            wall, cpu = cli[command]["wall"], cli[command]["cpu"]
            table.add_row(
                f"cli start-up: aiswarm {command}",
                str(wall["n"]),
                f"{wall['p50_ms']:.0f}",
                f"{wall['p99_ms']:.0f}",
                "",
                f"CPU p50 {cpu['p50_ms']:.0f} ms, max {cpu['max_ms']:.0f} ms",
            )
    if "error" in cli:
        table.add_row("cli start-up", "", "", "", "", cli["error"])
    store = results.get("store", {})
    if "store" in store:
        table.add_row(
            "store: SqliteStore (on the loop) / threaded / plain sqlite3",
            str(store["store"]["lifecycles"]),
            "",
            "",
            f"{store['store']['lifecycles_per_s']:.0f} / {store['store_threaded']['lifecycles_per_s']:.0f} / "
            f"{store['plain']['lifecycles_per_s']:.0f} per s",
            f"statements per lifecycle {store['statements_per_lifecycle']}",
        )
    _swarm_rows(table, results.get("swarm", {}))
    console.print(table)
    targets = Table(title=f"Targets (ratios to the no-op floor: p50 {noop_floor(results)['p50_ms']:.2f} ms)")
    for column in ("target", "value", "limit", "result"):
        targets.add_column(column)
    for row in results["targets"]:
        style = "green" if row["result"] == "PASS" else "red"
        targets.add_row(row["target"], str(row["value"]), row["limit"], f"[{style}]{row['result']}[/{style}]")
    console.print(targets)


def _wakeup_row(table: Table, label: str, section: dict[str, Any]) -> None:
    if "wake" not in section:
        table.add_row(label, "", "", "", "", section.get("error", ""))
        return
    wake, submit = section["wake"], section["submit_rtt"]
    table.add_row(
        label,
        str(wake["n"]),
        f"{wake['p50_ms']:.2f}",
        f"{wake['p99_ms']:.2f}",
        "",
        f"submit RTT p50 {submit['p50_ms']:.2f} ms; errors {section['error_count']}, timeouts {section['timeouts']}",
    )


def _scale_row(table: Table, scale: dict[str, Any], suffix: str) -> None:
    if "rss_mb" not in scale:
        return
    rss, fds = scale["rss_mb"], scale["fds"]
    table.add_row(
        f"scale: {scale['agents']} parked agents{suffix}",
        str(scale["woke"]),
        "",
        "",
        f"all woke in {scale['time_to_wake_all_s']} s",
        f"RSS {rss['before']} -> {rss['parked']} MB (+{scale['rss_above_idle_mb']}), fds {fds['before']} -> "
        f"{fds['parked']}; completed {scale['completed']}, errors {scale['error_count']}",
    )


def _swarm_rows(table: Table, swarm: dict[str, Any]) -> None:
    """The swarm section's rows: per CLI and mode, dispatch and end to end; then the four agents' throughput."""
    if "error" in swarm:
        table.add_row("swarm of real CLIs", "", "", "", "", swarm["error"])
    for cli, row in swarm.get("clis", {}).items():
        if "skipped" in row:
            table.add_row(f"swarm: {cli}", "", "", "", "", row["skipped"])
            continue
        for mode in ("cold", "warm"):
            section = row.get(mode, {})
            if "dispatch" not in section:
                table.add_row(
                    f"swarm: {cli} {mode}", "", "", "", "", section.get("skipped") or section.get("error", "")
                )
                continue
            dispatch, end = section["dispatch"], section["end_to_end"]
            requests = ", ".join(f"{k} {v}" for k, v in section["requests_per_task"].items())
            table.add_row(
                f"swarm: {cli} {mode}, submit -> first model request",
                str(dispatch["n"]),
                f"{dispatch['p50_ms']:.0f}",
                f"{dispatch['p99_ms']:.0f}",
                f"end to end p50 {end['p50_ms'] / 1e3:.1f} s",
                f"completed {section['completed']}/{section['tasks']}, warm runs {section['warm_runs']}; "
                f"model requests per task: {requests}",
            )
    throughput = swarm.get("throughput", {})
    if "tasks_per_minute" in throughput:
        table.add_row(
            f"swarm: {throughput['agents']} {throughput['cli']} agents drain {throughput['tasks']} tasks",
            str(throughput["completed"]),
            "",
            "",
            f"{throughput['tasks_per_minute']:.1f} tasks/min",
            f"{throughput['seconds']} s",
        )
    elif throughput:
        table.add_row(
            "swarm: throughput", "", "", "", "", throughput.get("skipped") or throughput.get("error", "")
        )
