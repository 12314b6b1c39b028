#!/usr/bin/env bash
# Serve afhost for development: the ASGI server (daphne's runserver), a django-q2 worker, and,
# with TELEGRAM_BOT_TOKEN set, the Telegram poller (TELEGRAM_MODE=webhook leaves it out). Once
# the server answers /readyz, a banner says where everything is.
# Ctrl-C (or the server or the worker ending) stops them all.
set -uo pipefail
PY=${PY:-.venv/bin/python}
PORT=${PORT:-8000}
# On a laptop Telegram cannot reach a webhook: fetch the updates instead.
export TELEGRAM_MODE=${TELEGRAM_MODE:-polling}

if ! "$PY" -c '
import socket, sys
with socket.socket() as sock:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", int(sys.argv[1])))
' "$PORT" 2>/dev/null; then
  echo "Port $PORT is taken: stop what listens there, or choose another (PORT=9000 make run)." >&2
  exit 1
fi

pids=()
"$PY" manage.py worker &
worker=$!
"$PY" manage.py runserver "127.0.0.1:$PORT" --noreload &
web=$!
pids+=("$worker" "$web")
if [[ $TELEGRAM_MODE == polling && -n "${TELEGRAM_BOT_TOKEN:-}${TELEGRAM_BOT_TOKEN_FILE:-}" ]]; then
  # Not watched below: if Telegram cannot be reached, the rest keeps serving.
  "$PY" manage.py telegram_poll &
  pids+=($!)
fi
"$PY" manage.py ready_banner --url "http://127.0.0.1:$PORT" &
pids+=($!)

stop() {
  trap - INT TERM EXIT
  kill -TERM "${pids[@]}" 2>/dev/null
  wait "${pids[@]}" 2>/dev/null
}
# Stopped on purpose (Ctrl-C, SIGTERM): a clean end. The server or the worker ending by itself
# ends the rest, with its status.
trap 'stop; exit 0' INT TERM
trap stop EXIT
wait -n "$web" "$worker"
