"""Counts reliability cases per category and writes the README's "Reliability" table.

Tests opt in with ``@pytest.mark.reliability("category")``; each test counts as
one case unless it calls :func:`tried` with how many inputs it really tried
(a fuzz test reports its number of examples). ``pytest --reliability-report
FILE`` writes a Markdown table of categories, tests, cases and outcomes.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from pathlib import Path

import pytest

_cases: Counter[str] = Counter()
_outcomes: defaultdict[str, Counter[str]] = defaultdict(Counter)
_explicit: set[str] = set()
_current: list[str] = []


def fuzz_examples(default: int) -> int:
    """How many examples a fuzz test runs: DINOEMBED_FUZZ_EXAMPLES for the longer run."""
    return int(os.environ.get("DINOEMBED_FUZZ_EXAMPLES", default))


def tried(n: int = 1) -> None:
    """Record ``n`` cases tried by the running reliability test."""
    if _current:
        _cases[_current[0]] += n
        _explicit.add(_current[1])


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--reliability-report",
        default=None,
        metavar="FILE",
        help="write the reliability table (Markdown) to FILE",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "reliability(category): counted in the reliability table")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> object:
    marker = item.get_closest_marker("reliability")
    if marker is not None:
        _current[:] = [str(marker.args[0]), item.nodeid]
    try:
        return (yield)
    finally:
        _current.clear()


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    category = _category_of.get(report.nodeid)
    if category is None:
        return
    if report.when == "call" or (report.when == "setup" and not report.passed):
        _outcomes[category][report.outcome] += 1
        if report.when == "call" and report.nodeid not in _explicit:
            _cases[category] += 1


_category_of: dict[str, str] = {}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        marker = item.get_closest_marker("reliability")
        if marker is not None:
            _category_of[item.nodeid] = str(marker.args[0])


def pytest_sessionfinish(session: pytest.Session) -> None:
    target = session.config.getoption("--reliability-report")
    if not target or not _outcomes:
        return
    lines = ["| category | tests | cases tried | outcome |", "|---|---:|---:|---|"]
    for category in sorted(_outcomes):
        outcome = _outcomes[category]
        tests = sum(outcome.values())
        bad = outcome["failed"] + outcome["error"]
        verdict = "all handled, nothing lost" if bad == 0 else f"{bad} FAILED"
        if outcome["skipped"]:
            verdict += f" ({outcome['skipped']} skipped)"
        lines.append(f"| {category} | {tests} | {_cases[category]} | {verdict} |")
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    Path(target).write_text("\n".join(lines) + "\n")
