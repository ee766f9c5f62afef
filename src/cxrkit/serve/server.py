"""Run the service under uvicorn with limits on slow and excess clients.

Uvicorn times out idle keep-alive connections, but a client that opens a connection and sends its
headers slowly (or never) is kept forever, and so is one that stops sending its body: each holds a
file descriptor, and enough of them stop the server from accepting ``/healthz``. Here:

- headers must be complete within ``header_timeout`` seconds of the connection opening (or of the previous
  response), else the connection is closed: :func:`guarded_h11`, uvicorn's h11 protocol with that timer;
- the body may pause at most ``body_timeout`` seconds between chunks, and must arrive within ``body_timeout`` seconds
  plus one second per ``body_min_rate`` bytes received, else 408 and close (:class:`cxrkit.serve.guard.BodyTimeout`;
  the rule of Apache's mod_reqtimeout: a client trickling a byte every few seconds held its connection for ever);
- past ``max_connections`` open connections (uvicorn's ``limit_concurrency`` count) requests are answered 503;
- idle keep-alive connections close after ``keep_alive`` seconds (uvicorn's ``timeout_keep_alive``).

The 503 and the 400 for a request that is not HTTP are the API's JSON error (``{"error": {...}}``), like every
other refusal; uvicorn's own are plain text, which a client parsing the API's errors cannot read.
"""

from __future__ import annotations

import resource
import socket
from dataclasses import dataclass

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from cxrkit.serve.guard import BodyTimeout, error_response


@dataclass(frozen=True)
class ConnectionLimits:
    """Timeouts (seconds) and the connection cap of the HTTP server."""

    header_timeout: float = 10.0
    body_timeout: float = 30.0
    keep_alive: float = 5.0
    max_connections: int = 4096
    body_min_rate: float = 500.0  # bytes per second, on average, once the first body_timeout seconds have passed

    def __post_init__(self) -> None:
        for name in ("header_timeout", "body_timeout", "keep_alive"):
            value = getattr(self, name)
            if not 0.1 <= value <= 3600:
                raise ValueError(f"{name} must be from 0.1 to 3600 seconds, got {value!r}")
        if not 1 <= self.body_min_rate <= 1e9:
            raise ValueError(f"body_min_rate must be from 1 to 1e9 bytes per second, got {self.body_min_rate!r}")
        if not 1 <= self.max_connections <= 1_000_000:
            raise ValueError(f"max_connections must be from 1 to 1,000,000, got {self.max_connections!r}")


def guarded_h11(header_timeout: float) -> type[H11Protocol]:
    """Uvicorn's h11 protocol, closing a connection whose request headers are not complete ``header_timeout`` seconds after it opened or after its last response."""

    class HeaderTimeoutH11(H11Protocol):
        _header_timer = None

        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            # The cap is checked here instead of by uvicorn, whose 503 is plain text: same count, JSON answer.
            self._cap, self.limit_concurrency = self.limit_concurrency, None
            if self._cap is not None:
                self.app = self._capped(self.app)

        def _capped(self, app):
            async def capped(scope, receive, send) -> None:
                # Both counts include this request (its connection, its task): N allowed means the (N+1)th is refused. uvicorn's
                # own test (>=) refused the Nth, so --max-connections 1 refused every request.
                if scope["type"] == "http" and (len(self.connections) > self._cap or len(self.tasks) > self._cap):
                    self.logger.warning("Exceeded concurrency limit.")
                    response = error_response(503, "server_busy", f"the server has reached its limit of {self._cap} open connections; "
                                                                  "retry in a moment")
                    response.headers["Connection"] = "close"
                    response.headers["Retry-After"] = "1"
                    await response(scope, receive, send)
                    return
                await app(scope, receive, send)

            return capped

        def send_400_response(self, msg: str) -> None:
            # Below ASGI here, so the API's error response is written out by hand: its body and headers, plus close.
            response = error_response(400, "bad_http_request", "not a valid HTTP/1.1 request")
            body, headers = response.body, [*response.raw_headers, (b"connection", b"close")]
            for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"), h11.Data(data=body), h11.EndOfMessage()):
                self.transport.write(self.conn.send(event))
            self.transport.close()

        def _arm(self) -> None:
            self._disarm()
            self._header_timer = self.loop.call_later(header_timeout, self._headers_too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def handle_events(self) -> None:
            super().handle_events()
            if self.conn.their_state is not h11.IDLE:  # a request's headers have arrived
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
                self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HeaderTimeoutH11


def raise_file_limit(needed: int) -> int:
    """Raise this process's open-file limit towards ``needed`` (within the hard limit); returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        soft = want
    return soft


def uvicorn_config(app, host: str, port: int, limits: ConnectionLimits | None = None, log_level: str = "warning"):
    """The ``uvicorn.Config`` that serves ``app`` with the timeouts and the connection cap of ``limits``."""
    import uvicorn

    limits = limits or ConnectionLimits()
    return uvicorn.Config(BodyTimeout(app, limits.body_timeout, limits.body_min_rate), host=host, port=port, log_level=log_level,
                          http=guarded_h11(limits.header_timeout), timeout_keep_alive=limits.keep_alive,
                          limit_concurrency=limits.max_connections)


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host``:``port``, or a ValueError naming the address and why it cannot be used.

    Bound before the server starts so that the command says "serving" only once it is, and refuses an empty host, which
    the operating system reads as every interface (``--host "$HOST"`` with HOST unset opened the API to the network)."""
    if not host.strip():
        raise ValueError("--host is empty; give an address: 127.0.0.1 for this machine only, 0.0.0.0 for every interface")
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        # IPv4 first for a name ("localhost" may list ::1 first): clients reach 127.0.0.1, as uvicorn's own bind allowed
        family, kind, proto, _, address = sorted(found, key=lambda a: a[0] != socket.AF_INET)[0]
    except (socket.gaierror, UnicodeError) as exc:
        raise ValueError(f"--host {host}: not an address of this machine ({getattr(exc, 'strerror', None) or exc})") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: a restart need not wait for TIME_WAIT
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ValueError(f"cannot listen on {url(host, port)}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def url(host: str, port: int) -> str:
    """The address as a URL (an IPv6 address in brackets: http://[::1]:8000/)."""
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable only from this machine (127.0.0.0/8, ::1, localhost)."""
    import ipaddress

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host.lower() in ("localhost", "ip6-localhost")


def serve(app, host: str, port: int, limits: ConnectionLimits | None = None, log_level: str = "warning",
          sock: socket.socket | None = None) -> None:
    """Serve ``app`` until interrupted, on ``sock`` when given (from :func:`listen`), else on a socket bound here."""
    import uvicorn

    limits = limits or ConnectionLimits()
    soft = raise_file_limit(limits.max_connections + 256)  # room for the cap plus the model, logs and spooled uploads
    if soft < limits.max_connections + 64:
        raise ValueError(f"--max-connections {limits.max_connections} needs more open files than this process may have ({soft}); "
                         "lower it or raise `ulimit -n`")
    uvicorn.Server(uvicorn_config(app, host, port, limits, log_level)).run(sockets=[sock or listen(host, port)])
