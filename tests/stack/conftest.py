"""Every test under tests/stack/ is marked `stack`: these suites start the real stack (Redis, the
API and the workers as processes), and the in-process checks that share their modules go with
them. `make test-fast` deselects them (`-m "not stack"`); `make test` runs everything.

`shared_stack` is one stack at the default settings (collections of 3 shards unless they say
otherwise) for the suites that need nothing else of theirs: each writes only collections of its
own names, so they pass alone and in any order on it. Suites with settings of their own (API
keys, limits, fault timings) start their own stacks."""
from __future__ import annotations

from pathlib import Path

import pytest

from shared.runtime.stack import Stack
from tests.support.stack import running_stack

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="session")
def shared_stack(tmp_path_factory: pytest.TempPathFactory) -> Stack:
    with running_stack(tmp_path_factory.mktemp("mmsearch-shared"), MMSEARCH_DEFAULT_COLLECTION_SHARDS="3") as stack:
        yield stack


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.resolve().is_relative_to(HERE):
            item.add_marker(pytest.mark.stack)
