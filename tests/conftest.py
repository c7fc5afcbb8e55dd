from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from aiswarm_server.config import BrokerSettings
from aiswarm_server.models import Identity, Role
from aiswarm_server.service import Broker
from aiswarm_server.store import open_store
from tests.broker_harness import BrokerProcess, FakeClock


@pytest.fixture
def settings(tmp_path: Path) -> BrokerSettings:
    return BrokerSettings(home=tmp_path / "home", lease_seconds=60, agent_lost_seconds=600, offer_seconds=5)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def abroker(settings: BrokerSettings, clock: FakeClock) -> AsyncIterator[Broker]:
    broker = Broker(open_store(settings.database_path), settings, clock=clock)
    await broker.start(sweep=False)
    try:
        yield broker
    finally:
        await broker.stop()


PRIMARY = Identity(role=Role.PRIMARY, label="test primary")


def worker(name: str) -> Identity:
    return Identity(role=Role.WORKER, agent=name, label=f"agent {name}")


@pytest.fixture(scope="module")
def live_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    """A real ``aiswarm serve`` process on a loopback port, shared by one test module (tests use distinct agents)."""
    broker = BrokerProcess(tmp_path_factory.mktemp("live") / "home", {"AISWARM_LEASE_SECONDS": "30"}).start()
    yield broker
    broker.stop()
