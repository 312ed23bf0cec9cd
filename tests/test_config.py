"""
Tests for :mod:`twisted_lb.config`: the model and its library API, reading files, the tables
of good configs (:data:`GOOD_CONFIGS`: each document and the values its model holds) and bad
configs (``tests/bad_configs.txt``: each document and every problem it is reported with, by
exact message), the summary, ``twisted-lb check`` and ``schema``, the lines of problems, and
property tests over generated documents.
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

import trustme
from cryptography.hazmat.primitives import serialization
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tests._harness import TWISTED_LB
from twisted_lb import strategies
from twisted_lb.cli import format_summary
from twisted_lb.config import (
    BackendConfig,
    CertificateConfig,
    Config,
    ConfigError,
    FrontendConfig,
    FrontendTLSConfig,
    GlobalConfig,
    HealthCheckConfig,
    OutlierDetectionConfig,
    PoolConfig,
    PoolTLSConfig,
    Problem,
    RouteConfig,
    config_from_dict,
    json_schema,
    json_schema_text,
    load_config,
    parse_config,
)

# The strategies every test sees, so that messages listing them do not depend on the plugins
# installed. StrategyTests and the "+plugins" cases of the bad-config table use the real scan,
# taken here before any test patches it.
INSTALLED = ["least_connections", "random", "round_robin"]
REAL_INSTALLED_STRATEGIES = strategies.installed_strategies
REAL_GET_STRATEGY = strategies.get_strategy

FRONTEND = """\
[frontends.web]
mode = "tcp"
listen = "tcp:8080:interface=127.0.0.1"
pool = "app"
"""

POOL = """\
[pools.app]
backends = [{ address = "127.0.0.1:9001" }]
"""

EXAMPLE = """\
[frontends.web]
mode = "tcp"
listen = ["tcp:8080:interface=127.0.0.1"]
pool = "app"

[pools.app]
strategy = "round_robin"
backends = [
  { address = "127.0.0.1:9001" },
  { address = "127.0.0.1:9002", weight = 3, name = "big" },
  { address = "10.0.0.9:80", backup = true },
]
"""


HTTP_FRONTEND = FRONTEND.replace('mode = "tcp"', 'mode = "http"')

HTTP_ONLY_CHECK = 'only for kind = "http"; remove it or set kind = "http"'


def _any_options(name: str, options: object = None) -> object:
    """A stand-in for ``get_strategy`` whose strategies take any options."""
    return object()


class ConfigTestCase(SynchronousTestCase):
    maxDiff = None
    """
    Writes TOML to temporary files and loads them, with a fixed list of installed strategies.
    """

    def setUp(self) -> None:
        self.patch(strategies, "installed_strategies", lambda: list(INSTALLED))
        self.patch(strategies, "get_strategy", _any_options)

    def write(self, text: str) -> str:
        """
        Write ``text`` to a new ``lb.toml`` and return its path.
        """
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, "lb.toml")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def load(self, text: str) -> Config:
        return load_config(self.write(text))

    def problems(self, text: str) -> list[str]:
        """
        Load ``text``, which must fail, and return its problems as ``"key: message"``.
        """
        path = self.write(text)
        error = self.assertRaises(ConfigError, load_config, path)
        self.assertTrue(error.problems)
        self.assertEqual([p.path for p in error.problems], [path] * len(error.problems))
        return [f"{p.key}: {p.message}" for p in error.problems]


class ModelTests(ConfigTestCase):
    """
    A valid file becomes the frozen model, with defaults filled in; the model built in code.
    """

    def test_example(self) -> None:
        """
        The design's example (in tcp mode) parses to the expected model: default backend names
        are the pool's name and the position, the other keys take their defaults.
        """
        path = self.write(EXAMPLE)
        config = load_config(path)
        backends = (
            BackendConfig(address="127.0.0.1:9001", name="app1"),
            BackendConfig(address="127.0.0.1:9002", name="big", weight=3),
            BackendConfig(address="10.0.0.9:80", name="app3", backup=True),
        )
        self.assertEqual(
            config,
            Config(
                path=path,
                frontends={
                    "web": FrontendConfig(
                        name="web",
                        mode="tcp",
                        listen=("tcp:8080:interface=127.0.0.1",),
                        pool="app",
                        client_timeout=60.0,
                        max_connections=10000,
                    )
                },
                pools={
                    "app": PoolConfig(
                        name="app",
                        backends=backends,
                        strategy="round_robin",
                        strategy_options={},
                        connect_timeout=5.0,
                        retries=2,
                    )
                },
            ),
        )

    def test_every_key(self) -> None:
        """
        Every supported key is read; pools and frontends keep file order; unused pools are kept.
        """
        config = self.load(
            """\
[frontends.web]
mode = "tcp"
listen = ["tcp:8080:interface=127.0.0.1", "unix:/run/lb.sock"]
pool = "app"
client_timeout = 30.5
max_connections = 50

[pools.zzz]
backends = [{ address = "[::1]:9100" }]

[pools.app]
strategy = "least_connections"
strategy_options = { spread = 2, tags = ["a", "b"], nested = { deep = true } }
connect_timeout = 0.25
retries = 0
backends = [{ address = "unix:/run/app.sock", name = "local", weight = 7, backup = false }]
"""
        )
        self.assertEqual(
            config.frontends["web"],
            FrontendConfig(
                name="web",
                mode="tcp",
                listen=("tcp:8080:interface=127.0.0.1", "unix:/run/lb.sock"),
                pool="app",
                client_timeout=30.5,
                max_connections=50,
            ),
        )
        self.assertEqual(list(config.pools), ["zzz", "app"])
        self.assertEqual(config.pools["zzz"].backends, (BackendConfig("[::1]:9100", "zzz1"),))
        app = config.pools["app"]
        self.assertEqual(
            (app.strategy, app.connect_timeout, app.retries),
            ("least_connections", 0.25, 0),
        )
        self.assertEqual(
            app.strategy_options, {"spread": 2, "tags": ("a", "b"), "nested": {"deep": True}}
        )
        self.assertEqual(app.backends, (BackendConfig("unix:/run/app.sock", "local", 7, False),))

    def test_array_of_tables(self) -> None:
        """
        Backends written as ``[[pools.app.backends]]`` are the same as an inline array.
        """
        tables = self.load(
            FRONTEND
            + """\
[[pools.app.backends]]
address = "127.0.0.1:9001"
[[pools.app.backends]]
address = "127.0.0.1:9002"
weight = 3
name = "big"
[[pools.app.backends]]
address = "10.0.0.9:80"
backup = true
"""
        )
        inline = self.load(EXAMPLE)
        self.assertEqual(tables.pools, inline.pools)

    def test_frozen(self) -> None:
        """
        The model is read-only all the way down, ``strategy_options`` included.
        """
        config = self.load(
            FRONTEND + POOL + 'strategy_options = { tags = ["a"], nested = { deep = 1 } }\n'
        )
        pool = config.pools["app"]
        options: Any = pool.strategy_options
        self.assertIsInstance(options, MappingProxyType)
        self.assertIsInstance(options["nested"], MappingProxyType)
        self.assertEqual(options["tags"], ("a",))
        with self.assertRaises(TypeError):
            options["new"] = 1
        with self.assertRaises(TypeError):
            options["nested"]["deep"] = 2
        frontends: Any = config.frontends
        with self.assertRaises(TypeError):
            frontends["other"] = None
        with self.assertRaises(AttributeError):
            pool.retries = 5  # type: ignore[misc]

    def test_constructors_freeze(self) -> None:
        """
        Building the model in code freezes plain lists and dicts too.
        """
        options = {"a": [1, {"b": 2}]}
        pool = PoolConfig("p", [BackendConfig("127.0.0.1:1", "p1")], strategy_options=options)
        options["a"] = []
        self.assertEqual(pool.backends, (BackendConfig("127.0.0.1:1", "p1"),))
        self.assertEqual(pool.strategy_options, {"a": (1, {"b": 2})})
        frontend = FrontendConfig("f", "tcp", ["tcp:1"], "p")
        self.assertEqual(frontend.listen, ("tcp:1",))
        pools = {"p": pool}
        config = Config("x", {"f": frontend}, pools)
        pools.clear()
        self.assertEqual(list(config.pools), ["p"])

    def test_parse_config(self) -> None:
        """
        :func:`parse_config` validates text; problems name ``<string>`` unless a path is given.
        """
        config = parse_config(EXAMPLE)
        self.assertEqual(config.path, "<string>")
        self.assertEqual(config, parse_config(EXAMPLE, "<string>"))
        error = self.assertRaises(ConfigError, parse_config, "", "demo.toml")
        self.assertEqual([p.path for p in error.problems], ["demo.toml", "demo.toml"])

    def test_config_from_dict(self) -> None:
        """
        :func:`config_from_dict` validates parsed tables.
        """
        config = config_from_dict(
            {
                "frontends": {"web": {"mode": "tcp", "listen": "tcp:8080", "pool": "app"}},
                "pools": {"app": {"backends": [{"address": "127.0.0.1:9001"}]}},
            }
        )
        self.assertEqual(config.path, "<dict>")
        self.assertEqual(config.pools["app"].backends, (BackendConfig("127.0.0.1:9001", "app1"),))
        error = self.assertRaises(ConfigError, config_from_dict, [], "x")
        self.assertEqual(
            [str(p) for p in error.problems], ["x: (file): must be a table, not an array"]
        )

    def test_constructor_defaults(self) -> None:
        """
        The tables built in code with no arguments are the defaults that a file leaving the
        keys out gets (see :data:`GOOD_CONFIGS`).
        """
        self.assertEqual(HealthCheckConfig(), HEALTH_CHECK_DEFAULTS)
        self.assertEqual(OutlierDetectionConfig(), OUTLIER_DETECTION_DEFAULTS)
        self.assertEqual(PoolTLSConfig(), POOL_TLS_DEFAULTS)
        self.assertEqual(GlobalConfig().log_format, "text")
        self.assertEqual(BackendConfig("127.0.0.1:1", "a").state, "ready")

    def test_frontend_constructor(self) -> None:
        """
        Building a frontend in code turns ``trusted_proxies`` and ``routes`` into tuples.
        """
        route = RouteConfig("p", path_prefix="/")
        frontend = FrontendConfig(
            "f", "http", ["tcp:1"], "p", trusted_proxies=["::1"], routes=[route]
        )
        self.assertEqual((frontend.trusted_proxies, frontend.routes), (("::1",), (route,)))
        with self.assertRaises(AttributeError):
            route.pool = "q"  # type: ignore[misc]

    def test_health_check_frozen(self) -> None:
        check = HealthCheckConfig(expect_status=[204, 204])  # type: ignore[arg-type]
        self.assertEqual(check.expect_status, (204, 204))
        with self.assertRaises(AttributeError):
            check.rise = 5  # type: ignore[misc]

    def test_frontend_tls_frozen(self) -> None:
        tls = FrontendTLSConfig(certificates=[CertificateConfig("a.pem", "a.key")])
        self.assertEqual(tls.certificates, (CertificateConfig("a.pem", "a.key"),))
        with self.assertRaises(AttributeError):
            tls.min_version = "TLSv1.3"  # type: ignore[misc]

    def test_compare_by_value(self) -> None:
        """
        Two loads of one file are equal, a change anywhere makes them differ, and frontends,
        pools and backends are keyed by their names, their identity for a reload's diff.
        """
        one, two = parse_config(EXAMPLE), parse_config(EXAMPLE)
        self.assertEqual(one, two)
        self.assertIsNot(one, two)
        changed = parse_config(EXAMPLE.replace("weight = 3", "weight = 4"))
        self.assertNotEqual(one, changed)
        self.assertEqual(one.frontends, changed.frontends)
        self.assertNotEqual(one.pools["app"].backends[1], changed.pools["app"].backends[1])
        self.assertEqual(
            [b.name for b in one.pools["app"].backends],
            [b.name for b in changed.pools["app"].backends],
        )
        self.assertEqual(list(one.frontends), [f.name for f in one.frontends.values()])
        self.assertEqual(list(one.pools), [p.name for p in one.pools.values()])


class ProblemFormatTests(SynchronousTestCase):
    """
    How problems and errors read.
    """

    def test_problem(self) -> None:
        """
        ``str(Problem)`` is ``path: key: message``.
        """
        problem = Problem("lb.toml", "pools.app.backends[1].wieght", "unknown key")
        self.assertEqual(str(problem), "lb.toml: pools.app.backends[1].wieght: unknown key")

    def test_error(self) -> None:
        """
        ``str(ConfigError)`` is one problem per line; ``problems`` keeps them.
        """
        problems = [Problem("a", "b", "c"), Problem("a", "(file)", "e")]
        error = ConfigError(problems)
        self.assertEqual(str(error), "a: b: c\na: (file): e")
        self.assertEqual(error.problems, problems)

    def test_full_line(self) -> None:
        """
        A problem from a file names the file as given, the key path with indexes, and the fix.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(
                FRONTEND
                + """\
[pools.app]
backends = [{ address = "127.0.0.1:9001" }, { address = "127.0.0.1:9002", wieght = 2 }]
"""
            )
        self.patch(strategies, "installed_strategies", lambda: list(INSTALLED))
        error = self.assertRaises(ConfigError, load_config, path)
        self.assertEqual(
            str(error),
            f"{path}: pools.app.backends[1].wieght: unknown key (did you mean 'weight'?)",
        )


