"""The broker process's heap: fewer, cheaper garbage collections (measured in docs/BENCHMARK.md).

Everything built while starting lives as long as the process, so it is frozen out of the collector's walks;
the MCP SDK leaves one reference cycle per request, so young collections are made rarer rather than turned off.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 30_000


def freeze_start_up_heap() -> None:
    """Collect once, move every survivor into the permanent generation, and collect the young one less often."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)
