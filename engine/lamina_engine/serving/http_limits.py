"""HTTP limits every Lamina server applies before a request costs real work.

- BodyLimit: a body over `max_request_bytes` is a 413 (OpenAI's error shape), decided from the
  Content-Length header when there is one, else while the body streams in, so an oversized body
  is never buffered whole, parsed or tokenized.
- check_prompt_chars: a prompt over `max_prompt_chars` characters (all messages together) is a
  400 before tokenizing (tokenizing costs seconds per MB).
- RequestReadTimeoutH11: uvicorn's h11 protocol that closes a connection whose request (head and
  body) has not fully arrived `request_read_timeout_seconds` after it connected or after its
  previous response, so idle and trickling connections do not pile up (uvicorn only times out
  idle keep-alive connections after a first response).
"""

from __future__ import annotations

import asyncio
import json

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from lamina_engine.serving.protocol import OpenAIError, error_body


class _TooLarge(Exception):
    pass


class BodyLimit:
    """Pure ASGI middleware: 413 for an HTTP body over `max_bytes`."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._reject(send)
        seen = 0
        started = False

        async def counted_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge
            return message

        async def tracked_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except _TooLarge:
            if not started:
                await self._reject(send)

    async def _reject(self, send) -> None:
        msg = (f"the request body is over {self.max_bytes} bytes (--max-request-bytes / "
               "LAMINA_MAX_REQUEST_BYTES); send a shorter prompt")  # fmt: skip
        body = json.dumps(error_body(413, msg)).encode()
        headers = [(b"content-type", b"application/json"), (b"connection", b"close"),
                   (b"content-length", str(len(body)).encode())]  # fmt: skip
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def prompt_chars(req) -> int:
    """Characters of a request's prompt text (token-id prompts count one per id)."""
    if hasattr(req, "messages"):
        total = 0
        for m in req.messages:
            if isinstance(m.content, str):
                total += len(m.content)
            elif m.content:
                total += sum(len(str(part.get("text", ""))) for part in m.content)
        return total
    prompt = req.prompt
    if isinstance(prompt, str):
        return len(prompt)
    return sum(len(p) if isinstance(p, (str, list)) else 1 for p in prompt)


def check_prompt_chars(req, limit: int) -> None:
    n = prompt_chars(req)
    if n > limit:
        raise OpenAIError(
            400, f"the prompt has {n} characters, over this server's {limit} "
            "(--max-prompt-chars / LAMINA_MAX_PROMPT_CHARS); send a shorter prompt",
            param="messages" if hasattr(req, "messages") else "prompt",
        )  # fmt: skip


class RequestReadTimeoutH11(H11Protocol):
    """H11Protocol plus a deadline for each request to arrive (`read_timeout_s`)."""

    read_timeout_s = 30.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._read_deadline = self.loop.call_later(self.read_timeout_s, self._read_timed_out)

    def on_response_complete(self) -> None:
        self._read_deadline.cancel()
        super().on_response_complete()
        if not self.transport.is_closing():
            self._read_deadline = self.loop.call_later(self.read_timeout_s, self._read_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._read_deadline.cancel()
        super().connection_lost(exc)

    def _read_timed_out(self) -> None:
        # IDLE: the head is not complete; SEND_BODY: the body is not. DONE: it all arrived.
        if self.conn.their_state in (h11.IDLE, h11.SEND_BODY) and not self.transport.is_closing():
            self.transport.close()


def read_timeout_protocol(seconds: float) -> type[RequestReadTimeoutH11]:
    """The protocol class for uvicorn.Config(http=...), with this deadline."""
    return type("RequestReadTimeoutH11", (RequestReadTimeoutH11,), {"read_timeout_s": seconds})


async def client_gone(request) -> None:
    """Returns when the client of a Starlette `request` has disconnected (body already read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