class ReadTests(ConfigTestCase):
    """
    Files that cannot be read, or are not TOML, are one problem each.
    """

    def test_missing_file(self) -> None:
        path = os.path.join(self.mktemp(), "lb.toml")
        error = self.assertRaises(ConfigError, load_config, path)
        self.assertEqual(str(error), f"{path}: cannot read: No such file or directory")

    def test_directory(self) -> None:
        path = self.mktemp()
        os.makedirs(path)
        error = self.assertRaises(ConfigError, load_config, path)
        self.assertEqual(str(error), f"{path}: cannot read: Is a directory")

    def test_path_like(self) -> None:
        """
        A :class:`os.PathLike` is accepted and reported as its string.
        """
        from pathlib import Path

        path = self.write(EXAMPLE)
        self.assertEqual(load_config(Path(path)).path, path)

    def test_not_utf8(self) -> None:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b'a = "\xff"\n')
        error = self.assertRaises(ConfigError, load_config, path)
        self.assertEqual(str(error), f"{path}: cannot read: not UTF-8 text (byte 0xff at offset 5)")


class StrategyTests(ConfigTestCase):
    """
    ``strategy`` must be installed; its factory judges ``strategy_options``. The table holds
    the problems (its ``+plugins`` cases use the real plugins).
    """

    def test_default_not_looked_up(self) -> None:
        """
        Without a ``strategy`` key the pool uses ``round_robin`` and the plugins are not scanned.
        """
        calls: list[None] = []

        def installed() -> list[str]:
            calls.append(None)
            return []

        self.patch(strategies, "installed_strategies", installed)
        config = self.load(FRONTEND + POOL)
        self.assertEqual(config.pools["app"].strategy, "round_robin")
        self.assertEqual(calls, [])

    def test_scanned_once(self) -> None:
        """
        The installed strategies are looked up once per document.
        """
        calls: list[None] = []

        def installed() -> list[str]:
            calls.append(None)
            return ["random"]

        self.patch(strategies, "installed_strategies", installed)
        self.load(
            FRONTEND
            + POOL
            + 'strategy = "random"\n'
            + POOL.replace("app", "b")
            + 'strategy = "random"\n'
        )
        self.assertEqual(len(calls), 1)

    def test_real_plugins(self) -> None:
        """
        With the real plugin scan, each built-in strategy named in the design is accepted, and
        options that the strategy's factory accepts are kept.
        """
        self.patch(strategies, "installed_strategies", REAL_INSTALLED_STRATEGIES)
        for name in ["round_robin", "least_connections"]:
            config = self.load(FRONTEND + POOL + f'strategy = "{name}"\n')
            self.assertEqual(config.pools["app"].strategy, name)
        self.patch(strategies, "get_strategy", REAL_GET_STRATEGY)
        config = self.load(
            FRONTEND + POOL + 'strategy = "random"\nstrategy_options = { seed = 1 }\n'
        )
        self.assertEqual(config.pools["app"].strategy_options, {"seed": 1})


@functools.cache
def _tls_files() -> dict[str, bytes]:
    """
    PEM files for the ``tls`` tables, made with trustme once per run: ``site`` (for
    ``example.com`` and ``*.example.com``), ``other`` and ``client`` certificates with their
    keys, their CA, an ``expired`` and a ``future`` certificate with their keys, an encrypted
    key, a file with both a certificate and its key, and an empty file.
    """
    ca = trustme.CA()
    site = ca.issue_cert("example.com", "*.example.com")
    other = ca.issue_cert("example.org")
    client = ca.issue_cert("lb.internal")
    expired = ca.issue_cert(
        "old.example.com",
        not_before=datetime(2020, 1, 1, tzinfo=UTC),
        not_after=datetime(2021, 1, 1, tzinfo=UTC),
    )
    future = ca.issue_cert(
        "new.example.com",
        not_before=datetime(2999, 1, 1, tzinfo=UTC),
        not_after=datetime(3000, 1, 1, tzinfo=UTC),
    )
    key = serialization.load_pem_private_key(site.private_key_pem.bytes(), password=None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    files = {"ca.pem": ca.cert_pem.bytes(), "encrypted.key": encrypted, "empty.pem": b""}
    for name, leaf in [
        ("site", site),
        ("other", other),
        ("client", client),
        ("expired", expired),
        ("future", future),
    ]:
        files[f"{name}.pem"] = b"".join(blob.bytes() for blob in leaf.cert_chain_pems)
        files[f"{name}.key"] = leaf.private_key_pem.bytes()
    files["combined.pem"] = files["site.pem"] + files["site.key"]
    return files


SITE_CERTIFICATES = 'certificates = [{ cert = "certs/site.pem", key = "certs/site.key" }]\n'
TLS_FRONTEND = HTTP_FRONTEND + "[frontends.web.tls]\n" + SITE_CERTIFICATES


class TLSTestCase(ConfigTestCase):
    """
    Writes ``lb.toml`` in a directory of its own, next to a ``certs`` directory that holds
    :func:`_tls_files`, so that relative paths such as ``"certs/site.pem"`` name them.
    """

    def setUp(self) -> None:
        super().setUp()
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(self.directory, "certs"))
        for name, data in _tls_files().items():
            with open(self.file(name), "wb") as f:
                f.write(data)

    def file(self, name: str) -> str:
        """The absolute path of one of :func:`_tls_files`."""
        return os.path.join(self.directory, "certs", name)

    def write(self, text: str) -> str:
        path = os.path.join(self.directory, "lb.toml")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def frontend_tls(self, body: str, mode: str = "http") -> str:
        """A frontend in ``mode`` with ``[frontends.web.tls]`` holding ``body``, and a pool."""
        frontend = FRONTEND.replace('mode = "tcp"', f'mode = "{mode}"')
        return frontend + "[frontends.web.tls]\n" + body + "\n" + POOL


class TLSTests(TLSTestCase):
    """
    ``[frontends.NAME.tls]`` and ``[pools.NAME.tls]``: the files they name are found next to
    the config file, and the model holds their absolute paths.
    """

    def test_frontend_defaults(self) -> None:
        """
        One certificate is enough; the other keys take their defaults, and the relative paths
        are resolved against the directory of the config file.
        """
        tls = self.load(TLS_FRONTEND + POOL).frontends["web"].tls
        certificate = CertificateConfig(cert=self.file("site.pem"), key=self.file("site.key"))
        self.assertEqual(
            tls,
            FrontendTLSConfig(
                certificates=(certificate,),
                min_version="TLSv1.2",
                ciphers=None,
                client_ca=None,
                verify_client="none",
            ),
        )
        self.assertEqual(tls, FrontendTLSConfig(certificates=[certificate]))

    def test_frontend_every_key(self) -> None:
        """
        Every key is read. Relative paths are resolved against the config file's directory
        and normalized; absolute paths are kept.
        """
        config = self.load(
            self.frontend_tls(
                f"""\
certificates = [
  {{ cert = "certs/site.pem", key = "./certs/../certs/site.key" }},
  {{ cert = {json.dumps(self.file("other.pem"))}, key = "certs/other.key" }},
]
min_version = "TLSv1.3"
ciphers = "ECDHE-ECDSA-AES128-GCM-SHA256"
client_ca = "certs/ca.pem"
verify_client = "required"
"""
            )
        )
        tls = config.frontends["web"].tls
        self.assertEqual(
            tls,
            FrontendTLSConfig(
                certificates=(
                    CertificateConfig(cert=self.file("site.pem"), key=self.file("site.key")),
                    CertificateConfig(cert=self.file("other.pem"), key=self.file("other.key")),
                ),
                min_version="TLSv1.3",
                ciphers="ECDHE-ECDSA-AES128-GCM-SHA256",
                client_ca=self.file("ca.pem"),
                verify_client="required",
            ),
        )

    def test_frontend_forms(self) -> None:
        """
        The array-of-tables form, a tcp frontend, ``verify_client = "optional"``, a file that
        holds both the certificate and its key, and the same certificate twice are all fine.
        """
        config = self.load(
            FRONTEND
            + """\
[[frontends.web.tls.certificates]]
cert = "certs/combined.pem"
key = "certs/combined.pem"
[[frontends.web.tls.certificates]]
cert = "certs/site.pem"
key = "certs/site.key"
[[frontends.web.tls.certificates]]
cert = "certs/site.pem"
key = "certs/site.key"
[frontends.web.tls]
client_ca = "certs/ca.pem"
verify_client = "optional"
"""
            + POOL
        )
        tls = config.frontends["web"].tls
        assert tls is not None
        self.assertEqual(
            [(c.cert, c.key) for c in tls.certificates],
            [(self.file("combined.pem"), self.file("combined.pem"))]
            + [(self.file("site.pem"), self.file("site.key"))] * 2,
        )
        self.assertEqual(tls.verify_client, "optional")

    def test_relative_config_path(self) -> None:
        """
        A config file named by a relative path resolves against its directory all the same,
        and the model holds absolute paths.
        """
        path = os.path.relpath(self.write(TLS_FRONTEND + POOL))
        self.assertFalse(os.path.isabs(path))
        tls = load_config(path).frontends["web"].tls
        assert tls is not None
        self.assertEqual(tls.certificates[0].cert, self.file("site.pem"))

    def test_parse_config_path(self) -> None:
        """
        :func:`parse_config` resolves against the directory of the ``path`` it is given,
        without reading that file.
        """
        config = parse_config(TLS_FRONTEND + POOL, os.path.join(self.directory, "absent.toml"))
        tls = config.frontends["web"].tls
        assert tls is not None
        self.assertEqual(tls.certificates[0].key, self.file("site.key"))

    def test_no_file(self) -> None:
        """
        A config from a string or a dict ("<string>", "<dict>") resolves against the current
        directory.
        """
        self.addCleanup(os.chdir, os.getcwd())
        os.chdir(self.directory)
        tls = parse_config(TLS_FRONTEND + POOL).frontends["web"].tls
        assert tls is not None
        self.assertEqual(tls.certificates[0].cert, self.file("site.pem"))
        data = {
            "frontends": {
                "web": {
                    "mode": "tcp",
                    "listen": "tcp:8443",
                    "pool": "app",
                    "tls": {"certificates": [{"cert": "certs/site.pem", "key": "certs/site.key"}]},
                }
            },
            "pools": {"app": {"backends": [{"address": "127.0.0.1:9001"}]}},
        }
        tls = config_from_dict(data).frontends["web"].tls
        assert tls is not None
        self.assertEqual(tls.certificates[0].key, self.file("site.key"))

    def test_pool_every_key(self) -> None:
        pool = self.load(
            FRONTEND
            + POOL
            + """\
[pools.app.tls]
server_name = "app.internal"
ca = "certs/ca.pem"
client_cert = "certs/client.pem"
client_key = "certs/client.key"
verify = true
"""
        ).pools["app"]
        self.assertEqual(
            pool.tls,
            PoolTLSConfig(
                server_name="app.internal",
                ca=self.file("ca.pem"),
                client_cert=self.file("client.pem"),
                client_key=self.file("client.key"),
                verify=True,
            ),
        )


