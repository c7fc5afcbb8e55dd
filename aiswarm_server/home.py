"""The files a broker leaves in its aiswarm home for its clients: where it listens (``broker.json``), the lock that
says it runs (``broker.lock``) and the local admin and primary tokens.

Clients (the CLI, the stdio bridge, the launcher) read them without importing the server.
"""

from __future__ import annotations

import fcntl
from pathlib import Path

from pydantic import BaseModel

BROKER_FILE = "broker.json"
LOCK_FILE = "broker.lock"
ADMIN_TOKEN_FILE = "admin.token"
PRIMARY_TOKEN_FILE = "primary.token"


class BrokerInfo(BaseModel):
    """What a running broker advertises in its home."""

    url: str
    pid: int
    host: str
    port: int
    started_at: float


def read_broker_info(home: Path) -> BrokerInfo | None:
    """What the broker serving ``home`` advertised, or None if none has (or the file is unreadable)."""
    try:
        return BrokerInfo.model_validate_json((home / BROKER_FILE).read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return None


def home_is_served(home: Path) -> bool:
    """Whether a broker process holds this home's lock right now."""
    try:
        handle = open(home / LOCK_FILE)  # noqa: SIM115 - closed below
    except FileNotFoundError:
        return False
    with handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        return False


def read_token_file(path: Path) -> str | None:
    """The token in ``path``, or None when the file is missing or empty."""
    try:
        token = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    return token or None
