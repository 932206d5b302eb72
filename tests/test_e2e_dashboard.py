"""The dashboard in a real browser (Debian's chromium driven by Playwright) against a real
`supervisor start` on the demo model: it loads clean, stays on its origin, names what runs,
follows requests and a kill -9 live, streams a chat reply and fits a 390 px phone.

Screenshots land in test-artifacts/ (git-ignored); docs/img/ holds copies from a real run.
"""

from __future__ import annotations

import os
import shutil
import signal

import httpx
import openai
import pytest

from tests.conftest import ROOT, RunningSupervisor, demo_hostfile, wait_for

playwright = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = ROOT / "test-artifacts"
LIVE = 5_000  # ms: a figure the feed changed is on the page by then (the goal is < 1 s)


@pytest.fixture(scope="module")
def sup(tmp_path_factory):
    running = RunningSupervisor(tmp_path_factory.mktemp("dashboard"), demo_hostfile())
    try:
        running.wait_healthy()
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def browser():
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} is missing; install it with: apt-get install chromium")
    with playwright.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield launched
        finally:
            launched.close()  # ends the browser process Playwright started


class Watched:
    """A page with every console error, page error and request it made recorded."""

    def __init__(self, browser, sup: RunningSupervisor, width: int):
        self.page = browser.new_page(viewport={"width": width, "height": 900})
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.origin = sup.url
        self.page.goto(sup.url + "/dashboard")
        playwright.expect(self.page.locator("#conn")).to_have_text("live", timeout=10_000)

    def check_clean(self) -> None:
        assert self.errors == [], f"console errors: {self.errors}"
        elsewhere = [u for u in self.requests if not u.startswith(self.origin + "/")]
        assert elsewhere == [], f"requests to another origin: {elsewhere}"


@pytest.fixture(scope="module")
def wide(browser, sup):
    watched = Watched(browser, sup, 1280)
    yield watched
    watched.page.close()


def test_loads_clean_and_names_the_node_group_and_model(wide, sup):
    status = sup.status()
    page = wide.page
    for node in status["nodes"]:
        playwright.expect(page.locator("#nodes")).to_contain_text(node["name"])
    for group in status["groups"]:
        playwright.expect(page.locator("#groups")).to_contain_text(group["name"])
        playwright.expect(page.locator("#models")).to_contain_text(group["model"])
    playwright.expect(page.locator("#topology svg .tnode")).to_have_count(len(status["nodes"]))
    playwright.expect(page.locator("#topology")).to_contain_text("demo:tiny")
    wide.check_clean()


def test_requests_appear_in_the_history_by_id_without_a_reload(wide, sup):
    client = openai.OpenAI(base_url=sup.url + "/v1", api_key="unused", max_retries=0)
    page = wide.page
    ids = []
    for n in range(3):
        reply = client.chat.completions.create(
            model="demo:tiny", messages=[{"role": "user", "content": f"hello {n}"}], max_tokens=8
        )
        ids.append(reply.id)
        row = page.locator(f'#history tr[data-request="{reply.id}"]')
        playwright.expect(row).to_have_count(1, timeout=LIVE)
        playwright.expect(row).to_contain_text("ok")
        playwright.expect(row).to_contain_text(str(reply.usage.completion_tokens))
    # Newest first, and the Overview counted them.
    shown = page.locator("#history tbody tr").evaluate_all(
        "rows => rows.map(r => r.dataset.request)"
    )
    assert shown[:3] == ids[::-1]
    wide.check_clean()


def test_a_kill_9_of_the_generation_actor_shows_as_a_restart_with_the_new_pid(wide, sup):
    page = wide.page
    before = sup.actor("generation")
    os.kill(before["pid"], signal.SIGKILL)

    def restarted():
        a = sup.actor("generation")
        return a if a["pid"] not in (None, before["pid"]) and a["state"] == "running" else None

    after = wait_for(restarted, 90, "the generation actor to run again with a new PID")
    line = page.locator(f'#nodes li[data-actor="{after["id"]}"]')
    playwright.expect(line).to_contain_text(f"pid {after['pid']}", timeout=LIVE)
    playwright.expect(line).to_contain_text(f"restarts {after['restarts']}", timeout=LIVE)
    playwright.expect(line).to_contain_text("running")
    group = page.locator(f'#groups article[data-group="{after["group"]}"]')
    playwright.expect(group).to_contain_text(f"(pid {after['pid']})", timeout=LIVE)
    playwright.expect(page.locator("#errors")).to_contain_text(before["id"], timeout=LIVE)
    wide.check_clean()


