"""
Integration tests: a real ``twistd -n lb`` in tcp mode, real backends, real clients, loopback.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests._backend import send_all, slow_read
from tests._harness import (
    TWISTD,
    TWISTED_LB,
    Process,
    environ_with,
    free_port,
    http_get,
    lb_config,
    rss_bytes,
    start_backend,
    start_lb,
)

MB = 1024 * 1024


class IntegrationCase(SynchronousTestCase):
    def start_backends(self, count: int, mode: str = "http") -> tuple[list[Process], list[int]]:
        processes, ports = [], []
        for i in range(1, count + 1):
            process, port = start_backend(mode, f"backend{i}")
            self.addCleanup(process.kill)
            processes.append(process)
            ports.append(port)
        return processes, ports

    def start_lb(self, config: str, env: dict[str, str] | None = None) -> tuple[Process, int]:
        path = Path(self.mktemp() + ".toml")
        path.write_text(config)
        process, port = start_lb(str(path), env=env)
        self.addCleanup(process.kill)
        return process, port


class BalancingTests(IntegrationCase):
    def test_backends_take_turns(self) -> None:
        """With round_robin, three backends answer in turn, each twice in six connections."""
        _, ports = self.start_backends(3)
        _lb, port = self.start_lb(lb_config(ports))
        answers = [http_get(port).strip() for _ in range(6)]
        self.assertEqual(answers[:3], answers[3:])
        self.assertEqual(sorted(answers[:3]), [f"Hello from backend{i}" for i in (1, 2, 3)])

    def test_failover_with_killed_backend(self) -> None:
        """
        With one of three backends killed, 50 new connections all succeed: the refused
        connects fail over to the live backends, and the failures are logged.
        """
        processes, ports = self.start_backends(3)
        lb, port = self.start_lb(lb_config(ports))
        processes[1].kill()
        answers = [http_get(port).strip() for _ in range(50)]
        self.assertEqual(len(answers), 50)
        self.assertEqual(set(answers), {"Hello from backend1", "Hello from backend3"})
        lb.wait_for(r"connect to backend app2 .* failed: connection refused;")

    def test_sigterm_stops_cleanly(self) -> None:
        """
        SIGTERM stops listening, closes open connections and shuts down cleanly. (twistd then
        re-raises the signal, so the exit status is -SIGTERM, as for any process it ended.)
        """
        _, ports = self.start_backends(1)
        lb, port = self.start_lb(lb_config(ports))
        idle = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.addCleanup(idle.close)
        http_get(port)
        lb.signal(signal.SIGTERM)
        self.assertEqual(lb.popen.wait(15), -signal.SIGTERM)
        self.assertEqual(idle.recv(10), b"")  # closed by the balancer
        with self.assertRaises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2)
        output = lb.output()
        self.assertIn("ended=shutdown", output)
        self.assertIn("Server Shut Down.", output)
        self.assertNotIn("Traceback", output)

    def test_strategy_plugin_from_plugin_path(self) -> None:
        """
        A strategy plugin dropped into a ``twisted_lb/plugins`` directory on the Python path
        is used by name from a config file.
        """
        plugin_root = Path(self.mktemp())
        plugins = plugin_root / "twisted_lb" / "plugins"
        plugins.mkdir(parents=True)
        (plugins / "always_last.py").write_text(
            "from twisted.plugin import IPlugin\n"
            "from zope.interface import implementer\n"
            "from twisted_lb.interfaces import IBalancingStrategy, IStrategyFactory\n"
            "\n"
            "@implementer(IBalancingStrategy)\n"
            "class AlwaysLast:\n"
            "    def pick(self, backends, info):\n"
            "        return backends[-1]\n"
            "\n"
            "@implementer(IPlugin, IStrategyFactory)\n"
            "class AlwaysLastFactory:\n"
            "    name = 'always_last'\n"
            "    def __call__(self, options):\n"
            "        return AlwaysLast()\n"
            "\n"
            "always_last = AlwaysLastFactory()\n"
        )
        env = environ_with(PYTHONPATH=str(plugin_root))
        _, ports = self.start_backends(3)
        config = lb_config(ports, strategy="always_last")
        path = Path(self.mktemp() + ".toml")
        path.write_text(config)
        checked = subprocess.run(
            [TWISTED_LB, "check", str(path)], capture_output=True, text=True, env=env, timeout=60
        )
        self.assertEqual(checked.returncode, 0, checked.stderr)
        _lb, port = self.start_lb(config, env=env)
        answers = {http_get(port).strip() for _ in range(4)}
        self.assertEqual(answers, {"Hello from backend3"})


class MemoryTests(IntegrationCase):
    def test_bulk_through_slow_readers(self) -> None:
        """
        100 MB each way through the relay, with a slow reader on both ends, grows the
        balancer's resident memory by less than 32 MB: flow control holds.
        """
        total = 100 * MB
        backend, backend_port = start_backend("bulk", "bulk", environ_with(BULK_BYTES=str(total)))
        self.addCleanup(backend.kill)
        lb, port = self.start_lb(lb_config([backend_port]))
        baseline = rss_bytes(lb.pid)
        # Reset the peak (VmHWM) to now, so earlier start-up peaks do not count.
        with contextlib.suppress(OSError):
            Path(f"/proc/{lb.pid}/clear_refs").write_text("5")
        sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.addCleanup(sock.close)
        sender = threading.Thread(target=send_all, args=(sock, total), daemon=True)
        started = time.monotonic()
        sender.start()
        received = slow_read(sock, 32 * 1024, 0.001)
        sender.join(120)
        elapsed = time.monotonic() - started
        self.assertEqual(received, total)
        self.assertEqual(backend.wait_for(r"RECEIVED (\d+)", timeout=60).group(1), str(total))
        growth = rss_bytes(lb.pid, "VmHWM") - baseline
        sys.stderr.write(f"\n100 MB each way in {elapsed:.1f} s, RSS growth {growth / MB:.1f} MB\n")
        self.assertLess(growth, 32 * MB)


class CheckCommandTests(SynchronousTestCase):
    def run_check(self, config: str) -> subprocess.CompletedProcess[str]:
        path = Path(self.mktemp() + ".toml")
        path.write_text(config)
        return subprocess.run(
            [TWISTED_LB, "check", str(path)], capture_output=True, text=True, timeout=60
        )

    def test_good_config(self) -> None:
        """A good config: exit 0 and a summary of frontends, pools and backends."""
        result = self.run_check(lb_config([9001, 9002]))
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("frontend web (tcp)", result.stdout)
        self.assertIn("pool app: round_robin", result.stdout)
        self.assertRegex(result.stdout, r"app2\s+127\.0\.0\.1:9002")

    def test_bad_config(self) -> None:
        """A bad config: exit 1 and every problem, each with the file and key path."""
        config = lb_config([9001]).replace('{ address = "127.0.0.1:9001" }', "")
        config = config.replace("backends = []", 'backends = [{ adress = "x" }]')
        config = config.replace('pool = "app"', 'pool = "ap"')
        result = self.run_check(config)
        self.assertEqual(result.returncode, 1)
        lines = result.stderr.strip().splitlines()
        self.assertTrue(all(re.match(r"\S+\.toml: \S+: ", line) for line in lines), lines)
        self.assertIn("frontends.web.pool: unknown pool 'ap' (did you mean 'app'?)", result.stderr)
        self.assertIn("pools.app.backends[0].adress: unknown key (did you mean", result.stderr)
        self.assertEqual(result.stdout, "")

    def test_twistd_refuses_bad_config(self) -> None:
        """``twistd lb`` prints the same problems and exits 1 before anything listens."""
        path = Path(self.mktemp() + ".toml")
        path.write_text(lb_config([9001]).replace("tcp:0:", "tcp:nope:"))
        lb = Process([TWISTD, "-n", "--pidfile=", "lb", "--config", str(path)])
        self.addCleanup(lb.kill)
        self.assertEqual(lb.popen.wait(60), 1)
        output = lb.output()
        self.assertIn(f"{path}: frontends.web.listen[0]: 'tcp:nope:interface", output)
        self.assertNotIn("listening on", output)

    def test_twistd_names_the_listener_it_cannot_bind(self) -> None:
        """
        A port already held (here by the test): ``twistd lb`` exits 1 with one line naming the
        file, the key path and the OS's reason.
        """
        held = socket.socket()
        self.addCleanup(held.close)
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        path = Path(self.mktemp() + ".toml")
        path.write_text(
            lb_config([9001]).replace(
                'listen = ["tcp:0:interface=127.0.0.1"]',
                f'listen = ["tcp:0:interface=127.0.0.1", "tcp:{port}:interface=127.0.0.1"]',
            )
        )
        lb = Process([TWISTD, "-n", "--pidfile=", "lb", "--config", str(path)])
        self.addCleanup(lb.kill)
        self.assertEqual(lb.popen.wait(60), 1)
        output = lb.output()
        self.assertIn(
            f"{path}: frontends.web.listen[1]: cannot listen on tcp:{port}:interface=127.0.0.1: "
            "Address already in use; stopping",
            output,
        )
        self.assertNotIn("twisted-lb running", output)

    def test_twistd_names_a_bad_port(self) -> None:
        """A port out of range: exit 1 with the file and key path, whoever finds it first."""
        path = Path(self.mktemp() + ".toml")
        path.write_text(lb_config([9001]).replace("tcp:0:", "tcp:99999:"))
        lb = Process([TWISTD, "-n", "--pidfile=", "lb", "--config", str(path)])
        self.addCleanup(lb.kill)
        self.assertEqual(lb.popen.wait(60), 1)
        output = lb.output()
        self.assertIn(f"{path}: frontends.web.listen[0]: ", output)
        self.assertNotIn("twisted-lb running", output)


class CommandLineTests(IntegrationCase):
    def start_in(self, directory: Path, config: Path, *pidfile: str) -> Process:
        """``twistd -n [--pidfile=...] lb --config CONFIG``, run in ``directory``."""
        lb = Process([TWISTD, "-n", *pidfile, "lb", "--config", str(config)], cwd=str(directory))
        self.addCleanup(lb.kill)
        lb.wait_for(r"twisted-lb running")
        return lb

    def test_two_instances_in_one_directory(self) -> None:
        """
        ``twistd -n lb`` writes no ``twistd.pid``, so a second balancer starts in the same
        directory; ``--pidfile=PATH`` still writes one.
        """
        _, ports = self.start_backends(1)
        directory = Path(self.mktemp()).resolve()
        directory.mkdir(parents=True)
        config = directory / "lb.toml"
        config.write_text(lb_config(ports))
        first = self.start_in(directory, config)
        second = self.start_in(directory, config)
        self.assertEqual(sorted(p.name for p in directory.iterdir()), ["lb.toml"])
        self.assertIsNone(first.popen.poll())
        self.assertIsNone(second.popen.poll())
        third = self.start_in(directory, config, "--pidfile=lb.pid")
        self.assertEqual((directory / "lb.pid").read_text().strip(), str(third.pid))
        self.assertEqual(third.stop(), -signal.SIGTERM)
        self.assertFalse((directory / "lb.pid").exists())

    def test_startup_line_and_sighup_without_change(self) -> None:
        """
        The startup line counts in words that agree with the numbers ("1 frontend, 1
        pool"); SIGHUP reloads the config, and says that nothing changed.
        """
        _, ports = self.start_backends(1)
        lb, _port = self.start_lb(lb_config(ports))
        lb.wait_for(r"twisted-lb running: 1 frontend, 1 pool$")
        lb.signal(signal.SIGHUP)
        lb.wait_for(r"SIGHUP: reloading ")
        lb.wait_for(r"reload: generation 2 from .*: no change$")


class DeploymentTests(IntegrationCase):
    """The commands of docs/deployment.rst, where this machine can run them."""

    def test_listens_before_dropping_privileges(self) -> None:
        """
        As root, ``--uid/--gid`` listen first and drop privileges after: a UNIX socket in a
        directory only root may write to is listened on, then the process runs as
        ``nobody`` and relays through it.
        """
        if os.getuid() != 0:
            raise SkipTest("needs root")
        try:
            nobody = pwd.getpwnam("nobody")
        except KeyError:
            raise SkipTest("no user nobody") from None
        _, ports = self.start_backends(1)
        directory = Path(tempfile.mkdtemp(prefix="lb-"))  # mode 0700; short, for AF_UNIX
        self.addCleanup(shutil.rmtree, directory, True)
        socket_path = directory / "lb.sock"
        config = Path(self.mktemp() + ".toml")
        config.write_text(
            lb_config(ports).replace("tcp:0:interface=127.0.0.1", f"unix:{socket_path}")
        )
        config.chmod(0o644)
        lb = Process(
            [
                TWISTD, "-n", "--pidfile=", "--logfile=-", f"--uid={nobody.pw_uid}",
                f"--gid={nobody.pw_gid}", "lb", "--config", str(config),
            ]
        )  # fmt: skip
        self.addCleanup(lb.kill)
        lb.wait_for(r"frontend web listening on unix:")
        lb.wait_for(rf"set uid/gid {nobody.pw_uid}/{nobody.pw_gid}")
        lb.wait_for(r"twisted-lb running")
        status = Path(f"/proc/{lb.pid}/status").read_text()
        [uids] = [line.split()[1:] for line in status.splitlines() if line.startswith("Uid:")]
        self.assertEqual(set(uids), {str(nobody.pw_uid)})
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(10)
            sock.connect(str(socket_path))
            sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
            self.assertIn(b"Hello from backend1", b"".join(iter(lambda: sock.recv(4096), b"")))

    def test_socket_activation(self) -> None:
        """
        A ``systemd:domain=INET:index=0`` listener serves the socket that systemd (here
        ``systemd-socket-activate``, which starts twistd at the first connection) passes in.
        """
        activate = shutil.which("systemd-socket-activate")
        if activate is None:
            raise SkipTest("no systemd-socket-activate")
        _, ports = self.start_backends(1)
        port = free_port()
        config = Path(self.mktemp() + ".toml")
        config.write_text(
            lb_config(ports).replace("tcp:0:interface=127.0.0.1", "systemd:domain=INET:index=0")
        )
        lb = Process(
            [
                activate, "-l", f"127.0.0.1:{port}", "--fdname=web", TWISTD, "-n", "--pidfile=",
                "lb", "--config", str(config),
            ]
        )  # fmt: skip
        self.addCleanup(lb.kill)
        lb.wait_for(rf"Listening on 127\.0\.0\.1:{port}")
        self.assertEqual(http_get(port, timeout=20).strip(), "Hello from backend1")
        lb.wait_for(rf"frontend web listening on 127\.0\.0\.1:{port}")


class DemoTests(SynchronousTestCase):
    def run_demo(self, *args: str) -> tuple[Process, int]:
        demo = Process([TWISTED_LB, "demo", "--port", "0", "--backend-port", "0", *args])
        self.addCleanup(demo.kill)
        port = int(demo.wait_for(r"curl http://127\.0\.0\.1:(\d+)/$").group(1))
        return demo, port

    def assert_turns(self, port: int) -> None:
        answers = [http_get(port) for _ in range(3)]
        self.assertEqual(
            sorted(re.sub(r" \(pid \d+\)", "", a.strip()) for a in answers),
            [f"Hello from backend {i}" for i in (1, 2, 3)],
        )

    def test_demo(self) -> None:
        """
        ``twisted-lb demo`` starts backends and an http-mode balancer, prints what to run,
        answers with the backends in turn, routes /api/ to the api pool, and stops on Ctrl-C
        (SIGINT).
        """
        demo, port = self.run_demo()
        demo.wait_for(r"curl http://127\.0\.0\.1:\d+/api/hello")
        self.assert_turns(port)
        self.assertRegex(http_get(port, path="/api/hello"), r"^Hello from the api pool: /api/hello")
        demo.signal(signal.SIGINT)
        self.assertEqual(demo.popen.wait(15), 0)

    def test_demo_tcp(self) -> None:
        """``twisted-lb demo --mode tcp`` puts a tcp-mode frontend in front of the backends."""
        demo, port = self.run_demo("--mode", "tcp")
        self.assert_turns(port)
        self.assertIn("tcp-mode frontend", demo.output())
        demo.signal(signal.SIGINT)
        self.assertEqual(demo.popen.wait(15), 0)
