"""Microsoft's Invocations host (agent-framework-foundry-hosting's InvocationsHostServer) around
afhost's own demo agent.

Runs only in the separate benchmark venv (.bench-venv), never in the project's own environment:

    PORT=8811 AGENTSERVER_STATE_ROOT=/tmp/x .bench-venv/bin/python bench/ms_invocations_host.py

The agent is the very object afhost hosts by default (`afhost.demo.agent`), imported from this
checkout. The demo reads one Django setting, AFHOST_DEMO_TOKEN_DELAY, when it streams; Django
settings are configured with just that (from the environment, as afhost reads it), so the module
imports without the rest of afhost. Sessions live in the host's default store (files under
AGENTSERVER_STATE_ROOT). The bench serves `bench.ms_invocations_host:app` behind the same ASGI
server as afhost; run as a script, as above, it is served by the host's own `.run()` (Hypercorn,
on the PORT env var).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from agent_framework_foundry_hosting import InvocationsHostServer
from django.conf import settings

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
# afhost's default delay between streamed words (afhost/settings.py), unless the env sets one.
settings.configure(AFHOST_DEMO_TOKEN_DELAY=float(os.environ.get("AFHOST_DEMO_TOKEN_DELAY", "0.02")))

from afhost.demo import agent  # noqa: E402 (needs the settings above)

# Access logs off, like afhost's uvicorn (--no-access-log).
app = InvocationsHostServer(agent, log_level="WARNING", access_log=None)


if __name__ == "__main__":
    logging.getLogger().setLevel(logging.WARNING)
    app.run(host="127.0.0.1")
