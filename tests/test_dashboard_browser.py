"""
The dashboard in a real headless browser: Debian's ``chromium`` and ``chromium-driver``,
driven by selenium, against a real ``twistd -n lb`` with an admin listener and real echo
backends. Skipped, with the reason, only where Chromium or its driver is not installed.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from tests.test_integration_health import health_config
from tests.test_integration_http import TIMEOUT, HTTPIntegrationCase

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")

#: The health check of the test's pool: a dead backend is DOWN after 2 failed checks, each
#: at most 0.22 s apart (interval + 10% jitter) and refused at once.
INTERVAL, FALL = 0.2, 2
HEALTH_CHECK = (
    f'kind = "http"\npath = "/healthz"\ninterval = {INTERVAL}\ntimeout = 0.5\n'
    f"rise = 1\nfall = {FALL}"
)
TOKEN = "dashboard-s3cret"


def start_chromium(user_data_dir: str) -> Any:
    """A headless Chromium under selenium, with nothing that talks to the network."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1400,900",
        f"--user-data-dir={user_data_dir}",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


class DashboardBrowserTests(HTTPIntegrationCase):
    def setUp(self) -> None:
        missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not shutil.which(path)]
        if missing:
            self.skipTest(
                f"{' and '.join(missing)} not installed (Debian packages chromium and "
                "chromium-driver)"
            )
        directory = Path(self.mktemp()).resolve()
        directory.mkdir()
        (directory / "admin.token").write_text(TOKEN + "\n")
        self.backends = {}
        ports = []
        for name in ("app1", "app2", "app3"):
            process, port = self.start_backend("echo", name)
            self.backends[name] = process
            ports.append(port)
        config = health_config(ports, health_check=HEALTH_CHECK) + (
            "[admin]\n"
            'listen = ["tcp:0:interface=127.0.0.1:backlog=20"]\n'
            f'token_file = "{directory / "admin.token"}"\n'
        )
        self.lb, self.port = self.start_lb(config)
        self.admin = int(self.lb.wait_for(r"admin API listening on 127\.0\.0\.1:(\d+)").group(1))
        self.driver = start_chromium(str(directory / "chromium"))
        self.addCleanup(self.driver.quit)
        self.driver.set_page_load_timeout(TIMEOUT)

    def wait(self, condition: Any, timeout: float, message: str) -> Any:
        from selenium.webdriver.support.ui import WebDriverWait

        return WebDriverWait(self.driver, timeout, poll_frequency=0.05).until(condition, message)

    def row(self, backend: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(
            By.CSS_SELECTOR, f'tr.backend[data-pool="app"][data-backend="{backend}"]'
        )

    def state(self, backend: str) -> str | None:
        from selenium.common.exceptions import NoSuchElementException

        try:
            return str(self.row(backend).get_attribute("data-state"))
        except NoSuchElementException:
            return None

    def api_backend(self, backend: str) -> dict[str, Any]:
        connection = http.client.HTTPConnection("127.0.0.1", self.admin, timeout=TIMEOUT)
        try:
            connection.request("GET", f"/api/v1/pools/app/backends/{backend}")
            response = connection.getresponse()
            self.assertEqual(response.status, 200)
            result: dict[str, Any] = json.loads(response.read())
            return result
        finally:
            connection.close()

    def test_lists_backends_shows_down_and_drains(self) -> None:
        """
        The page lists the pool's backends UP; a backend killed on purpose turns DOWN on the
        page within its health-check time (plus one poll); with the token entered, Drain
        changes the backend's state in the API, and Ready brings it back.
        """
        from selenium.webdriver.common.by import By

        self.driver.get(f"http://127.0.0.1:{self.admin}/")
        self.wait(
            lambda _: all(self.state(n) == "UP" for n in ("app1", "app2", "app3")),
            10,
            "the three backends never showed UP",
        )
        names = [
            element.get_attribute("data-backend")
            for element in self.driver.find_elements(By.CSS_SELECTOR, "tr.backend")
        ]
        self.assertEqual(names, ["app1", "app2", "app3"])
        self.assertIn("web", self.driver.find_element(By.ID, "frontends").text)

        killed = time.monotonic()
        self.backends["app2"].kill()
        # DOWN after FALL failed checks, INTERVAL (+10%) apart, the first at most one
        # interval after the kill; the page polls once a second. Slack for a busy machine.
        limit = FALL * INTERVAL * 1.1 + 1.0 + 2.0
        self.wait(lambda _: self.state("app2") == "DOWN", limit, "app2 never showed DOWN")
        self.assertLess(time.monotonic() - killed, limit)
        reason = self.row("app2").find_element(By.CSS_SELECTOR, "td.reason").text
        self.assertIn("connection refused", reason)
        self.assertEqual(self.state("app1"), "UP")

        # Without the token the buttons are hidden; with it they show.
        drain = self.row("app1").find_element(By.CSS_SELECTOR, "button.drain")
        self.assertFalse(drain.is_displayed())
        self.driver.find_element(By.ID, "token").send_keys(TOKEN)
        self.driver.find_element(By.ID, "token-save").click()
        self.wait(lambda _: drain.is_displayed(), 5, "the drain button never showed")
        drain.click()
        self.wait(
            lambda _: self.api_backend("app1")["admin_state"] == "drain",
            5,
            "the API never showed app1 drained",
        )
        self.wait(lambda _: self.state("app1") == "DRAIN", 5, "app1 never showed DRAIN")
        self.row("app1").find_element(By.CSS_SELECTOR, "button.ready").click()
        self.wait(
            lambda _: self.api_backend("app1")["admin_state"] == "ready",
            5,
            "the API never showed app1 ready again",
        )
        self.wait(lambda _: self.state("app1") == "UP", 5, "app1 never showed UP again")
        self.assertEqual(self.driver.find_element(By.ID, "message").text, "")

    def test_bad_token_is_reported(self) -> None:
        """A wrong token's 401 is shown on the page and changes nothing."""
        from selenium.webdriver.common.by import By

        self.driver.get(f"http://127.0.0.1:{self.admin}/")
        self.wait(lambda _: self.state("app1") == "UP", 10, "app1 never showed UP")
        self.driver.find_element(By.ID, "token").send_keys("wrong")
        self.driver.find_element(By.ID, "token-save").click()
        drain = self.row("app1").find_element(By.CSS_SELECTOR, "button.drain")
        self.wait(lambda _: drain.is_displayed(), 5, "the drain button never showed")
        drain.click()
        self.wait(
            lambda _: "401" in self.driver.find_element(By.ID, "message").text,
            5,
            "the 401 was never shown",
        )
        self.assertEqual(self.api_backend("app1")["admin_state"], "ready")
