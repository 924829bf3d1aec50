"""The receive tests' node: one that only receives (no routes), fresh for each test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.harness import NodeProcess, start_node


@pytest.fixture
def node(tmp_path: Path) -> Iterator[NodeProcess]:
    process = start_node(tmp_path)
    yield process
    process.stop()