class TLSSummaryTests(TLSTestCase):
    """
    The ``tls`` lines of :func:`format_summary`.
    """

    def test_summary(self) -> None:
        """
        A frontend's TLS comes under its line: the number of certificates, the first one,
        the minimum version and client certificates when asked for. A pool's TLS comes
        under its line: what is verified, or that nothing is, and the client certificate.
        """
        config = self.load(
            FRONTEND
            + """\
[frontends.web.tls]
certificates = [
  { cert = "certs/site.pem", key = "certs/site.key" },
  { cert = "certs/other.pem", key = "certs/other.key" },
]
client_ca = "certs/ca.pem"
verify_client = "required"
[frontends.api]
mode = "http"
listen = "tcp:8444"
pool = "api"
[frontends.api.tls]
certificates = [{ cert = "certs/site.pem", key = "certs/site.key" }]
min_version = "TLSv1.3"
client_ca = "certs/ca.pem"
verify_client = "optional"
[pools.app]
backends = [{ address = "127.0.0.1:9001" }]
[pools.app.tls]
server_name = "app.internal"
ca = "certs/ca.pem"
[pools.api]
backends = [{ address = "127.0.0.1:9101" }]
tls = {}
[pools.old]
backends = [{ address = "127.0.0.1:9201" }]
[pools.old.tls]
verify = false
server_name = "old.internal"
client_cert = "certs/client.pem"
client_key = "certs/client.key"
[pools.bare]
backends = [{ address = "127.0.0.1:9301" }]
tls = { verify = false }
"""
        )
        self.assertEqual(
            format_summary(config).split("\n", 1)[1],
            f"""\
frontend web (tcp) listen tcp:8080:interface=127.0.0.1 -> pool app
  tls: 2 certificates (first: {self.file("site.pem")}), min TLSv1.2, client certs required
  pool app: round_robin, connect_timeout 5.0 s, retries 2
    tls to backends: verify server_name=app.internal, ca={self.file("ca.pem")}
    app1  127.0.0.1:9001  weight 1
frontend api (http) listen tcp:8444 -> pool api
  tls: 1 certificate (first: {self.file("site.pem")}), min TLSv1.3, client certs optional
  pool api: round_robin, connect_timeout 5.0 s, retries 2
    tls to backends: verify server_name=(backend host), ca=(system trust store)
    api1  127.0.0.1:9101  weight 1
unused:
  pool old: round_robin, connect_timeout 5.0 s, retries 2
    tls to backends: verify OFF, server_name=old.internal, client cert {self.file("client.pem")}
    old1  127.0.0.1:9201  weight 1
  pool bare: round_robin, connect_timeout 5.0 s, retries 2
    tls to backends: verify OFF
    bare1  127.0.0.1:9301  weight 1""",
        )


class TLSCommandTests(TLSTestCase):
    """
    ``twisted-lb check`` on a file with ``tls`` tables, run from another directory, as a user
    runs it.
    """

    def run_check(self, text: str) -> subprocess.CompletedProcess[str]:
        self.write(text)
        return subprocess.run(
            [TWISTED_LB, "check", os.path.join(os.path.basename(self.directory), "lb.toml")],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=os.path.dirname(self.directory),
        )

    def test_good(self) -> None:
        """
        Exit 0; the summary names the files by their full paths, found next to the config.
        """
        result = self.run_check(TLS_FRONTEND + POOL + 'tls = { ca = "certs/ca.pem" }\n')
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn(
            f"\n  tls: 1 certificate (first: {self.file('site.pem')}), min TLSv1.2\n",
            result.stdout,
        )
        self.assertIn(
            f"\n    tls to backends: verify server_name=(backend host), ca={self.file('ca.pem')}\n",
            result.stdout,
        )

    def test_bad(self) -> None:
        """
        Exit 1, and each file's problem on the key path of that file.
        """
        result = self.run_check(
            TLS_FRONTEND.replace("certs/site.key", "certs/other.key")
            + POOL
            + 'tls = { ca = "certs/nothing.pem" }\n'
        )
        self.assertEqual(result.returncode, 1, result.stdout)
        config = os.path.join(os.path.basename(self.directory), "lb.toml")
        self.assertEqual(
            result.stderr.splitlines(),
            [
                f"{config}: frontends.web.tls.certificates[0].key: {self.file('other.key')} "
                f"does not match the certificate in {self.file('site.pem')} (line 6)",
                f"{config}: pools.app.tls.ca: cannot read {self.file('nothing.pem')}: "
                "No such file or directory (line 9)",
            ],
        )


