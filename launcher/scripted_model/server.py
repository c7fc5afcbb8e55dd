"""Running the scripted model: in a background thread for tests, or as a process.

``ScriptedModelServer`` binds 127.0.0.1 on a free port (or the one given), serves the app in
a thread with its own event loop, and exposes the counters and faults directly::

    with ScriptedModelServer() as model:
        run_cli(base_url=model.url)
        assert model.stats()["agents"]["qwen-1"]["coordination"] == 2
"""

from __future__ import annotations

import asyncio
import threading
from types import TracebackType
from typing import Any

import uvicorn

from launcher.scripted_model.app import create_app
from launcher.scripted_model.state import FaultSpec, ModelState

HOST = "127.0.0.1"


class ScriptedModelServer:
    """The scripted model served on loopback from a background thread."""

    def __init__(self, port: int = 0) -> None:
        self.state = ModelState()
        self._config = uvicorn.Config(
            create_app(self.state),
            host=HOST,
            port=port,
            log_level="warning",
            lifespan="off",
            access_log=False,
        )
        self._server = uvicorn.Server(self._config)
        self._thread: threading.Thread | None = None
        self.port = port

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:41234`` (OpenAI clients want ``url + "/v1"``)."""
        return f"http://{HOST}:{self.port}"

    def start(self) -> ScriptedModelServer:
        """Start serving; returns once the port is bound."""
        self._thread = threading.Thread(target=self._run, name="scripted-model", daemon=True)
        self._thread.start()
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"the scripted model could not start on {HOST}:{self.port}")
            self._thread.join(0.01)
        sockets = [s for server in self._server.servers for s in server.sockets]
        self.port = sockets[0].getsockname()[1]
        return self

    def _run(self) -> None:
        asyncio.run(self._server.serve())

    def stop(self) -> None:
        """Stop serving and wait for the thread to end."""
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)

    def stats(self) -> dict[str, Any]:
        """The same data as ``GET /_stats``."""
        return self.state.snapshot()

    def inject_fault(self, **spec: Any) -> int:
        """Start a fault (fields of :class:`FaultSpec`, e.g. ``agent="qwen-1", count=3``); returns its id."""
        return self.state.add_fault(FaultSpec.model_validate(spec))

    def clear_faults(
        self, fault_id: int | None = None, agent: str | None = None, cli: str | None = None
    ) -> int:
        """Remove faults (all of them with no filter)."""
        return self.state.clear_faults(fault_id, agent, cli)

    def reset_stats(self) -> None:
        """Forget all request counts."""
        self.state.reset_stats()

    def __enter__(self) -> ScriptedModelServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
