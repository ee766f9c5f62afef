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
    # Two Host fields were answered 200 (RFC 9112 3.2: 400); one Host is fine
    status, asked = _call(keyed_app, "/healthz", [(b"host", b"a"), (b"host", b"b")], method="GET")
    assert (status, asked) == (400, 0)
    assert _call(keyed_app, "/healthz", [(b"host", b"a")], method="GET")[0] == 200
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


def test_head_works_wherever_get_does_and_the_schema_names_the_key(keyed_app, tiny_run):
    with TestClient(keyed_app) as c:
        for path in ("/v1/model", "/v1/sample.png"):
            r = c.head(path, headers={"X-API-Key": "s3cret"})  # was 405
            assert r.status_code == 200 and r.content == b"" and int(r.headers["content-length"]) > 0
            assert c.head(path).status_code == 401
        schema = c.get("/openapi.json").json()
    # /docs offers to send the key: "Try it out" on /v1/ could only get 401.
    assert schema["components"]["securitySchemes"]["ApiKey"] == {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    assert schema["paths"]["/v1/predict"]["post"]["security"] == [{"ApiKey": []}, {"Bearer": []}]
    assert "security" not in schema["paths"]["/healthz"]["get"]
    assert not any(op.get("operationId", "").endswith("_head") for ops in schema["paths"].values() for op in ops.values())
    with TestClient(create_app(tiny_run, engine="torch", api_key="")) as c:
        assert "securitySchemes" not in c.get("/openapi.json").json().get("components", {})


def test_a_key_with_surrounding_whitespace_is_the_key_and_one_that_cannot_be_sent_is_refused(tiny_run, monkeypatch):
    monkeypatch.setenv("CXRKIT_API_KEY", "s3cret\n")  # `echo s3cret > secret`: every client was locked out
    with TestClient(create_app(tiny_run, engine="torch")) as c:
        assert c.get("/v1/model", headers={"X-API-Key": "s3cret"}).status_code == 200
        assert c.get("/v1/model", headers={"X-API-Key": "other"}).status_code == 401
    for key, words in (("  ", "only whitespace"), ("a\nb", "control character")):
        with pytest.raises(ValueError, match=words):
            create_app(tiny_run, engine="torch", api_key=key)


@pytest.fixture
def banner(monkeypatch, capsys):
    """Run `cxrkit serve` up to the point where it would serve; returns (exit status, stdout, stderr)."""
    import cxrkit.serve.server as server

    monkeypatch.setattr(server, "serve", lambda app, host, port, limits, sock=None: sock.close())

    def run(*args: str) -> tuple[int, str, str]:
        rc = main(["serve", *args])
        out = capsys.readouterr()
        return rc, out.out, out.err

    return run


def test_the_banner_says_what_the_server_enforces_and_where(banner, tiny_run, monkeypatch):
    import socket

    monkeypatch.setenv("CXRKIT_API_KEY", "s3cret")
    rc, out, _ = banner(str(tiny_run), "--api-key", "", "--port", "18901")
    assert rc == 0 and "no API key" in out and "API key required" not in out  # '' turns the variable's key off; it said "required"
    rc, out, err = banner(str(tiny_run), "--port", "18902")
    assert rc == 0 and "API key required" in out and "warning" not in err
    monkeypatch.delenv("CXRKIT_API_KEY")
    rc, out, err = banner(str(tiny_run), "--host", "0.0.0.0", "--port", "18903")
    assert rc == 0 and "warning: listening on 0.0.0.0" in err and "no API key" in err
    rc, out, err = banner(str(tiny_run), "--host", "", "--port", "18904")  # --host "$HOST" with HOST unset: every interface
    assert rc == 2 and "--host is empty" in err and "serving" not in out
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        rc, out, err = banner(str(tiny_run), "--port", str(taken.getsockname()[1]))
    assert rc == 2 and "cannot listen on http://127.0.0.1:" in err and "serving" not in out  # it said "serving" and then failed
    if socket.has_ipv6:
        try:
            with socket.socket(socket.AF_INET6) as s:
                s.bind(("::1", 0))
        except OSError:
            return
        rc, out, _ = banner(str(tiny_run), "--host", "::1", "--port", "18905")
        assert rc == 0 and "on http://[::1]:18905/" in out
