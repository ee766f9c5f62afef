"""The web page in a real browser: Playwright drives Debian's headless Chromium against a live uvicorn server."""

import importlib.util
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").is_file() else None)

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("playwright") is None, reason="playwright is not installed (pip install playwright)"),
    pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)"),
]



@pytest.fixture
def server(tiny_run):
    import uvicorn

    from cxrkit.serve.app import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(create_app(tiny_run, engine="torch", api_key=""), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(10)


def test_sample_upload_shows_probability_decision_and_overlay(server, tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox"])
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(server + "/")
        page.wait_for_selector("#model-card table")  # model card rendered from /v1/model
        assert "youden" in page.inner_text("#model-card")
        page.get_by_role("button", name="Try a synthetic sample image").press("Enter")  # keyboard, not mouse
        page.wait_for_selector("#results .result .decision", timeout=30_000)
        result = page.inner_text("#results .result")
        assert "P(tb) = 0." in result and "threshold" in result
        assert page.get_attribute("#results .result img", "src").startswith("data:image/png;base64,")
        before = page.get_attribute("#results .result img", "src")
        page.get_by_label("Show heat-map overlay").check()
        assert page.get_attribute("#results .result img", "src") != before
        page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        browser.close()
    assert not errors, errors
    assert (tmp_path / "page.png").stat().st_size > 10_000


VIEWPORTS = {"desktop": {"width": 1280, "height": 900}, "phone": {"width": 375, "height": 740}}
RAW_KEYS = ("roc_auc", "ppv", "npv", "macro_roc_auc", "balanced_accuracy")


def _offline_context(browser, viewport: dict):
    """A browser context that can reach only this machine: every other request is aborted, as on a cut-off hospital network."""
    ctx = browser.new_context(viewport=viewport, accept_downloads=True, is_mobile=viewport["width"] < 600)
    blocked: list[str] = []

    def route(r):
        url = r.request.url
        if url.startswith(("http://127.0.0.1", "http://localhost", "file://", "data:", "blob:")):
            return r.continue_()
        blocked.append(url)
        return r.abort()

    ctx.route("**/*", route)
    return ctx, blocked


def _fits(page) -> bool:
    return page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")


def _keep_shots(shots: dict[str, Path]) -> None:
    """Copies screenshots where CXRKIT_SHOTS_DIR points (for a closing note); nothing by default."""
    import os

    target = os.environ.get("CXRKIT_SHOTS_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        for name, p in shots.items():
            shutil.copy(p, Path(target) / name)


@pytest.mark.parametrize("width", list(VIEWPORTS))
def test_page_docs_and_report_offline(server, tiny_run, tmp_path, width):
    """With the network off: the card reads in words and percentages, the page fits the screen, results download as CSV,
    /docs renders Swagger UI from local files, and the report fits the screen too."""
    import csv

    from playwright.sync_api import sync_playwright

    shots = {}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox"])
        ctx, blocked = _offline_context(browser, VIEWPORTS[width])
        page = ctx.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(server + "/")
        page.wait_for_selector("#model-card table")
        card = page.inner_text("#model-card")
        assert not [k for k in RAW_KEYS if k in card], card
        assert "positive predictive value (PPV)" in card and "%" in card
        assert "Training data: tb0 — training: 38 healthy, 38 tb" in card  # the dataset's folder name, splits in words
        assert "chosen on the validation split" in card
        page.get_by_role("button", name="Try a synthetic sample image").click()
        page.wait_for_selector("#results .result .decision", timeout=30_000)
        assert _fits(page), "the page scrolls sideways"
        with page.expect_download() as dl:
            page.get_by_role("button", name="Download results as CSV (1 file)").click()
        rows = list(csv.DictReader(open(dl.value.path(), newline="")))
        assert len(rows) == 1 and rows[0]["file"] == "synthetic-sample.png"
        assert 0 <= float(rows[0]["p_tb"]) <= 1 and rows[0]["label"] in ("healthy", "tb") and rows[0]["model_id"] == tiny_run.name
        shots[f"page_{width}.png"] = tmp_path / f"page_{width}.png"
        page.screenshot(path=str(shots[f"page_{width}.png"]), full_page=True)

        page.goto(server + "/docs")
        page.wait_for_selector(".swagger-ui .opblock", timeout=30_000)
        assert "/v1/predict" in page.inner_text(".swagger-ui")
        shots[f"docs_{width}.png"] = tmp_path / f"docs_{width}.png"
        page.screenshot(path=str(shots[f"docs_{width}.png"]))

        page.goto((tiny_run / "report.html").as_uri())
        page.wait_for_selector("nav.toc a")
        assert _fits(page), "the report scrolls sideways"
        shots[f"report_{width}.png"] = tmp_path / f"report_{width}.png"
        page.screenshot(path=str(shots[f"report_{width}.png"]))
        ctx.close()
        browser.close()
    assert not errors, errors
    assert not [u for u in blocked if "/docs" in u or "swagger" in u or "cdn" in u], blocked
    assert all(p.stat().st_size > 10_000 for p in shots.values())
    _keep_shots(shots)


def _multilabel_answer(png_b64: str) -> dict:
    """A /v1/predict answer of a multi-label run: one threshold per finding, no positive class."""
    return {"model": {"id": "ml", "version": "0123456789ab", "engine": "torch"},
            "results": [{"file": "x.png", "bytes": 10, "format": "png", "probabilities": {"effusion": 0.7, "nodule": 0.1},
                         "decision": {"threshold": {"effusion": 0.3, "nodule": 0.6}, "rule": "per-finding thresholds", "chosen_on": "val",
                                      "positive_class": None, "label": "effusion",
                                      "words": "findings above their thresholds: effusion (0.70 >= 0.30)", "rule_words": "each finding"},
                         "calibrated": False, "ood_warning": False, "ood_findings": [], "image_png": png_b64}]}


def test_page_shows_every_answer_and_every_failure(server, tmp_path):
    """Answers the page once mishandled: a multi-label result (a threshold per finding), a proxy's HTML error page, and an
    unreachable service for the model card and the sample; each is shown to the user, none is a silent failure."""
    import base64
    import csv
    import json

    from playwright.sync_api import sync_playwright

    from cxrkit.data.synthetic import synthetic_cxr
    from cxrkit.serve.app import _png_bytes

    png = _png_bytes(synthetic_cxr(__import__("numpy").random.default_rng(0), 32))
    image = tmp_path / "x.png"
    image.write_bytes(png)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox"])
        page = browser.new_page(accept_downloads=True)
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.route("**/v1/model", lambda r: r.abort())  # the service is unreachable
        page.goto(server + "/")
        page.wait_for_selector("#model-card [role=alert]")
        assert "The model card could not be loaded" in page.inner_text("#model-card")

        page.route("**/v1/predict*", lambda r: r.fulfill(status=200, content_type="application/json",
                                                          body=json.dumps(_multilabel_answer(base64.b64encode(png).decode()))))
        page.set_input_files("#files", str(image))
        page.wait_for_selector("#results .result .decision")
        shown = page.inner_text("#results .result")
        assert "thresholds effusion 0.300, nodule 0.600" in shown and "effusion (0.70 >= 0.30)" in shown
        with page.expect_download() as dl:
            page.click("#download-csv")
        row = next(csv.DictReader(open(dl.value.path(), newline="")))
        assert row["threshold"] == "effusion=0.3; nodule=0.6" and row["error"] == ""

        # a run without its training images' statistics answers ood_warning null: said, not shown as a clean image
        unchecked = _multilabel_answer(base64.b64encode(png).decode())
        unchecked["results"][0]["ood_warning"] = None
        page.unroute("**/v1/predict*")
        page.route("**/v1/predict*", lambda r: r.fulfill(status=200, content_type="application/json", body=json.dumps(unchecked)))
        page.set_input_files("#files", str(image))
        page.wait_for_function("document.querySelector('#results').innerText.includes('Not checked against the training images')")

        page.unroute("**/v1/predict*")
        page.route("**/v1/predict*", lambda r: r.fulfill(status=413, content_type="text/html", body="<html>413 Request Entity Too Large</html>"))
        page.set_input_files("#files", str(image))  # the same file again: classified again, not ignored
        page.wait_for_selector("#results .result.error")
        assert "HTTP 413" in page.inner_text("#results .result.error") and "not the service's JSON" in page.inner_text("#results .result.error")
        assert "1 not classified" in page.inner_text("#status")

        page.route("**/v1/sample.png", lambda r: r.abort())
        page.get_by_role("button", name="Try a synthetic sample image").click()
        page.wait_for_function("document.querySelector('#status').textContent.includes('could not be loaded')")
        assert "The synthetic sample could not be loaded" in page.inner_text("#results")
        browser.close()
    assert not errors, errors
