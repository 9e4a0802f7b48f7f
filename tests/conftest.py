"""Fixtures shared by every test folder."""
from __future__ import annotations

import pytest

from tests.processes import ensure_test_database


@pytest.fixture(scope="module")
def e2e_database(django_db_setup, django_db_blocker):
    """The test database for end-to-end modules (whose servers share it), even when no test of
    the session asks for the database (see tests.processes.ensure_test_database)."""
    with ensure_test_database(django_db_blocker):
        yield
