"""
The wheel's optional build step: compile the hot modules with mypyc.

A plain ``pip install twisted-lb`` (or ``pip install -e .``) installs pure Python and needs no C
compiler. With ``TWISTED_LB_MYPYC=1`` in the environment, a wheel build also compiles the
modules of the per-request path with mypyc (through hatch-mypyc's build hook), which takes
8-18% of the CPU off each proxied request (``bench/README.rst``). The compiled modules
replace the same modules' sources in the wheel, and every module keeps working, compiled or
not: the test suite runs on both builds (``.ci/run``).

``tcp.py`` (the L4 relay) compiles too, but compiled it took no CPU off a relayed request
(``bench/README.rst``), where the kernel's share is most of the cost, so it stays pure Python.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

#: The environment variable that asks for the compiled build.
SWITCH = "TWISTED_LB_MYPYC"

#: The modules compiled, as hatch-mypyc include patterns (from the project root).
COMPILED = (
    "/twisted_lb/_frontend.py",
    "/twisted_lb/_transport.py",
    "/twisted_lb/http/headers.py",
    "/twisted_lb/http/proxy.py",
    "/twisted_lb/http/upstream.py",
)

#: What the compiled build needs besides the project's own dependencies (mypy reads their
#: types): pinned, so that a build compiles what CI tested.
BUILD_REQUIRES = ("hatch-mypyc==0.16.0", "mypy==2.4.1", "mypy-zope==1.0.17")


def wanted() -> bool:
    """Whether ``TWISTED_LB_MYPYC`` asks for the compiled build (1, true, yes or on)."""
    return os.environ.get(SWITCH, "").strip().lower() in ("1", "true", "yes", "on")


class MypycWhenAsked(BuildHookInterface):
    """hatch-mypyc's build hook, run only for a wheel that ``TWISTED_LB_MYPYC`` asks for."""

    PLUGIN_NAME = "custom"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._mypyc: Any = None
        self._scratch: str | None = None

    def dependencies(self) -> list[str]:
        if not wanted():
            return []
        return [*BUILD_REQUIRES, *self.metadata.core.dependencies]

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if not wanted() or self.target_name != "wheel":
            return
        if version == "editable":
            self.app.display_warning(
                f"{SWITCH}: an editable install runs the sources; build a wheel to compile them"
            )
            return
        from hatch_mypyc.plugin import MypycBuildHook

        # hatch-mypyc moves pyproject.toml aside while mypyc runs, and mypy needs its
        # [tool.mypy] section (strict, and the mypy-zope plugin): give it a copy.
        self._scratch = tempfile.mkdtemp(prefix="twisted-lb-mypyc-")
        mypy_config = os.path.join(self._scratch, "mypy.toml")
        shutil.copy(os.path.join(self.root, "pyproject.toml"), mypy_config)
        config = {
            "include": list(COMPILED),
            "mypy-args": [f"--config-file={mypy_config}"],
            "options": {"opt_level": "3"},
        }
        self._mypyc = MypycBuildHook(
            self.root,
            config,
            self.build_config,
            self.metadata,
            self.directory,
            self.target_name,
            self.app,
        )
        self.app.display_info(f"{SWITCH}: compiling {len(COMPILED)} modules with mypyc")
        self._mypyc.initialize(version, build_data)

    def finalize(self, version: str, build_data: dict[str, Any], artifact_path: str) -> None:
        if self._mypyc is None:
            return
        # The extension modules were built in the source tree; remove them, or they would
        # shadow the sources of a checkout (and of an editable install) from now on.
        self._mypyc.clean([version])
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
