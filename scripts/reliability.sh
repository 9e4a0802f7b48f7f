#!/usr/bin/env bash
# Runs the hardening suite (tests/hardening: hostile inputs, injected faults, races, startup
# refusal, secrets, schema fuzzing) and writes RELIABILITY.md from the outcomes each test measured
# (tests/hardening/conftest.py records them; scripts/reliability_report.py renders the table).
#   scripts/reliability.sh            # all of it (about 4 minutes on 2 cores)
#   scripts/reliability.sh -k hostile # extra arguments go to pytest (the table then has those rows only)
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$ROOT"

ensure_redis "redis://127.0.0.1:6379/0"
export TEST_REDIS_URL="${TEST_REDIS_URL:-redis://127.0.0.1:6379/15}"
export DJANGO_SETTINGS_MODULE=coverproject.settings.test
export RELIABILITY_JSON="${RELIABILITY_JSON:-$ROOT/var/reliability.json}"
mkdir -p "$(dirname "$RELIABILITY_JSON")"
rm -f "$RELIABILITY_JSON"
start=$(date +%s)
"$PY" -m pytest tests/hardening -q -p no:cacheprovider "$@"
rc=$?
"$PY" scripts/reliability_report.py "$RELIABILITY_JSON" RELIABILITY.md --seconds $(( $(date +%s) - start )) \
    --exit-code "$rc"
say "RELIABILITY.md written (pytest exit $rc)"
exit "$rc"
