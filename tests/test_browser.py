"""End to end in a real headless browser: Debian's chromium (``apt-get install chromium``) driven by Playwright.

Playwright never downloads a browser here: it is given ``executable_path=/usr/bin/chromium``. The app is served
on 127.0.0.1 with the real index, retriever, chain, citation check and UI; only the LLM is a labelled test
double (tests/ui_helpers.py: SmolLM2-135M rarely writes citation markers, and this test must see one).
The screenshot is saved as a test artifact under ``tests/artifacts/`` (git-ignored).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from ui_helpers import STATINS_QUESTION, free_port, small_index, stand_in_generator

from bmrag.app.config import AppConfig
from bmrag.app.gradio_app import launch
from bmrag.app.service import DemoService

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"

pytestmark = pytest.mark.skipif(not CHROMIUM.is_file(),
                                reason="needs Debian chromium at /usr/bin/chromium (apt-get install -y chromium; "
                                       ".ci/run installs it)")


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    index_dir = small_index(tmp_path_factory.mktemp("browser_index"))
    service = DemoService(AppConfig(index_dir=index_dir, answer="generative"), generator=stand_in_generator())
    app, url = launch(service, port=free_port(), block=False, quiet=True)
    yield url
    app.close()
    service.close()


def test_question_to_cited_answer_and_evidence_in_chromium(app_url):
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the dev extra)")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1100})
            outside: list[str] = []
            page.on("request", lambda req: None if req.url.startswith(app_url.rstrip("/")) or
                    req.url.startswith("data:") else outside.append(req.url))
            page.goto(app_url, wait_until="networkidle")
            assert "Not medical advice" in page.locator("#bm-disclaimer").inner_text()
            assert re.search(r"\d+ chunks", page.locator("#bm-status").inner_text())

            # Rendered settings must not filter by themselves (an empty gr.Number sent 0: year <= 0 matched nothing).
            page.get_by_text("Settings").click()
            page.locator("#bm-question textarea").fill(STATINS_QUESTION)
            page.locator("#bm-ask").click()
            answer = page.locator("#bm-answer")
            sync_api.expect(answer).to_contain_text(re.compile(r"\[1\]"), timeout=45_000)
            sync_api.expect(page.locator("#bm-run-status")).to_contain_text("Status: answered", timeout=45_000)

            cited = page.locator('#bm-evidence .bm-card[data-cited="true"]')
            assert cited.count() == 1
            card = cited.first
            assert card.get_attribute("data-number") == "1"
            link = card.locator("a")
            assert link.inner_text() == "PMID 21881325"
            assert link.get_attribute("href") == "https://pubmed.ncbi.nlm.nih.gov/21881325/"
            assert "score" in card.inner_text() and "year 2011" in card.inner_text()
            assert page.locator("#bm-evidence .bm-card").count() == 3
            page.screenshot(path=str(ARTIFACTS / "clinical_qa_browser.png"), full_page=True)
            assert outside == [], f"the page fetched something outside the app: {outside}"
        finally:
            browser.close()


@pytest.fixture(scope="module")
def quoting_url(tmp_path_factory):
    """The offline default app: extractive answers, abstention, no generator."""
    index_dir = small_index(tmp_path_factory.mktemp("browser_index"))
    service = DemoService(AppConfig(index_dir=index_dir))
    app, url = launch(service, port=free_port(), block=False, quiet=True)
    yield url
    app.close()
    service.close()


def test_an_answered_and_an_abstained_question_in_chromium(quoting_url):
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the dev extra)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1100})
            page.goto(quoting_url, wait_until="networkidle")
            assert "sentences quoted from the sources" in page.locator("#bm-status").inner_text()
            ask, question = page.locator("#bm-ask"), page.locator("#bm-question textarea")

            question.fill("What are the warning signs of a stroke?")
            ask.click()
            status = page.locator("#bm-run-status")
            sync_api.expect(status).to_contain_text("Status: answered", timeout=60_000)
            answer = page.locator("#bm-answer").inner_text()
            assert "\u201c" in answer and re.search(r"\[\d\]", answer)  # quotations, each with its [n]
            cited = page.locator('#bm-evidence .bm-card[data-cited="true"]')
            assert cited.count() >= 1 and "Stroke" in cited.first.inner_text()
            sync_api.expect(ask).to_be_enabled()

            question.fill("What is the capital of France?")
            ask.click()
            sync_api.expect(status).to_contain_text("Status: abstained", timeout=60_000)
            assert "The indexed sources don't answer this question." in page.locator("#bm-answer").inner_text()
            assert page.locator("#bm-evidence .bm-card").count() >= 1  # the nearest passages are still shown
            assert page.locator('#bm-evidence .bm-card[data-cited="true"]').count() == 0
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "clinical_qa_abstained.png"), full_page=True)
        finally:
            browser.close()


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("BMRAG_README_SCREENSHOT") != "1",
                    reason="regenerates docs/img/clinical_qa.png: BMRAG_README_SCREENSHOT=1 pytest -m slow -k readme")
def test_readme_screenshot_of_the_default_app():
    """The README's screenshot: the demo index (``bmrag demo``) and the app's offline default (quoted answers)."""
    from PIL import Image

    from bmrag.index.open import default_index_dir

    sync_api = pytest.importorskip("playwright.sync_api")
    service = DemoService(AppConfig(index_dir=default_index_dir(), threads=1))
    assert service.index_error is None, service.index_error
    app, url = launch(service, port=free_port(), block=False, quiet=True)
    target = Path(__file__).resolve().parents[1] / "docs" / "img" / "clinical_qa.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto(url, wait_until="networkidle")
            page.get_by_text("Settings").click()
            page.locator("#bm-question textarea").fill("What are the warning signs of a stroke?")
            page.locator("#bm-ask").click()
            sync_api.expect(page.locator("#bm-run-status")).to_contain_text("Status:", timeout=180_000)
            raw = ARTIFACTS / "readme_raw.png"
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(raw), full_page=True)
            browser.close()
    finally:
        app.close()
        service.close()
    # A 256-colour palette keeps the PNG small (< 300 KB) and the UI text sharp.
    Image.open(raw).convert("RGB").quantize(colors=256).save(target, optimize=True)
    assert target.stat().st_size < 300_000
