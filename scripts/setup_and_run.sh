#!/usr/bin/env bash
# Fresh machine -> running service, in one command:
#   venv (.venv) + requirements (torch==2.13.0 first), system packages when root, migrations,
#   a reachable Redis (starts a local redis-server if none answers), a demo API key printed with
#   a ready-to-paste curl example, then the web server (`manage.py serve`: uvicorn, HTTP + WebSockets on
#   127.0.0.1:8000; it answers oversized uploads with 413 before reading them) and one RQ worker in the
#   foreground. Ctrl-C stops both.
# Environment: COVER_HTTP_HOST / COVER_HTTP_PORT (default 127.0.0.1:8000), REDIS_URL, DATABASE_URL
# and every COVER_* setting (see coverproject/settings/base.py).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$ROOT"

HOST="${COVER_HTTP_HOST:-127.0.0.1}"
PORT="${COVER_HTTP_PORT:-8000}"
export DJANGO_SETTINGS_MODULE="${DJANGO_SETTINGS_MODULE:-coverproject.settings.dev}"
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379/0}"

ensure_system_packages
ensure_requirements
ensure_redis "$REDIS_URL"

say "migrating the database (${DATABASE_URL:-SQLite file var/db.sqlite3})"
"$PY" manage.py migrate --noinput >/dev/null

say "creating a demo API key"
KEY="$("$PY" manage.py create_api_key "demo-$(date +%Y%m%d-%H%M%S)" 2>/dev/null | tail -n 1)"

# Two short generated files so the curl example works as pasted.
DEMO="$ROOT/var/demo"
mkdir -p "$DEMO"
"$PY" - "$DEMO" <<'PYEOF'
import sys
from pathlib import Path
from tests import signals
d = Path(sys.argv[1])
mix, *_ = signals.song(seconds=8.0)
signals.write(d / "song.wav", mix)
signals.write(d / "voice.wav", signals.reference_voice(seconds=6.0))
PYEOF

BASE="http://$HOST:$PORT/api/v1/cover"
cat <<MSG

Demo API key (shown once; only its hash is stored):
  $KEY

Try it (in another terminal):
  export KEY='$KEY'
  curl -s -H "X-API-Key: \$KEY" -F song=@$DEMO/song.wav -F reference_voice=@$DEMO/voice.wav -F pitch_shift=0 $BASE/jobs
  curl -s -H "X-API-Key: \$KEY" $BASE/jobs/<job_id>                 # status, stage, progress
  curl -s -H "X-API-Key: \$KEY" -o cover.wav $BASE/jobs/<job_id>/result
API docs: http://$HOST:$PORT/api/docs/   schema: http://$HOST:$PORT/api/schema/

MSG

PIDS=()
cleanup() {
    trap - INT TERM EXIT
    say "stopping"
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup INT TERM EXIT

say "starting the web server on http://$HOST:$PORT and one worker (Ctrl-C stops both)"
"$PY" manage.py serve --bind "$HOST" --port "$PORT" &  # COVER_WEB_PROCESSES processes (default 1)
PIDS+=($!)
# The worker exits after a stage timeout (code 70) and can die; the supervisor starts a new one.
"$PY" manage.py supervise_worker "${COVER_QUEUE_NAME:-cover}" &
PIDS+=($!)
# Stop everything as soon as either process ends.
wait -n "${PIDS[@]}" || true
