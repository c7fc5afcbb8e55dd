"""``aiswarm bench``: the broker's performance, measured over real HTTP against a real ``aiswarm serve``.

``run_bench(quick, json_out)`` runs every section and returns (and writes) the results; ``render(results)``
prints them with each target's PASS/MISS. ``python -m aiswarm_server.bench [--quick] [--json-out PATH]``.
See ``docs/BENCHMARK.md`` for what is measured and how to read it.
"""

from __future__ import annotations

from aiswarm_server.bench.runner import run_bench
from aiswarm_server.bench.targets import render

__all__ = ["render", "run_bench"]
