"""Slow and excess clients against a real uvicorn server: header and body timeouts, the connection cap with 503."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")

from cxrkit.serve.app import create_app  # noqa: E402
from cxrkit.serve.server import ConnectionLimits, uvicorn_config  # noqa: E402


@pytest.fixture(scope="module")
def server(tiny_run):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    limits = ConnectionLimits(header_timeout=2, body_timeout=1, max_connections=4)
    srv = uvicorn.Server(uvicorn_config(create_app(tiny_run, engine="torch", api_key=""), "127.0.0.1", port, limits))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.started
    yield port
    srv.should_exit = True
    thread.join(10)


def _get(port: int, path: str = "/healthz") -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        answer = b""
        while chunk := s.recv(65536):  # head and body may come in separate segments; the server then closes
            answer += chunk
        return answer.decode("latin-1")


def _closed_by_server(s: socket.socket, within: float) -> bool:
    s.settimeout(within)
    try:
        return s.recv(1024) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_slow_headers_are_cut_and_the_cap_answers_503(server):
    slow = [socket.create_connection(("127.0.0.1", server), timeout=10) for _ in range(3)]
    try:
        for s in slow:
            s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\n")  # headers never finished
        time.sleep(0.2)
        assert _get(server).startswith("HTTP/1.1 200")  # the 4th of 4 allowed is served (it was refused: --max-connections 1 served none)
        slow.append(socket.create_connection(("127.0.0.1", server), timeout=10))
        slow[3].sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\n")
        time.sleep(0.2)
        busy = _get(server)  # 5 open connections: past the cap
        head, _, body = busy.partition("\r\n\r\n")
        assert head.startswith("HTTP/1.1 503") and "content-type: application/json" in head.lower() and "retry-after: 1" in head.lower()
        assert json.loads(body)["error"]["code"] == "server_busy"  # the API's error, not uvicorn's plain "Service Unavailable"
        t0 = time.monotonic()
        assert all(_closed_by_server(s, 5) for s in slow)
        assert time.monotonic() - t0 < 4
        assert _get(server).startswith("HTTP/1.1 200")
    finally:
        for s in slow:
            s.close()


def test_a_stalled_body_gets_408(server):
    with socket.create_connection(("127.0.0.1", server), timeout=10) as s:
        s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                  b"Content-Length: 100000\r\n\r\n--b\r\n")
        t0 = time.monotonic()
        answer = b""
        while chunk := s.recv(65536):  # the answer may come in several segments; the server then closes
            answer += chunk
        assert time.monotonic() - t0 < 5
        text = answer.decode("latin-1")
        assert text.startswith("HTTP/1.1 408") and "request_timeout" in text


def test_a_trickled_body_gets_408_once_it_falls_below_the_minimum_rate(server):
    # A byte every 0.3 s never pauses for the 1 s body timeout: only the rate (500 bytes/s after that second) ends it.
    with socket.create_connection(("127.0.0.1", server), timeout=10) as s:
        s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                  b"Content-Length: 100000\r\n\r\n--b\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.png\"\r\n\r\n")
        t0, answer = time.monotonic(), b""
        s.settimeout(0.3)
        while time.monotonic() - t0 < 8:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                s.sendall(b"x")  # inside the file part: the multipart parser takes it
                continue
            if not chunk:
                break
            answer += chunk
        text = answer.decode("latin-1")
        assert text.startswith("HTTP/1.1 408") and "slower than 500 bytes per second" in text
        assert 0.9 < time.monotonic() - t0 < 4


@pytest.mark.parametrize("request_bytes", [b"NOT HTTP AT ALL\r\n\r\n", b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n"])
def test_a_request_that_is_not_http_gets_a_json_400(server, request_bytes):
    with socket.create_connection(("127.0.0.1", server), timeout=10) as s:
        s.sendall(request_bytes)
        answer = b""
        while chunk := s.recv(65536):  # then the server closes
            answer += chunk
    head, _, body = answer.decode("latin-1").partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 400") and "content-type: application/json" in head.lower()
    assert json.loads(body) == {"error": {"code": "bad_http_request", "message": "not a valid HTTP/1.1 request", "file": None}}
    assert _get(server).startswith("HTTP/1.1 200")
