"""Microsoft's Responses host (azure-ai-agentserver-responses) around an instant text handler.

Runs only in the separate benchmark venv (.bench-venv), never in the project's own environment:

    PORT=8702 AGENTSERVER_STATE_ROOT=/tmp/x .bench-venv/bin/python bench/ms_host.py

It answers what afhost's demo agent answers to a first message, so both send the same text:
blocking creates get the whole text at once, streaming creates get it word by word, as the
demo agent streams it. Responses are stored with the host's default store (files under
AGENTSERVER_STATE_ROOT). The bench serves `bench.ms_host:app` behind the same ASGI server as
afhost; run as a script, as above, it is served by the host's own `.run()` (Hypercorn, on the
PORT env var).
"""

from __future__ import annotations

import logging

from azure.ai.agentserver.responses import ResponsesAgentServerHost, TextResponse


def reply(text: str) -> str:
    return (
        f'You said: "{text}". That is the first thing you told me. '
        "We have exchanged 1 message(s) so far."
    )


async def words(text: str):
    chunks = text.split(" ")
    for index, word in enumerate(chunks):
        yield word if index == len(chunks) - 1 else word + " "


# Access logs off, like the other two servers in the benchmark (uvicorn --no-access-log).
app = ResponsesAgentServerHost(log_level="WARNING", access_log=None)


@app.response_handler
async def handler(request, context, cancellation_signal):
    text = reply(await context.get_input_text())
    return TextResponse(context, request, text=words(text) if request.get("stream") else text)


if __name__ == "__main__":
    logging.getLogger().setLevel(logging.WARNING)
    app.run(host="127.0.0.1")
