"""
The status page draws the overlay: loaded in headless Chromium, it shows the
expected peers without console errors, and a screenshot is saved in
C{artifacts/status-page.png}.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

from twisted.internet import reactor, threads
from twisted.internet.defer import Deferred, succeed
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool, readBody

from wow.lab.netns import HERE
from wow.web.api import status_site

CHROMIUM = "/usr/bin/chromium"

ME = "8" + "0" * 39
PEERS = [
    {"address": "a1" + "0" * 38, "kind": "near-right", "path": "direct",
     "endpoint": "198.18.0.11:4789", "rtt_ms": 0.4, "age_s": 12},
    {"address": "7f" + "0" * 38, "kind": "near-left", "path": "direct",
     "endpoint": "198.18.0.12:4789", "rtt_ms": 0.5, "age_s": 30},
    {"address": "20" + "0" * 38, "kind": "shortcut", "path": "direct",
     "endpoint": "198.18.0.13:4789", "rtt_ms": 0.7, "age_s": 3},
    {"address": "c0" + "0" * 38, "kind": "on-demand", "path": "relayed",
     "via": "a1" + "0" * 38, "endpoint": "", "rtt_ms": 1.9, "age_s": 1},
]


def handlers() -> dict[str, Any]:
    return {
        "status": lambda args: {"overlay": {"address": ME, "endpoint": "198.18.0.10:4789"},
                                "version": "test", "uptime_s": 42},
        "peers": lambda args: PEERS,
        "wipe": lambda args: "must not be reachable",
    }


def browse(url: str, screenshot: str) -> dict[str, Any]:
    """Load the page in headless Chromium (in a thread) and report what it shows."""
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync"],
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 620})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url)
            page.wait_for_selector("body[data-loaded=yes]", timeout=15000)
            rows = page.locator("tr.peer-row").count()
            links = page.locator("path.link").count()
            relayed = page.locator("path.link.relayed").count()
            shortcut = page.locator("path.link.shortcut").count()
            me = page.locator("#me").inner_text()
            addresses = [td.get_attribute("title")
                         for td in page.locator("tr.peer-row td:first-child").all()]
            page.screenshot(path=screenshot)
        finally:
            browser.close()
    return {"errors": errors, "rows": rows, "links": links, "relayed": relayed,
            "shortcut": shortcut, "me": me, "addresses": addresses}


class StatusPageTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        if not os.path.exists(CHROMIUM):
            raise self.skipTest("needs Debian's chromium")
        try:
            import playwright  # noqa: F401
        except ImportError:
            raise self.skipTest("needs playwright") from None
        listening = reactor.listenTCP(0, status_site(handlers()), interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        self.port: Deferred[int] = succeed(listening.getHost().port)

    def test_page_shows_peers(self) -> Deferred[None]:
        artifacts = os.path.join(HERE, "artifacts")
        os.makedirs(artifacts, exist_ok=True)
        shot = os.path.join(artifacts, "status-page.png")

        def load(port: int) -> Deferred[dict[str, Any]]:
            return threads.deferToThread(browse, f"http://127.0.0.1:{port}/", shot)

        def check(seen: dict[str, Any]) -> None:
            self.assertEqual(seen["errors"], [])
            self.assertEqual(seen["rows"], len(PEERS))
            self.assertEqual(seen["links"], len(PEERS))
            self.assertEqual(seen["relayed"], 1)
            self.assertEqual(seen["shortcut"], 1)
            self.assertEqual(seen["me"], ME)
            self.assertGreater(os.path.getsize(shot), 5000)

        return self.port.addCallback(load).addCallback(check)

    def test_api_is_read_only(self) -> Deferred[None]:
        pool = HTTPConnectionPool(reactor, persistent=False)

        def fetch(port: int) -> Deferred[Any]:
            agent = Agent(reactor, pool=pool)
            d = agent.request(b"GET", f"http://127.0.0.1:{port}/api/wipe".encode())

            def got(response: Any) -> Deferred[Any]:
                self.assertEqual(response.code, 404)
                return readBody(response)

            d.addCallback(got)
            d.addCallback(lambda body: self.assertIn("no such API", json.loads(body)["error"]))
            return d

        return self.port.addCallback(fetch)


if shutil.which("chromium") is None and not os.path.exists(CHROMIUM):
    StatusPageTests.skip = "needs Debian's chromium"
