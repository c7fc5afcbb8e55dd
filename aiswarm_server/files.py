"""Files aiswarm writes that may hold a secret, and the JSON (or JSONC) settings files it reads.

Every write is atomic and private: a temporary file in the same directory, created with the final mode (0600
unless told otherwise), flushed to disk, then renamed over the target. A reader sees the old file or the new
one, and a token is never readable by others, not even for a moment.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aiswarm_server.jsonc import JsoncDocument, JsoncError

PRIVATE = 0o600


def write_private(path: Path, data: bytes | str, *, mode: int = PRIVATE, mtime: float | None = None) -> None:
    """Replace ``path`` by ``data`` (text is UTF-8) in one rename; ``mode`` from the start, ``mtime`` if given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode("utf-8") if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
        if mtime is not None:
            os.utime(tmp, (mtime, mtime))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_private_json(path: Path, document: Mapping[str, Any]) -> None:
    """Write ``document`` as indented JSON with :func:`write_private` (it may hold tokens)."""
    write_private(path, json.dumps(document, indent=2) + "\n")


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON or JSONC (comments, trailing commas) file holding an object; {} when missing, unreadable or not one."""
    try:
        return JsoncDocument(path.read_text(encoding="utf-8")).value
    except (OSError, UnicodeDecodeError, JsoncError):
        return {}
