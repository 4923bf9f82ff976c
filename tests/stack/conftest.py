"""Every test under tests/stack/ is marked `stack`: these suites start the real stack (Redis, the
API and the workers as processes), and the in-process checks that share their modules go with
them. `make test-fast` deselects them (`-m "not stack"`); `make test` runs everything."""
from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.resolve().is_relative_to(HERE):
            item.add_marker(pytest.mark.stack)
