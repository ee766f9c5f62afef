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
