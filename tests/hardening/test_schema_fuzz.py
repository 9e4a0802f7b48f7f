"""Schemathesis against the OpenAPI schema (/api/schema/) for the whole API, with an API key, on a
real daphne (no worker needed: accepted jobs just stay queued). Every response must be a non-5xx
that matches the schema: documented status code, content type and body. Bounded: at most
SCHEMA_FUZZ_EXAMPLES examples per operation (default 15), no shrinking."""
from __future__ import annotations

import os
import sys
import time

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import positive_data_acceptance

from tests.processes import Stack, e2e_env

pytestmark = pytest.mark.e2e
EXAMPLES = int(os.environ.get("SCHEMA_FUZZ_EXAMPLES", "15"))


@pytest.fixture(scope="module")
def live(e2e_database, django_db_blocker, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    with django_db_blocker.unblock():
        from covers.models import APIKey
        key, raw = APIKey.objects.create_key(name="fuzz")
    s = Stack(tmp, e2e_env(tmp, COVER_MAX_UPLOAD_MB="1"))
    s.daphne = s._spawn([sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(s.port),
                         "coverproject.asgi:application"], "daphne.log")
    deadline = time.monotonic() + 60
    while True:
        try:
            if requests.get(s.base + "/api/schema/", timeout=2).status_code == 200:
                break
        except requests.ConnectionError:
            pass
        assert time.monotonic() < deadline and s.daphne.poll() is None, s.logs()
        time.sleep(0.2)
    s.raw = raw
    try:
        yield s
    finally:
        s.stop()
        with django_db_blocker.unblock():
            from covers.models import APIKey, CoverJob
            CoverJob.objects.filter(owner__name="fuzz").delete()
            APIKey.objects.filter(name="fuzz").delete()


def test_the_api_matches_its_schema_and_never_500s(live, outcome):
    from hypothesis import given

    schema = schemathesis.openapi.from_url(live.base + "/api/schema/?format=json")
    schema.config.update(base_url=live.base)
    failures, operations, calls = {}, 0, [0]
    for result in schema.get_all_operations():
        op = result.ok()
        operations += 1

        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        @given(case=op.as_strategy())
        def run(case):
            calls[0] += 1
            # positive_data_acceptance is left out: a schema-valid upload is random bytes, which the
            # service rightly refuses (415/422: not audio), and "song or a vocals stem" is a
            # cross-field rule OpenAPI cannot state; every other check runs.
            case.call_and_validate(headers={"X-API-Key": live.raw}, excluded_checks=[positive_data_acceptance])

        try:
            run()
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # schemathesis' failure group names the check and the case
            failures[op.label] = str(exc)[:3000]
    outcome(f"schemathesis: {operations} operations, up to {EXAMPLES} examples each",
            expected="no 5xx; every response matches the schema",
            measured=f"{calls[0]} requests; failing operations: {', '.join(failures) or 'none'}")
    assert not failures, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())
