# Shared by scripts/setup_and_run.sh and scripts/test.sh (sourced, not run).
# Idempotent: a second run skips what is already in place.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
STAMP="$VENV/.requirements.sha256"

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
warn() { printf 'WARNING: %s\n' "$*" >&2; }

missing_system_packages() {
    # Prints the Debian packages whose files are missing (space-separated; empty: none).
    # ffmpeg (command-line tools for the GPT-SoVITS scripts; PyAV bundles its own libraries),
    # espeak-ng (speech for the gpt-sovits-api tests), redis-server (the job queue),
    # chromium (the browser test). With --tests also what only tests need: strace (the
    # hostile-input test proving the decoder opens no other file), postgresql (server binaries:
    # fault 8 runs a private cluster and restarts it). COVER_CI_STRICT=1 turns a skip for any of
    # them into a failure (tests/conftest.py).
    local missing=()
    command -v ffmpeg >/dev/null 2>&1 || missing+=(ffmpeg)
    command -v espeak-ng >/dev/null 2>&1 || missing+=(espeak-ng)
    command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
    # chromium: the browser end-to-end test (Playwright drives Debian's /usr/bin/chromium)
    [ -x "${COVER_CHROMIUM:-/usr/bin/chromium}" ] || missing+=(chromium)
    if [ "${1:-}" = "--tests" ]; then
        command -v strace >/dev/null 2>&1 || missing+=(strace)
        compgen -G "${COVER_PG_LIB_DIR:-/usr/lib/postgresql}/*/bin/initdb" >/dev/null || missing+=(postgresql)
    fi
    echo "${missing[*]}"
}

ensure_system_packages() {
    # ensure_system_packages [--tests]: installs what missing_system_packages names (as root).
    local missing=()
    read -r -a missing <<< "$(missing_system_packages "$@")"
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        say "installing ${missing[*]} (apt-get)"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
    else
        warn "missing system packages: ${missing[*]} (install them with your package manager)"
    fi
}

ensure_venv() {
    if [ ! -x "$PY" ]; then
        say "creating the virtual environment in .venv"
        python3 -m venv "$VENV"
    fi
}

requirements_hash() {
    (cd "$ROOT" && cat constraints.txt requirements.txt requirements-nodeps.txt && "$PY" -V) | sha256sum | cut -d' ' -f1
}

ensure_requirements() {
    ensure_venv
    local want; want="$(requirements_hash)"
    if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
        say "Python requirements unchanged; skipping pip"
        return 0
    fi
    say "installing Python requirements"
    # torch first, from the exact version (constraints.txt keeps every other package on it)
    if ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.__version__.split("+")[0] == "2.13.0" else 1)' 2>/dev/null; then
        "$PY" -m pip install -q torch==2.13.0
    fi
    (cd "$ROOT" && "$PY" -m pip install -q -c constraints.txt -r requirements.txt)
    (cd "$ROOT" && "$PY" -m pip install -q --no-deps -r requirements-nodeps.txt)
    echo "$want" > "$STAMP"
}

# host and port of a redis:// URL (default 127.0.0.1:6379)
redis_host_port() {
    "$PY" - "$1" <<'PYEOF'
import sys
from urllib.parse import urlparse
u = urlparse(sys.argv[1])
print(u.hostname or "127.0.0.1", u.port or 6379)
PYEOF
}

redis_ping() {
    "$PY" - "$1" <<'PYEOF'
import sys, redis
try:
    redis.Redis.from_url(sys.argv[1], socket_connect_timeout=1).ping()
except Exception:
    sys.exit(1)
PYEOF
}

ensure_redis() {
    local url="${1:-redis://127.0.0.1:6379/0}"
    redis_ping "$url" && return 0
    read -r host port < <(redis_host_port "$url")
    case "$host" in
        127.0.0.1|localhost|::1) ;;
        *) echo "Redis at $url is unreachable (not a local address, so not starting one)" >&2; return 1 ;;
    esac
    command -v redis-server >/dev/null 2>&1 || { echo "redis-server is not installed" >&2; return 1; }
    say "starting redis-server on 127.0.0.1:$port"
    redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --save "" --appendonly no >/dev/null
    for _ in $(seq 1 50); do redis_ping "$url" && return 0; sleep 0.2; done
    echo "Redis did not come up on port $port" >&2
    return 1
}

ensure_postgres() {
    # Only for a local PostgreSQL named by DATABASE_URL.
    case "${DATABASE_URL:-}" in
        postgres://*@127.0.0.1*|postgres://*@localhost*|postgresql://*@127.0.0.1*|postgresql://*@localhost*) ;;
        *) return 0 ;;
    esac
    if command -v pg_isready >/dev/null 2>&1 && pg_isready -q -h 127.0.0.1; then
        return 0
    fi
    if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
        say "starting PostgreSQL"
        pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n 1)" main start || true
        for _ in $(seq 1 50); do pg_isready -q -h 127.0.0.1 && return 0; sleep 0.2; done
    fi
    echo "PostgreSQL at $DATABASE_URL is unreachable" >&2
    return 1
}
