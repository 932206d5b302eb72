#!/usr/bin/env python3
"""How fast the dashboard is, in a real browser: initial load, and an event to the page.

    .venv/bin/python ops/dashboard_timing.py [--requests 20]

Starts `supervisor start` on demo:tiny (a free port, a temp dir), opens /dashboard in
Debian's chromium through Playwright, and prints:
- load: navigation start to the feed being live with the node listed (median of 5 loads);
- update: a request's response received by the client to its row in the history (median
  and max over --requests requests; the row comes from the live feed, not a poll).
Every process it starts is ended by PID.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def until(check, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.05)
    raise SystemExit(f"dashboard_timing: {what} did not happen within {seconds:g} s")


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def chat(url: str, n: int) -> str:
    body = json.dumps(
        {
            "model": "demo:tiny",
            "messages": [{"role": "user", "content": f"hello {n}"}],
            "max_tokens": 8,
        }
    ).encode()
    request = urllib.request.Request(
        url + "/v1/chat/completions", body, {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as r:
        return json.loads(r.read())["id"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        hostfile = Path(tmp) / "hostfile.json"
        hostfile.write_text(json.dumps({"hosts": [{"ssh": "localhost"}], "model": "demo:tiny"}))
        log = open(Path(tmp) / "supervisor.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "supervisor", "start", str(hostfile), "--port", str(port)],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            until(lambda: healthy(url), 120, "the supervisor's health")
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
                try:
                    report(browser, url, args.requests)
                finally:
                    browser.close()
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
    return 0


def report(browser, url: str, requests: int) -> None:
    loads = []
    for _ in range(5):
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        began = time.monotonic()
        page.goto(url + "/dashboard")
        page.wait_for_function(
            "document.querySelector('#conn')?.textContent === 'live'"
            " && document.querySelector('#nodes')?.textContent.includes('localhost')",
            timeout=30_000,
        )
        loads.append(time.monotonic() - began)
        page.close()
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(url + "/dashboard")
    page.wait_for_function("document.querySelector('#conn')?.textContent === 'live'")
    rows = []
    for n in range(requests):
        rid = chat(url, n)
        answered = time.monotonic()
        page.wait_for_selector(f'#history tr[data-request="{rid}"]', timeout=30_000)
        rows.append(time.monotonic() - answered)
    page.close()

    def ms(values: list[float]) -> str:
        return f"median {1000 * statistics.median(values):.0f} ms, max {1000 * max(values):.0f} ms"

    print(f"initial load (navigation to live, node listed), 5 loads: {ms(loads)}")
    print(f"response received → its row in the history, {requests} requests: {ms(rows)}")


if __name__ == "__main__":
    sys.exit(main())
