"""``python -m launcher.scripted_model --port 0 --port-file F``: serve the scripted model on 127.0.0.1."""

from __future__ import annotations

import argparse
import os
import signal
import threading
from pathlib import Path

from launcher.scripted_model.server import ScriptedModelServer


def main(argv: list[str] | None = None) -> None:
    """Serve until SIGINT/SIGTERM; print the bound port and write it to ``--port-file``."""
    parser = argparse.ArgumentParser(prog="python -m launcher.scripted_model", description=__doc__)
    parser.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("AISWARM_SCRIPTED_MODEL_PORT", "0")),
        help="port on 127.0.0.1; 0 picks a free one (env AISWARM_SCRIPTED_MODEL_PORT)",
    )
    parser.add_argument("--port-file", type=Path, help="write the bound port here once listening")
    args = parser.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with ScriptedModelServer(args.port) as model:
        if args.port_file is not None:
            temporary = args.port_file.with_name(args.port_file.name + ".tmp")
            temporary.write_text(f"{model.port}\n")
            temporary.replace(args.port_file)
        print(model.port, flush=True)
        stop.wait()


if __name__ == "__main__":
    main()