def test_the_chat_panel_streams_a_reply(wide):
    page = wide.page
    playwright.expect(page.locator("#chat-model")).to_have_value("demo:tiny")
    # Count the distinct texts the reply shows while it streams: more than one = streamed.
    page.evaluate(
        """() => {
        window.__seen = new Set();
        new MutationObserver(() => {
          const t = document.querySelector('#chat .msg.assistant .text');
          if (t && t.textContent) window.__seen.add(t.textContent);
        }).observe(document.querySelector('#chat .log'),
                   {subtree: true, childList: true, characterData: true});
        }"""
    )
    # Long enough that the stream spans many 20 ms deltas even on an idle machine (the
    # tiny model writes a token in ~2 ms): a reply in one piece is then not streaming.
    page.fill("#chat-max", "200")
    page.fill("#chat-input", "Tell me a story")
    page.keyboard.press("Enter")  # the keyboard path: Enter sends
    playwright.expect(page.locator("#chat .chat-status")).to_contain_text("done", timeout=60_000)
    reply = page.locator("#chat .msg.assistant .text").last.text_content()
    assert reply
    assert page.evaluate("window.__seen.size") >= 2, "the reply came in one piece"
    playwright.expect(page.locator("#chat button.stop")).to_be_disabled()
    wide.check_clean()


def test_the_topology_lays_out_1_2_4_and_10_nodes_without_overlap(wide):
    # The layout function itself, at a desktop and a phone width.
    boxes = wide.page.evaluate(
        """async () => {
        const { layout } = await import('/dashboard/static/js/topology.js');
        const out = [];
        for (const width of [960, 360]) for (const n of [1, 2, 4, 10]) out.push(layout(n, width));
        return out;
        }"""
    )
    for lay in boxes:
        w, h, pts = lay["box"]["w"], lay["box"]["h"], lay["points"]
        for p in pts:
            assert w / 2 <= p["x"] <= lay["W"] - w / 2 and h / 2 <= p["y"] <= lay["H"] - h / 2
        for i, p in enumerate(pts):
            for q in pts[i + 1 :]:
                assert abs(p["x"] - q["x"]) >= w or abs(p["y"] - q["y"]) >= h, lay


def test_screenshots_and_no_horizontal_scroll_at_390_px(browser, sup, wide):
    ARTIFACTS.mkdir(exist_ok=True)
    wide.page.screenshot(path=str(ARTIFACTS / "dashboard-1280.png"), full_page=True)
    narrow = Watched(browser, sup, 390)
    try:
        playwright.expect(narrow.page.locator("#history tbody tr").first).to_be_visible()
        assert narrow.page.evaluate("document.documentElement.scrollWidth") <= 390
        narrow.page.screenshot(path=str(ARTIFACTS / "dashboard-390.png"), full_page=True)
        narrow.check_clean()
    finally:
        narrow.page.close()


def test_browsers_at_the_root_go_to_the_dashboard_and_probes_get_plain_text(sup):
    browser_accept = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
    sent = httpx.get(sup.url + "/", headers={"Accept": browser_accept}, follow_redirects=False)
    assert sent.status_code in (302, 303, 307) and sent.headers["location"] == "/dashboard"
    for accept in ("*/*", "text/plain", None):  # curl, a script, Ollama's own probe
        probe = httpx.get(sup.url + "/", headers={"Accept": accept} if accept else {})
        assert (probe.status_code, probe.text) == (200, "Ollama is running"), accept
    page = httpx.get(sup.url + "/dashboard")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
