"""Deciding what aiswarm's entry points at: the broker's URL and the primary token, or the ``aiswarm mcp`` bridge."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from urllib.parse import urlsplit

from aiswarm_server.broker_calls import local_broker_url
from aiswarm_server.config import BrokerSettings, default_home
from aiswarm_server.home import PRIMARY_TOKEN_FILE, read_token_file
from launcher.primaries.base import AiswarmServer, ClientConfigError

_OTHER_ROLES = {"asw_a_": "an admin", "asw_w_": "a worker"}


def aiswarm_command() -> tuple[str, ...]:
    """An absolute command line that runs this installation's ``aiswarm``, whatever the client's PATH."""
    script = Path(sys.executable).parent / "aiswarm"
    if script.is_file() and os.access(script, os.X_OK):
        return (str(script.absolute()),)
    found = shutil.which("aiswarm")
    if found:
        return (str(Path(found).absolute()),)
    return (str(Path(sys.executable).absolute()), "-m", "aiswarm_server")


def check_url(url: str) -> str:
    """``url`` if it is an http(s) URL with a host, else a one-line refusal."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ClientConfigError(f"--url {url!r} is not an http(s) URL; e.g. http://127.0.0.1:8765/mcp")
    return url


def read_primary_token(path: Path) -> str:
    """The token in ``path``, checked to be one line and not another role's token."""
    token = read_token_file(path)
    if token is None:
        raise ClientConfigError(
            f"no token in {path}: start the broker once with `aiswarm serve` (it creates the primary token), "
            "or pass --token-file"
        )
    if any(char.isspace() or ord(char) < 32 for char in token):
        raise ClientConfigError(f"{path} does not hold a single token (it has whitespace inside)")
    for prefix, role in _OTHER_ROLES.items():
        if token.startswith(prefix):
            raise ClientConfigError(
                f"{path} holds {role} token; the primary agent uses the primary token ({PRIMARY_TOKEN_FILE})"
            )
    return token


def resolve_server(
    *, home: Path, stdio: bool, url: str | None = None, token_file: Path | None = None
) -> AiswarmServer:
    """What to install: HTTP with the URL and the token inlined, or the stdio bridge for this home.

    Over stdio the bridge reads the home's primary token itself (nothing secret goes into the client's config)
    unless ``token_file`` names another file; then the token travels in the bridge's ``AISWARM_TOKEN``.
    """
    default_token_file = home / PRIMARY_TOKEN_FILE
    if url is not None:
        check_url(url)
    if not stdio:
        broker_url = url or local_broker_url(BrokerSettings(home=home))
        return AiswarmServer(
            transport="http", url=broker_url, token=read_primary_token(token_file or default_token_file)
        )
    env: dict[str, str] = {}
    if home.expanduser().absolute() != default_home().absolute():
        env["AISWARM_HOME"] = str(home.expanduser().absolute())
    if token_file is not None and token_file.expanduser().absolute() != default_token_file.absolute():
        env["AISWARM_TOKEN"] = read_primary_token(token_file.expanduser())
    command = (*aiswarm_command(), "mcp", *(("--url", url) if url else ()))
    return AiswarmServer(transport="stdio", url=url, command=command, env=env)
