"""ASGI guards that answer before the application reads a request: the API key check and the body-read timeout.

Both sit outside FastAPI so that they act on the headers alone. FastAPI reads and parses a multipart body
before a route's own code runs, so a key checked in the route lets anyone upload the largest body the
limits allow before hearing 401.
"""

from __future__ import annotations

import asyncio
import hmac
from pathlib import Path

from fastapi.responses import JSONResponse

PROTECTED_PREFIX = "/v1/"


def error_response(status: int, code: str, message: str, file: str | None = None) -> JSONResponse:
    """The API's error body, ``{"error": {"code", "message", "file"}}``, with its status (4xx, or 503 when the server is full)."""
    return JSONResponse({"error": {"code": code, "message": message, "file": file}}, status_code=status)


class OwnAnswer:
    """The ``send`` of a middleware that may decide a request's answer itself (body too large, body too slow).

    Until :attr:`response` is set, the wrapped app's messages pass through. Once it is set, the app's own
    answer is dropped and ours goes out instead, once: FastAPI reports any error while parsing a form as
    "400 error parsing the body", and the real reason is the middleware's.
    """

    def __init__(self, scope, receive, send) -> None:
        self.scope, self.receive, self._send = scope, receive, send
        self.response: JSONResponse | None = None
        self.answered = False

    async def send(self, msg) -> None:
        """Pass the app's message on, or answer with :attr:`response` in place of the app's response."""
        if self.response is None:
            await self._send(msg)
        elif msg["type"] == "http.response.start":
            await self.answer()

    async def answer(self) -> None:
        """Send :attr:`response` unless it has been sent already."""
        if not self.answered:
            self.answered = True
            await self.response(self.scope, self.receive, self._send)


def read_api_key_file(path: str | Path) -> str:
    """The key in a file (first line, surrounding whitespace removed); a missing or empty file is a ValueError."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"--api-key-file {path}: cannot read it ({exc.strerror or exc})") from exc
    except UnicodeDecodeError as exc:
        raise ValueError(f"--api-key-file {path}: not a text file") from exc
    key = (text.splitlines() or [""])[0].strip()
    if not key:
        raise ValueError(f"--api-key-file {path}: the file is empty; put the key on its first line")
    return key


def given_key(headers: dict[bytes, bytes]) -> str:
    """The key a request carries, as ``X-API-Key`` or ``Authorization: Bearer``; empty when it carries none."""
    key = headers.get(b"x-api-key", b"").decode("latin-1")
    auth = headers.get(b"authorization", b"").decode("latin-1")
    if not key and auth.lower().startswith("bearer "):
        key = auth[7:]
    return key.strip()


class ApiKeyGate:
    """ASGI middleware: every request under ``/v1/`` needs the key; without it the answer is 401 and the body is never read."""

    def __init__(self, app, api_key: str | None) -> None:
        self.app, self.key = app, api_key.encode() if api_key else None

    async def __call__(self, scope, receive, send) -> None:
        if self.key is None or scope["type"] != "http" or not scope["path"].startswith(PROTECTED_PREFIX):
            await self.app(scope, receive, send)
            return
        if not hmac.compare_digest(given_key(dict(scope.get("headers") or [])).encode("latin-1"), self.key):
            # Connection: close, because the body is never drained; the connection ends with the answer.
            response = _closing(401, "unauthorized", "missing or wrong API key (send it as X-API-Key)")
            response.headers["WWW-Authenticate"] = "Bearer"
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


class OneBodyLength:
    """ASGI middleware: a request that gives both Content-Length and Transfer-Encoding, or two Host fields, is refused (400)
    and closed.

    RFC 9112 (6.3) lets Transfer-Encoding win but calls such a message a likely request-smuggling attempt, to be handled as
    an error: a proxy in front that reads the other header would see other requests in the same bytes. RFC 9112 (3.2)
    requires a 400 for more than one Host field, which h11 let through: a proxy and this server could read different hosts."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        names = [k.lower() for k, _ in scope.get("headers") or []] if scope["type"] == "http" else []
        if b"content-length" in names and b"transfer-encoding" in names:
            await _closing(400, "bad_http_request", "a request may give Content-Length or Transfer-Encoding, not both")(scope, receive, send)
            return
        if names.count(b"host") > 1:
            await _closing(400, "bad_http_request", "a request gives one Host header field, not several")(scope, receive, send)
            return
        await self.app(scope, receive, send)


class BodyTimeout:
    """ASGI middleware: a request whose next body chunk takes longer than ``seconds`` to arrive, or whose body arrives slower
    than ``min_rate`` bytes per second once ``seconds`` have passed, is answered 408 and closed.

    Uvicorn times out idle keep-alive connections but not a client that sent its headers and then trickles
    (or never sends) the body; each such request would hold a connection, a task and a spooled upload. A limit on
    pauses alone let a client sending one byte every few seconds hold a connection for ever, so the body also has a
    deadline: ``seconds`` plus one second per ``min_rate`` bytes received (Apache mod_reqtimeout's MinRate).
    """

    def __init__(self, app, seconds: float, min_rate: float | None = None) -> None:
        self.app, self.seconds, self.min_rate = app, seconds, min_rate

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or not self.seconds:
            await self.app(scope, receive, send)
            return
        own, body_done, received = OwnAnswer(scope, receive, send), False, 0
        start = asyncio.get_running_loop().time()

        async def timed_receive():
            nonlocal body_done, received
            if body_done:  # after the body, receive() waits for a disconnect, however long the answer takes
                return await receive()
            wait, message = self.seconds, f"no request data for {self.seconds:g} s; the request was closed"
            if self.min_rate:
                left = start + self.seconds + received / self.min_rate - asyncio.get_running_loop().time()
                if left < wait:
                    wait = max(left, 0.0)
                    message = f"the request body arrived slower than {self.min_rate:g} bytes per second; the request was closed"
            try:
                msg = await asyncio.wait_for(receive(), wait)
            except TimeoutError:
                own.response = _closing(408, "request_timeout", message)
                raise BodyTimeoutError(message) from None
            received += len(msg.get("body", b""))
            body_done = msg["type"] != "http.request" or not msg.get("more_body", False)
            return msg

        try:
            await self.app(scope, timed_receive, own.send)
        except Exception:
            if own.response is None:
                raise
            await own.answer()


def _closing(status: int, code: str, message: str) -> JSONResponse:
    response = error_response(status, code, message)
    response.headers["Connection"] = "close"
    return response


class BodyTimeoutError(Exception):
    """Raised inside the app when the client stops sending its body."""
