"""A bare ASGI Responses (and Invocations) endpoint: the ceiling for any Python app behind the
same server.

No framework, no auth, no storage: it reads the request body and answers fixed bytes shaped
like afhost's answers (a Response object, or the same 26-event SSE sequence for "stream"; on
/invocations, `{"response": text}` or the same `delta` frames and `done`).
"""

import json

TEXT = 'You said: "hello". That is the first thing you told me. '
TEXT += "We have exchanged 1 message(s) so far."
PART = {"type": "output_text", "text": TEXT, "annotations": [], "logprobs": []}
ITEM = {"id": "msg_1", "type": "message", "role": "assistant", "status": "completed"}
RESP = {"id": "resp_1", "object": "response", "model": "bench", "created_at": 1, "tools": []}
DONE = {**RESP, "status": "completed", "output": [{**ITEM, "content": [PART]}]}
BODY = json.dumps(DONE).encode()
WORDS = [w + " " for w in TEXT.split(" ")[:-1]] + [TEXT.split(" ")[-1]]
EVENTS = [
    ("response.created", {"response": {**RESP, "status": "in_progress", "output": []}}),
    ("response.in_progress", {"response": {**RESP, "status": "in_progress", "output": []}}),
    ("response.output_item.added", {"item": {**ITEM, "status": "in_progress", "content": []}}),
    ("response.content_part.added", {"item_id": "msg_1", "part": {**PART, "text": ""}}),
    *[("response.output_text.delta", {"item_id": "msg_1", "delta": w}) for w in WORDS],
    ("response.output_text.done", {"item_id": "msg_1", "text": TEXT}),
    ("response.content_part.done", {"item_id": "msg_1", "part": PART}),
    ("response.output_item.done", {"item": DONE["output"][0]}),
    ("response.completed", {"response": DONE}),
]
SSE = [
    f"event: {kind}\ndata: {json.dumps({'type': kind, 'sequence_number': n, **data})}\n\n".encode()
    for n, (kind, data) in enumerate(EVENTS)
]

INVOCATION_BODY = json.dumps({"response": TEXT}).encode()
INVOCATION_SSE = [
    *(f"event: delta\ndata: {json.dumps({'text': w})}\n\n".encode() for w in WORDS),
    b'event: done\ndata: {"session_id": "s1"}\n\n',
]


async def app(scope, receive, send):
    if scope["type"] != "http":  # lifespan: accept startup/shutdown, nothing to do
        while (message := await receive())["type"] != "lifespan.shutdown":
            await send({"type": message["type"] + ".complete"})
        return await send({"type": "lifespan.shutdown.complete"})
    body, more = b"", True
    while more:
        message = await receive()
        body, more = body + message.get("body", b""), message.get("more_body", False)
    stream = json.loads(body or b"{}").get("stream") is True
    kind = b"text/event-stream" if stream else b"application/json"
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", kind)]})
    if scope["path"].startswith("/invocations"):
        chunks = INVOCATION_SSE if stream else [INVOCATION_BODY]
    else:
        chunks = SSE if stream else [BODY]
    for chunk in chunks:
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    return await send({"type": "http.response.body", "body": b""})
