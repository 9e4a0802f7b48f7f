"""Fixtures for the hardening suite (hostile inputs, injected faults) and the recorder behind
RELIABILITY.md: each test calls ``outcome(row, **measured)``; with RELIABILITY_JSON set, the rows
of the run are written there at the end (scripts/reliability.sh renders the table)."""
from __future__ import annotations

import json
import os
import time

import pytest

from tests.service.conftest import _media, _redis_flushed, api_key, other_key, redis_client  # noqa: F401

_ROWS: list[dict] = []


@pytest.fixture
def outcome(request):
    """``outcome("HTML named .wav", expected="415 unsupported_media", measured="415 ...", seconds=...)``"""
    t0 = time.monotonic()
    rows: list[dict] = []

    def record(row: str, *, expected: str, measured: str, **extra):
        rows.append({"row": row, "expected": expected, "measured": measured,
                     "elapsed_s": round(time.monotonic() - t0, 2), **extra})

    yield record
    rep = getattr(request.node, "rep_call", None)
    passed = rep is not None and rep.passed
    for r in rows:
        r.update(test=request.node.nodeid, passed=passed, module=request.node.module.__name__.rsplit(".", 1)[-1])
        _ROWS.append(r)


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome_ = yield
    rep = outcome_.get_result()
    setattr(item, "rep_" + rep.when, rep)


def pytest_sessionfinish(session, exitstatus):
    path = os.environ.get("RELIABILITY_JSON")
    if path and _ROWS:
        with open(path, "w") as fh:
            json.dump(_ROWS, fh, indent=1)
