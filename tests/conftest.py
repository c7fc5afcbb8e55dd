from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import cast

import pytest
from xdist.remote import Producer
from xdist.scheduler import LoadFileScheduling

from aiswarm_server.config import BrokerSettings
from aiswarm_server.models import Identity, Role
from aiswarm_server.store import Store, open_store
from tests.broker_harness import BrokerProcess, FakeClock
from tests.store.postgres_fixture import fresh_schema

# The suite runs on two pytest-xdist workers (addopts in pyproject.toml): most of its time is spent waiting on
# real processes (leases running out, busy timeouts, brokers starting), so two workers overlap the waiting even on
# two cores. A test file stays on one worker, so its module's broker starts once. The real-CLI tests share one npm
# prefix that the first of them installs into (tests/clis.py, the conformance suite): they form one unit that runs
# on one worker, in file order, as in a serial run. Largest unit first: it starts at once, the rest fill the other
# worker. (xdist's own ``loadgroup`` cannot do this: it renames node ids, which pytest 9 no longer allows.)
REAL_CLI_PATHS = ("tests/launcher/", "tests/scripted_model/", "tests/reliability/test_conformance.py")


class RealClisTogether(LoadFileScheduling):
    """``--dist loadfile``, with every real-CLI test file in a single unit."""

    def _split_scope(self, nodeid: str) -> str:
        path = super()._split_scope(nodeid)
        return "real CLIs" if path.startswith(REAL_CLI_PATHS) else path


@pytest.hookimpl(tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Producer) -> LoadFileScheduling | None:
    return RealClisTogether(config, log) if config.getvalue("dist") == "loadfile" else None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that needs the real CLIs must live under REAL_CLI_PATHS, or two workers could install them at once."""
    for item in items:
        needs_clis = item.get_closest_marker("e2e") is not None or "clis" in getattr(item, "fixturenames", ())
        if needs_clis and not item.nodeid.startswith(REAL_CLI_PATHS):
            raise pytest.UsageError(
                f"{item.nodeid} needs the real CLIs: add its file to REAL_CLI_PATHS in tests/conftest.py"
            )


@pytest.fixture
def settings(tmp_path: Path) -> BrokerSettings:
    return BrokerSettings(home=tmp_path / "home", lease_seconds=60, agent_lost_seconds=600, offer_seconds=5)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# --- stores: every backend, one fixture (tests/store, tests/broker) ------------------------------------------
@pytest.fixture
def sqlite_store(settings: BrokerSettings) -> Store:
    """A SQLite store in the test's home, not opened yet."""
    return open_store(settings.database_path)


@pytest.fixture
async def postgres_store() -> AsyncIterator[Store]:
    """A PostgreSQL store in a fresh schema, not opened yet (skipped without a server; failed under CI)."""
    async with fresh_schema() as url:
        yield open_store(url)


@pytest.fixture(params=["sqlite_store", "postgres_store"])
def unopened_store(request: pytest.FixtureRequest) -> Store:
    """Each store backend in turn, not opened yet (a Broker opens its store itself)."""
    return cast("Store", request.getfixturevalue(request.param))


@pytest.fixture
async def store(unopened_store: Store) -> AsyncIterator[Store]:
    """Each store backend in turn, opened, closed afterwards."""
    await unopened_store.open()
    try:
        yield unopened_store
    finally:
        await unopened_store.close()


PRIMARY = Identity(role=Role.PRIMARY, label="test primary")


def worker(name: str) -> Identity:
    return Identity(role=Role.WORKER, agent=name, label=f"agent {name}")


@pytest.fixture(scope="module")
def live_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    """A real ``aiswarm serve`` process on a loopback port, shared by one test module (tests use distinct agents)."""
    broker = BrokerProcess(tmp_path_factory.mktemp("live") / "home", {"AISWARM_LEASE_SECONDS": "30"}).start()
    yield broker
    broker.stop()