class HealthCheckCommandTests(SynchronousTestCase):
    """
    ``twisted-lb check`` on a file with the health keys, as a user runs it.
    """

    def run_check(self, config: str) -> subprocess.CompletedProcess[str]:
        path = self.mktemp() + ".toml"
        with open(path, "w", encoding="utf-8") as f:
            f.write(config)
        return subprocess.run(
            [TWISTED_LB, "check", path], capture_output=True, text=True, timeout=60
        )

    def test_good(self) -> None:
        """
        Exit 0, and the summary shows the check, the outlier detection and the states.
        """
        result = self.run_check(
            FRONTEND
            + """\
[pools.app]
slow_start = 20
backends = [
  { address = "127.0.0.1:9001" },
  { address = "127.0.0.1:9002", state = "drain" },
]
[pools.app.health_check]
kind = "http"
path = "/healthz"
expect_status = "200-299"
[pools.app.outlier_detection]
"""
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn(
            "    health http GET /healthz every 2.0 s, timeout 1.0 s, rise 2, fall 3, "
            "expect 200-299\n",
            result.stdout,
        )
        self.assertIn("    outliers: eject after 5 failures", result.stdout)
        self.assertIn("    slow start 20.0 s\n", result.stdout)
        self.assertRegex(result.stdout, r"app2\s+127\.0\.0\.1:9002\s+weight 1  drain\n")

    def test_bad(self) -> None:
        """
        Exit 1, and each problem on its own line with the file and the full key path.
        """
        result = self.run_check(
            FRONTEND
            + POOL.replace('" }', '", state = "drained" }')
            + "[pools.app.health_check]\n"
            + 'path = "/healthz"\nexpect_status = "500-200"\nexpect_body = "(ok"\n'
        )
        self.assertEqual(result.returncode, 1, result.stdout)
        lines = result.stderr.splitlines()
        self.assertEqual(len(lines), 4, result.stderr)
        self.assertTrue(
            lines[0].endswith(
                ".toml: pools.app.backends[0].state: unknown state 'drained' "
                "(did you mean 'drain'?) (line 6)"
            ),
            lines,
        )
        for number, line, key in zip(
            [8, 9, 10], lines[1:], ["path", "expect_status", "expect_body"], strict=True
        ):
            self.assertTrue(
                line.endswith(
                    f".toml: pools.app.health_check.{key}: {HTTP_ONLY_CHECK} (line {number})"
                ),
                line,
            )


# -- the table of bad configs -------------------------------------------------------------------

BAD_CONFIGS_FILE = os.path.join(os.path.dirname(__file__), "bad_configs.txt")


def _bad_configs(path: str = BAD_CONFIGS_FILE) -> list[tuple[str, bool, str, list[str]]]:
    """
    The cases of ``tests/bad_configs.txt``: (name, whether the real plugins judge it, document,
    every problem as ``"key: message"``), in file order; see the comment at the top of that file.
    """
    with open(path, encoding="utf-8") as f:
        text = f.read()
    cases = []
    for block in text.split("\n=== ")[1:]:
        header, rest = block.split("\n", 1)
        name, *flags = header.split()
        if flags not in ([], ["+plugins"]):
            raise ValueError(f"{path}: case {name}: unknown flags {flags}")
        document, _, problems = rest.partition("\n---\n")
        if document.endswith("\n<no newline>"):
            document = document.removesuffix("\n<no newline>")
        else:
            document += "\n"
        lines = [line for line in problems.split("\n") if line]
        cases.append((name, flags == ["+plugins"], document, lines))
    return cases


BAD_CONFIGS = _bad_configs()


class BadConfigTests(TLSTestCase):
    """
    The table, ``tests/bad_configs.txt``: each document of :data:`BAD_CONFIGS` fails with
    exactly its problems, all of them at once, in the order of the document, each naming the
    file and the key path. One test per row (``test_NAME``).
    """

    def check(self, document: str, expected: list[str], plugins: bool) -> None:
        if plugins:
            self.patch(strategies, "installed_strategies", REAL_INSTALLED_STRATEGIES)
            self.patch(strategies, "get_strategy", REAL_GET_STRATEGY)
        installed = ", ".join(repr(name) for name in strategies.installed_strategies())
        expected = [
            line.replace("{dir}", self.directory).replace("{installed}", installed)
            for line in expected
        ]
        self.assertEqual(self.problems(document), expected)

    def test_table_size(self) -> None:
        """At least 60 bad configs, each with a unique name."""
        names = [name for name, _, _, _ in BAD_CONFIGS]
        self.assertGreaterEqual(len(names), 60)
        self.assertEqual(len(names), len(set(names)))


def _table_test(
    document: str, expected: list[str], plugins: bool
) -> Callable[[BadConfigTests], None]:
    def test(self: BadConfigTests) -> None:
        self.check(document, expected, plugins)

    return test


for _name, _plugins, _document, _expected in BAD_CONFIGS:
    setattr(BadConfigTests, f"test_{_name}", _table_test(_document, _expected, _plugins))


# -- the table of good configs ------------------------------------------------------------------


def _with_routes(*routes: str) -> str:
    """An http frontend with ``routes`` (the lines of each table), and pools app and api."""
    text = HTTP_FRONTEND
    for route in routes:
        text += "[[frontends.web.routes]]\n" + route + "\n"
    return text + POOL + POOL.replace("app", "api")


def _with_health_check(table: str) -> str:
    """A tcp frontend and its pool, with ``health_check = TABLE``."""
    return FRONTEND + POOL + f"health_check = {table}\n"


HEALTH_CHECK_DEFAULTS = HealthCheckConfig(
    kind="tcp",
    interval=2.0,
    timeout=1.0,
    rise=2,
    fall=3,
    down_interval=None,
    jitter=0.1,
    path="/",
    host=None,
    expect_status=(200, 399),
    expect_body=None,
)
OUTLIER_DETECTION_DEFAULTS = OutlierDetectionConfig(
    consecutive_failures=5,
    base_ejection_time=30.0,
    max_ejection_time=300.0,
    max_ejection_percent=50,
    count_5xx=False,
)
POOL_TLS_DEFAULTS = PoolTLSConfig(
    server_name=None, ca=None, client_cert=None, client_key=None, verify=True
)
HTTP_FRONTEND_DEFAULTS = FrontendConfig(
    name="web",
    mode="http",
    listen=("tcp:8080:interface=127.0.0.1",),
    pool="app",
    client_timeout=60.0,
    max_connections=10000,
    header_timeout=10.0,
    max_header_bytes=65536,
    max_body_bytes=0,
    trusted_proxies=(),
    routes=(),
    tunnel_timeout=3600.0,
)
UNIX_BACKENDS = (
    '[pools.app]\nbackends = [{ address = "127.0.0.1:9001" }, '
    '{ address = "unix:/run/a.sock" }, { address = "unix:/run/b.sock" }]\n'
)

GOOD_CONFIGS: list[tuple[str, str, Mapping[str, object]]] = [
    # (name, document, {path in the model, as _model_value reads it: value}). Defaults first.
    # A tcp frontend gets the http keys' defaults too; a single listen string is a 1-tuple.
    ("frontend_defaults_http", HTTP_FRONTEND + POOL, {"frontends.web": HTTP_FRONTEND_DEFAULTS}),
    (
        "frontend_defaults_tcp",
        FRONTEND + POOL,
        {"frontends.web": HTTP_FRONTEND_DEFAULTS.model_copy(update={"mode": "tcp"})},
    ),
    (
        "pool_defaults",
        HTTP_FRONTEND + POOL,
        {
            "pools.app.response_timeout": 60.0,
            "pools.app.upstream_idle_timeout": 4.0,
            "pools.app.max_idle_per_backend": 128,
            "pools.app.panic": False,
            "pools.app.slow_start": 0.0,
            "pools.app.health_check": None,
            "pools.app.outlier_detection": None,
            "pools.app.tls": None,
            "frontends.web.tls": None,
        },
    ),
    (
        "round_keys_defaults",
        FRONTEND + POOL,
        {"frontends.web.proxy_protocol_from": (), "frontends.web.underscores_in_headers": False},
    ),
    ("global_absent", FRONTEND + POOL, {"global": GlobalConfig()}),
    ("global_empty", "[global]\n" + FRONTEND + POOL, {"global": GlobalConfig(log_format="text")}),
    *[
        (
            f"global_log_format_{log_format}",
            f'[global]\nlog_format = "{log_format}"\n' + FRONTEND + POOL,
            {"global": GlobalConfig(log_format=log_format)},
        )
        for log_format in ["text", "json"]
    ],
    # Integers are accepted where seconds are expected, and stored as floats; the lower bounds.
    (
        "integer_seconds",
        FRONTEND.replace('pool = "app"', 'pool = "app"\nclient_timeout = 10')
        + POOL
        + "connect_timeout = 3\n",
        {"frontends.web.client_timeout": 10.0, "pools.app.connect_timeout": 3.0},
    ),
    (
        "lower_bounds",
        FRONTEND.replace('pool = "app"', 'pool = "app"\nmax_connections = 1')
        + "[pools.app]\nretries = 0\nconnect_timeout = 0.001\n"
        + 'backends = [{ address = "127.0.0.1:9001", weight = 1 }]\n',
        {
            "frontends.web.max_connections": 1,
            "pools.app.retries": 0,
            "pools.app.connect_timeout": 0.001,
        },
    ),
    (
        "http_lower_bounds",
        HTTP_FRONTEND
        + "max_header_bytes = 1024\nmax_body_bytes = 0\n"
        + "header_timeout = 0.001\ntunnel_timeout = 0.001\n"
        + POOL,
        {
            "frontends.web.max_header_bytes": 1024,
            "frontends.web.max_body_bytes": 0,
            "frontends.web.header_timeout": 0.001,
            "frontends.web.tunnel_timeout": 0.001,
        },
    ),
    # Durations are numbers of seconds, or strings with a unit: ms, s, m or h.
    *[
        (
            f"duration_{index}",
            FRONTEND + f"client_timeout = {written}\n" + POOL,
            {"frontends.web.client_timeout": seconds},
        )
        for index, (written, seconds) in enumerate(
            [
                ("2", 2.0),
                ("2.5", 2.5),
                ('"500ms"', 0.5),
                ('"30s"', 30.0),
                ('"2m"', 120.0),
                ('"1h"', 3600.0),
                ('"1.5s"', 1.5),
            ]
        )
    ],
    (
        "duration_down_interval",
        _with_health_check('{ down_interval = "10s" }'),
        {"pools.app.health_check.down_interval": 10.0},
    ),
    ("duration_slow_start", FRONTEND + POOL + 'slow_start = "0s"\n', {"pools.app.slow_start": 0.0}),
    # Any endpoint type Twisted parses is accepted, including plugins such as tcp6:.
    (
        "listen_other_endpoint_types",
        FRONTEND.replace(
            'listen = "tcp:8080:interface=127.0.0.1"',
            'listen = ["unix:/run/lb.sock", "tcp6:8443", "tcp:0"]',
        )
        + POOL,
        {"frontends.web.listen": ("unix:/run/lb.sock", "tcp6:8443", "tcp:0")},
    ),
    (
        "http_every_key",
        HTTP_FRONTEND
        + """\
header_timeout = 2.5
max_header_bytes = 1024
max_body_bytes = 1048576
trusted_proxies = ["10.0.0.0/8", "192.0.2.7", "2001:db8::/32", "10.1.2.3/16", "::1"]
tunnel_timeout = 30
[[frontends.web.routes]]
host = "api.example.com"
path_prefix = "/v1/"
pool = "api"
"""
        + POOL
        + POOL.replace("app", "api"),
        {
            "frontends.web.header_timeout": 2.5,
            "frontends.web.max_header_bytes": 1024,
            "frontends.web.max_body_bytes": 1048576,
            "frontends.web.tunnel_timeout": 30.0,
            # Kept as written; each is a valid ip_network(text, strict=False).
            "frontends.web.trusted_proxies": (
                "10.0.0.0/8",
                "192.0.2.7",
                "2001:db8::/32",
                "10.1.2.3/16",
                "::1",
            ),
            "frontends.web.routes": (
                RouteConfig(pool="api", host="api.example.com", path_prefix="/v1/"),
            ),
        },
    ),
    (
        "http_empty_trusted_proxies",
        HTTP_FRONTEND + "trusted_proxies = []\n" + POOL,
        {"frontends.web.trusted_proxies": ()},
    ),
    (
        "round_keys",
        HTTP_FRONTEND.replace('"tcp:8080', '"haproxy:tcp:8080')
        + 'proxy_protocol_from = ["10.0.0.1/8", "::1"]\nunderscores_in_headers = true\n'
        + POOL,
        {
            "frontends.web.proxy_protocol_from": ("10.0.0.1/8", "::1"),
            "frontends.web.underscores_in_headers": True,
        },
    ),
    # Routes keep file order; host only, path_prefix only and both are accepted; hosts are
    # kept in lower case, and may end with the root's dot, as the library's Route takes them;
    # the inline array is the same as the array of tables.
    (
        "routes_order_and_forms",
        _with_routes(
            'host = "API.Example.com"\npath_prefix = "/v1/"\npool = "api"',
            'host = "*.example.com"\npool = "api"',
            'path_prefix = "/static"\npool = "app"',
            'host = "192.0.2.7"\npool = "app"',
            'host = "[2001:DB8::1]"\npool = "app"',
            'host = "under_score.internal"\npool = "app"',
            'host = "localhost"\npath_prefix = "/"\npool = "app"',
            'path_prefix = "/go/https://"\npool = "app"',
            'host = "*.Example.org."\npool = "app"',
        ),
        {
            "frontends.web.routes": (
                RouteConfig(pool="api", host="api.example.com", path_prefix="/v1/"),
                RouteConfig(pool="api", host="*.example.com"),
                RouteConfig(pool="app", path_prefix="/static"),
                RouteConfig(pool="app", host="192.0.2.7"),
                RouteConfig(pool="app", host="[2001:db8::1]"),
                RouteConfig(pool="app", host="under_score.internal"),
                RouteConfig(pool="app", host="localhost", path_prefix="/"),
                RouteConfig(pool="app", path_prefix="/go/https://"),
                RouteConfig(pool="app", host="*.example.org."),
            )
        },
    ),
    (
        "routes_inline",
        HTTP_FRONTEND
        + 'routes = [{ host = "API.Example.com", path_prefix = "/v1/", pool = "api" }]\n'
        + POOL
        + POOL.replace("app", "api"),
        {
            "frontends.web.routes": (
                RouteConfig(pool="api", host="api.example.com", path_prefix="/v1/"),
            )
        },
    ),
    ("routes_empty", HTTP_FRONTEND + "routes = []\n" + POOL, {"frontends.web.routes": ()}),
    # Pools: addresses shared with another pool, bare addresses, backend states, options.
    (
        "backend_same_address_other_pool",
        FRONTEND + POOL + POOL.replace("app", "other"),
        {"pools.other.backends": (BackendConfig("127.0.0.1:9001", "other1"),)},
    ),
    (
        "backends_bare_strings",
        FRONTEND + '[pools.app]\nbackends = ["127.0.0.1:9001", { address = "127.0.0.1:9002", '
        'weight = 2 }, "unix:/run/app.sock"]\n',
        {
            "pools.app.backends": (
                BackendConfig("127.0.0.1:9001", "app1"),
                BackendConfig("127.0.0.1:9002", "app2", 2),
                BackendConfig("unix:/run/app.sock", "app3"),
            )
        },
    ),
    (
        "backend_states",
        FRONTEND
        + """\
[pools.app]
backends = [
  { address = "127.0.0.1:9001" },
  { address = "127.0.0.1:9002", state = "ready" },
  { address = "127.0.0.1:9003", state = "drain" },
  { address = "127.0.0.1:9004", state = "maint", backup = true },
]
""",
        {
            "pools.app.backends": (
                BackendConfig("127.0.0.1:9001", "app1", state="ready"),
                BackendConfig("127.0.0.1:9002", "app2", state="ready"),
                BackendConfig("127.0.0.1:9003", "app3", state="drain"),
                BackendConfig("127.0.0.1:9004", "app4", backup=True, state="maint"),
            )
        },
    ),
    # Any table is a valid strategy_options as far as the config goes; its values are frozen
    # and handed to the strategy's factory as they are.
    (
        "strategy_options_any_table",
        FRONTEND + POOL + "strategy_options = { anything = [1, 2.5] }\n",
        {"pools.app.strategy_options": {"anything": (1, 2.5)}},
    ),
    (
        "http_pool_every_key",
        HTTP_FRONTEND
        + POOL
        + "response_timeout = 5\nupstream_idle_timeout = 0.5\nmax_idle_per_backend = 0\n",
        {
            "pools.app.response_timeout": 5.0,
            "pools.app.upstream_idle_timeout": 0.5,
            "pools.app.max_idle_per_backend": 0,
        },
    ),
    # A pool that only tcp frontends use may still set the http pool keys.
    (
        "http_pool_keys_ignored_by_tcp",
        FRONTEND + POOL + "response_timeout = 1\nmax_idle_per_backend = 3\n",
        {"pools.app.response_timeout": 1.0, "pools.app.max_idle_per_backend": 3},
    ),
    (
        "panic_slow_start",
        FRONTEND + POOL + "panic = true\nslow_start = 30\n",
        {"pools.app.panic": True, "pools.app.slow_start": 30.0},
    ),
    (
        "panic_slow_start_off",
        FRONTEND + POOL + "panic = false\nslow_start = 0\n",
        {"pools.app.panic": False, "pools.app.slow_start": 0.0},
    ),
    # Health checks: an empty table, as a section or inline, means tcp checks with defaults.
    (
        "health_check_empty_section",
        FRONTEND + POOL + "[pools.app.health_check]\n",
        {"pools.app.health_check": HEALTH_CHECK_DEFAULTS},
    ),
    (
        "health_check_empty_inline",
        _with_health_check("{}"),
        {"pools.app.health_check": HEALTH_CHECK_DEFAULTS},
    ),
    (
        "health_check_every_key",
        FRONTEND
        + POOL
        + """\
[pools.app.health_check]
kind = "http"
interval = 5
timeout = 0.5
rise = 1
fall = 10
down_interval = 30
jitter = 0
path = "/healthz?verbose=1"
host = "app.internal:8080"
expect_status = "200-299"
expect_body = '"status": *"up"'
""",
        {
            "pools.app.health_check": HealthCheckConfig(
                kind="http",
                interval=5.0,
                timeout=0.5,
                rise=1,
                fall=10,
                down_interval=30.0,
                jitter=0.0,
                path="/healthz?verbose=1",
                host="app.internal:8080",
                expect_status=(200, 299),
                expect_body='"status": *"up"',
            ),
            # Integer seconds become floats.
            "pools.app.health_check.interval": 5.0,
            "pools.app.health_check.down_interval": 30.0,
            "pools.app.health_check.jitter": 0.0,
        },
    ),
    # expect_status: a range, a code in a string, or an integer code.
    *[
        (
            f"health_check_expect_status_{index}",
            _with_health_check(f'{{ kind = "http", expect_status = {written} }}'),
            {"pools.app.health_check.expect_status": expected},
        )
        for index, (written, expected) in enumerate(
            [
                ('"200-399"', (200, 399)),
                ('"100-599"', (100, 599)),
                ('"204-204"', (204, 204)),
                ('"204"', (204, 204)),
                ("503", (503, 503)),
            ]
        )
    ],
    # expect_body is a Python regular expression, kept as written.
    (
        "health_check_expect_body",
        _with_health_check("{ kind = 'http', expect_body = '^OK\\b' }"),
        {"pools.app.health_check.expect_body": "^OK\\b"},
    ),
    # jitter is a fraction 0 <= jitter < 1, stored as a float.
    *[
        (
            f"health_check_jitter_{index}",
            _with_health_check(f"{{ jitter = {written} }}"),
            {"pools.app.health_check.jitter": expected},
        )
        for index, (written, expected) in enumerate(
            [("0", 0.0), ("0.0", 0.0), ("0.999", 0.999), ("0.5", 0.5)]
        )
    ],
    # A path starts with '/', is ASCII without spaces or control characters, and has no
    # fragment; it may have a query.
    *[
        (
            f"health_check_path_{index}",
            _with_health_check(f'{{ kind = "http", path = "{path}" }}'),
            {"pools.app.health_check.path": path},
        )
        for index, path in enumerate(
            ["/", "/healthz", "/a/b?c=d&e", "/caf%C3%A9", "/~user/status", "/://"]
        )
    ],
    # A host is a host name or an IP address (IPv6 in brackets), with an optional port; it is
    # kept as written.
    *[
        (
            f"health_check_host_{index}",
            _with_health_check(f'{{ kind = "http", host = "{host}" }}'),
            {"pools.app.health_check.host": host},
        )
        for index, host in enumerate(
            [
                "app.internal",
                "App.Internal:8080",
                "localhost",
                "10.0.0.5",
                "10.0.0.5:65535",
                "[2001:db8::1]",
                "[::1]:1",
                "under_score",
            ]
        )
    ],
    (
        "outlier_detection_empty",
        FRONTEND + POOL + "[pools.app.outlier_detection]\n",
        {"pools.app.outlier_detection": OUTLIER_DETECTION_DEFAULTS},
    ),
    (
        "outlier_detection_every_key",
        FRONTEND
        + POOL
        + """\
[pools.app.outlier_detection]
consecutive_failures = 1
base_ejection_time = 10
max_ejection_time = 10
max_ejection_percent = 100
count_5xx = true
""",
        {
            "pools.app.outlier_detection": OutlierDetectionConfig(
                consecutive_failures=1,
                base_ejection_time=10.0,
                max_ejection_time=10.0,
                max_ejection_percent=100,
                count_5xx=True,
            ),
            "pools.app.outlier_detection.base_ejection_time": 10.0,
        },
    ),
    (
        "outlier_detection_zero_percent",
        FRONTEND + POOL + "outlier_detection = { max_ejection_percent = 0 }\n",
        {"pools.app.outlier_detection.max_ejection_percent": 0},
    ),
    # TLS to the backends: an empty table verifies against the platform's trust store, each
    # backend by its host; verify = false is kept, and then a UNIX socket backend needs no
    # server_name; with verification on, a server_name lets it in.
    ("pool_tls_empty_inline", FRONTEND + POOL + "tls = {}\n", {"pools.app.tls": POOL_TLS_DEFAULTS}),
    (
        "pool_tls_empty_section",
        FRONTEND + POOL + "[pools.app.tls]\n",
        {"pools.app.tls": POOL_TLS_DEFAULTS},
    ),
    (
        "pool_tls_verify_off",
        FRONTEND + '[pools.app]\nbackends = [{ address = "unix:/run/app.sock" }]\n'
        "tls = { verify = false }\n",
        {"pools.app.tls": PoolTLSConfig(verify=False)},
    ),
    (
        "pool_tls_unix_backend_with_server_name",
        FRONTEND + UNIX_BACKENDS + 'tls = { server_name = "app.internal" }\n',
        {"pools.app.tls": PoolTLSConfig(server_name="app.internal")},
    ),
    # server_name is a DNS name or an IP address, kept as written.
    *[
        (
            f"pool_tls_server_name_{index}",
            FRONTEND + POOL + f"tls = {{ server_name = {json.dumps(name)} }}\n",
            {"pools.app.tls.server_name": name},
        )
        for index, name in enumerate(
            ["app.internal", "App-1.Example.COM", "10.0.0.5", "2001:db8::1", "a_b", "x"]
        )
    ],
]


def _model_value(config: Config, path: str) -> object:
    """
    The value of ``config`` at ``path``: ``global`` is ``config.global_config``;
    ``frontends.NAME`` and ``pools.NAME`` are the entries of those mappings; each further part
    is an attribute (``pools.app.health_check.jitter``).
    """
    section, _, rest = path.partition(".")
    value: object
    if section == "global":
        value = config.global_config
    else:
        name, _, rest = rest.partition(".")
        value = getattr(config, section)[name]
    for attribute in rest.split(".") if rest else []:
        value = getattr(value, attribute)
    return value


class GoodConfigTests(ConfigTestCase):
    """
    The table :data:`GOOD_CONFIGS`: each document loads, and the model holds each value at its
    path; a number is also of the type written in the table, so that seconds written as ``10``
    are held as ``10.0`` and a boolean is not an integer. One test per row (``test_NAME``).
    """

    def check(self, document: str, expected: Mapping[str, object]) -> None:
        config = self.load(document)
        values = {path: _model_value(config, path) for path in expected}
        self.assertEqual(values, expected)
        for path, value in expected.items():
            if isinstance(value, int | float):
                self.assertIs(type(values[path]), type(value), path)

    def test_table_size(self) -> None:
        """At least 60 good configs, each with a unique name."""
        names = [name for name, _, _ in GOOD_CONFIGS]
        self.assertEqual(len(names), len(set(names)))
        self.assertGreaterEqual(len(names), 60)


def _good_table_test(
    document: str, expected: Mapping[str, object]
) -> Callable[[GoodConfigTests], None]:
    def test(self: GoodConfigTests) -> None:
        self.check(document, expected)

    return test


for _name, _document, _model_values in GOOD_CONFIGS:
    setattr(GoodConfigTests, f"test_{_name}", _good_table_test(_document, _model_values))


class SummaryTests(ConfigTestCase):
    """
    :func:`format_summary`.
    """

    def test_example(self) -> None:
        config = parse_config(EXAMPLE, "lb.toml")
        self.assertEqual(
            format_summary(config),
            """\
lb.toml: OK
frontend web (tcp) listen tcp:8080:interface=127.0.0.1 -> pool app
  pool app: round_robin, connect_timeout 5.0 s, retries 2
    app1  127.0.0.1:9001  weight 1
    big   127.0.0.1:9002  weight 3
    app3  10.0.0.9:80     weight 1  backup""",
        )

    def test_shared_and_unused(self) -> None:
        """
        A pool shared by two frontends is described once; unused pools are listed last.
        """
        config = parse_config(
            """\
[frontends.web]
mode = "tcp"
listen = ["tcp:80", "tcp:81"]
pool = "app"
[frontends.alt]
mode = "tcp"
listen = "tcp:82"
pool = "app"
[pools.old]
strategy = "random"
strategy_options = { seed = 1, tags = ["a"] }
connect_timeout = 1
retries = 0
backends = [{ address = "unix:/run/old.sock" }]
"""
            + POOL,
            "lb.toml",
        )
        self.assertEqual(
            format_summary(config),
            """\
lb.toml: OK
frontend web (tcp) listen tcp:80, tcp:81 -> pool app
  pool app: round_robin, connect_timeout 5.0 s, retries 2
    app1  127.0.0.1:9001  weight 1
frontend alt (tcp) listen tcp:82 -> pool app
  pool app: (as above)
unused:
  pool old: random (seed=1, tags=['a']), connect_timeout 1.0 s, retries 0
    old1  unix:/run/old.sock  weight 1""",
        )

    def test_http_routes(self) -> None:
        """
        An http frontend lists its routes, with the parts each has, then the pools it uses:
        its own first, then each route's once. A pool used only by a route is not unused.
        """
        config = parse_config(
            """\
[global]
log_format = "json"
[frontends.web]
mode = "http"
listen = "tcp:8080"
pool = "app"
[[frontends.web.routes]]
host = "api.example.com"
path_prefix = "/v1/"
pool = "api"
[[frontends.web.routes]]
host = "*.example.com"
pool = "app"
[[frontends.web.routes]]
path_prefix = "/static/"
pool = "api"
[frontends.raw]
mode = "tcp"
listen = "tcp:9000"
pool = "api"
[pools.api]
backends = [{ address = "127.0.0.1:9101" }]
[pools.spare]
backends = [{ address = "127.0.0.1:9201" }]
"""
            + POOL,
            "lb.toml",
        )
        self.assertEqual(
            format_summary(config),
            """\
lb.toml: OK
global: log_format json
frontend web (http) listen tcp:8080 -> pool app
  route host=api.example.com path_prefix=/v1/ -> pool api
  route host=*.example.com -> pool app
  route path_prefix=/static/ -> pool api
  pool app: round_robin, connect_timeout 5.0 s, retries 2
    app1  127.0.0.1:9001  weight 1
  pool api: round_robin, connect_timeout 5.0 s, retries 2
    api1  127.0.0.1:9101  weight 1
frontend raw (tcp) listen tcp:9000 -> pool api
  pool api: (as above)
unused:
  pool spare: round_robin, connect_timeout 5.0 s, retries 2
    spare1  127.0.0.1:9201  weight 1""",
        )

    def test_text_log_format_not_shown(self) -> None:
        config = parse_config('[global]\nlog_format = "text"\n' + FRONTEND + POOL, "lb.toml")
        self.assertNotIn("log_format", format_summary(config))

    def test_health(self) -> None:
        """
        A pool's health check, outlier detection, slow start and panic mode are shown under
        it when set, with the check's less common keys on a second line; a backend's state
        when it is not ready.
        """
        config = parse_config(
            FRONTEND
            + """\
[pools.app]
panic = true
slow_start = 30
backends = [
  { address = "127.0.0.1:9001", state = "ready" },
  { address = "127.0.0.1:9002", state = "drain" },
  { address = "127.0.0.1:9003", state = "maint", backup = true },
]
[pools.app.health_check]
kind = "http"
path = "/healthz"
[pools.app.outlier_detection]
count_5xx = true
[pools.tcp]
slow_start = 5
backends = [{ address = "127.0.0.1:9101" }]
[pools.tcp.health_check]
[pools.full]
panic = true
backends = [{ address = "127.0.0.1:9201" }]
[pools.full.health_check]
kind = "http"
host = "app.internal"
expect_status = 204
expect_body = "^ok$"
down_interval = 10
jitter = 0
[pools.full.outlier_detection]
consecutive_failures = 3
base_ejection_time = 10
max_ejection_time = 60
max_ejection_percent = 100
""",
            "lb.toml",
        )
        self.assertEqual(
            format_summary(config),
            """\
lb.toml: OK
frontend web (tcp) listen tcp:8080:interface=127.0.0.1 -> pool app
  pool app: round_robin, connect_timeout 5.0 s, retries 2
    health http GET /healthz every 2.0 s, timeout 1.0 s, rise 2, fall 3, expect 200-399
    outliers: eject after 5 failures for 30.0 s (max 300.0 s), at most 50%, 5xx counted
    slow start 30.0 s, panic: all backends when none is UP
    app1  127.0.0.1:9001  weight 1
    app2  127.0.0.1:9002  weight 1  drain
    app3  127.0.0.1:9003  weight 1  backup  maint
unused:
  pool tcp: round_robin, connect_timeout 5.0 s, retries 2
    health tcp connect every 2.0 s, timeout 1.0 s, rise 2, fall 3
    slow start 5.0 s
    tcp1  127.0.0.1:9101  weight 1
  pool full: round_robin, connect_timeout 5.0 s, retries 2
    health http GET / every 2.0 s, timeout 1.0 s, rise 2, fall 3, expect 204
      Host app.internal, body ~ '^ok$', every 10.0 s when DOWN, jitter 0.0
    outliers: eject after 3 failures for 10.0 s (max 60.0 s), at most 100%
    panic: all backends when none is UP
    full1  127.0.0.1:9201  weight 1""",
        )

    def test_complete_example_in_docs(self) -> None:
        """
        The complete example at the top of docs/config.rst is valid, and its summary is the
        one the page shows.
        """
        path = os.path.join(os.path.dirname(__file__), os.pardir, "docs", "config.rst")
        with open(path, encoding="utf-8") as f:
            page = f.read()
        blocks = page.split(".. code-block::")
        example = next(b for b in blocks if b.startswith(" toml") and "[frontends.web]" in b)
        summary = next(b for b in blocks if b.startswith(" console") and "lb.toml: OK" in b)

        def dedent(block: str) -> str:
            lines = block.split("\n\n", 1)[1].split("\n")
            body = []
            for line in lines:
                if line and not line.startswith("   "):
                    break
                body.append(line[3:])
            return "\n".join(body).strip("\n")

        shown = dedent(summary).split("\n")
        self.assertEqual(shown[0], "$ twisted-lb check lb.toml")
        config = parse_config(dedent(example) + "\n", "lb.toml")
        self.assertEqual(format_summary(config), "\n".join(shown[1:]))


# -- property tests ----------------------------------------------------------------------------

# Table names, and every key of every table (from the JSON Schema, so that new keys are in).
_KEYS = [
    "web",
    "app",
    *dict.fromkeys(
        key
        for table in [json_schema(), *json_schema()["$defs"].values()]
        for key in table["properties"]
    ),
]
_WORDS = [
    "tcp",
    "http",
    "app",
    "web",
    "round_robin",
    "127.0.0.1:9001",
    "[::1]:80",
    "unix:/run/app.sock",
    "tcp:8080",
    "tcp:8080:interface=127.0.0.1",
    "unix:/run/lb.sock",
    "tcp6:8081",
    "json",
    "text",
    "api.example.com",
    "*.example.com",
    "a.*.com",
    "x.com:80",
    "[::1]",
    "/v1/",
    "/a?b",
    "v1",
    "10.0.0.0/8",
    "::1",
    "10.0.0.0/33",
    "/healthz",
    "/a b",
    "app.internal:8080",
    "[::1]:x",
    "200-399",
    "500-200",
    "2xx",
    "204",
    "^ok$",
    "(",
    "a{4294967296}",
    "ready",
    "drain",
    "maint",
    "TLSv1.2",
    "TLSv1.3",
    "tlsv1.3",
    "TLSv1.1",
    "none",
    "optional",
    "required",
    "on",
    "app.internal",
    "[::1]",
    "*.example.com",
    "site.pem",
    "/",
    "",
    ".",
    "a\u0000b",
]
_keys = st.sampled_from(_KEYS) | st.text(max_size=6)
_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-3, max_value=3)
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(_WORDS)
)
_values = st.recursive(
    _scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_keys, children, max_size=6),
    max_leaves=40,
)


