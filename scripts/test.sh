#!/usr/bin/env bash
# Runs the whole test suite: installs what is missing (pip is skipped when the requirements
# files are unchanged), makes sure Redis (and PostgreSQL when DATABASE_URL names a local one)
# are running, then pytest over tests/. Extra arguments go to pytest.
#   scripts/test.sh                      # SQLite + local Redis
#   DATABASE_URL=postgres://postgres@127.0.0.1:5432/test scripts/test.sh -k api
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$ROOT"

ensure_system_packages --tests
ensure_requirements
ensure_redis "redis://127.0.0.1:6379/0"
ensure_postgres

# Tests use their own Redis DB (flushed per test); never DB 0.
export TEST_REDIS_URL="${TEST_REDIS_URL:-redis://127.0.0.1:6379/15}"
export DJANGO_SETTINGS_MODULE=coverproject.settings.test
say "pytest (database: ${DATABASE_URL:-SQLite}; redis: $TEST_REDIS_URL)"
exec "$PY" -m pytest tests "$@"
