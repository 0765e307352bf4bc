"""ASGI middleware in front of the routes: the bearer token, then the body limit.

Written as plain ASGI (Starlette's ``BaseHTTPMiddleware`` would read the body into memory
first): a ``Content-Length`` over the limit is refused before one byte of the body is
read, and a chunked body is cut off as soon as it passes the limit.
"""

from __future__ import annotations

import hmac
import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Routes that answer without the token: the health check, and the page's own static files
# (they hold no data; a browser cannot send a bearer header when it opens a page).
OPEN_PATHS = frozenset({"/health", "/"})
OPEN_PREFIXES = ("/static/",)


async def send_error(send: Send, status: int, message: str, headers: dict[str, str]) -> None:
    body = json.dumps({"error": message}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


class BearerToken:
    """Every route but :data:`OPEN_PATHS` needs ``Authorization: Bearer <token>``."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
            await self.app(scope, receive, send)
            return
        given = _header(scope, b"authorization") or ""
        scheme, _, credentials = given.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(
            credentials.strip().encode(), self.token
        ):
            await self.app(scope, receive, send)
            return
        reason = "wrong bearer token" if given else "missing bearer token"
        await send_error(
            send,
            401,
            f"{reason}: send 'Authorization: Bearer <token>' (DINOEMBED_SERVE_TOKEN)",
            {"www-authenticate": 'Bearer realm="dinoembed"'},
        )


class _TooLargeError(Exception):
    pass


class BodyLimit:
    """413 for a request body over ``limit`` bytes, with ``hint`` saying what to do instead."""

    def __init__(self, app: ASGIApp, limit: int, hint: str = "") -> None:
        self.app = app
        self.limit = limit
        self.hint = hint

    def _message(self) -> str:
        text = f"request body too large: the limit is {self.limit} bytes"
        return f"{text}; {self.hint}" if self.hint else text

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                await send_error(send, 400, f"bad Content-Length: {declared!r}", {})
                return
            if int(declared) > self.limit:
                await send_error(send, 413, self._message(), {"connection": "close"})
                return
        received = 0
        started = False

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise _TooLargeError
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited, watched)
        except _TooLargeError:
            if started:
                raise
            await send_error(send, 413, self._message(), {"connection": "close"})