def _section(keys: list[str]) -> st.SearchStrategy[dict[str, object]]:
    """
    A table of named tables whose keys are mostly the right ones, with any values.
    """
    entry = st.dictionaries(st.sampled_from(keys) | _keys, _values, max_size=8)
    return st.dictionaries(
        st.sampled_from(["web", "app", "api"]) | _keys, entry | _values, max_size=3
    )


_routes = st.lists(
    st.dictionaries(
        st.sampled_from(["host", "path_prefix", "pool"]) | _keys,
        st.sampled_from(_WORDS) | _values,
        max_size=4,
    )
    | _values,
    max_size=3,
)
_paths = st.sampled_from(_WORDS) | _values
_frontend_tls_entry = (
    st.fixed_dictionaries(
        {},
        optional={
            "certificates": st.lists(
                st.fixed_dictionaries({}, optional={"cert": _paths, "key": _paths}) | _values,
                max_size=2,
            )
            | _values,
            "min_version": st.sampled_from(_WORDS) | _values,
            "ciphers": _values,
            "client_ca": _paths,
            "verify_client": st.sampled_from(_WORDS) | _values,
            "cert": _paths,
        },
    )
    | _values
)
_pool_tls_entry = (
    st.fixed_dictionaries(
        {},
        optional={
            "server_name": st.sampled_from(_WORDS) | _values,
            "ca": _paths,
            "client_cert": _paths,
            "client_key": _paths,
            "verify": st.booleans() | _values,
        },
    )
    | _values
)
_frontend_entry = st.fixed_dictionaries(
    {},
    optional={
        "mode": st.sampled_from(["tcp", "http"]) | _values,
        "listen": st.sampled_from(_WORDS) | _values,
        "pool": st.sampled_from(["app", "api"]) | _values,
        "header_timeout": _values,
        "max_header_bytes": st.integers() | _values,
        "max_body_bytes": st.integers() | _values,
        "trusted_proxies": st.lists(st.sampled_from(_WORDS) | _scalars, max_size=3) | _values,
        "routes": _routes,
        "tunnel_timeout": _values,
        "tls": _frontend_tls_entry,
    },
)

