#!/usr/bin/env bash
# Serve afhost for development: the ASGI server (daphne's runserver) and a django-q2 worker.
# Ctrl-C (or either process ending) stops both.
set -uo pipefail
PY=${PY:-.venv/bin/python}
PORT=${PORT:-8000}

"$PY" manage.py worker &
worker=$!
"$PY" manage.py runserver "127.0.0.1:$PORT" --noreload &
web=$!

stop() {
  trap - INT TERM EXIT
  kill -TERM "$web" "$worker" 2>/dev/null
  wait "$web" "$worker" 2>/dev/null
}
trap stop INT TERM EXIT
wait -n "$web" "$worker"
