"""Fixtures shared by every test folder, and the network guard (tests/netguard.py): no test
reaches an address outside 127.0.0.0/8 and ::1."""
from __future__ import annotations

import os

import pytest

from tests import netguard
from tests.processes import ensure_test_database

# COVER_CI_STRICT=1 (set by .ci/run): a skipped test fails instead, naming what was missing
# (strace, a tmpfs mount, PostgreSQL binaries, Chromium, espeak-ng...): on CI every test runs.
# A test that may skip even there carries @pytest.mark.may_skip.
STRICT = os.environ.get("COVER_CI_STRICT", "") not in ("", "0", "false", "no")


def pytest_configure(config):
    netguard.install()  # before collection: an import that phones out is caught too
    config.addinivalue_line("markers", "may_skip: may be skipped even under COVER_CI_STRICT=1")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if (STRICT and rep.skipped and not hasattr(rep, "wasxfail")
            and item.get_closest_marker("may_skip") is None):
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        rep.outcome = "failed"
        rep.longrepr = (f"COVER_CI_STRICT=1: skipped, which CI does not allow: {reason}\n"
                        f"Install what it names (scripts/common.sh ensure_system_packages does as root), "
                        f"or run without COVER_CI_STRICT.")


@pytest.fixture(autouse=True, scope="session")
def _network_guard_installed():
    """The guard stays installed for the whole session (a test that replaced and failed to restore
    socket.socket.connect would otherwise turn it off unnoticed)."""
    netguard.install()
    yield
    assert netguard.installed(), "socket.socket.connect or socket.getaddrinfo was replaced and not restored"


@pytest.fixture(autouse=True)
def _decoding_isolation_restored():
    """A CoverWorker started in this process turns on isolated decoding process-wide
    (inference.audio.isolate_decoding); each test starts with what the one before found."""
    from inference import audio

    before = audio.decoding_isolation()
    yield
    audio.isolate_decoding(before)


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


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """The same for a whole module skipped at collection (pytest.skip(allow_module_level=True),
    importorskip at module level)."""
    outcome = yield
    rep = outcome.get_result()
    if STRICT and rep.skipped:
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        rep.outcome = "failed"
        rep.longrepr = f"COVER_CI_STRICT=1: {collector.nodeid} skipped at collection: {reason}"