_health_check_entry = (
    st.fixed_dictionaries(
        {},
        optional={
            "kind": st.sampled_from(["tcp", "http"]) | _values,
            "interval": _values,
            "timeout": _values,
            "rise": st.integers(min_value=-1, max_value=3) | _values,
            "fall": _values,
            "down_interval": _values,
            "jitter": st.floats() | _values,
            "path": st.sampled_from(_WORDS) | _values,
            "host": st.sampled_from(_WORDS) | _values,
            "expect_status": st.sampled_from(_WORDS) | st.integers(90, 610) | _values,
            "expect_body": st.sampled_from(_WORDS) | _values,
        },
    )
    | _values
)
_outlier_detection_entry = (
    st.fixed_dictionaries(
        {},
        optional={
            "consecutive_failures": st.integers(min_value=-1, max_value=3) | _values,
            "base_ejection_time": _values,
            "max_ejection_time": _values,
            "max_ejection_percent": st.integers(min_value=-1, max_value=101) | _values,
            "count_5xx": _values,
        },
    )
    | _values
)
_pool_entry = st.fixed_dictionaries(
    {
        "backends": st.lists(
            st.fixed_dictionaries(
                {"address": st.sampled_from(["127.0.0.1:9001", "127.0.0.1:9002"])},
                optional={"state": st.sampled_from(_WORDS) | _values},
            ),
            min_size=1,
            max_size=2,
        )
    },
    optional={
        "health_check": _health_check_entry,
        "outlier_detection": _outlier_detection_entry,
        "panic": _values,
        "slow_start": _values,
        "tls": _pool_tls_entry,
    },
)

_documents = st.one_of(
    st.dictionaries(_keys, _values, max_size=5),
    st.fixed_dictionaries(
        {},
        optional={
            # Each table's keys, and one that belongs in the table below it.
            "frontends": _section([*FrontendConfig.keys(), "certificates"]),
            "pools": _section([*PoolConfig.keys(), "server_name"]),
            "global": st.dictionaries(
                st.sampled_from(["log_format"]) | _keys, st.sampled_from(_WORDS) | _values
            )
            | _values,
            "admin": _values,
        },
    ),
    st.fixed_dictionaries(
        {
            "frontends": st.dictionaries(st.sampled_from(["web", "api"]), _frontend_entry),
            "pools": st.just({"app": {"backends": [{"address": "127.0.0.1:9001"}]}}),
        }
    ),
    st.fixed_dictionaries(
        {
            "frontends": st.just({"web": {"mode": "http", "listen": "tcp:8080", "pool": "app"}}),
            "pools": st.fixed_dictionaries({"app": _pool_entry}),
        }
    ),
)


_NAME_CHARS = "abcxyz_-. 0"
_seconds = st.integers(min_value=1, max_value=10**6) | st.floats(
    min_value=0, max_value=1e9, exclude_min=True, allow_nan=False, allow_infinity=False
)
_option_values = st.recursive(
    st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")), max_size=5),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.text(_NAME_CHARS, min_size=1, max_size=4), children, max_size=3)
    ),
    max_leaves=8,
)


