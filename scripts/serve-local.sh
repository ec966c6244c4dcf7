#!/usr/bin/env bash
# `make serve`: the app on http://127.0.0.1:8000 with a local redis-server and a jobs folder under
# .run/ (ignored by git). One node, primary of its own one-node cluster. Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN="$PWD/.run"
mkdir -p "$RUN/shared" "$RUN/node" "$RUN/redis"
PASS_FILE="$RUN/redis.pass"
[ -s "$PASS_FILE" ] || (umask 077; head -c 24 /dev/urandom | base64 | tr -d '/+=' > "$PASS_FILE")
PASS=$(cat "$PASS_FILE")
PORT=${TTS_SERVE_REDIS_PORT:-6390}

export TTS_NODE=${TTS_NODE:-local}
export TTS_SHARED_DIR="$RUN/shared" TTS_RUN_DIR="$RUN/node"
export TTS_REDIS_URL="redis://:$PASS@127.0.0.1:$PORT/0"
export TTS_ENGINE=${TTS_ENGINE:-espeak} TTS_ENGINE_PACE=${TTS_ENGINE_PACE:-0}

redis-server --bind 127.0.0.1 --port "$PORT" --dir "$RUN/redis" --appendonly yes \
  --requirepass "$PASS" --daemonize yes --pidfile "$RUN/redis/redis.pid" --logfile "$RUN/redis/redis.log"
cleanup() {
  kill "$WORKER_PID" 2>/dev/null || true
  redis-cli -p "$PORT" -a "$PASS" --no-auth-warning shutdown >/dev/null 2>&1 || true
}
trap cleanup EXIT
.venv/bin/tts-cluster status >/dev/null 2>&1 || .venv/bin/tts-cluster --by "make serve" init "$TTS_NODE"
.venv/bin/tts-worker &
WORKER_PID=$!
echo "TTS at http://127.0.0.1:8000  (node $TTS_NODE, engine $TTS_ENGINE, state in .run/)"
.venv/bin/gunicorn --bind 127.0.0.1:8000 --workers 2 --worker-class gthread --threads 4 \
  --access-logfile - 'tts_service.app:create_app()'
