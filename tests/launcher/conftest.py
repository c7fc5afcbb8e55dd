"""Fixtures for the launcher tests: the real CLIs (installed once per session, see ``tests/clis.py``)."""

from __future__ import annotations

from tests.clis import InstalledClis, clis

__all__ = ["InstalledClis", "clis"]
