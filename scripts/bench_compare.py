"""Markdown tables from ``aiswarm bench --json-out`` results: one run, or before/after side by side.

    uv run python scripts/bench_compare.py docs/bench/after.json
    uv run python scripts/bench_compare.py docs/bench/before.json docs/bench/after.json

Used to write docs/BENCHMARK.md and the closing notes, so the published figures are the JSON's, unedited.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _load(path: str) -> dict[str, Any]:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _floor_rows(run: dict[str, Any]) -> dict[str, str]:
    floor = run["floor"]
    rows = {}
    for key, label in (
        ("noop_raw", "no-op ping, raw client (start)"),
        ("noop_raw_again", "no-op ping, raw client (end)"),
        ("noop_sdk", "no-op ping, mcp.Client"),
        ("noop_raw_legacy", "no-op ping, raw client, 2025-11-25"),
        ("broker_get_agent_status", "broker get_agent_status (read)"),
        ("broker_update_heartbeat", "broker update_heartbeat (write)"),
    ):
        if key in floor:
            seq, conc = floor[key]["sequential"], floor[key]["concurrent"]
            rows[label] = f"{seq['p50_ms']:.2f} / {seq['p99_ms']:.2f} ms, {conc['calls_per_s']:.0f} calls/s"
    return rows


def _section_rows(run: dict[str, Any]) -> dict[str, str]:
    rows = _floor_rows(run)
    for key, suffix in (("wakeup", ""), ("wakeup_legacy", ", 2025-11-25")):
        for count, result in run.get(key, {}).items():
            label = f"wake-up, {count} parked{suffix} (p50 / p99)"
            if "wake" in result:
                wake, submit = result["wake"], result["submit_rtt"]
                rows[label] = (
                    f"{wake['p50_ms']:.2f} / {wake['p99_ms']:.2f} ms (submit {submit['p50_ms']:.2f} ms)"
                )
            else:
                rows[label] = str(result.get("error", "-"))
    for key, label in (("drain", "drain, 16 agents"), ("end_to_end", "end to end, 16 agents + 1 submitter")):
        result = run.get("lifecycle", {}).get(key, {})
        if "tasks_per_s" in result:
            rows[label] = (
                f"{result['tasks_per_s']:.0f} tasks/s ({result['completed']}/{result['tasks']} done)"
            )
    for key, suffix in (("scale", ""), ("scale_legacy", ", 2025-11-25")):
        scale = run.get(key, {})
        if "rss_above_idle_mb" in scale:
            rows[f"scale: {scale['agents']} parked{suffix}"] = (
                f"+{scale['rss_above_idle_mb']} MB RSS, woke all in {scale['time_to_wake_all_s']} s, "
                f"{scale['error_count']} errors"
            )
    store = run.get("store", {})
    if "store_threaded" in store:  # the store runs on the loop; "threaded" is the same store with a hop
        rows["store lifecycles/s"] = (
            f"store {store['store']['lifecycles_per_s']:.0f} (on the loop), threaded "
            f"{store['store_threaded']['lifecycles_per_s']:.0f}, plain {store['plain']['lifecycles_per_s']:.0f}"
        )
    elif "store_inline" in store:  # runs from before the store moved onto the loop
        rows["store lifecycles/s"] = (
            f"store {store['store']['lifecycles_per_s']:.0f} (threaded), inline "
            f"{store['store_inline']['lifecycles_per_s']:.0f}, plain {store['plain']['lifecycles_per_s']:.0f}"
        )
    for command, result in run.get("cli_start", {}).items():
        if isinstance(result, dict):
            rows[f"cli start-up: aiswarm {command} (wall / CPU p50)"] = (
                f"{result['wall']['p50_ms']:.0f} / {result['cpu']['p50_ms']:.0f} ms"
            )
    return rows


def _targets(run: dict[str, Any]) -> dict[str, str]:
    return {t["target"]: f"{t['value']} {t['result']}" for t in run["targets"]}


def _meta(run: dict[str, Any]) -> str:
    meta = run["meta"]
    return (
        f"{meta['mode']} run {meta['started_at']}, load average {meta['load_average_before'][0]} -> "
        f"{meta['load_average_after'][0]}, {meta['seconds']} s"
    )


def render(paths: list[str]) -> str:
    runs = [_load(p) for p in paths]
    heads = ["before", "after"] if len(runs) == 2 else ["result"]
    lines = [f"- {head}: {_meta(run)}" for head, run in zip(heads, runs, strict=True)]
    for title, extract in (("measurement", _section_rows), ("target (ratio to the no-op floor)", _targets)):
        tables = [extract(run) for run in runs]
        keys = list(dict.fromkeys(k for table in tables for k in table))
        lines += ["", f"| {title} | " + " | ".join(heads) + " |", "| --- |" + " --- |" * len(heads)]
        lines += [f"| {key} | " + " | ".join(table.get(key, "-") for table in tables) + " |" for key in keys]
    return "\n".join(lines)


def main() -> None:
    if not 1 <= len(sys.argv[1:]) <= 2:
        raise SystemExit(__doc__)
    print(render(sys.argv[1:]))


if __name__ == "__main__":
    main()
