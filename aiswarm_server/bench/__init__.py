"""``aiswarm bench``: the broker's performance, measured over real HTTP against a real ``aiswarm serve``.

``run_bench(quick, json_out)`` runs every section and returns (and writes) the results; ``render(results)``
prints them with each target's PASS/MISS. ``python -m aiswarm_server.bench [--quick] [--json-out PATH]``.
See ``docs/BENCHMARK.md`` for what is measured and how to read it.

The imports are lazy: the benchmark's own subprocesses (``bench.fleet``, ``bench.noop_server``) import this
package and should not pay for rich and the runner.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console


def run_bench(quick: bool, json_out: Path | None, *, swarm: bool = True) -> dict[str, Any]:
    """Run the benchmark (``quick``: small counts, a CI smoke test; ``swarm``: with the real agent CLIs); return
    the results, write them as JSON."""
    from aiswarm_server.bench.runner import run_bench as run

    return run(quick, json_out, swarm=swarm)


def render(results: dict[str, Any], console: Console | None = None) -> None:
    """Print the measurements and every target with PASS/MISS as rich tables."""
    from aiswarm_server.bench.targets import render as show

    show(results, console)


__all__ = ["render", "run_bench"]
