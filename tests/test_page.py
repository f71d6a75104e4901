"""The try-it page at GET /, driven in headless Chromium against a real server of the oracle model.

The oracle's answer is known by construction (the span "paris" .. "france"), so the highlighted text and its
offsets are checked against the context itself; the other answers against the REST API's own reply.
"""
from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import pytest

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                reason="needs Debian's chromium and chromium-driver (scripts/setup.sh installs them)")

# An emoji (two UTF-16 units, one code point) and accents before the answer: the page must slice the context by
# code points, as the server counts offsets, or the highlight lands one character off.
CONTEXT = "Café 😀 notes. Paris, the city of light, is in France, a land of cheese and wine."
QUESTION = "Where is the city of light?"


def rest(address: str, body: dict) -> dict:
    request = urllib.request.Request(f"http://{address}/model/bert_squad:predict_with_options",
                                     data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return json.loads(reply.read())
    except urllib.error.HTTPError as e:
        return json.loads(e.read())


def typed_int32(value: int) -> dict:
    import base64

    return {"type": "int32", "shape": [], "b64": base64.b64encode(int(value).to_bytes(4, "little", signed=True)).decode()}


@pytest.fixture(scope="module")
def page_server(oracle_servable, tmp_path_factory):
    from harness import Server

    with Server(tmp_path_factory.mktemp("page-run"), oracle_servable["servable_dir"]) as server:
        yield server


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--window-size=1000,1200",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver, condition, timeout: float = 30):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(condition)


def highlighted(driver) -> tuple:
    """(text of the <mark>, its start in code points of the shown context)."""
    return tuple(driver.execute_script(
        "const view = document.getElementById('context-view'); const mark = view.querySelector('mark');"
        "if (!mark) return [null, null];"
        "const before = Array.from(view.textContent).length - Array.from(mark.textContent).length"
        "  - Array.from(mark.nextSibling ? mark.nextSibling.textContent : '').length;"
        "return [mark.textContent, before];"))


def ask(driver, address: str, context: str, question: str, top_k: int = 5):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver.get(f"http://{address}/")
    wait_for(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#example option")) > 1)  # examples loaded
    box = driver.find_element(By.ID, "context")
    box.clear()
    driver.execute_script("arguments[0].value = arguments[1];", box, context)  # send_keys cannot type emoji
    k = driver.find_element(By.ID, "top-k")
    k.clear()
    k.send_keys(str(top_k))
    q = driver.find_element(By.ID, "question")
    q.clear()
    q.send_keys(question)
    q.send_keys(Keys.ENTER)


def test_enter_shows_the_answer_highlighted_at_its_offsets_and_a_top_k_pick_moves_it(page_server, browser):
    from selenium.webdriver.common.by import By

    ask(browser, page_server.rest_address, CONTEXT, QUESTION)
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#answers button"))
    start = CONTEXT.index("Paris")
    end = CONTEXT.index("France") + len("France")
    assert highlighted(browser) == (CONTEXT[start:end], start)
    assert browser.find_element(By.ID, "status").text == f"Answer: {CONTEXT[start:end]}"
    facts = browser.find_element(By.ID, "facts").text
    assert " ms" in facts and "model version 1" in facts and "runtime serving" in facts and "precision fp32" in facts

    # The other answers are those of the REST API for the same question, and picking one moves the highlight.
    reply = rest(page_server.rest_address, {"instances": [
        {"question": QUESTION, "context": CONTEXT, "top_k": typed_int32(5), "max_answer_length": typed_int32(30)}]})
    spans = [(s, e) for s, e in zip(reply["instances"][0]["top_starts"], reply["instances"][0]["top_ends"]) if e > s]
    buttons = browser.find_elements(By.CSS_SELECTOR, "#answers button")
    assert len(buttons) == len(spans) > 1
    s, e = spans[2] if len(spans) > 2 else spans[1]
    buttons[spans.index((s, e))].click()
    assert highlighted(browser) == (CONTEXT[s:e], s)
    assert buttons[spans.index((s, e))].get_attribute("aria-pressed") == "true"
    assert buttons[0].get_attribute("aria-pressed") == "false"


def test_an_empty_question_shows_the_servers_message_and_keeps_the_text(page_server, browser):
    from selenium.webdriver.common.by import By

    server_says = rest(page_server.rest_address, {"instances": [
        {"question": "", "context": CONTEXT, "top_k": typed_int32(5), "max_answer_length": typed_int32(30)}]})
    message = server_says["instances"][0]["error_msg"] if "instances" in server_says else server_says["error_msg"]
    assert "question" in message.lower()
    ask(browser, page_server.rest_address, CONTEXT, "")
    error = wait_for(browser, lambda d: d.find_element(By.ID, "error").text)
    assert error == message
    assert browser.find_element(By.ID, "context").get_attribute("value") == CONTEXT
    assert not browser.find_elements(By.CSS_SELECTOR, "#answers button")


def test_the_page_loads_nothing_from_elsewhere_and_labels_every_control(page_server):
    with urllib.request.urlopen(f"http://{page_server.rest_address}/", timeout=30) as reply:
        html = reply.read().decode()
        policy = reply.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy
    for needle in ("http://", "https://", "src=", "@import", "url("):
        assert needle not in html, f"the page refers to an outside resource ({needle!r})"
    for control in ("example", "context", "question", "top-k", "max-len"):
        assert f'<label for="{control}">' in html


# ---------------------------------------------------------------- GET /docs: Swagger UI on /openapi.json

def test_the_api_docs_page_refers_to_nothing_elsewhere(page_server):
    with urllib.request.urlopen(f"http://{page_server.rest_address}/docs", timeout=30) as reply:
        html = reply.read().decode()
        policy = reply.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "script-src 'self'" in policy and "connect-src 'self'" in policy
    assert "http://" not in html and "https://" not in html and "<script>" not in html
    for asset in ("/docs/swagger-ui.css", "/docs/swagger-ui-bundle.js", "/docs/start.js"):
        with urllib.request.urlopen(f"http://{page_server.rest_address}{asset}", timeout=30) as reply:
            assert reply.status == 200 and len(reply.read()) > 100


def test_the_api_docs_page_shows_every_route_and_loads_only_from_this_server(page_server, browser):
    from selenium.webdriver.common.by import By

    origin = f"http://{page_server.rest_address}"
    browser.get(f"{origin}/docs")
    wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".opblock")) > 20)
    paths = {e.text for e in browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")}
    assert {"/model/bert_squad:predict", "/v2/models/bert_squad/infer", "/readyz"} <= {p.replace("\u200b", "")
                                                                                      for p in paths}
    loaded = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert f"{origin}/openapi.json" in loaded
    assert [url for url in loaded if not url.startswith(origin + "/")] == []
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == [], errors


def test_page_off_turns_the_api_docs_off_too(oracle_servable, tmp_path):
    from harness import Server

    with Server(tmp_path, oracle_servable["servable_dir"], extra_args=["--page", "off"]) as server:
        for path in ("/docs", "/docs/swagger-ui-bundle.js", "/"):
            with pytest.raises(urllib.error.HTTPError) as missing:
                urllib.request.urlopen(f"http://{server.rest_address}{path}", timeout=30)
            assert missing.value.code == 404


def test_with_api_keys_the_page_asks_for_one_and_the_docs_page_uses_it(oracle_servable, tmp_path, browser):
    """The pages' shells load without a key; the try-it page shows its key field on the first 401, then loads its
    examples and answers with the key typed, and /docs in the same tab reads /openapi.json with it."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    from harness import Server

    key = "page-key-" + "p" * 16
    (tmp_path / "keys").write_text(key + "\n")
    with Server(tmp_path / "run", oracle_servable["servable_dir"],
                extra_args=["--api-key-file", str(tmp_path / "keys")]) as server:
        origin = f"http://{server.rest_address}"
        browser.get(f"{origin}/")
        field = wait_for(browser, lambda d: d.find_element(By.ID, "api-key").is_displayed()
                         and d.find_element(By.ID, "api-key"))
        assert len(browser.find_elements(By.CSS_SELECTOR, "#example option")) == 1  # examples need the key
        field.send_keys(key, Keys.TAB)
        wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#example option")) > 1)
        q = browser.find_element(By.ID, "question")
        box = browser.find_element(By.ID, "context")
        browser.execute_script("arguments[0].value = arguments[1];", box, CONTEXT)
        q.send_keys(QUESTION, Keys.ENTER)
        wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#answers button"))
        start, end = CONTEXT.index("Paris"), CONTEXT.index("France") + len("France")
        assert highlighted(browser) == (CONTEXT[start:end], start)

        browser.get(f"{origin}/docs")  # the same tab: the key is in its sessionStorage
        wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".opblock")) > 20)
        assert browser.find_elements(By.CSS_SELECTOR, ".btn.authorize")  # the document declares the bearer scheme
