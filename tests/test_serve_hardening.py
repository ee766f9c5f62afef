"""The service under hostile traffic: authentication before the body, bounded memory, slow clients, connection caps."""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from cxrkit.cli import main  # noqa: E402
from cxrkit.serve.app import create_app  # noqa: E402
from cxrkit.serve.guard import read_api_key_file  # noqa: E402


@pytest.fixture(scope="module")
def keyed_app(tiny_run):
    return create_app(tiny_run, engine="torch", api_key="s3cret")


def _call(app, path: str, headers: list[tuple[bytes, bytes]], method: str = "POST") -> tuple[int, int]:
    """Drive the ASGI app with a 10 MB body offered in 1 MB chunks; returns (status, chunks the app asked for)."""
    asked, sent = 0, []

    async def receive():
        nonlocal asked
        asked += 1
        return {"type": "http.request", "body": b"x" * 1_000_000, "more_body": asked < 10}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http", "path": path,
             "raw_path": path.encode(), "query_string": b"", "root_path": "", "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
             "headers": [(b"content-type", b"multipart/form-data; boundary=xyz"), (b"content-length", b"10000000"), *headers]}
    asyncio.run(app(scope, receive, send))
    return next(m["status"] for m in sent if m["type"] == "http.response.start"), asked


def test_the_key_is_checked_before_the_body_is_read(keyed_app):
    status, asked = _call(keyed_app, "/v1/predict", [])
    assert (status, asked) == (401, 0)
    status, asked = _call(keyed_app, "/v1/predict", [(b"x-api-key", b"wrong")])
    assert (status, asked) == (401, 0)
    status, asked = _call(keyed_app, "/v1/predict", [(b"authorization", b"Bearer s3cret")])
    assert status == 400 and asked >= 1  # the right key: the (junk) body is read and refused as multipart


def test_both_body_lengths_are_refused_and_a_trailing_slash_is_not_redirected(keyed_app):
    # Content-Length with Transfer-Encoding: chunked was accepted (request smuggling behind a proxy that reads the other one).
    status, asked = _call(keyed_app, "/v1/predict", [(b"transfer-encoding", b"chunked"), (b"x-api-key", b"s3cret")])
    assert (status, asked) == (400, 0)
    with TestClient(keyed_app) as c:
        # /v1/predict/ was a 307 to a Location built from the request's Host header
        r = c.post("/v1/predict/", headers={"X-API-Key": "s3cret", "Host": "evil.example"}, follow_redirects=False)
        assert r.status_code == 404 and "location" not in r.headers and r.json()["error"]["code"] == "http_error"


def test_every_v1_route_needs_the_key(keyed_app):
    with TestClient(keyed_app) as c:
        for path in ("/v1/model", "/v1/sample.png"):
            r = c.get(path)
            assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
            assert c.get(path, headers={"X-API-Key": "s3cret"}).status_code == 200
        assert c.get("/healthz").status_code == 200 and c.get("/").status_code == 200
        assert "headers: headers()" in c.get("/static/app.js").text.split("/v1/sample.png")[1][:40]  # the page sends the key


def test_api_key_file(tmp_path, tiny_run, capsys):
    f = tmp_path / "key"
    f.write_text("  k3y \nsecond line ignored\n")
    assert read_api_key_file(f) == "k3y"
    (tmp_path / "empty").write_text("\n")
    for bad, words in ((tmp_path / "empty", "empty"), (tmp_path / "missing", "cannot read")):
        assert main(["serve", str(tiny_run), "--api-key-file", str(bad)]) == 2
        assert words in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # one or the other, not both
        main(["serve", str(tiny_run), "--api-key", "a", "--api-key-file", str(f)])
    assert exc.value.code == 2
