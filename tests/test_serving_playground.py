"""The playground page in a real headless Chromium: stream a completion, then chat (screenshots are
saved under the test's tmp dir and test-artifacts/)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import CHROMIUM, REPO, require
from serving_server import running

from tinylm.serving import create_app

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("torch_one_thread")]

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
WATCH = """() => {
  window.seen = [];
  const out = document.querySelector('#output');
  new MutationObserver(() => {
    const g = document.querySelector('#generated');
    window.seen.push([g ? g.textContent.length : 0, out.dataset.state]);
  }).observe(out, {subtree: true, childList: true, characterData: true, attributes: true});
}"""


def screenshot(page, tmp_path: Path, name: str) -> None:
    for folder in (tmp_path, REPO / "test-artifacts"):
        folder.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(folder / name), full_page=True)


def test_the_playground_streams_a_completion_and_a_chat_reply(trained_run: Path, tmp_path: Path):
    require("chromium")
    from playwright.sync_api import sync_playwright

    app = create_app(trained_run, model_name="tiny", chat_template="plain", api_key="sk-browser", max_tokens=2000,
                     dtype="float32")
    with running(app) as base, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 800})
            asked = []
            page.on("request", lambda r: asked.append(r.url))
            page.goto(f"{base}/")
            page.fill("#api-key", "sk-browser")
            page.dispatch_event("#api-key", "change")  # the key is remembered and the models listed
            page.wait_for_function("document.querySelector('#model').options.length > 0")
            assert page.input_value("#model") == "tiny"

            page.evaluate(WATCH)
            page.fill("#max-tokens", "1000")
            page.fill("#prompt", "ROMEO:\n")
            page.click("#generate")
            page.wait_for_selector("#output[data-state=done]", timeout=120_000)
            text = page.text_content("#generated")
            assert len(text) == 1000  # one character per token (the char tokenizer has no end-of-text)
            partial = {n for n, state in page.evaluate("window.seen") if state == "streaming" and 0 < n < 1000}
            assert len(partial) >= 2, "the text did not appear while it streamed"
            assert "tok/s" in page.text_content("#stats")
            assert page.text_content("#error") == ""
            screenshot(page, tmp_path, "playground-completion.png")

            page.click("#tab-chat")
            assert page.is_visible("#chat-input") and not page.is_visible("#prompt")
            page.fill("#max-tokens", "40")
            page.fill("#chat-input", "Good morrow, sir.")
            page.click("#send")
            page.wait_for_selector(".msg.assistant[data-state=done]", timeout=120_000)
            assert page.text_content(".msg.user") == "Good morrow, sir."
            reply = page.text_content(".msg.assistant")
            assert 0 < len(reply) <= 40 and page.text_content("#error") == ""
            screenshot(page, tmp_path, "playground-chat.png")
        finally:
            browser.close()
    assert asked and all(url.startswith(base) for url in asked)  # nothing but the public API of this server
