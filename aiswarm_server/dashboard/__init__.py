"""The web dashboard the broker serves at ``/ui``."""

from __future__ import annotations

from aiswarm_server.dashboard.app import Dashboard

__all__ = ["Dashboard"]
