"""The broker service's tests run on every store backend: ``abroker`` here is the service over each in turn."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from aiswarm_server.broker import Broker
from aiswarm_server.config import BrokerSettings
from aiswarm_server.store import Store
from tests.broker_harness import FakeClock


@pytest.fixture
async def abroker(unopened_store: Store, settings: BrokerSettings, clock: FakeClock) -> AsyncIterator[Broker]:
    """The broker service on each store backend, clock in the test's hands, no background sweep."""
    broker = Broker(unopened_store, settings, clock=clock)
    await broker.start(sweep=False)
    try:
        yield broker
    finally:
        await broker.stop()
