"""``python -m aiswarm_server.bench [--quick] [--json-out PATH]``."""

from __future__ import annotations

import argparse
from pathlib import Path

from aiswarm_server.bench import render, run_bench


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m aiswarm_server.bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small counts (a CI smoke test, ~30 s)")
    parser.add_argument("--json-out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()
    render(run_bench(args.quick, args.json_out))


if __name__ == "__main__":
    main()
