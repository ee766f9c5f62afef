"""The HTTP API through FastAPI's TestClient: valid uploads, every class of bad input as a 4xx JSON error, API key, fuzzing."""

import base64
import io

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from cxrkit.serve.app import Limits, create_app  # noqa: E402

from .test_dicom import SR_STORAGE, ramp, write_dicom  # noqa: E402


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def client(tiny_run):
    limits = Limits(max_file_bytes=200_000, max_files=4, max_pixels=1_000_000)
    with TestClient(create_app(tiny_run, engine="torch", api_key="", limits=limits)) as c:
        yield c


@pytest.fixture(scope="module")
def sample_png(binary_data) -> bytes:
    return sorted((binary_data / "test" / "tb").glob("*.png"))[0].read_bytes()


def post(client, *files, **params):
    return client.post("/v1/predict", params=params, files=[("files", (name, data, "application/octet-stream")) for name, data in files])


def test_healthz_and_model_card(client, tiny_run):
    assert client.get("/healthz").json()["status"] == "ok"
    card = client.get("/v1/model").json()
    assert card["model"]["classes"] == ["healthy", "tb"] and len(card["model"]["version"]) == 12
    assert card["decision"]["rule"] == "youden" and card["decision"]["chosen_on"] == "val" and card["decision"]["calibrated"] is False
    val = card["metrics"]["val"]
    assert val["n"] == 14 and val["roc_auc"]["ci95"][0] <= val["roc_auc"]["value"] <= val["roc_auc"]["ci95"][1]
    assert any("not a certified medical device" in t for t in card["limitations"])
    assert any("No test-split evaluation" in t for t in card["limitations"])  # only validation was run
    assert card["training_data"]["counts"]["train"] == {"healthy": 38, "tb": 38}


def test_predict_png_matches_the_python_api(client, tiny_run, sample_png):
    from cxrkit.run import Run

    r = post(client, ("x.png", sample_png), preview="true")
    assert r.status_code == 200
    res = r.json()["results"][0]
    run = Run.load(tiny_run, engine="torch")
    expected = run.predict_arrays(run.preprocessing.load(sample_png)[None])[0]
    assert res["probabilities"]["tb"] == pytest.approx(expected[1], abs=1e-6)
    assert res["decision"]["label"] == ("tb" if expected[1] >= run.threshold else "healthy")
    assert res["decision"]["threshold"] == run.threshold and res["decision"]["rule"] == "youden"
    assert res["format"] == "png" and res["calibrated"] is False and res["ood_warning"] is False
    preview = Image.open(io.BytesIO(base64.b64decode(res["image_png"])))
    assert preview.size == (32, 32)
    assert r.json()["model"]["id"] == "tiny"


def test_several_files_and_dicom_by_content(client, tmp_path, sample_png):
    dcm = write_dicom(tmp_path / "x.dcm", ramp(64)).read_bytes()
    r = post(client, ("a.png", sample_png), ("scan.bin", dcm), ("b.png", sample_png))
    assert r.status_code == 200
    res = r.json()["results"]
    assert [x["file"] for x in res] == ["a.png", "scan.bin", "b.png"] and res[1]["format"] == "dicom"
    # the same image twice in one batch; equal to the last bit only on some thread counts (OMP_NUM_THREADS=1: 3e-8 apart)
    assert res[0]["probabilities"] == pytest.approx(res[2]["probabilities"], abs=1e-6)
    assert all(abs(sum(x["probabilities"].values()) - 1) < 1e-5 for x in res)


def test_out_of_distribution_image_is_flagged(client):
    r = post(client, ("white.png", png_bytes((240 + np.tile(np.arange(16, dtype=np.uint8).repeat(4), (64, 1))).astype(np.uint8))))
    res = r.json()["results"][0]
    assert r.status_code == 200 and res["ood_warning"] is True
    assert any("mean brightness" in f for f in res["ood_findings"])


