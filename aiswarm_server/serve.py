"""Running the broker: one process owns the aiswarm home (a lock file), serves HTTP with uvicorn, and
advertises where it listens in ``$AISWARM_HOME/broker.json`` for the CLI, the stdio bridge and the launcher."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import uvicorn

from aiswarm_server.config import BrokerSettings
from aiswarm_server.errors import BrokerError
from aiswarm_server.heap import freeze_start_up_heap
from aiswarm_server.home import BROKER_FILE, LOCK_FILE, BrokerInfo, read_broker_info
from aiswarm_server.http_app import BrokerApp
from aiswarm_server.store import open_store


class HomeLocked(BrokerError):
    """Another broker process owns this aiswarm home."""


@contextlib.contextmanager
def own_home(home: Path) -> Any:
    """Hold the home's lock for as long as this process serves it."""
    try:
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
        handle: IO[str] = open(home / LOCK_FILE, "a+")  # noqa: SIM115 - held for the process lifetime
    except OSError as error:
        raise BrokerError(
            f"cannot write to the aiswarm home {home} ({error.strerror}); make it writable or set AISWARM_HOME"
        ) from None
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        info = read_broker_info(home)
        where = f" (pid {info.pid}, {info.url})" if info else ""
        raise HomeLocked(
            f"another aiswarm broker already owns {home}{where}. Use it, stop it, or set AISWARM_HOME to another "
            "directory."
        ) from None
    try:
        yield handle
    finally:
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        handle.close()


def bind_socket(settings: BrokerSettings) -> socket.socket:
    """Listen on the configured host and port; a taken port is a :class:`BrokerError` saying what to do."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((settings.host, settings.port))
    except OSError as error:
        sock.close()
        raise BrokerError(
            f"cannot listen on {settings.host}:{settings.port} ({error.strerror}). Another program uses the port: "
            "pick another with --port (AISWARM_PORT), or --port 0 for any free one."
        ) from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def keep_database_private(settings: BrokerSettings) -> None:
    """The SQLite file and its -wal/-shm companions are readable by their owner only, like the token files."""
    if settings.database_url is not None:
        return
    for path in (
        settings.database_path,
        *(settings.database_path.with_name(settings.database_path.name + s) for s in ("-wal", "-shm")),
    ):
        # Absent, or not ours to change (immutable, another owner): the store then says what it can and cannot do.
        with contextlib.suppress(OSError):
            path.chmod(0o600)


async def serve(
    settings: BrokerSettings,
    *,
    log_level: str = "warning",
    port_file: Path | None = None,
    on_serving: Callable[[str], None] | None = None,
) -> None:
    """Serve until cancelled or signalled (SIGINT/SIGTERM stop gracefully); ``on_serving`` gets the URL once
    the broker answers. Raises :class:`BrokerError` (home owned by another broker, port taken, database
    refused) before anything is served."""
    # The SDK logs every session at INFO; keep the broker's output to what matters unless asked.
    logging.getLogger("mcp").setLevel(logging.DEBUG if log_level == "debug" else logging.WARNING)
    # Everything the broker creates in its home (the database and the -wal/-shm files SQLite adds later
    # included) is its owner's alone.
    os.umask(0o077)
    with own_home(settings.home):
        # Bind first: a port already taken must leave nothing behind in the home (no empty database).
        sock = bind_socket(settings)
        # Open the database once before serving, so a refusal (corrupt, newer schema, read-only) is one clear
        # line from the CLI instead of an ASGI start-up failure.
        try:
            probe = open_store(settings)
            await probe.open()
            await probe.close()
        except BaseException:
            sock.close()
            raise
        keep_database_private(settings)
        port = sock.getsockname()[1]
        bound = settings.model_copy(update={"port": port})
        app = BrokerApp(bound)
        info = BrokerInfo(url=bound.url, pid=os.getpid(), host=bound.host, port=port, started_at=time.time())

        def advertise(_broker: object) -> None:
            if on_serving is not None:
                on_serving(info.url)
            (settings.home / BROKER_FILE).write_text(info.model_dump_json(), encoding="utf-8")
            if port_file is not None:
                port_file.write_text(str(port), encoding="utf-8")

        def withdraw() -> None:
            current = read_broker_info(settings.home)
            if current is not None and current.pid == os.getpid():
                (settings.home / BROKER_FILE).unlink(missing_ok=True)

        app.on_ready.append(lambda _broker: freeze_start_up_heap())
        app.on_ready.append(advertise)
        app.on_stop.append(withdraw)
        config = uvicorn.Config(
            app,
            log_level=log_level,
            lifespan="on",
            access_log=False,
            timeout_graceful_shutdown=3,
            # Agents call again after each reply, but a slow model step can take a minute: keep their connections.
            timeout_keep_alive=120,
            ws="none",
            http="auto",  # httptools when installed, else h11
        )
        server = uvicorn.Server(config)
        try:
            await server.serve(sockets=[sock])
        finally:
            withdraw()
        if not server.started:
            raise BrokerError("the broker failed to start; see the message above.")


def run(
    settings: BrokerSettings,
    *,
    log_level: str = "warning",
    port_file: Path | None = None,
    on_serving: Callable[[str], None] | None = None,
) -> None:
    """Serve on uvloop where it is installed (a cheaper event loop for the many small calls a swarm makes)."""
    main = serve(settings, log_level=log_level, port_file=port_file, on_serving=on_serving)
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)
