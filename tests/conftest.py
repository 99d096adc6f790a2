"""Root of the test tree: torch-free, so the operator tests and the chart's render and rule tests
run without the server stack.

The server's fixtures live in `server/conftest.py`; `--runslow` runs the tests marked `slow`
(long soaks and sweeps), which are otherwise reported as skipped."""

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", help="also run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
