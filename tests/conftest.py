"""
Run every test from a temporary working directory: trial's ``mktemp()`` makes paths relative
to the working directory, and they must not land in the source tree.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(autouse=True, scope="session")
def _work_in_temporary_directory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    previous = os.getcwd()
    work = tmp_path_factory.mktemp("work")
    os.chdir(work)
    try:
        yield work
    finally:
        os.chdir(previous)