def _toml(value: object) -> str:
    """
    A TOML value for the generated documents: JSON strings are TOML basic strings.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    assert isinstance(value, Mapping)
    pairs = ", ".join(f"{json.dumps(key)} = {_toml(item)}" for key, item in value.items())
    return "{ " + pairs + " }"


_label = st.text("abcXYZ019-_", min_size=1, max_size=5)
_host_names = st.lists(_label, min_size=1, max_size=3).map(".".join)
_hosts = (
    _host_names
    | _host_names.map(lambda name: "*." + name)
    | st.ip_addresses(v=4).map(str)
    | st.ip_addresses(v=6).map(lambda address: f"[{address}]")
)
_path_prefixes = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="?#"),
    max_size=8,
).map(lambda text: "/" + text)
_trusted_proxies = st.ip_addresses().map(str) | st.tuples(
    st.ip_addresses(), st.integers(min_value=0, max_value=128)
).map(lambda pair: f"{pair[0]}/{pair[1] % (pair[0].max_prefixlen + 1)}")


@st.composite
def _route(draw: Callable[..., Any], pools: list[str]) -> tuple[dict[str, str], RouteConfig]:
    """
    A valid route table, and the model it must parse to.
    """
    table: dict[str, str] = {}
    parts = draw(st.sampled_from(["host", "path_prefix", "both"]))
    if parts != "path_prefix":
        table["host"] = draw(_hosts)
    if parts != "host":
        table["path_prefix"] = draw(_path_prefixes)
    table["pool"] = draw(st.sampled_from(pools))
    host = table.get("host")
    route = RouteConfig(
        pool=table["pool"],
        host=None if host is None else host.lower(),
        path_prefix=table.get("path_prefix"),
    )
    return table, route


_check_paths = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="#"),
    max_size=8,
).map(lambda text: "/" + text)
_ports = st.integers(min_value=1, max_value=65535).map(str)
_check_hosts = (
    _host_names
    | st.tuples(_host_names, _ports).map(":".join)
    | st.ip_addresses(v=4).map(str)
    | st.ip_addresses(v=6).map(lambda address: f"[{address}]")
    | st.tuples(st.ip_addresses(v=6), _ports).map(lambda pair: f"[{pair[0]}]:{pair[1]}")
)
_patterns = st.sampled_from(["ok", "^OK$", '"status": *"up"', r"\d+", "a|b"]) | st.text(
    st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")), min_size=1, max_size=8
).map(re.escape)


_server_names = (
    _host_names
    | st.ip_addresses().map(str)
    | st.sampled_from(["app.internal", "a" * 63 + ".example"])
)


@st.composite
def _health_check(draw: Callable[..., Any]) -> tuple[dict[str, object], HealthCheckConfig]:
    """
    A valid ``health_check`` table, and the model it must parse to.
    """
    table: dict[str, object] = {}
    kind = draw(st.sampled_from([None, "tcp", "http"]))
    if kind is not None:
        table["kind"] = kind
    for key in ["interval", "timeout", "down_interval"]:
        if draw(st.booleans()):
            table[key] = draw(_seconds)
    for key in ["rise", "fall"]:
        if draw(st.booleans()):
            table[key] = draw(st.integers(min_value=1, max_value=100))
    if draw(st.booleans()):
        table["jitter"] = draw(st.just(0) | st.floats(min_value=0, max_value=1, exclude_max=True))
    status = (200, 399)
    if kind == "http":
        if draw(st.booleans()):
            table["path"] = draw(_check_paths)
        if draw(st.booleans()):
            table["host"] = draw(_check_hosts)
        if draw(st.booleans()):
            codes = st.integers(min_value=100, max_value=599)
            low, high = sorted([draw(codes), draw(codes)])
            form = draw(st.sampled_from(["range", "string", "integer"]))
            if form == "range":
                table["expect_status"], status = f"{low}-{high}", (low, high)
            else:
                table["expect_status"] = str(low) if form == "string" else low
                status = (low, low)
        if draw(st.booleans()):
            table["expect_body"] = draw(_patterns)
    down_interval = table.get("down_interval")
    check = HealthCheckConfig(
        kind=kind or "tcp",
        interval=float(table.get("interval", 2.0)),  # type: ignore[arg-type]
        timeout=float(table.get("timeout", 1.0)),  # type: ignore[arg-type]
        rise=int(table.get("rise", 2)),  # type: ignore[call-overload]
        fall=int(table.get("fall", 3)),  # type: ignore[call-overload]
        down_interval=None if down_interval is None else float(down_interval),  # type: ignore[arg-type]
        jitter=float(table.get("jitter", 0.1)),  # type: ignore[arg-type]
        path=str(table.get("path", "/")),
        host=table.get("host"),  # type: ignore[arg-type]
        expect_status=status,
        expect_body=table.get("expect_body"),  # type: ignore[arg-type]
    )
    return table, check


@st.composite
def _outlier_detection(
    draw: Callable[..., Any],
) -> tuple[dict[str, object], OutlierDetectionConfig]:
    """
    A valid ``outlier_detection`` table, and the model it must parse to.
    """
    table: dict[str, object] = {}
    if draw(st.booleans()):
        table["consecutive_failures"] = draw(st.integers(min_value=1, max_value=1000))
    base: float = 30.0
    if draw(st.booleans()):
        table["base_ejection_time"] = draw(_seconds)
        base = float(table["base_ejection_time"])  # type: ignore[arg-type]
    cap = 300.0
    if base > cap or draw(st.booleans()):
        table["max_ejection_time"] = draw(
            st.floats(min_value=base, max_value=2e9, allow_nan=False) | st.just(base)
        )
        cap = float(table["max_ejection_time"])  # type: ignore[arg-type]
    if draw(st.booleans()):
        table["max_ejection_percent"] = draw(st.integers(min_value=0, max_value=100))
    if draw(st.booleans()):
        table["count_5xx"] = draw(st.booleans())
    detection = OutlierDetectionConfig(
        consecutive_failures=int(table.get("consecutive_failures", 5)),  # type: ignore[call-overload]
        base_ejection_time=base,
        max_ejection_time=cap,
        max_ejection_percent=int(table.get("max_ejection_percent", 50)),  # type: ignore[call-overload]
        count_5xx=bool(table.get("count_5xx", False)),
    )
    return table, detection


def _frozen(value: object) -> object:
    if isinstance(value, list):
        return tuple(_frozen(item) for item in value)
    if isinstance(value, dict):
        return {key: _frozen(item) for key, item in value.items()}
    return value


@st.composite
def _valid_documents(draw: Callable[..., Any]) -> tuple[str, Config]:
    """
    A valid document as TOML text, and the model it must parse to.
    """
    ports = iter(range(1024, 65536))
    lines: list[str] = []
    pools: dict[str, PoolConfig] = {}
    names = st.text(_NAME_CHARS, min_size=1, max_size=6)
    for pool_name in draw(st.lists(names, min_size=1, max_size=3, unique=True)):
        lines.append(f"[pools.{json.dumps(pool_name)}]")
        pool_kwargs: dict[str, Any] = {}
        if draw(st.booleans()):
            pool_kwargs["strategy"] = draw(st.sampled_from(INSTALLED))
        if draw(st.booleans()):
            pool_kwargs["strategy_options"] = draw(
                st.dictionaries(names, _option_values, max_size=3)
            )
        if draw(st.booleans()):
            pool_kwargs["connect_timeout"] = draw(_seconds)
        if draw(st.booleans()):
            pool_kwargs["retries"] = draw(st.integers(min_value=0, max_value=100))
        if draw(st.booleans()):
            pool_kwargs["response_timeout"] = draw(_seconds)
        if draw(st.booleans()):
            pool_kwargs["upstream_idle_timeout"] = draw(_seconds)
        if draw(st.booleans()):
            pool_kwargs["max_idle_per_backend"] = draw(st.integers(min_value=0, max_value=1000))
        if draw(st.booleans()):
            pool_kwargs["panic"] = draw(st.booleans())
        if draw(st.booleans()):
            pool_kwargs["slow_start"] = draw(st.just(0) | _seconds)
        # Each of the pool's tables is written inline, or as a [pools.NAME.KEY] section after
        # the backends.
        sections: list[str] = []
        models: dict[str, object] = {}
        for key, strategy in [
            ("health_check", _health_check()),
            ("outlier_detection", _outlier_detection()),
        ]:
            if draw(st.booleans()):
                sub_table, models[key] = draw(strategy)
                if draw(st.booleans()):
                    pool_kwargs[key] = sub_table
                else:
                    sections.append(f"[pools.{json.dumps(pool_name)}.{key}]")
                    sections.extend(f"{k} = {_toml(v)}" for k, v in sub_table.items())
        for key, value in pool_kwargs.items():
            lines.append(f"{key} = {_toml(value)}")
        pool_kwargs.update(models)
        backends: list[BackendConfig] = []
        lines.append("backends = [")
        for index in range(draw(st.integers(min_value=1, max_value=4))):
            port = next(ports)
            forms = [f"127.0.0.1:{port}", f"[::1]:{port}", f"h{port}.internal:80", f"unix:/{port}"]
            address = draw(st.sampled_from(forms))
            table: dict[str, object] = {"address": address}
            if draw(st.booleans()):
                # '#' is not in pool names, so explicit names never meet default ones.
                table["name"] = f"#{index}" + draw(names)
            if draw(st.booleans()):
                table["weight"] = draw(st.integers(min_value=1, max_value=256))
            if draw(st.booleans()):
                table["backup"] = draw(st.booleans())
            if draw(st.booleans()):
                table["state"] = draw(st.sampled_from(["ready", "drain", "maint"]))
            lines.append(f"  {_toml(table)},")
            backends.append(
                BackendConfig(
                    address=address,
                    name=str(table.get("name", f"{pool_name}{index + 1}")),
                    weight=int(table.get("weight", 1)),  # type: ignore[call-overload]
                    backup=bool(table.get("backup", False)),
                    state=str(table.get("state", "ready")),
                )
            )
        lines.append("]")
        if draw(st.booleans()):
            # TLS to the backends, with no files to read: a server_name and verify. A UNIX
            # socket backend needs the server_name while verify is on.
            tls_table: dict[str, object] = {}
            if draw(st.booleans()):
                tls_table["verify"] = draw(st.booleans())
            unix = any(backend.address.startswith("unix:") for backend in backends)
            if draw(st.booleans()) or (unix and tls_table.get("verify", True)):
                tls_table["server_name"] = draw(_server_names)
            if draw(st.booleans()):
                lines.append(f"tls = {_toml(tls_table)}")
            else:
                sections.append(f"[pools.{json.dumps(pool_name)}.tls]")
                sections.extend(f"{k} = {_toml(v)}" for k, v in tls_table.items())
            pool_kwargs["tls"] = PoolTLSConfig(**tls_table)  # type: ignore[arg-type]
        lines.extend(sections)
        for key in ["connect_timeout", "response_timeout", "upstream_idle_timeout", "slow_start"]:
            if key in pool_kwargs:
                pool_kwargs[key] = float(pool_kwargs[key])
        if "strategy_options" in pool_kwargs:
            pool_kwargs["strategy_options"] = _frozen(pool_kwargs["strategy_options"])
        pools[pool_name] = PoolConfig(name=pool_name, backends=backends, **pool_kwargs)

    frontends: dict[str, FrontendConfig] = {}
    for frontend_name in draw(st.lists(names, min_size=1, max_size=3, unique=True)):
        listen = [f"tcp:{next(ports)}:interface=127.0.0.1"]
        if draw(st.booleans()):
            listen.append(f"tcp6:{next(ports)}")
        pool = draw(st.sampled_from(sorted(pools)))
        mode = draw(st.sampled_from(["tcp", "http"]))
        table_name = f"frontends.{json.dumps(frontend_name)}"
        lines.append(f"[{table_name}]")
        lines.append(f"mode = {_toml(mode)}")
        lines.append(f"listen = {_toml(listen if len(listen) > 1 else listen[0])}")
        lines.append(f"pool = {_toml(pool)}")
        frontend_kwargs: dict[str, Any] = {}
        if draw(st.booleans()):
            frontend_kwargs["client_timeout"] = draw(_seconds)
        if draw(st.booleans()):
            frontend_kwargs["max_connections"] = draw(st.integers(min_value=1, max_value=10**6))
        routes: list[tuple[dict[str, str], RouteConfig]] = []
        if mode == "http":
            if draw(st.booleans()):
                frontend_kwargs["header_timeout"] = draw(_seconds)
            if draw(st.booleans()):
                frontend_kwargs["max_header_bytes"] = draw(
                    st.integers(min_value=1024, max_value=2**40)
                )
            if draw(st.booleans()):
                frontend_kwargs["max_body_bytes"] = draw(st.integers(min_value=0, max_value=2**40))
            if draw(st.booleans()):
                frontend_kwargs["trusted_proxies"] = draw(st.lists(_trusted_proxies, max_size=3))
            if draw(st.booleans()):
                frontend_kwargs["tunnel_timeout"] = draw(_seconds)
            routes = draw(
                st.lists(
                    _route(sorted(pools)),
                    max_size=4,
                    unique_by=lambda pair: (pair[1].host, pair[1].path_prefix),
                )
            )
        for key, value in frontend_kwargs.items():
            lines.append(f"{key} = {_toml(value)}")
        if routes and draw(st.booleans()):
            lines.append(f"routes = {_toml([table for table, _ in routes])}")
        else:
            for table, _ in routes:
                lines.append(f"[[{table_name}.routes]]")
                lines.extend(f"{key} = {_toml(value)}" for key, value in table.items())
        for key in ["client_timeout", "header_timeout", "tunnel_timeout"]:
            if key in frontend_kwargs:
                frontend_kwargs[key] = float(frontend_kwargs[key])
        frontends[frontend_name] = FrontendConfig(
            name=frontend_name,
            mode=mode,
            listen=listen,
            pool=pool,
            routes=[route for _, route in routes],
            **frontend_kwargs,
        )

    global_config = GlobalConfig()
    if draw(st.booleans()):
        global_config = GlobalConfig(draw(st.sampled_from(["text", "json"])))
        # [global] may stand anywhere between tables.
        at = draw(st.sampled_from([i for i, line in enumerate(lines) if line.startswith("[")]))
        lines[at:at] = ["[global]", f"log_format = {_toml(global_config.log_format)}"]
    text = "\n".join(lines) + "\n"
    return text, Config("lb.toml", frontends, pools, global_config=global_config)


class PropertyTests(ConfigTestCase):
    """
    Generated documents, valid and not.
    """

    @settings(max_examples=300, deadline=None)
    @given(_documents)
    def test_only_config_error(self, data: dict[str, object]) -> None:
        """
        Whatever the tables hold, validation returns a config or raises ConfigError, whose
        problems are one line each, in the documented form.
        """
        try:
            config = config_from_dict(data, "lb.toml")
        except ConfigError as e:
            self.assertTrue(e.problems)
            for problem in e.problems:
                line = str(problem)
                self.assertEqual(line, f"lb.toml: {problem.key}: {problem.message}")
                self.assertNotIn("\n", line)
                self.assertNotIn("\r", line)
            self.assertEqual(str(e).splitlines(), [str(p) for p in e.problems])
        else:
            self.assertIsInstance(config, Config)
            format_summary(config)

    @settings(max_examples=150, deadline=None)
    @given(_valid_documents())
    def test_round_trip(self, document: tuple[str, Config]) -> None:
        """
        A valid document parses to exactly the values it holds, in file order, and its summary
        names every frontend with its mode, and every backend.
        """
        text, expected = document
        config = parse_config(text, "lb.toml")
        self.assertEqual(config, expected)
        self.assertEqual(list(config.pools), list(expected.pools))
        self.assertEqual(list(config.frontends), list(expected.frontends))
        summary = format_summary(config)
        for pool in config.pools.values():
            for backend in pool.backends:
                self.assertIn(f"    {backend.name}", summary)
            if pool.health_check is not None:
                kind = "http GET" if pool.health_check.kind == "http" else "tcp connect"
                self.assertIn(f"\n    health {kind} ", summary)
            if pool.outlier_detection is not None:
                self.assertIn("\n    outliers: eject after ", summary)
            if pool.tls is not None:
                verify = "verify " if pool.tls.verify else "verify OFF"
                self.assertIn(f"\n    tls to backends: {verify}", summary)
        for frontend in config.frontends.values():
            self.assertIn(f"frontend {frontend.name} ({frontend.mode}) ", summary)
            for route in frontend.routes:
                parts = ["  route"]
                if route.host is not None:
                    parts.append(f"host={route.host}")
                if route.path_prefix is not None:
                    parts.append(f"path_prefix={route.path_prefix}")
                self.assertIn(" ".join(parts) + f" -> pool {route.pool}\n", summary + "\n")


class SchemaTests(SynchronousTestCase):
    """
    The JSON Schema made from the models: what ``twisted-lb schema`` prints and the package
    ships, and what the key reference in docs/config.rst is made from.
    """

    def leaf_keys(self) -> list[tuple[str, str, dict[str, Any]]]:
        """(table, key, schema) of every key of every table, from the JSON Schema."""
        schema = json_schema()
        tables = {"Config": schema, **schema["$defs"]}
        return [
            (table, key, property_schema)
            for table, table_schema in tables.items()
            for key, property_schema in table_schema["properties"].items()
        ]

    def test_every_key_described(self) -> None:
        """Every key of every table has a description, and every table a docstring."""
        keys = self.leaf_keys()
        self.assertGreater(len(keys), 60)
        self.assertEqual([(t, k) for t, k, s in keys if not s.get("description")], [])
        for table, table_schema in json_schema()["$defs"].items():
            self.assertTrue(table_schema.get("description"), table)

    def test_units(self) -> None:
        """
        Every duration says ``"unit": "s"``, every size ``"bytes"``; and every key that has a
        unit is a number (a duration string too).
        """
        duration = re.compile(r"(timeout|interval|_time|slow_start)$")
        for table, key, schema in self.leaf_keys():
            if duration.search(key):
                self.assertEqual(schema.get("unit"), "s", f"{table}.{key}")
            if key.endswith("_bytes"):
                self.assertEqual(schema.get("unit"), "bytes", f"{table}.{key}")
            if "unit" in schema and schema["unit"] != "path":
                types = {schema.get("type")} | {s.get("type") for s in schema.get("anyOf", [])}
                self.assertTrue(types & {"number", "integer"}, f"{table}.{key}: {schema}")

    def test_defaults_in_one_place(self) -> None:
        """
        The schema's defaults are the library classes' keyword defaults
        (:mod:`twisted_lb._defaults`), so a key left out and an argument left out agree.
        """
        import inspect

        from twisted_lb.health import HealthMonitor, HTTPCheck
        from twisted_lb.http.proxy import HTTPProxyFactory
        from twisted_lb.pool import OutlierDetector, Pool
        from twisted_lb.tcp import TCPRelayFactory

        pairs = [
            (FrontendConfig, TCPRelayFactory),
            (FrontendConfig, HTTPProxyFactory),
            (PoolConfig, Pool),
            (HealthCheckConfig, HealthMonitor),
            (HealthCheckConfig, HTTPCheck),
            (OutlierDetectionConfig, OutlierDetector),
        ]
        compared = 0
        for model, cls in pairs:
            for name, parameter in inspect.signature(cls).parameters.items():
                field = model.model_fields.get(name)
                if field is None or parameter.default is inspect.Parameter.empty:
                    continue
                default = field.get_default(call_default_factory=True)
                self.assertEqual(parameter.default, default, f"{cls.__name__}({name})")
                compared += 1
        self.assertGreater(compared, 20)
        from twisted_lb import _defaults, tls

        self.assertEqual(_defaults.TLS_CURVES, tls.INTERMEDIATE_GROUPS)

    def test_shipped_file(self) -> None:
        """``twisted_lb/lb.schema.json`` is the schema the models make today."""
        import twisted_lb

        shipped = os.path.join(os.path.dirname(twisted_lb.__file__), "lb.schema.json")
        with open(shipped, encoding="utf-8") as f:
            self.assertEqual(
                f.read(),
                json_schema_text(),
                "regenerate it: twisted-lb schema > twisted_lb/lb.schema.json",
            )

    def test_editor_schema_accepts_examples(self) -> None:
        """
        What an editor checks with the shipped schema (a JSON Schema validator, as taplo's):
        every file of examples/ passes, durations and bare addresses too; an unknown key and a
        wrong type fail at their path.
        """
        import glob
        import tomllib

        import jsonschema

        import twisted_lb

        shipped = os.path.join(os.path.dirname(twisted_lb.__file__), "lb.schema.json")
        with open(shipped, encoding="utf-8") as f:
            schema = json.load(f)
        jsonschema.Draft202012Validator.check_schema(schema)
        validator = jsonschema.Draft202012Validator(schema)
        examples = os.path.join(os.path.dirname(os.path.dirname(__file__)), "examples")
        paths = sorted(glob.glob(os.path.join(examples, "*.toml")))
        self.assertTrue(paths)
        for path in paths:
            with open(path, "rb") as f:
                errors = [e.message for e in validator.iter_errors(tomllib.load(f))]
            self.assertEqual(errors, [], path)
        document = tomllib.loads(
            FRONTEND + 'client_timeout = "30s"\n[pools.app]\nbackends = ["127.0.0.1:9001"]\n'
        )
        self.assertEqual(list(validator.iter_errors(document)), [])
        bad = tomllib.loads(FRONTEND + "max_connections = true\n" + POOL + "wieght = 2\n")
        self.assertEqual(
            sorted((list(e.absolute_path), e.validator) for e in validator.iter_errors(bad)),
            [
                (["frontends", "web", "max_connections"], "type"),
                (["pools", "app"], "additionalProperties"),
            ],
        )

    def test_command(self) -> None:
        """``twisted-lb schema`` prints it."""
        result = subprocess.run(
            [TWISTED_LB, "schema"], capture_output=True, text=True, timeout=60, check=True
        )
        self.assertEqual(json.loads(result.stdout), json_schema())
        schema = json.loads(result.stdout)
        frontend = schema["$defs"]["FrontendConfig"]
        self.assertEqual(frontend["additionalProperties"], False)
        self.assertEqual(frontend["required"], ["mode", "listen", "pool"])
        self.assertEqual(schema["$defs"]["BackendConfig"]["required"], ["address"])
        self.assertNotIn("name", frontend["properties"])  # the table's name, not a key
        self.assertIn("global", schema["properties"])


class LineTests(ConfigTestCase):
    """Problems of a TOML text name the line of their key, where it can be found."""

    def test_lines(self) -> None:
        text = (
            FRONTEND.replace('listen = "tcp:8080:interface=127.0.0.1"', 'listen = ["tcp:99999"]')
            + "client_timeout = -1\n"
            + "[pools.app]\n"
            + 'backends = [\n  { address = "127.0.0.1:9001", wieght = 2 },\n]\n'
            + "[pools.app.health_check]\nrise = 0\n"
        )
        error = self.assertRaises(ConfigError, parse_config, text, "lb.toml")
        self.assertEqual(
            [(p.key, p.line) for p in error.problems],
            [
                ("frontends.web.listen[0]", 3),
                ("frontends.web.client_timeout", 5),
                ("pools.app.backends[0].wieght", 7),  # the line of backends = [
                ("pools.app.health_check.rise", 11),
            ],
        )
        self.assertEqual(
            str(error.problems[0]).split(": ")[:2], ["lb.toml", "frontends.web.listen[0]"]
        )

    def test_arrays_of_tables_and_quoted_names(self) -> None:
        """The second ``[[...backends]]`` table is backends[1]; quoted names are matched."""
        text = (
            FRONTEND.replace('pool = "app"', 'pool = "a.b"')
            + '[[pools."a.b".backends]]\naddress = "127.0.0.1:9001"\n'
            + '[[pools."a.b".backends]]  # the second\naddress = "127.0.0.1:9002"\nweight = 0\n'
            + '[pools."a.b".health_check]\nrise = 0\n'
        )
        error = self.assertRaises(ConfigError, parse_config, text, "lb.toml")
        self.assertEqual(
            [(p.key, p.line) for p in error.problems],
            [
                ('pools."a.b".backends[1].weight', 9),
                ('pools."a.b".health_check.rise', 11),
            ],
        )

    def test_key_not_in_text(self) -> None:
        """A missing top-level table has no line (and finding that out ends)."""
        error = self.assertRaises(ConfigError, parse_config, POOL, "lb.toml")
        self.assertEqual([(p.key, p.line) for p in error.problems], [("frontends", None)])

    def test_no_text(self) -> None:
        """:func:`config_from_dict` has no text, so no lines."""
        error = self.assertRaises(ConfigError, config_from_dict, {"frontends": {}}, "x")
        self.assertEqual([p.line for p in error.problems], [None, None])

    def test_check_needs_no_reactor(self) -> None:
        """
        ``check`` validates with the schema alone: it never imports the global reactor, and
        a listen endpoint that serverFromString would refuse (port 99999) is a problem with
        its key path (issue 11).
        """
        path = self.write(
            FRONTEND.replace('listen = "tcp:8080:interface=127.0.0.1"', 'listen = ["tcp:99999"]')
            + POOL
        )
        script = (
            "import sys\nfrom twisted_lb.cli import check\ncode = check(sys.argv[1])\n"
            "assert 'twisted.internet.reactor' not in sys.modules\nsys.exit(code)\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", script, path], capture_output=True, text=True, timeout=60
        )
        self.assertEqual(result.returncode, 1, result.stderr)
        self.assertEqual(
            result.stderr,
            f"{path}: frontends.web.listen[0]: 'tcp:99999' is not a valid server endpoint "
            "(port 99999 is not from 0 to 65535); write one as in "
            "'tcp:8080:interface=127.0.0.1' (line 3)\n",
        )
