"""The client's side of one ASGI request, for calling an application in process."""

import asyncio
import json


class CreateCall:
    """`POST /v1/responses` of `text` with `raw_key`: its body is received first, then a
    disconnect once `leave` is set; what the application sends is kept in `sent`."""

    def __init__(self, raw_key: str, text: str) -> None:
        self.body: bytes | None = json.dumps({"model": "demo", "input": text}).encode()
        self.scope = {
            "type": "http",
            "method": "POST",
            "path": "/v1/responses",
            "query_string": b"",
            "headers": [
                (b"host", b"testserver"),
                (b"authorization", f"Bearer {raw_key}".encode()),
                (b"content-type", b"application/json"),
                (b"content-length", str(len(self.body)).encode()),
            ],
        }
        self.leave = asyncio.Event()
        self.sent: list[dict] = []

    async def receive(self) -> dict:
        if self.body is not None:
            body, self.body = self.body, None
            return {"type": "http.request", "body": body}
        await self.leave.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict) -> None:
        self.sent.append(message)
