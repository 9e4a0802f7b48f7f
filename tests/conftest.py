"""Fixtures shared by every test folder, and the network guard (tests/netguard.py): no test
reaches an address outside 127.0.0.0/8 and ::1."""
from __future__ import annotations

import pytest

from tests import netguard
from tests.processes import ensure_test_database


def pytest_configure(config):
    netguard.install()  # before collection: an import that phones out is caught too


@pytest.fixture(autouse=True, scope="session")
def _network_guard_installed():
    """The guard stays installed for the whole session (a test that replaced and failed to restore
    socket.socket.connect would otherwise turn it off unnoticed)."""
    netguard.install()
    yield
    assert netguard.installed(), "socket.socket.connect or socket.getaddrinfo was replaced and not restored"


@pytest.fixture(autouse=True)
def _no_outside_traffic():
    """Fails the test that tried to reach a non-loopback address, even if the code swallowed the
    refusal."""
    netguard.take_violations()
    yield
    tried = netguard.take_violations()
    if tried:
        pytest.fail("the test tried to reach outside 127.0.0.0/8 and ::1 (tests/netguard.py): "
                    + "; ".join(tried[:10]), pytrace=False)


@pytest.fixture(scope="module")
def e2e_database(django_db_setup, django_db_blocker):
    """The test database for end-to-end modules (whose servers share it), even when no test of
    the session asks for the database (see tests.processes.ensure_test_database)."""
    with ensure_test_database(django_db_blocker):
        yield
