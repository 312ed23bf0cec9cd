"""
Take the dashboard screenshot of the docs and the README (docs/_static/dashboard.png).

Starts a demo-like setup on loopback, on ports the OS chooses: four echo backends
(tests/_backend.py), a ``twistd -n lb`` with two pools and an admin listener, and traffic
through it; drains one backend, makes one answer 500s and leaves one address dead, so that
the page shows its states; then saves the page as headless Chromium renders it (Debian's
chromium and chromium-driver, through selenium, as tests/test_dashboard_browser.py does).

Run from the repository, in an environment with ``.[test]`` installed:

    .venv/bin/python docs/screenshot.py [--out docs/_static/dashboard.png]

Needs nothing else; every process it starts is stopped when it ends.
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BACKEND = ROOT / "tests" / "_backend.py"
TWISTD = str(Path(sys.executable).with_name("twistd"))
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def start(
    args: list[str], pattern: str, timeout: float = 20.0
) -> tuple[subprocess.Popen[str], str]:
    """Start a process; return it and the first group of its first line matching pattern."""
    process = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True
    )
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    regex = re.compile(pattern)
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        match = regex.search(line)
        if match:
            threading.Thread(target=process.stdout.read, daemon=True).start()
            return process, match.group(1)
    process.kill()
    raise SystemExit(f"{args[:3]}: no line matching {pattern!r}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def call(port: int, method: str, path: str, body: object = None) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        data = None if body is None else json.dumps(body).encode()
        connection.request(method, path, body=data)
        connection.getresponse().read()
    finally:
        connection.close()


def traffic(port: int, until: float) -> None:
    """Keep-alive requests to both pools until ``until`` (monotonic seconds)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    while time.monotonic() < until:
        for path in ("/", "/", "/", "/api/items"):
            connection.request("GET", path)
            connection.getresponse().read()
        time.sleep(0.004)
    connection.close()


def config(app: list[int], api: list[int], admin: int) -> str:
    def backends(prefix: str, ports: list[int]) -> str:
        return ", ".join(
            f'{{ address = "127.0.0.1:{port}", name = "{prefix}{i + 1}" }}'
            for i, port in enumerate(ports)
        )

    return f"""
[global]
access_log = false

[frontends.web]
mode = "http"
listen = ["tcp:0:interface=127.0.0.1"]
pool = "app"
[[frontends.web.routes]]
path_prefix = "/api/"
pool = "api"

[pools.app]
strategy = "round_robin"
backends = [{backends("app", app)}]
[pools.app.health_check]
kind = "http"
path = "/healthz"
interval = 0.5
timeout = 0.5

[pools.api]
strategy = "least_connections"
backends = [{backends("api", api)}]
[pools.api.health_check]
kind = "tcp"
interval = 0.5
timeout = 0.5

[admin]
listen = ["tcp:{admin}:interface=127.0.0.1"]
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "_static" / "dashboard.png"))
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=760)
    args = parser.parse_args()

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    processes: list[subprocess.Popen[str]] = []
    try:
        ports = {}
        for name in ("app1", "app2", "app3", "api1"):
            process, port = start([sys.executable, str(BACKEND), "echo", name], r"^PORT (\d+)")
            processes.append(process)
            ports[name] = int(port)
        dead = free_port()
        admin = free_port()
        with tempfile.TemporaryDirectory() as directory:
            path = Path(directory, "lb.toml")
            path.write_text(
                config([ports["app1"], ports["app2"], ports["app3"]], [ports["api1"], dead], admin)
            )
            lb, frontend = start(
                [TWISTD, "-n", "--pidfile=", "lb", "--config", str(path)],
                r"frontend web listening on 127\.0\.0\.1:(\d+)",
            )
            processes.append(lb)
            call(ports["app3"], "GET", "/_set?status=500")
            call(admin, "PATCH", "/api/v1/pools/app/backends/app2", {"state": "drain"})
            sender = threading.Thread(
                target=traffic, args=(int(frontend), time.monotonic() + 14), daemon=True
            )
            sender.start()

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
                "--hide-scrollbars",
                f"--window-size={args.width},{args.height}",
                f"--user-data-dir={Path(directory, 'chromium')}",
            ):
                options.add_argument(flag)
            driver = webdriver.Chrome(
                service=Service(executable_path=CHROMEDRIVER), options=options
            )
            try:
                driver.get(f"http://127.0.0.1:{admin}/")
                WebDriverWait(driver, 10).until(
                    lambda d: d.find_elements(By.CSS_SELECTOR, 'tr[data-state="DOWN"]')
                )
                time.sleep(11)  # a full 10 s window of rates and percentiles
                Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                driver.save_screenshot(args.out)
            finally:
                driver.quit()
            sender.join(10)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
    print(f"saved {args.out} ({Path(args.out).stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
