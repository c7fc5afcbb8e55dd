"""Fixtures the reliability tests share: one real broker process per test module, and an admin client of it.

A module sets its broker's environment by overriding ``broker_env`` (module scope); the broker starts once for
the module (its tests use distinct agents) and stops after it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from aiswarm_server.broker_client import BrokerClient
from tests.broker_harness import BrokerProcess
from tests.reliability.swarm import START_TIMEOUT


@pytest.fixture(scope="module")
def broker_env() -> dict[str, str]:
    """The ``AISWARM_*`` settings of the module's broker (none: the defaults)."""
    return {}


@pytest.fixture(scope="module")
def broker(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, broker_env: dict[str, str]
) -> Iterator[BrokerProcess]:
    """A real ``aiswarm serve`` on a loopback port with ``broker_env``, shared by the test module."""
    home = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1]) / "home"
    process = BrokerProcess(home, broker_env).start(START_TIMEOUT)
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
async def admin(broker: BrokerProcess) -> AsyncIterator[BrokerClient]:
    """An admin client of the module's broker."""
    async with BrokerClient(broker.url, broker.admin_token) as client:
        yield client