@pytest.mark.parametrize("name,data,status,code", [
    ("empty.png", b"", 400, "empty_file"),
    ("notes.png", b"this is a text file, not an X-ray\n" * 10, 415, "unsupported_image"),
    ("truncated.png", None, 422, "undecodable_image"),
    ("bomb.png", "bomb", 413, "too_many_pixels"),
    ("huge.png", b"\x89PNG" + b"\0" * 200_001, 413, "file_too_large"),
    ("report.dcm", "sr", 415, "unsupported_image"),
])
def test_bad_inputs_are_4xx_json(client, sample_png, tmp_path, name, data, status, code):
    if data is None:
        data = sample_png[: len(sample_png) // 2]
    elif data == "bomb":
        data = png_bytes(np.zeros((1100, 1000), np.uint8))  # 1.1 MP, a few kB compressed: over the 1 MP limit
    elif data == "sr":
        data = write_dicom(tmp_path / "sr.dcm", None, sop_class=SR_STORAGE).read_bytes()
    r = post(client, ("good.png", sample_png), (name, data))
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code and err["file"] == name and err["message"]


def test_request_shape_errors(client, sample_png):
    assert client.post("/v1/predict", data={"x": "1"}).status_code == 415  # a url-encoded form cannot carry files
    r = client.post("/v1/predict", content=b"garbage", headers={"content-type": "multipart/form-data; boundary=zz"})
    assert r.status_code == 400 and "error" in r.json()
    r = post(client, *[(f"{i}.png", sample_png) for i in range(5)])
    assert r.status_code == 400 and r.json()["error"]["code"] == "too_many_files"
    r = client.post("/v1/predict", content=b"x" * 10, headers={"content-length": str(10**9), "content-type": "multipart/form-data; boundary=zz"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

    def streamed(parts: int, size: int):  # chunked upload with no Content-Length
        for k in range(parts):
            yield f'--zz\r\nContent-Disposition: form-data; name="files"; filename="{k}.png"\r\n\r\n'.encode()
            for _ in range(size // 10_000):
                yield b"\0" * 10_000
            yield b"\r\n"
        yield b"--zz--\r\n"

    # five files under the file limit: cut off once past the request's (4 x 200 kB + 64 kB)
    r = client.post("/v1/predict", content=streamed(5, 190_000), headers={"content-type": "multipart/form-data; boundary=zz"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    # one file far over the file limit: stopped as it streams (it was spooled to disk whole, up to the request limit, first)
    r = client.post("/v1/predict", content=streamed(1, 800_000), headers={"content-type": "multipart/form-data; boundary=zz"})
    assert r.status_code == 413 and r.json()["error"] == {"code": "file_too_large", "file": None,
                                                          "message": "a file is over the limit of 200,000 bytes; the upload was stopped there"}
    assert client.get("/nowhere").status_code == 404
    assert client.get("/static/../app.py").status_code == 404


def test_api_key(tiny_run, sample_png, monkeypatch):
    monkeypatch.setenv("CXRKIT_API_KEY", "s3cret")
    with TestClient(create_app(tiny_run, engine="torch")) as c:
        assert c.get("/healthz").status_code == 200  # liveness stays open for load balancers
        assert post(c, ("a.png", sample_png)).status_code == 401
        assert c.get("/v1/model", headers={"X-API-Key": "wrong"}).json()["error"]["code"] == "unauthorized"
        ok = c.post("/v1/predict", files=[("files", ("a.png", sample_png))], headers={"X-API-Key": "s3cret"})
        assert ok.status_code == 200
        assert c.get("/v1/model", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert "access-control-allow-origin" not in c.get("/healthz", headers={"Origin": "https://evil.example"}).headers


def test_page_and_sample_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and '<label for="files">' in page.text and "https://" not in page.text
    assert "fetch(" in client.get("/static/app.js").text
    sample = client.get("/v1/sample.png")
    assert sample.headers["content-type"] == "image/png" and Image.open(io.BytesIO(sample.content)).size == (256, 256)
    schema = client.get("/openapi.json").json()
    assert "/v1/predict" in schema["paths"] and set(schema["paths"]["/healthz"]) == {"get"}
    ids = [op["operationId"] for ops in schema["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids))  # code generators refuse a schema whose operations share an id


def test_explain_adds_an_overlay(client, sample_png):
    r = post(client, ("a.png", sample_png), explain="true")
    assert r.status_code == 200
    overlay = Image.open(io.BytesIO(base64.b64decode(r.json()["results"][0]["overlay_png"])))
    assert overlay.mode == "RGB" and overlay.size == (32, 32)


def test_fuzzed_uploads_never_give_a_server_error(client, sample_png):
    hypothesis = pytest.importorskip("hypothesis")
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    dcm_head = b"\0" * 128 + b"DICM"
    payload = st.one_of(
        st.binary(max_size=400),
        st.builds(lambda cut: sample_png[:cut], st.integers(0, len(sample_png))),  # truncations
        st.builds(lambda i, b: sample_png[:i] + bytes([b]) + sample_png[i + 1:], st.integers(0, len(sample_png) - 1), st.integers(0, 255)),
        st.builds(lambda tail: dcm_head + tail, st.binary(max_size=300)),  # DICOM magic, garbage after
    )

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(files=st.lists(st.tuples(st.text(max_size=20), payload), min_size=1, max_size=3))
    def check(files):
        r = client.post("/v1/predict", files=[("files", (name or "f", data, "application/octet-stream")) for name, data in files])
        assert r.status_code < 500, r.text
        assert ("results" in r.json()) == (r.status_code == 200)

    assert hypothesis is not None
    check()


def _multipart(*parts: tuple[str, str, bytes], boundary: bytes = b"zz") -> bytes:
    """A multipart body by hand (field, filename, data) without its closing boundary, to cut or extend it as a broken client would."""
    return b"".join(b"--" + boundary + f'\r\nContent-Disposition: form-data; name="{field}"; filename="{name}"\r\n\r\n'.encode() + data + b"\r\n"
                    for field, name, data in parts)


def _post_raw(client, body, boundary: str = "zz"):
    return client.post("/v1/predict", content=body, headers={"content-type": f"multipart/form-data; boundary={boundary}"})


def test_a_cut_off_upload_is_refused_not_answered_for_its_first_file(client, sample_png):
    two = _multipart(("files", "one.png", sample_png), ("files", "two.png", sample_png))
    for body in (two, two[:-40], _multipart(("files", "one.png", sample_png)) + b'--zz\r\nContent-Disposition: form-data; name="files"'):
        r = _post_raw(client, body)  # before: 200 with one.png's result alone, two.png dropped
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["code"] == "malformed_multipart" and "ends before its closing boundary --zz--" in err["message"]
    r = _post_raw(client, _multipart(("files", "one.png", sample_png)) + b"--zz--\r\n" + _multipart(("files", "two.png", sample_png)) + b"--zz--\r\n")
    assert r.status_code == 400 and "a part follows the closing boundary --zz--" in r.json()["error"]["message"]


def test_the_closing_boundary_is_found_across_chunks(client, sample_png):
    body = _multipart(("files", "a.png", sample_png), boundary=b"q-7") + b"--q-7--\r\n"

    def trickle():  # the closing boundary split over several chunks
        for i in range(0, len(body), 5):
            yield body[i:i + 5]

    r = _post_raw(client, trickle(), boundary='"q-7"')
    assert r.status_code == 200 and [x["file"] for x in r.json()["results"]] == ["a.png"]
    assert _post_raw(client, body + b"\r\nclosing words\r\n", boundary="q-7").status_code == 200  # an epilogue without a part is allowed


def test_an_image_under_another_field_name_is_refused(client, sample_png):
    r = client.post("/v1/predict", files=[("files", ("a.png", sample_png)), ("file", ("b.png", sample_png))])
    assert r.status_code == 400, r.text  # before: 200 with a.png's result alone
    err = r.json()["error"]
    assert err["code"] == "unexpected_field" and "'file'" in err["message"] and "'files'" in err["message"]
    r = client.post("/v1/predict", files=[("files", ("a.png", sample_png))], data={"explain": "true"})
    assert r.status_code == 400 and "explain and preview are query parameters" in r.json()["error"]["message"]


def test_method_not_allowed_names_the_allowed_methods(client):
    r = client.put("/v1/predict")
    assert r.status_code == 405 and r.headers["allow"] == "POST" and r.json()["error"]["code"] == "http_error"


def test_validation_errors_say_which_part_of_the_request_is_wrong(client, sample_png):
    r = client.post("/v1/predict?explain=maybe", files=[("files", ("a.png", sample_png))])
    assert r.status_code == 422  # before: "expected multipart/form-data with one or more 'files' (query.explain: ...)"
    assert r.json()["error"]["message"].startswith("invalid query parameter (explain='maybe': Input should be a valid boolean")
    r = client.post("/v1/predict", data={"files": "not a file"}, files=[("x", ("", b""))])
    assert r.status_code == 422 and "a 'files' part is not a file" in r.json()["error"]["message"], r.text
    # RFC 5987's filename*= alone (some HTTP libraries send it for non-ASCII names) is dropped by the form parser
    body = (b'--b\r\nContent-Disposition: form-data; name="files"; filename*=UTF-8\'\'r%C3%B6ntgen.png\r\n'
            b"Content-Type: image/png\r\n\r\n" + sample_png + b"\r\n--b--\r\n")
    r = client.post("/v1/predict", content=body, headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert r.status_code == 422 and 'filename*= alone is not read, send filename="..."' in r.json()["error"]["message"], r.text
    r = client.post("/v1/predict", json={"files": "aGVsbG8="})  # was 422 "body.files: Field required"
    assert r.status_code == 415 and r.json()["error"]["message"] == ("send multipart/form-data with one or more 'files' parts "
                                                                     "(curl -F files=@image.png), not application/json")
    r = client.post("/v1/predict", content=sample_png, headers={"Content-Type": "image/png"})
    assert r.status_code == 415 and r.json()["error"]["message"].endswith("not image/png")
    r = client.post("/v1/predict", data={"other": "x"}, files=[("other_file", ("a.png", sample_png))])
    assert r.status_code in (400, 422)  # multipart without 'files': still about the form, not the media type
    import gzip

    body = _multipart(("files", "a.png", sample_png)) + b"--zz--\r\n"
    r = client.post("/v1/predict", content=gzip.compress(body), headers={"Content-Type": "multipart/form-data; boundary=zz",
                                                                          "Content-Encoding": "gzip"})
    assert r.status_code == 415 and "Content-Encoding: gzip" in r.json()["error"]["message"]  # was "Invalid multipart data."
    many = _multipart(*[("files", f"{i}.png", b"x") for i in range(1001)]) + b"--zz--\r\n"
    r = client.post("/v1/predict", content=many, headers={"Content-Type": "multipart/form-data; boundary=zz"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "too_many_files" and "more than 1000 files; at most " in r.json()["error"]["message"]


def test_unknown_or_repeated_query_parameters_head_probes_and_cors_refusals(client, tiny_run, sample_png):
    # ?explian=true was ignored, and the answer came back without heat maps and without a word.
    r = client.post("/v1/predict?explian=true", files=[("files", ("a.png", sample_png))])
    assert r.status_code == 422 and r.json()["error"]["message"] == "unknown query parameter 'explian'; known: explain, preview (true or false)"
    r = client.post("/v1/predict?explain=true&explain=false", files=[("files", ("a.png", sample_png))])
    assert r.status_code == 422 and "'explain' given more than once" in r.json()["error"]["message"]
    assert client.post("/v1/predict?preview=false", files=[("files", ("a.png", sample_png))]).status_code == 200
    for path in ("/healthz", "/"):  # load balancers probe with HEAD: it was a 405
        r = client.head(path)
        assert r.status_code == 200 and r.content == b""
    from fastapi.testclient import TestClient

    from cxrkit.serve.app import create_app

    with TestClient(create_app(tiny_run, engine="torch", api_key="", cors_origins=["http://good.example"])) as c:
        ask = {"Access-Control-Request-Method": "POST"}
        ok = c.options("/v1/predict", headers={"Origin": "http://good.example", **ask})
        assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "http://good.example"
        bad = c.options("/v1/predict", headers={"Origin": "http://evil.example", **ask})
        assert bad.status_code == 400 and bad.json()["error"] == {"code": "cors_refused", "message": "Disallowed CORS origin", "file": None}


def test_probabilities_next_to_the_threshold_compare_as_the_decision_does(client, sample_png, monkeypatch):
    run = client.app.state.service.run
    t = np.float32(run.threshold)
    for p in (np.nextafter(t, np.float32(0)), t, np.nextafter(t, np.float32(1))):  # just below, at and just above the threshold
        monkeypatch.setattr(run, "predict_arrays", lambda images, p=p: np.array([[1 - p, p]] * len(images), dtype=np.float32))
        res = post(client, ("a.png", sample_png)).json()["results"][0]
        shown, threshold = res["probabilities"]["tb"], res["decision"]["threshold"]
        assert (shown >= threshold) == (res["decision"]["label"] == "tb"), (shown, threshold, res["decision"]["label"])  # before: rounded


def test_a_decoder_error_on_a_damaged_file_is_a_422_not_a_500(client, sample_png, tmp_path):
    dcm = write_dicom(tmp_path / "x.dcm", ramp(64)).read_bytes()
    at = dcm.find(b"\x02\x00\x10\x00UI")  # the transfer syntax's value representation, damaged: pydicom raises NotImplementedError
    r = post(client, ("good.png", sample_png), ("bad.dcm", dcm[:at + 4] + b"ZZ" + dcm[at + 6:]))
    assert r.status_code == 422, r.text  # before: 500 internal_error
    err = r.json()["error"]
    assert err["code"] == "undecodable_image" and err["file"] == "bad.dcm" and "Unknown Value Representation 'ZZ'" in err["message"]


def test_the_page_styles_refer_and_findings_apart_from_negatives_and_its_csv_quotes_formulas():
    """app.js's decision style and CSV cells, run in Node (skipped without it): "refer" and a multi-label run's findings were
    shown in the green of a negative call, and a file named =HYPERLINK(...) ran as a formula in the downloaded CSV."""
    import json
    import shutil
    import subprocess
    from pathlib import Path

    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    js = (Path(__import__("cxrkit").__file__).parent / "serve" / "static" / "app.js").read_text()

    def function(name: str) -> str:
        start = js.index(f"function {name}(")
        return js[start : js.index("\n}\n", start) + 2]

    cases = {
        "refer": ["decisionStyle", {"label": "refer", "rule": "youden"}, "tb"],
        "tb": ["decisionStyle", {"label": "tb", "rule": "youden"}, "tb"],
        "healthy": ["decisionStyle", {"label": "healthy", "rule": "youden"}, "tb"],
        "finding": ["decisionStyle", {"label": "Effusion", "rule": "per-finding thresholds"}, None],
        "no finding": ["decisionStyle", {"label": "", "rule": "per-finding thresholds"}, None],
        "multiclass": ["decisionStyle", {"label": "covid", "rule": "most probable class"}, None],
    }
    script = function("decisionStyle") + function("csvCell") + f"""
const cases = {json.dumps(cases)};
const out = {{}};
for (const [k, [f, d, p]] of Object.entries(cases)) out[k] = decisionStyle(d, p);
out.formula = csvCell('=HYPERLINK("http://x","y").png');
out.plain = csvCell("a.png");
out.number = csvCell(0.25);
console.log(JSON.stringify(out));
"""
    got = json.loads(subprocess.run([node, "-e", script], capture_output=True, text=True, check=True).stdout)
    assert {k: got[k] for k in cases} == {"refer": "refer", "tb": "positive", "healthy": "negative", "finding": "positive",
                                          "no finding": "negative", "multiclass": "neutral"}
    assert got["formula"] == '"\'=HYPERLINK(""http://x"",""y"").png"' and got["plain"] == "a.png" and got["number"] == "0.25"


@pytest.mark.parametrize("origin, words", [
    ("http://ok.example/", "not an origin as browsers send it"),  # a trailing slash never matches a browser's Origin header
    ("ok.example", "not an origin as browsers send it"),
    ("null", "any sandboxed iframe or file:// page"),
])
def test_a_cors_origin_that_can_never_match_or_matches_any_sandbox_is_refused(origin, words, tiny_run, capsys):
    from cxrkit.cli import main
    from cxrkit.serve.app import check_cors_origins

    assert main(["serve", str(tiny_run), "--cors-origin", origin]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --cors-origin") and words in err and "\n" not in err.strip()
    assert check_cors_origins(["https://viewer.example.org", "http://localhost:8080", "http://[::1]:3000", "*"])


def test_a_part_header_too_long_to_parse_is_said_in_words(client, sample_png):
    r = client.post("/v1/predict", files={"files": ("a" * 9000 + ".png", sample_png, "image/png")})
    # was 400 {"code": "http_error", "message": "Invalid multipart data."}
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_multipart" and "over 8 KB" in r.json()["error"]["message"]


def test_heat_maps_are_drawn_outside_the_prediction_lock(client, sample_png, monkeypatch):
    import cxrkit.explain.cam as cam

    service = client.app.state.service
    held, real = [], cam.heatmaps
    monkeypatch.setattr(cam, "heatmaps", lambda *a, **k: held.append(service.lock.locked()) or real(*a, **k))
    r = post(client, ("a.png", sample_png), explain="true")
    # 16 occlusion maps inside the lock held every plain request for 4 s
    assert r.status_code == 200 and held == [False] and r.json()["results"][0]["overlay_method"] == "occlusion"


def test_bodies_held_at_once_across_requests_are_bounded_and_released(tiny_run, sample_png):
    # 50 clients sending 16 files of 50 MB each had ~40 GB spooled at once
    limits = Limits(max_file_bytes=200_000, max_files=4, max_pixels=1_000_000, max_inflight_bytes=len(sample_png) * 3)
    with TestClient(create_app(tiny_run, engine="torch", api_key="", limits=limits)) as c:
        r = post(c, *[(f"{i}.png", sample_png) for i in range(4)])  # one request over the whole budget: busy, to retry
        assert r.status_code == 503 and r.json()["error"]["code"] == "busy" and r.headers["retry-after"] == "5"
        for _ in range(3):  # what a request held is released with its answer
            assert post(c, ("a.png", sample_png)).status_code == 200
    with pytest.raises(ValueError, match="max_inflight_bytes must be"):
        Limits(max_inflight_bytes=0)
